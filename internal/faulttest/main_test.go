package faulttest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// sizes are the counts of one suite run: CI (default) or full
// (PGCDC_FAULT_FULL=1).
type sizes struct {
	full         bool
	rows         int   // rows written by the kill scenario
	kills        int   // kill -9 of the consumer
	restarts     int   // PostgreSQL immediate restarts
	restartRows  int   // rows written during the restarts
	cuts         int   // TCP connection cuts
	poisonRows   int   // other keys' rows written while the poison retries
	instances    int   // consumer processes racing for one slot
	takeovers    int   // kill -9 of the active instance
	walBytes     int64 // WAL written elsewhere while the captured table idles
	lagLimit     int64 // the slot lag must stay below this
	standbyRows  int   // minimum rows written during the takeover scenario
	cutRowsBatch int   // rows per transaction written during the cuts
}

func suiteSizes() sizes {
	if os.Getenv("PGCDC_FAULT_FULL") != "" {
		return sizes{full: true, rows: 100_000, kills: 20, restarts: 5, restartRows: 50_000, cuts: 10,
			poisonRows: 20_000, instances: 3, takeovers: 10, walBytes: 1 << 30, lagLimit: 64 << 20,
			standbyRows: 20_000, cutRowsBatch: 10}
	}
	return sizes{rows: 10_000, kills: 5, restarts: 2, restartRows: 5_000, cuts: 3,
		poisonRows: 5_000, instances: 3, takeovers: 3, walBytes: 128 << 20, lagLimit: 64 << 20,
		standbyRows: 3_000, cutRowsBatch: 10}
}

// newRand returns a generator seeded from PGCDC_FAULT_SEED or the clock,
// logging the seed so a failure can be replayed.
func newRand(t testing.TB) *rand.Rand {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("PGCDC_FAULT_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PGCDC_FAULT_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("random seed %d (replay with PGCDC_FAULT_SEED=%d)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// figures logs the scenario's figures in the fixed format.
func figures(t testing.TB, scenario string, written, delivered, duplicates int, maxTakeover time.Duration) {
	t.Helper()
	mt := "-"
	if maxTakeover > 0 {
		mt = maxTakeover.Round(time.Millisecond).String()
	}
	t.Logf("FIGURES scenario=%s written=%d delivered=%d duplicates=%d max_takeover=%s", scenario, written, delivered, duplicates, mt)
}

// ---- database helpers ----

func newPool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 8
	p, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func execSQL(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	pgtest.Exec(t, dsn, sql, args...)
}

func ctxT(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func queryInt(t testing.TB, p *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	var v *int64
	if err := p.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if v == nil {
		return 0
	}
	return *v
}

// waitUntil polls cond every poll until it reports true, failing the test
// after timeout. Errors from cond are remembered (and shown on timeout) but
// do not stop the wait: the server may be restarting.
func waitUntil(t testing.TB, timeout, poll time.Duration, what string, cond func(ctx context.Context) (bool, error)) {
	t.Helper()
	if err := pollUntil(timeout, poll, cond); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

func pollUntil(timeout, poll time.Duration, cond func(ctx context.Context) (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ctx, cancel := ctxT(max(time.Until(deadline), time.Second))
		ok, err := cond(ctx)
		cancel()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s (last error: %v)", timeout, last)
		}
		time.Sleep(poll)
	}
}

// slotState is one sample of pg_replication_slots.
type slotState struct {
	exists    bool
	active    bool
	confirmed string // confirmed_flush_lsn
	walStatus string
}

func readSlot(ctx context.Context, p *pgxpool.Pool, slot string) (slotState, error) {
	var st slotState
	var confirmed, walStatus *string
	err := p.QueryRow(ctx, `SELECT active, confirmed_flush_lsn::text, wal_status FROM pg_replication_slots WHERE slot_name = $1`, slot).
		Scan(&st.active, &confirmed, &walStatus)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.exists = true
	if confirmed != nil {
		st.confirmed = *confirmed
	}
	if walStatus != nil {
		st.walStatus = *walStatus
	}
	return st, nil
}

func waitSlotActive(t testing.TB, p *pgxpool.Pool, slot string, active bool) {
	t.Helper()
	waitUntil(t, time.Minute, 20*time.Millisecond, fmt.Sprintf("slot %s active=%v", slot, active), func(ctx context.Context) (bool, error) {
		st, err := readSlot(ctx, p, slot)
		// A slot is active while it is being created, before its consistent
		// point: only a confirmed position means later commits are captured.
		return err == nil && st.exists && st.active == active && (!active || st.confirmed != ""), err
	})
}

// waitSlotConfirmed waits until the slot's confirmed_flush_lsn reaches lsn.
func waitSlotConfirmed(t testing.TB, p *pgxpool.Pool, slot, lsn string, timeout time.Duration) {
	t.Helper()
	waitUntil(t, timeout, 50*time.Millisecond, fmt.Sprintf("slot %s confirmed >= %s", slot, lsn), func(ctx context.Context) (bool, error) {
		var ok bool
		err := p.QueryRow(ctx, `SELECT coalesce(confirmed_flush_lsn >= $2::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = $1`, slot, lsn).Scan(&ok)
		return ok, err
	})
}

func currentLSN(t testing.TB, p *pgxpool.Pool) string {
	t.Helper()
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	var lsn string
	if err := p.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	return lsn
}

// slotName is the slot (and publication) name pgcdc uses for a worker type
// and the default source: "pgcdc_<type>_default" (plain names only).
func slotName(workerType string) string { return "pgcdc_" + workerType + "_default" }

// ---- the durable record of deliveries ----

// newRecordDB creates a database holding the table "seen" the consumer
// process records each delivery into (see consumer/main.go).
func newRecordDB(t testing.TB) string {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	execSQL(t, dsn, `CREATE TABLE seen (
		id       bigserial PRIMARY KEY,
		event_id text NOT NULL,
		tbl      text NOT NULL,
		action   text NOT NULL,
		row_id   bigint NOT NULL,
		lsn      pg_lsn NOT NULL,
		run      int NOT NULL,
		inst     text NOT NULL,
		at       timestamptz NOT NULL DEFAULT clock_timestamp(),
		data     text -- the row's JSON, with -record-rows (NULL for a DELETE)
	);
	CREATE INDEX ON seen (run);
	CREATE INDEX ON seen (inst, id);`)
	return dsn
}

// seenRow is one recorded delivery.
type seenRow struct {
	id      int64
	eventID string
	rowID   int64
	lsn     uint64
	run     int
	inst    string
	at      time.Time
}

func loadSeen(t testing.TB, p *pgxpool.Pool) []seenRow {
	t.Helper()
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	rows, err := p.Query(ctx, `SELECT id, event_id, row_id, lsn::text, run, inst, at FROM seen ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seenRow, error) {
		var s seenRow
		var lsn string
		err := r.Scan(&s.id, &s.eventID, &s.rowID, &lsn, &s.run, &s.inst, &s.at)
		if err == nil {
			s.lsn, err = parseLSN(lsn)
		}
		return s, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func parseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("bad LSN %q", s)
	}
	return h<<32 | l, nil
}

func mustLSN(t testing.TB, s string) uint64 {
	t.Helper()
	v, err := parseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func fmtLSN(v uint64) string { return fmt.Sprintf("%X/%X", uint32(v>>32), uint32(v)) }

// tally compares the written row ids with the recorded deliveries: it
// reports rows never delivered and counts duplicates, and checks that a
// redelivered event keeps its event_id, row and LSN.
type tally struct {
	written    int
	delivered  int // written rows delivered at least once
	duplicates int // deliveries beyond the first of an event
	missing    []int64
	events     map[string]*eventInfo
}

type eventInfo struct {
	rowID   int64
	lsn     uint64
	minRun  int
	count   int
	firstID int64
}

func countSeen(t testing.TB, written []int64, seen []seenRow) *tally {
	t.Helper()
	tl := &tally{written: len(written), events: map[string]*eventInfo{}}
	byRow := map[int64]int{}
	for _, s := range seen {
		e := tl.events[s.eventID]
		if e == nil {
			e = &eventInfo{rowID: s.rowID, lsn: s.lsn, minRun: s.run, firstID: s.id}
			tl.events[s.eventID] = e
		} else {
			tl.duplicates++
			if e.rowID != s.rowID || e.lsn != s.lsn {
				t.Errorf("event %s delivered as row %d lsn %s and as row %d lsn %s: a redelivery changed the event", s.eventID, e.rowID, fmtLSN(e.lsn), s.rowID, fmtLSN(s.lsn))
			}
			e.minRun = min(e.minRun, s.run)
		}
		e.count++
		byRow[s.rowID]++
	}
	for _, id := range written {
		if byRow[id] > 0 {
			tl.delivered++
		} else {
			tl.missing = append(tl.missing, id)
		}
	}
	return tl
}

func (tl *tally) check(t testing.TB) {
	t.Helper()
	if len(tl.missing) > 0 {
		show := tl.missing
		if len(show) > 20 {
			show = show[:20]
		}
		t.Errorf("LOST: %d of %d written rows were never delivered; first ids: %v", len(tl.missing), tl.written, show)
	}
	if len(tl.events) > tl.written {
		t.Errorf("%d distinct event_ids for %d single-change rows: redeliveries must keep their event_id", len(tl.events), tl.written)
	}
}

func writtenIDs(t testing.TB, p *pgxpool.Pool, table string) []int64 {
	t.Helper()
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	rows, err := p.Query(ctx, `SELECT id FROM `+pgx.Identifier{table}.Sanitize()+` ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// ---- the consumer process ----

var buildMu sync.Mutex

// buildConsumer builds ./consumer into a temporary directory.
func buildConsumer(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	goBin, err := exec.LookPath("go")
	if err != nil {
		for _, p := range []string{filepath.Join(os.Getenv("GOROOT"), "bin", "go"), "/usr/local/go/bin/go"} {
			if st, e := os.Stat(p); e == nil && !st.IsDir() {
				goBin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		t.Skip("needs the go command to build the consumer process")
	}
	out := filepath.Join(t.TempDir(), "consumer")
	cmd := exec.Command(goBin, "build", "-o", out, "github.com/pgcdc/pgcdc/internal/faulttest/consumer")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build consumer: %v\n%s", err, b)
	}
	return out
}

// proc is a running consumer process.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error // after done
	started time.Time
}

// startConsumer runs the consumer binary with args; its stderr goes to a
// log file shown when the test fails. The process is killed at cleanup.
func startConsumer(t testing.TB, bin, name string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatal(err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{}), started: time.Now()}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("---- log of %s (last 6000 bytes) ----\n%s", name, p.tail(6000))
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term asks for a graceful stop and waits for the exit.
func (p *proc) term(t testing.TB, timeout time.Duration) {
	t.Helper()
	if p.exited() {
		t.Errorf("%s had already exited: %v\n%s", p.name, p.err, p.tail(3000))
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s exited with %v after SIGTERM\n%s", p.name, p.err, p.tail(3000))
		}
	case <-time.After(timeout):
		t.Errorf("%s did not stop within %s of SIGTERM", p.name, timeout)
		p.kill()
	}
}

func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// ---- in-process workers ----

// memRecorder records deliveries of an in-process worker in memory.
type memRecorder struct {
	mu       sync.Mutex
	count    map[string]int // event_id -> deliveries
	rows     map[int64]int  // row id -> deliveries
	total    int
	lastAt   time.Time
	maxRowAt map[int64]time.Time // first delivery time per row
	times    []time.Time         // every delivery, in order
	changed  chan struct{}
}

func newMemRecorder() *memRecorder {
	return &memRecorder{count: map[string]int{}, rows: map[int64]int{}, maxRowAt: map[int64]time.Time{}, changed: make(chan struct{})}
}

func (r *memRecorder) handle(ec *pgcdc.EventContext) error {
	ev := ec.Event()
	if ev == nil {
		return fmt.Errorf("event %s is not JSON", ec.Key())
	}
	var row struct{ ID int64 }
	if err := ev.Data.DecodeNew(&row); err != nil {
		return err
	}
	now := time.Now()
	r.mu.Lock()
	r.count[ev.EventID]++
	r.rows[row.ID]++
	if _, ok := r.maxRowAt[row.ID]; !ok {
		r.maxRowAt[row.ID] = now
	}
	r.total++
	r.lastAt = now
	r.times = append(r.times, now)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	return nil
}

func (r *memRecorder) distinctRows() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.rows)
}

// firstAtLeast returns when a row with id >= min was first delivered.
func (r *memRecorder) firstAtLeast(minID int64) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var best time.Time
	for id, at := range r.maxRowAt {
		if id >= minID && (best.IsZero() || at.Before(best)) {
			best = at
		}
	}
	return best, !best.IsZero()
}

// firstAfter returns the first delivery after t.
func (r *memRecorder) firstAfter(t time.Time) (time.Time, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	i, _ := slices.BinarySearchFunc(r.times, t, func(a, b time.Time) int { return a.Compare(b) })
	for ; i < len(r.times); i++ {
		if r.times[i].After(t) {
			return r.times[i], true
		}
	}
	return time.Time{}, false
}

// wait waits until pred holds on the recorder, or timeout.
func (r *memRecorder) wait(timeout time.Duration, pred func() bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ch := r.changed
		r.mu.Unlock()
		if pred() {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return pred()
		}
	}
}

func (r *memRecorder) tally(written []int64) (delivered, duplicates int, missing []int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, n := range r.count {
		duplicates += n - 1
	}
	for _, id := range written {
		if r.rows[id] > 0 {
			delivered++
		} else {
			missing = append(missing, id)
		}
	}
	return delivered, duplicates, missing
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// bufLogger logs at debug level into a buffer; the buffer is printed when
// the test fails.
func bufLogger(t testing.TB) (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			s := buf.String()
			if len(s) > 8000 {
				s = "...\n" + s[len(s)-8000:]
			}
			t.Logf("---- worker log ----\n%s", s)
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// serving is a worker serving in the background.
type serving struct {
	w    *pgcdc.Worker
	errc chan error
	err  error
	done bool
}

func serve(t testing.TB, w *pgcdc.Worker) *serving {
	t.Helper()
	s := &serving{w: w, errc: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { s.errc <- w.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, c := ctxT(30 * time.Second)
		defer c()
		_ = w.Shutdown(sctx)
		cancel()
		s.wait(time.Minute)
	})
	return s
}

// wait waits for Serve to return, reporting whether it did within timeout.
func (s *serving) wait(timeout time.Duration) bool {
	if s.done {
		return true
	}
	select {
	case s.err = <-s.errc:
		s.done = true
		return true
	case <-time.After(timeout):
		return false
	}
}

// stop shuts the worker down and checks that Serve returned nil.
func (s *serving) stop(t testing.TB) {
	t.Helper()
	ctx, cancel := ctxT(30 * time.Second)
	defer cancel()
	if err := s.w.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if !s.wait(time.Minute) {
		t.Fatal("Serve did not return after Shutdown")
	}
	if s.err != nil {
		t.Errorf("Serve returned %v after Shutdown", s.err)
	}
}

// async is a function running in the background.
type async struct {
	done chan struct{}
	err  error
}

func goAsync(fn func() error) *async {
	a := &async{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.err = fn()
	}()
	return a
}

// result reports the function's error once it has returned.
func (a *async) result() (error, bool) {
	select {
	case <-a.done:
		return a.err, true
	default:
		return nil, false
	}
}

// wait waits for the function to return.
func (a *async) wait(timeout time.Duration) error {
	select {
	case <-a.done:
		return a.err
	case <-time.After(timeout):
		return fmt.Errorf("still running after %s", timeout)
	}
}

// ownCluster starts a throwaway cluster for a test that stops, restarts or
// reconfigures the server; it is removed at cleanup.
func ownCluster(t testing.TB, settings map[string]string) *pgtest.Cluster {
	t.Helper()
	ctx, cancel := ctxT(2 * time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if errors.Is(err, pgtest.ErrNoBinaries) {
		t.Skipf("needs PostgreSQL server binaries to run its own cluster: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log := c.Log()
			if len(log) > 4000 {
				log = log[len(log)-4000:]
			}
			t.Logf("---- server log ----\n%s", log)
		}
		c.Close()
	})
	return c
}

func createDatabase(t testing.TB, c *pgtest.Cluster, prefix string) string {
	t.Helper()
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	name, err := c.CreateDatabase(ctx, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return c.DSN(name)
}

// rowWriter inserts rows with increasing ids into a table (id bigint
// PRIMARY KEY, ...) in transactions of 1..batch rows, reconnecting and
// retrying the same ids (ON CONFLICT DO NOTHING) after errors, until
// stopped. Commits are synchronous, so an acknowledged row survives a
// server crash.
type rowWriter struct {
	dsn, table string
	batch      int
	pause      time.Duration
	rng        *rand.Rand
	next       atomic.Int64 // the next id to write
	errors     atomic.Int64
	stopc      chan struct{}
	done       chan struct{}
	lastErr    atomic.Pointer[string]
}

func startWriter(dsn, table string, batch int, pause time.Duration, seed uint64) *rowWriter {
	w := &rowWriter{dsn: dsn, table: table, batch: max(batch, 1), pause: pause,
		rng: rand.New(rand.NewPCG(seed, 1)), stopc: make(chan struct{}), done: make(chan struct{})}
	w.next.Store(1)
	go w.run()
	return w
}

func (w *rowWriter) stopped() bool {
	select {
	case <-w.stopc:
		return true
	default:
		return false
	}
}

func (w *rowWriter) run() {
	defer close(w.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	ins := `INSERT INTO ` + pgx.Identifier{w.table}.Sanitize() + ` (id) SELECT g FROM generate_series($1::bigint, $2::bigint) g ON CONFLICT DO NOTHING`
	n := 1
	for !w.stopped() {
		if conn == nil {
			ctx, cancel := ctxT(5 * time.Second)
			c, err := pgx.Connect(ctx, w.dsn)
			if err == nil {
				_, err = c.Exec(ctx, `SET synchronous_commit = on`)
			}
			cancel()
			if err != nil {
				w.errors.Add(1)
				w.setErr(err)
				if c != nil {
					c.Close(context.Background())
				}
				time.Sleep(20 * time.Millisecond) // the server is down: try again soon
				continue
			}
			conn = c
		}
		from := w.next.Load()
		ctx, cancel := ctxT(10 * time.Second)
		_, err := conn.Exec(ctx, ins, from, from+int64(n)-1)
		cancel()
		if err != nil {
			w.errors.Add(1)
			w.setErr(err)
			conn.Close(context.Background())
			conn = nil
			continue // retry the same ids
		}
		w.next.Store(from + int64(n))
		n = 1 + w.rng.IntN(w.batch)
		if w.pause > 0 {
			time.Sleep(w.pause)
		}
	}
}

func (w *rowWriter) setErr(err error) {
	s := err.Error()
	w.lastErr.Store(&s)
}

// lastError is the last error the writer met ("" if none).
func (w *rowWriter) lastError() string {
	if p := w.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// stop stops the writer and waits for it.
func (w *rowWriter) stop() {
	if !w.stopped() {
		close(w.stopc)
	}
	<-w.done
}

// slogDebug logs everything, at debug level, into w.
func slogDebug(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const sigterm = syscall.SIGTERM
