package trigger

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/internal/rowjson"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// payload is the event JSON as a handler sees it.
type payload struct {
	EventID string `json:"event_id"`
	Table   string `json:"table"`
	Action  string `json:"action"`
	Data    struct {
		Old json.RawMessage `json:"old"`
		New json.RawMessage `json:"new"`
	} `json:"data"`
	Schema     string    `json:"schema"`
	Source     string    `json:"source"`
	XID        uint32    `json:"xid"`
	CommitTime time.Time `json:"commit_time"`
}

// recorder keeps the events its handler saw, in arrival order.
type recorder struct {
	mu     sync.Mutex
	events []payload
	raw    [][]byte
	cond   chan struct{} // closed and replaced on every event
	fn     func(ctx context.Context, p payload) error
}

func newRecorder() *recorder { return &recorder{cond: make(chan struct{})} }

func (r *recorder) handle(ctx context.Context, c *change.Change) error {
	var p payload
	if err := json.Unmarshal(c.Message, &p); err != nil {
		return fmt.Errorf("event is not JSON: %w: %s", err, c.Message)
	}
	if r.fn != nil {
		if err := r.fn(ctx, p); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, p)
	r.raw = append(r.raw, append([]byte(nil), c.Message...))
	close(r.cond)
	r.cond = make(chan struct{})
	return nil
}

func (r *recorder) snapshot() []payload {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]payload(nil), r.events...)
}

// waitFor waits until ok(events) holds, failing the test after timeout.
func (r *recorder) waitFor(t *testing.T, timeout time.Duration, what string, ok func([]payload) bool) []payload {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond) // ok may also depend on the database
	defer tick.Stop()
	for {
		r.mu.Lock()
		evs := append([]payload(nil), r.events...)
		ch := r.cond
		r.mu.Unlock()
		if ok(evs) {
			return evs
		}
		select {
		case <-ch:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out after %s waiting for %s; got %d events", timeout, what, len(evs))
		}
	}
}

func atLeast(n int) func([]payload) bool {
	return func(evs []payload) bool { return len(evs) >= n }
}

// route builds a routed table whose handler is h.
func route(schema, table string, lanes int, h dispatch.Handler) dispatch.Table {
	return dispatch.Table{Schema: schema, Table: table, Route: dispatch.Route{
		Name: schema + "." + table, Handler: h, Lanes: lanes,
		Retry: dispatch.RetryPolicy{MaxRetries: 2, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond},
	}}
}

func testLogger() *slog.Logger {
	if os.Getenv("PGCDC_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

func config(dsn string, tables ...dispatch.Table) Config {
	return Config{
		DSN: dsn, Tables: tables, PollInterval: 10 * time.Millisecond,
		MinReconnect: 20 * time.Millisecond, MaxReconnect: 200 * time.Millisecond,
		ClaimTimeout: 5 * time.Second, Logger: testLogger(),
	}
}

// running is a Source running in the background.
type running struct {
	s      *Source
	cancel context.CancelFunc
	stop   chan struct{}
	done   chan error
}

func start(t *testing.T, cfg Config) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: New(cfg), cancel: cancel, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() { r.done <- r.s.Run(ctx, r.stop) }()
	t.Cleanup(func() { r.halt(t) })
	return r
}

// halt stops the source gracefully (once) and returns Run's error.
func (r *running) halt(t *testing.T) error {
	t.Helper()
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	defer r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("source did not stop")
		return nil
	}
}

// kill cancels the source's context (handlers are cancelled) and waits.
func (r *running) kill(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(30 * time.Second):
		t.Fatalf("source did not end")
		return nil
	}
}

// connect opens a connection with the session settings events are
// rendered with, to compute the expected row_to_json.
func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range rowjson.SessionParams() {
		cfg.RuntimeParams[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryInt(t *testing.T, conn *pgx.Conn, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// waitUntil polls cond until it holds or the deadline passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// signalHandler is a slog handler that closes ch when a record whose
// message starts with msg is logged.
type signalHandler struct {
	msg  string
	ch   chan struct{}
	once sync.Once
}

func (h *signalHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *signalHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, h.msg) {
		h.once.Do(func() { close(h.ch) })
	}
	return nil
}
func (h *signalHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *signalHandler) WithGroup(string) slog.Handler      { return h }
