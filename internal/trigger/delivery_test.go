package trigger

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/deadletter"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestOrderAndSharingTwoInstances: two instances with 4 lanes each and
// small batches consume concurrent updates of 20 keys. Every event is
// handled exactly once, never while another event of its key is being
// handled, and the values of each key arrive in commit order.
func TestOrderAndSharingTwoInstances(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)`)
	const keys, writers, updates = 20, 4, 600 // updates per writer
	var mu sync.Mutex
	seen := map[string]int{}  // event_id -> times handled
	busy := map[int]string{}  // key -> event being handled
	values := map[int][]int{} // key -> n in handling order
	perInstance := [2]atomic.Int64{}
	var violations []string
	handler := func(inst int) dispatch.Handler {
		return func(ctx context.Context, c *change.Change) error {
			var p payload
			if err := jsonUnmarshal(c.Message, &p); err != nil {
				return err
			}
			var row struct{ ID, N int }
			if err := jsonUnmarshal(p.Data.New, &row); err != nil {
				return err
			}
			mu.Lock()
			if other, ok := busy[row.ID]; ok {
				violations = append(violations, fmt.Sprintf("key %d: %s handled while %s is", row.ID, p.EventID, other))
			}
			busy[row.ID] = p.EventID
			mu.Unlock()
			time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
			mu.Lock()
			delete(busy, row.ID)
			seen[p.EventID]++
			values[row.ID] = append(values[row.ID], row.N)
			mu.Unlock()
			perInstance[inst].Add(1)
			return nil
		}
	}
	for i := range 2 {
		cfg := config(dsn, route("public", "counters", 4, handler(i)))
		cfg.BatchSize = 7
		cfg.PollInterval = 5 * time.Millisecond
		start(t, cfg)
	}
	conn := connect(t, dsn)
	waitUntil(t, 30*time.Second, "install", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcdc_capture'`) == 1
	})
	pgtest.Exec(t, dsn, fmt.Sprintf(`INSERT INTO counters SELECT i, 0 FROM generate_series(1, %d) i`, keys))
	p := pool(t, dsn)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range updates {
				if _, err := p.Exec(context.Background(), `UPDATE counters SET n = n + 1 WHERE id = $1`, 1+r.IntN(keys)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	total := keys + writers*updates
	waitUntil(t, 2*time.Minute, fmt.Sprintf("%d events", total), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen) >= total
	})
	mu.Lock()
	defer mu.Unlock()
	for _, v := range violations {
		t.Error(v)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("event %s handled %d times", id, n)
		}
	}
	for key, vs := range values {
		for i, v := range vs {
			if v != i {
				t.Fatalf("key %d: values in handling order %v, want 0, 1, 2, ...", key, vs)
			}
		}
	}
	t.Logf("%d events; instance 1 handled %d, instance 2 handled %d", total, perInstance[0].Load(), perInstance[1].Load())
	if perInstance[0].Load() == 0 || perInstance[1].Load() == 0 {
		t.Errorf("one instance did all the work")
	}
}

// TestHardCancelThenRestart: a consumer whose context is cancelled in the
// middle of a batch (handlers cancelled) releases its claims; a new
// instance delivers everything that was not handled, with the same event
// ids for redelivered events.
func TestHardCancelThenRestart(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	const rows = 300
	first := newRecorder()
	var handled atomic.Int64
	first.fn = func(ctx context.Context, p payload) error {
		if handled.Add(1) > 40 { // the rest block until cancelled
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	}
	attempted := map[string]string{} // row id -> event_id, every attempt
	var amu sync.Mutex
	record := func(p payload) {
		var row struct{ ID int }
		_ = jsonUnmarshal(p.Data.New, &row)
		amu.Lock()
		defer amu.Unlock()
		if prev, ok := attempted[fmt.Sprint(row.ID)]; ok && prev != p.EventID {
			t.Errorf("row %d delivered with event ids %s and %s", row.ID, prev, p.EventID)
		}
		attempted[fmt.Sprint(row.ID)] = p.EventID
	}
	h := func(rec *recorder) dispatch.Handler {
		return func(ctx context.Context, c *change.Change) error {
			var p payload
			if err := jsonUnmarshal(c.Message, &p); err == nil {
				record(p)
			}
			return rec.handle(ctx, c)
		}
	}
	cfg := config(dsn, route("public", "items", 4, h(first)))
	cfg.ClaimTimeout = 10 * time.Minute // redelivery must not wait for expiry
	cfg.BatchSize = 100
	ctx := context.Background()
	if err := Install(ctx, pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, fmt.Sprintf(`INSERT INTO items SELECT generate_series(1, %d)`, rows))
	r := start(t, cfg)
	// The 41st handler blocks: on the claiming goroutine (handlers that were
	// fast run there) or on its lane while others fill the other lanes.
	waitUntil(t, 30*time.Second, "blocked handlers", func() bool { return handled.Load() >= 41 })
	if err := r.kill(t); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel = %v, want context.Canceled", err)
	}
	done := len(first.snapshot())
	conn := connect(t, dsn)
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events WHERE claimed_by IS NOT NULL`); n != 0 {
		t.Errorf("%d claims left after cancel", n)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`); n != int64(rows-done) {
		t.Errorf("%d events left, want %d (handled: %d)", n, rows-done, done)
	}

	second := newRecorder()
	cfg.Tables = []dispatch.Table{route("public", "items", 4, h(second))}
	start(t, cfg)
	second.waitFor(t, time.Minute, "the rest", atLeast(rows-done))
	all := map[string]bool{}
	for _, e := range append(first.snapshot(), second.snapshot()...) {
		all[e.EventID] = true
	}
	if len(all) != rows {
		t.Errorf("%d distinct events delivered, want %d", len(all), rows)
	}
	amu.Lock()
	defer amu.Unlock()
	if len(attempted) != rows {
		t.Errorf("%d rows attempted, want %d", len(attempted), rows)
	}
}

// TestStopFinishesInFlight: after stop, the handler in flight finishes and
// its row is deleted, Run returns nil and the other claims are released.
func TestStopFinishesInFlight(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	rec.fn = func(ctx context.Context, p payload) error {
		once.Do(func() { close(entered) })
		<-release
		return nil
	}
	cfg := config(dsn, route("public", "items", 1, rec.handle))
	cfg.ClaimTimeout = 10 * time.Minute
	stopping := make(chan struct{})
	cfg.Logger = slog.New(&signalHandler{msg: "pgcdc: trigger source stopping", ch: stopping})
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 10)`)
	r := start(t, cfg)
	<-entered
	close(r.stop)
	// The handler may run on the claiming goroutine (a fast handler with an
	// idle lane) or on its lane: either way Run must wait for it.
	select {
	case <-stopping: // on its lane: the source stopped claiming and waits
	case err := <-r.done:
		t.Fatalf("Run returned (%v) while a handler was in flight", err)
	case <-time.After(200 * time.Millisecond): // on the claiming goroutine
	}
	close(release)
	if err := r.halt(t); err != nil {
		t.Fatalf("Run after stop = %v, want nil", err)
	}
	// The handler in flight finished. (The lane may start one queued event
	// in the instant between the log line and the dispatcher's stop.)
	handled := len(rec.snapshot())
	if handled < 1 || handled > 2 {
		t.Errorf("%d events handled after stop, want the one in flight", handled)
	}
	conn := connect(t, dsn)
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`); n != int64(10-handled) {
		t.Errorf("%d events left, want %d", n, 10-handled)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events WHERE claimed_by IS NOT NULL OR claimed_until IS NOT NULL`); n != 0 {
		t.Errorf("%d claims left after stop", n)
	}
}

// TestAbandonedClaimsAreReclaimed: rows claimed by an instance that died
// are delivered once its claims expire.
func TestAbandonedClaimsAreReclaimed(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	cfg := config(dsn, route("public", "items", 2, rec.handle))
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 20);
		UPDATE pgcdc.events SET claimed_by = 'dead', claimed_until = now() + interval '1 second' WHERE id % 2 = 0`)
	began := time.Now()
	start(t, cfg)
	rec.waitFor(t, time.Minute, "20 events", atLeast(20))
	if d := time.Since(began); d < 900*time.Millisecond {
		t.Errorf("claimed rows delivered after %s, before their claim expired", d)
	}
}

// TestDeadLetter: a handler that keeps failing is retried, then its event
// goes to the dead-letter table and its row is deleted; the others pass.
func TestDeadLetter(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	var attempts atomic.Int64
	rec.fn = func(ctx context.Context, p payload) error {
		if string(p.Data.New) == `{"id":3}` {
			attempts.Add(1)
			return errors.New("boom")
		}
		return nil
	}
	cfg := config(dsn, route("public", "items", 2, rec.handle))
	cfg.NewDeadLetter = func(ctx context.Context, pool *pgxpool.Pool) (dispatch.DeadLetter, error) {
		return deadletter.Open(ctx, pool, "public", "dead", "test")
	}
	start(t, cfg)
	conn := connect(t, dsn)
	waitUntil(t, 30*time.Second, "install", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcdc_capture'`) == 1
	})
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 5)`)
	rec.waitFor(t, 30*time.Second, "4 events", atLeast(4))
	waitUntil(t, 30*time.Second, "dead letter and empty event table", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM public.dead`) == 1 && queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`) == 0
	})
	var payloadText, errText string
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT payload::text, error, attempts FROM public.dead`).Scan(&payloadText, &errText, &n); err != nil {
		t.Fatal(err)
	}
	var p payload
	if err := jsonUnmarshal([]byte(payloadText), &p); err != nil || string(p.Data.New) != `{"id":3}` || len(p.EventID) != 32 {
		t.Errorf("dead letter payload %s (%v)", payloadText, err)
	}
	if n != 3 || attempts.Load() != 3 {
		t.Errorf("dead letter after %d attempts (handler ran %d times), want 3", n, attempts.Load())
	}
}

// TestTruncateAfterEarlierChanges: a TRUNCATE event (for a route that
// wants it) is handled after every earlier change of the table.
func TestTruncateAfterEarlierChanges(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	rec.fn = func(ctx context.Context, p payload) error {
		time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
		return nil
	}
	cfg := config(dsn, route("public", "items", 4, rec.handle))
	cfg.Tables[0].Route.Truncate = true
	cfg.BatchSize = 16
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 100); TRUNCATE items; INSERT INTO items SELECT generate_series(1, 10)`)
	start(t, cfg)
	evs := rec.waitFor(t, time.Minute, "111 events", atLeast(111))
	at := -1
	for i, e := range evs {
		if e.Action == "TRUNCATE" {
			at = i
			if string(e.Data.Old) != "null" || string(e.Data.New) != "null" || e.Table != "items" {
				t.Errorf("TRUNCATE event %s", rec.raw[i])
			}
		}
	}
	if at < 100 {
		t.Errorf("TRUNCATE handled at position %d, before earlier changes", at)
	}
}

// TestReconnectAfterConnectionLoss: the source's connections are killed
// while it consumes; it reports the failure, reconnects and delivers
// everything.
func TestReconnectAfterConnectionLoss(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	rec.fn = func(ctx context.Context, p payload) error {
		time.Sleep(200 * time.Microsecond)
		return nil
	}
	var failures atomic.Int64
	cfg := config(dsn, route("public", "items", 2, rec.handle))
	cfg.OnError = func(error) { failures.Add(1) }
	cfg.BatchSize = 20
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 2000)`)
	start(t, cfg)
	rec.waitFor(t, 30*time.Second, "some events", atLeast(100))
	conn := connect(t, dsn)
	if _, err := conn.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE application_name = 'pgcdc' AND datname = current_database()`); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "all delivered", func() bool {
		seen := map[string]bool{}
		for _, e := range rec.snapshot() {
			seen[e.EventID] = true
		}
		return len(seen) == 2000
	})
	if failures.Load() == 0 {
		t.Error("OnError was not called")
	}
	t.Logf("%d deliveries for 2000 events, %d connection failures", len(rec.snapshot()), failures.Load())
}

// TestClaimBoundedBySize: one claim takes at most about claimBytes of
// stored events, so a backlog of large rows does not fill memory; all of
// them are still delivered.
func TestClaimBoundedBySize(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE docs (id int PRIMARY KEY, body text)`)
	rec := newRecorder()
	cfg := config(dsn, route("public", "docs", 2, rec.handle))
	p := pool(t, dsn)
	ctx := context.Background()
	if err := Install(ctx, p, "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	// 20 rows of 1 MB of poorly compressible text (about 0.5 MB stored).
	pgtest.Exec(t, dsn, `ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;
		INSERT INTO docs SELECT i, (SELECT string_agg(md5(i::text || '/' || j), '') FROM generate_series(1, 32768) j) FROM generate_series(1, 20) i`)
	s := New(cfg)
	s.claimer = "probe"
	schemas, names := s.tableArrays()
	rows, err := p.Query(ctx, s.claimSQL(), schemas, names, 500, s.claimer, int64(60000), claimBytes, "UTF8")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	conn := connect(t, dsn)
	stored := queryInt(t, conn, `SELECT sum(pg_column_size(new)) FROM pgcdc.events WHERE claimed_by = 'probe'`)
	maxRow := queryInt(t, conn, `SELECT max(pg_column_size(new)) FROM pgcdc.events`)
	if n == 0 || n == 20 || stored > claimBytes+maxRow {
		t.Errorf("claimed %d of 20 events, %d bytes stored (bound %d)", n, stored, claimBytes)
	}
	t.Logf("one claim took %d events of %d bytes each", n, maxRow)
	pgtest.Exec(t, dsn, `UPDATE pgcdc.events SET claimed_by = NULL, claimed_until = NULL`)
	start(t, cfg)
	rec.waitFor(t, time.Minute, "20 events", atLeast(20))
}

// TestTruncateWaitsForHeldBackEvents: a TRUNCATE held back (an earlier
// event of its table is claimed by another instance) holds back every later
// event of its table too; before, the INSERT after it was claimed and
// handled ahead of it. Other tables are not held back.
func TestTruncateWaitsForHeldBackEvents(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE tr (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY)`)
	rec := newRecorder()
	cfg := config(dsn, route("public", "tr", 1, rec.handle), route("public", "other", 1, rec.handle))
	cfg.Tables[0].Route.Truncate = true
	p := pool(t, dsn)
	ctx := context.Background()
	if err := Install(ctx, p, "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	// 1: INSERT 1 (claimed by another instance), 2: UPDATE 1, 3: TRUNCATE,
	// 4: INSERT 3, 5: INSERT into other.
	pgtest.Exec(t, dsn, `INSERT INTO tr VALUES (1); UPDATE tr SET id = 1; TRUNCATE tr; INSERT INTO tr VALUES (3); INSERT INTO other VALUES (1);
		UPDATE pgcdc.events SET claimed_by = 'elsewhere', claimed_until = now() + interval '1 hour' WHERE id = 1`)
	s := New(cfg)
	s.claimer = "probe"
	schemas, names := s.tableArrays()
	rows, err := p.Query(ctx, s.claimSQL(), schemas, names, 500, s.claimer, int64(60000), claimBytes, "UTF8")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%v %v", vals[2], vals[3]))
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if !slices.Equal(got, []string{"other INSERT"}) {
		t.Errorf("claimed %q, want only the other table's INSERT", got)
	}
}
