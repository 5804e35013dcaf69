package pgcdc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/internal/trigger"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// recorder keeps every event its handler saw, in arrival order.
type recorder struct {
	mu     sync.Mutex
	events []pgcdc.EventPayload
	raw    [][]byte
	routes []string
	header []map[string]string
	cond   chan struct{} // closed and replaced on every event
}

func newRecorder() *recorder { return &recorder{cond: make(chan struct{})} }

func (r *recorder) handle(ec *pgcdc.EventContext) error {
	var p pgcdc.EventPayload
	if err := json.Unmarshal(ec.Message(), &p); err != nil {
		return fmt.Errorf("event is not JSON: %w: %s", err, ec.Message())
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, p)
	r.raw = append(r.raw, append([]byte(nil), ec.Message()...))
	r.routes = append(r.routes, ec.HandlerRoute())
	h := map[string]string{}
	for k, v := range ec.Header() {
		h[k] = v
	}
	r.header = append(r.header, h)
	close(r.cond)
	r.cond = make(chan struct{})
	return nil
}

func (r *recorder) snapshot() []pgcdc.EventPayload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]pgcdc.EventPayload(nil), r.events...)
}

// waitFor waits until ok(events) holds, failing the test after timeout.
func (r *recorder) waitFor(t *testing.T, timeout time.Duration, what string, ok func([]pgcdc.EventPayload) bool) []pgcdc.EventPayload {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		evs := append([]pgcdc.EventPayload(nil), r.events...)
		ch := r.cond
		r.mu.Unlock()
		if ok(evs) {
			return evs
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s; got %d events", timeout, what, len(evs))
		}
	}
}

func (r *recorder) waitCount(t *testing.T, n int) []pgcdc.EventPayload {
	t.Helper()
	return r.waitFor(t, 60*time.Second, fmt.Sprintf("%d events", n), func(e []pgcdc.EventPayload) bool { return len(e) >= n })
}

// testLogger logs through t so a failing test shows the worker's logs.
func testLogger(t *testing.T) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("PGCDC_TEST_VERBOSE") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// running is a worker serving in the background.
type running struct {
	w    *pgcdc.Worker
	errc chan error
}

func serve(t *testing.T, w *pgcdc.Worker) *running {
	t.Helper()
	r := &running{w: w, errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { r.errc <- w.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = w.Shutdown(sctx)
		cancel()
		<-r.errc
	})
	return r
}

// stop shuts the worker down gracefully and checks Serve's result.
func (r *running) stop(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.w.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-r.errc; err != nil {
		t.Fatalf("Serve returned %v after Shutdown", err)
	}
	r.errc <- nil // for the cleanup
}

func exec(t *testing.T, dsn string, sql string, args ...any) {
	t.Helper()
	pgtest.Exec(t, dsn, sql, args...)
}

func queryStrings(t *testing.T, dsn, sql string, args ...any) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// waitSlotConfirmed waits until the slot's confirmed_flush_lsn reaches lsn.
func waitSlotConfirmed(t *testing.T, dsn, slot, lsn string) {
	t.Helper()
	waitQuery(t, dsn, `SELECT coalesce((SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()), false)`, slot, lsn)
}

func newWorker(t *testing.T, opts ...pgcdc.OptionFunc) *pgcdc.Worker {
	t.Helper()
	opts = append([]pgcdc.OptionFunc{pgcdc.SetLogger(testLogger(t)), pgcdc.SetMinReconnectInterval(50 * time.Millisecond),
		pgcdc.SetMaxReconnectInterval(time.Second)}, opts...)
	w, err := pgcdc.NewWorker(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// mode is a capture engine the shared integration tests run against.
type mode struct {
	name string
	opt  pgcdc.OptionFunc
}

var modes = []mode{
	{"logical", pgcdc.SetCaptureMode(pgcdc.CaptureLogical)},
	{"trigger", pgcdc.SetCaptureMode(pgcdc.CaptureTrigger)},
}

// forEachMode runs one test against every capture engine.
func forEachMode(t *testing.T, test func(*testing.T, mode)) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { test(t, m) })
	}
}

func (m mode) newWorker(t *testing.T, opts ...pgcdc.OptionFunc) *pgcdc.Worker {
	t.Helper()
	return newWorker(t, append([]pgcdc.OptionFunc{m.opt}, opts...)...)
}

// ready waits until the worker captures: its slot is read (logical), or
// its trigger is on the n routed tables (trigger).
func (m mode) ready(t *testing.T, dsn, slot string, n int) {
	t.Helper()
	if m.name == "logical" {
		waitStreaming(t, dsn, slot)
		return
	}
	waitQuery(t, dsn, fmt.Sprintf(`SELECT count(*) >= %d FROM pg_trigger WHERE tgname = $1`, n), trigger.TriggerName("pgcdc"))
}

// settled waits until everything written so far is confirmed: the slot's
// position reached the current WAL end (logical), or the event table is
// empty (trigger).
func (m mode) settled(t *testing.T, dsn, slot string) {
	t.Helper()
	if m.name == "logical" {
		lsn := queryStrings(t, dsn, `SELECT pg_current_wal_lsn()::text`)[0]
		waitSlotConfirmed(t, dsn, slot, lsn)
		return
	}
	waitQuery(t, dsn, `SELECT NOT EXISTS (SELECT 1 FROM pgcdc.`+trigger.EventTable+`) AND $1::text IS NOT NULL`, "x")
}

// waitQuery polls a boolean query until it is true.
func waitQuery(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for {
		var ok bool
		if err := conn.QueryRow(ctx, sql, args...).Scan(&ok); err != nil && ctx.Err() == nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", sql)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
