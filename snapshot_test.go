package pgcdc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// mirror applies events in handler order to a map, as a consumer building
// a copy would: the snapshot's rows and the changes alike.
type mirror struct {
	mu    sync.Mutex
	rows  map[string]string // id → row JSON
	reads int
	cond  chan struct{}
}

func newMirror() *mirror { return &mirror{rows: map[string]string{}, cond: make(chan struct{})} }

func (m *mirror) handle(ec *pgcdc.EventContext) error {
	ev := ec.Event()
	row := ev.Data.New
	if ev.Action == pgcdc.ActionDelete {
		row = ev.Data.Old
	}
	var k struct{ ID int64 }
	if err := json.Unmarshal(row, &k); err != nil {
		return fmt.Errorf("event without id: %s", ec.Message())
	}
	id := strconv.FormatInt(k.ID, 10)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch ev.Action {
	case pgcdc.ActionDelete:
		delete(m.rows, id)
	case pgcdc.ActionRead:
		m.reads++
		m.rows[id] = string(ev.Data.New)
	default:
		m.rows[id] = string(ev.Data.New)
	}
	close(m.cond)
	m.cond = make(chan struct{})
	return nil
}

// equal waits until the mirror holds exactly the table's rows.
func (m *mirror) waitEqual(t *testing.T, dsn string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		want := map[string]string{}
		for _, line := range queryStrings(t, dsn, `SELECT id::text || ' ' || row_to_json(s)::text FROM snap s`) {
			var id, js string
			fmt.Sscan(line, &id)
			js = line[len(id)+1:]
			want[id] = js
		}
		m.mu.Lock()
		diff, first := 0, ""
		for id, js := range want {
			if m.rows[id] != js {
				diff++
				if first == "" {
					first = fmt.Sprintf("id %s: mirror %q, table %q", id, m.rows[id], js)
				}
			}
		}
		for id := range m.rows {
			if _, ok := want[id]; !ok {
				diff++
				if first == "" {
					first = fmt.Sprintf("id %s in the mirror only", id)
				}
			}
		}
		ch := m.cond
		m.mu.Unlock()
		if diff == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror differs from the table in %d rows (first: %s)", diff, first)
		}
		select {
		case <-ch:
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// A snapshot taken while the table is written, and cut by a restart in the
// middle, leaves a mirror equal to the table: no gap, no stale row.
func TestSnapshotUnderWritesAndRestart(t *testing.T) {
	rows := 20000
	if n, _ := strconv.Atoi(os.Getenv("PGCDC_SNAPSHOT_ROWS")); n > 0 {
		rows = n
	}
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, fmt.Sprintf(`CREATE TABLE snap (id bigint PRIMARY KEY, v int, note text);
		INSERT INTO snap SELECT i, 0, md5(i::text) FROM generate_series(1, %d) i`, rows))
	m := newMirror()
	mk := func() *pgcdc.Worker {
		w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(4))
		w.Handle("snap", m.handle, pgcdc.WithSnapshot(pgcdc.SnapshotInitial))
		return w
	}

	// Writers: updates, deletes and inserts across the key range, all along.
	ctx, stopWriting := context.WithCancel(context.Background())
	var writers sync.WaitGroup
	writers.Add(1)
	go func() {
		defer writers.Done()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		r := rand.New(rand.NewPCG(1, 2))
		next := int64(rows)
		for ctx.Err() == nil {
			id := r.Int64N(int64(rows)) + 1
			var sql string
			switch r.IntN(10) {
			case 0:
				sql = fmt.Sprintf(`DELETE FROM snap WHERE id = %d`, id)
			case 1:
				next++
				sql = fmt.Sprintf(`INSERT INTO snap VALUES (%d, 1, 'new')`, next)
			case 2:
				sql = fmt.Sprintf(`INSERT INTO snap VALUES (%d, 2, 'back') ON CONFLICT (id) DO UPDATE SET v = snap.v + 1`, id)
			default:
				sql = fmt.Sprintf(`UPDATE snap SET v = v + 1, note = 'u' WHERE id = %d`, id)
			}
			if _, err := conn.Exec(ctx, sql); err != nil && ctx.Err() == nil {
				t.Errorf("writer: %v", err)
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	defer func() { stopWriting(); writers.Wait() }()

	w1 := mk()
	r1 := serve(t, w1)
	waitQuery(t, dsn, `SELECT to_regclass('pgcdc.snapshots') IS NOT NULL`)
	waitQuery(t, dsn, `SELECT coalesce((SELECT rows_done > 0 FROM pgcdc.snapshots), false)`)
	r1.stop(t) // mid-snapshot
	done := queryStrings(t, dsn, `SELECT rows_done::text || ' ' || done::text FROM pgcdc.snapshots`)[0]
	t.Logf("stopped with progress %s", done)

	w2 := mk()
	serve(t, w2)
	waitQuery(t, dsn, `SELECT coalesce((SELECT done FROM pgcdc.snapshots), false)`)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := w2.Status(context.Background())
		if len(st[0].Snapshots) == 1 && st[0].Snapshots[0].Done && st[0].Snapshots[0].Table == "public.snap" && st[0].Snapshots[0].RowsDone > int64(rows)/2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Status snapshots: %+v", st[0].Snapshots)
		}
	}
	stopWriting()
	writers.Wait()
	m.waitEqual(t, dsn)
	m.mu.Lock()
	reads := m.reads
	m.mu.Unlock()
	if reads < rows/2 || reads > 2*rows {
		t.Fatalf("%d READ events for %d rows", reads, rows)
	}
	t.Logf("%d rows, %d READ events", rows, reads)
}

// Backfill re-reads a table on demand while the stream runs; snapshots are
// refused for tables without a primary key and in trigger mode.
func TestBackfillOnDemand(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE bf (id int PRIMARY KEY, v text); INSERT INTO bf SELECT i, 'x' FROM generate_series(1, 50) i;
		CREATE TABLE nopk (v int); ALTER TABLE nopk REPLICA IDENTITY FULL`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle("bf", rec.handle)
	w.Handle("nopk", rec.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.Backfill(ctx, "bf", pgcdc.BackfillWhere("id <= 10"), pgcdc.BackfillChunkSize(3)); err != nil {
		t.Fatal(err)
	}
	evs := rec.waitCount(t, 10)
	if len(evs) != 10 || evs[0].Action != pgcdc.ActionRead || string(evs[0].Data.New) != `{"id":1,"v":"x"}` || string(evs[0].Data.Old) != "null" {
		t.Fatalf("backfill events: %d, first %+v", len(evs), evs[0])
	}
	if err := w.Backfill(ctx, "nopk"); err == nil {
		t.Fatal("backfill of a table without a primary key was accepted")
	}

	wt := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger))
	wt.Handle("bf", rec.handle, pgcdc.WithSnapshot(pgcdc.SnapshotInitial))
	if err := wt.Serve(ctx); err == nil {
		t.Fatal("a snapshot in trigger mode was accepted")
	}
}

// BenchmarkBackfill compares a backfill's rate (rows/s to a no-op handler)
// with COPY (SELECT row_to_json(t) FROM t) TO STDOUT of the same table in
// the same run. The table has PGCDC_BENCH_ROWS rows (default 200 000):
//
//	PGCDC_BENCH_ROWS=5000000 go test -run '^$' -bench Backfill -benchtime 1x -timeout 60m .
func BenchmarkBackfill(b *testing.B) {
	rows := 200000
	if n, _ := strconv.Atoi(os.Getenv("PGCDC_BENCH_ROWS")); n > 0 {
		rows = n
	}
	dsn := pgtest.NewDatabase(b)
	pgtest.Exec(b, dsn, fmt.Sprintf(`CREATE TABLE big (id bigint PRIMARY KEY, v int, note text, at timestamptz);
		INSERT INTO big SELECT i, i %% 1000, md5(i::text), '2024-01-01'::timestamptz + i * interval '1 second' FROM generate_series(1, %d) i;
		ANALYZE big`, rows))
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	var handled atomic.Int64
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(4))
	if err != nil {
		b.Fatal(err)
	}
	w.Handle("big", func(*pgcdc.EventContext) error { handled.Add(1); return nil })
	sctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(sctx) }()
	defer func() { cancel(); <-errc }()
	for active := false; !active; time.Sleep(20 * time.Millisecond) {
		if err := conn.QueryRow(ctx, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = 'pgcdc_postgres_listener_default' AND database = current_database()), false)`).Scan(&active); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		start := time.Now()
		if _, err := conn.PgConn().CopyTo(ctx, discard{}, `COPY (SELECT row_to_json(t) FROM big t) TO STDOUT`); err != nil {
			b.Fatal(err)
		}
		copyRate := float64(rows) / time.Since(start).Seconds()
		start = time.Now()
		chunk, _ := strconv.Atoi(os.Getenv("PGCDC_BENCH_CHUNK"))
		if err := w.Backfill(ctx, "big", pgcdc.BackfillChunkSize(chunk)); err != nil {
			b.Fatal(err)
		}
		rate := float64(rows) / time.Since(start).Seconds()
		b.ReportMetric(rate, "rows/s")
		b.ReportMetric(copyRate, "copy_rows/s")
		b.ReportMetric(rate/copyRate, "ratio")
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
