package faulttest

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/internal/trigger"
)

// snapProgress is the snapshot's row in pgcdc.snapshots.
type snapProgress struct {
	lastKey  []string
	rowsDone int64
	done     bool
	exists   bool
}

func (p snapProgress) String() string {
	return fmt.Sprintf("last_key=%v rows_done=%d done=%v", p.lastKey, p.rowsDone, p.done)
}

// readSnapProgress reads the progress of the table snap's snapshot by the
// worker type wt (in the worker type's pgcdc schema).
func readSnapProgress(ctx context.Context, p *pgxpool.Pool, wt string) (snapProgress, error) {
	var sp snapProgress
	state := pgident.Qualified(trigger.WorkerTypeSchema(wt), "snapshots")
	var exists bool
	if err := p.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, state).Scan(&exists); err != nil || !exists {
		return sp, err
	}
	err := p.QueryRow(ctx, `SELECT last_key, rows_done, done FROM `+state+` WHERE slot = $1 AND table_name = 'snap'`, slotName(wt)).
		Scan(&sp.lastKey, &sp.rowsDone, &sp.done)
	if errors.Is(err, pgx.ErrNoRows) {
		return sp, nil
	}
	sp.exists = err == nil
	return sp, err
}

// mixWriter writes inserts, updates and deletes across a table's key range
// at a fixed rate (statements per second), on one connection.
type mixWriter struct {
	stmts  atomic.Int64 // statements committed
	errs   atomic.Int64 // deadlocks retried
	nextID *atomic.Int64
}

func (w *mixWriter) run(ctx context.Context, dsn string, keys int64, rate int, seed uint64) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	r := rand.New(rand.NewPCG(seed, 7))
	start := time.Now()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		target := int64(time.Since(start).Seconds() * float64(rate))
		for w.stmts.Load() < target {
			id := r.Int64N(keys) + 1
			var sql string
			var args []any
			switch n := r.IntN(100); {
			case n < 10:
				sql, args = `DELETE FROM snap WHERE id = $1`, []any{id}
			case n < 20:
				sql, args = `INSERT INTO snap VALUES ($1, 1, 'new')`, []any{w.nextID.Add(1)}
			case n < 30: // brings deleted rows back
				sql, args = `INSERT INTO snap VALUES ($1, 2, 'back') ON CONFLICT (id) DO UPDATE SET v = snap.v + 1, note = 'again'`, []any{id}
			case n < 35: // several rows in one transaction
				ids := []int64{id, r.Int64N(keys) + 1, r.Int64N(keys) + 1, r.Int64N(keys) + 1, r.Int64N(keys) + 1}
				sql, args = `UPDATE snap SET v = v + 10, note = 'multi' WHERE id = ANY($1)`, []any{ids}
			default:
				sql, args = `UPDATE snap SET v = v + 1, note = 'u' || v WHERE id = $1`, []any{id}
			}
			if _, err := conn.Exec(ctx, sql, args...); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "40P01" { // two writers' multi-row updates
					w.errs.Add(1)
					continue
				}
				return fmt.Errorf("writer: %s: %w", sql, err)
			}
			w.stmts.Add(1)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// snapKill is one kill of the consumer during the snapshot.
type snapKill struct {
	run     int
	before  snapProgress // the progress that triggered the kill
	resume  snapProgress // the progress after the kill: where the next run resumes
	at      time.Duration
	resumed time.Duration // kill to the next run's first record
}

// TestSnapshotKill kills the consumer process (SIGKILL) at random points of
// an initial snapshot (logical mode, pgcdc.WithSnapshot(SnapshotInitial),
// default chunk size) while about 1 000 statements per second insert,
// update and delete rows across the key range, and starts it again each
// time. Once the snapshot is done, the writes stopped and the slot caught
// up, every recorded event is applied in handler order to a map (key → row
// JSON; DELETE removes, INSERT, UPDATE and READ set it): the map must equal
// the table, compared by a checksum over row_to_json of every row. Each run
// after a kill must resume the snapshot after the last key recorded in
// pgcdc.snapshots, not from the first row.
//
// CI size: 50 000 rows, 2 kills; PGCDC_FAULT_FULL=1: 1 000 000 rows, 5 kills.
func TestSnapshotKill(t *testing.T) {
	rows, kills := 50_000, 2
	doneTimeout := 3 * time.Minute
	if suiteSizes().full {
		rows, kills = 1_000_000, 5
		doneTimeout = 40 * time.Minute
	}
	const writeRate = 1000 // statements per second, over two connections
	rng := newRand(t)
	dsn := pgtest.NewDatabase(t)
	recDSN := newRecordDB(t)
	execSQL(t, dsn, fmt.Sprintf(`CREATE TABLE snap (id bigint PRIMARY KEY, v int NOT NULL, note text);
		INSERT INTO snap SELECT i, 0, md5(i::text) FROM generate_series(1, %d) i; ANALYZE snap`, rows))
	src, rec := newPool(t, dsn), newPool(t, recDSN)
	bin := buildConsumer(t)
	const wt = "ft_snap"
	slot := slotName(wt)

	// The writes run during the whole snapshot, from before the consumer's
	// slot exists until the snapshot is done.
	var nextID atomic.Int64
	nextID.Store(int64(rows))
	writers := []*mixWriter{{nextID: &nextID}, {nextID: &nextID}}
	wctx, stopWrites := context.WithCancel(context.Background())
	defer stopWrites()
	var wg sync.WaitGroup
	werrs := make([]error, len(writers))
	for i, w := range writers {
		wg.Add(1)
		seed := rng.Uint64()
		go func() {
			defer wg.Done()
			werrs[i] = w.run(wctx, dsn, int64(rows), writeRate/len(writers), seed)
		}()
	}
	writes := func() (n int64) {
		for _, w := range writers {
			n += w.stmts.Load()
		}
		return n
	}
	writeStart := time.Now()

	run := 0
	var cur *proc
	startRun := func() {
		run++
		cur = startConsumer(t, bin, fmt.Sprintf("snap%02d", run), "-dsn", dsn, "-record-dsn", recDSN, "-table", "snap",
			"-worker-type", wt, "-run", strconv.Itoa(run), "-instance", "solo", "-goroutines", "8",
			"-jitter", "200us", "-snapshot", "-record-rows", "-min-reconnect", "50ms", "-max-reconnect", "1s")
	}
	start := time.Now()
	startRun()

	// Kill points: a random rows_done in each of `kills` equal parts of
	// 5 %..85 % of the table, and always past the point the run resumed at.
	points := make([]int64, kills)
	for i := range points {
		lo, hi := int64(rows)*(5+80*int64(i)/int64(kills))/100, int64(rows)*(5+80*int64(i+1)/int64(kills))/100
		points[i] = lo + rng.Int64N(hi-lo)
	}
	t.Logf("kill points (rows_done in the progress table): %v", points)
	var killed []snapKill
	var resumed snapProgress
	for i, pt := range points {
		target := max(pt, resumed.rowsDone+1)
		var seen snapProgress
		waitUntil(t, doneTimeout, 10*time.Millisecond, fmt.Sprintf("kill %d: rows_done >= %d (run %d)", i+1, target, run), func(ctx context.Context) (bool, error) {
			if cur.exited() {
				t.Fatalf("consumer run %d exited: %v\n%s", run, cur.err, cur.tail(3000))
			}
			for j, err := range werrs {
				if err != nil {
					t.Fatalf("writer %d: %v", j, err)
				}
			}
			p, err := readSnapProgress(ctx, src, wt)
			if err != nil {
				return false, err
			}
			if p.done {
				t.Fatalf("the snapshot finished (%s) before kill %d at rows_done >= %d: the kill points are too late for this machine", p, i+1, target)
			}
			seen = p
			return p.rowsDone >= target, nil
		})
		time.Sleep(time.Duration(rng.Int64N(int64(300 * time.Millisecond)))) // a random instant of the next chunks
		cur.kill()
		k := snapKill{run: run, before: seen, at: time.Since(start)}
		waitSlotActive(t, src, slot, false)
		ctx, cancel := ctxT(time.Minute)
		p, err := readSnapProgress(ctx, src, wt)
		cancel()
		if err != nil || !p.exists {
			t.Fatalf("progress after kill %d: %+v %v", i+1, p, err)
		}
		k.resume, resumed = p, p
		killed = append(killed, k)
		t.Logf("kill %d: run %d killed %s in (progress seen %s); resumes after %s", i+1, run, k.at.Round(time.Millisecond), seen, p)
		lastKill := time.Now()
		startRun()
		waitUntil(t, time.Minute, 10*time.Millisecond, fmt.Sprintf("run %d records", run), func(ctx context.Context) (bool, error) {
			var n int64
			err := rec.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM seen WHERE run = $1 LIMIT 1) s`, run).Scan(&n)
			return n > 0, err
		})
		killed[len(killed)-1].resumed = resumeTime(t, rec, run, lastKill)
	}

	var final snapProgress
	waitUntil(t, doneTimeout, 20*time.Millisecond, "snapshot done", func(ctx context.Context) (bool, error) {
		if cur.exited() {
			t.Fatalf("consumer run %d exited: %v\n%s", run, cur.err, cur.tail(3000))
		}
		p, err := readSnapProgress(ctx, src, wt)
		final = p
		return p.done, err
	})
	finish := time.Since(start)
	stopWrites()
	wg.Wait()
	for j, err := range werrs {
		if err != nil {
			t.Fatalf("writer %d: %v", j, err)
		}
	}
	nWrites, writeTime := writes(), time.Since(writeStart)
	endLSN := currentLSN(t, src)
	waitSlotConfirmed(t, src, slot, endLSN, 5*time.Minute)
	cur.term(t, 30*time.Second)

	// Apply every recorded event in handler order (a key's events are
	// handled one after the other, each recorded before its handler
	// returned, so seen.id orders them).
	ctx, cancel := ctxT(10 * time.Minute)
	defer cancel()
	mirror := map[int64]string{}
	type evInfo struct {
		count  int
		action string
		data   *string
	}
	events := map[string]*evInfo{}
	var deliveries, reads, duplicates int
	minRead := map[int]int64{} // run → lowest key it delivered as READ
	readRows := map[int64]int{}
	rs, err := rec.Query(ctx, `SELECT event_id, action, row_id, run, data FROM seen ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	var eventID, action string
	var rowID int64
	var runNo int
	var data *string
	_, err = pgx.ForEachRow(rs, []any{&eventID, &action, &rowID, &runNo, &data}, func() error {
		deliveries++
		e := events[eventID]
		if e == nil {
			e = &evInfo{action: action, data: data}
			events[eventID] = e
		} else {
			duplicates++
			// A READ redelivered after a kill is read again and may hold a
			// newer row; a change is the same each time.
			if action != "READ" && (e.action != action || !equalPtr(e.data, data)) {
				t.Errorf("event %s delivered as %s %v and again as %s %v: a redelivery changed the event", eventID, e.action, strPtr(e.data), action, strPtr(data))
			}
		}
		e.count++
		switch action {
		case "DELETE":
			delete(mirror, rowID)
		case "INSERT", "UPDATE", "READ":
			if data == nil {
				return fmt.Errorf("event %s (%s of row %d) recorded without its row", eventID, action, rowID)
			}
			mirror[rowID] = *data
		default:
			return fmt.Errorf("event %s: unexpected action %q", eventID, action)
		}
		if action == "READ" {
			reads++
			readRows[rowID]++
			if m, ok := minRead[runNo]; !ok || rowID < m {
				minRead[runNo] = rowID
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The table's checksum, and the mirror's over the same text.
	var tableRows int64
	var tableSum string
	if err := src.QueryRow(ctx, `SELECT count(*), md5(coalesce(string_agg(row_to_json(t)::text, E'\n' ORDER BY id), '')) FROM snap t`).Scan(&tableRows, &tableSum); err != nil {
		t.Fatal(err)
	}
	keys := make([]int64, 0, len(mirror))
	for k := range mirror {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	h := md5.New()
	for i, k := range keys {
		if i > 0 {
			h.Write([]byte{'\n'})
		}
		h.Write([]byte(mirror[k]))
	}
	mirrorSum := hex.EncodeToString(h.Sum(nil))
	equalRows := int(tableRows)
	if mirrorSum != tableSum || int64(len(mirror)) != tableRows {
		n, first := firstDiff(t, src, mirror)
		equalRows -= n
		t.Errorf("MIRROR DIFFERS: the events applied in handler order give %d rows (md5 %s), the table has %d (md5 %s); %d keys differ, the first: %s",
			len(mirror), mirrorSum, tableRows, tableSum, n, first)
	}

	// Each run after a kill resumed after its recorded last key.
	for i, k := range killed {
		if len(k.resume.lastKey) != 1 {
			t.Errorf("kill %d: progress %s has no last key, although rows_done was %d before the kill", i+1, k.resume, k.before.rowsDone)
			continue
		}
		last, err := strconv.ParseInt(k.resume.lastKey[0], 10, 64)
		if err != nil {
			t.Fatalf("kill %d: last key %v: %v", i+1, k.resume.lastKey, err)
		}
		if m, ok := minRead[k.run+1]; ok && m <= last {
			t.Errorf("kill %d: run %d delivered row %d as READ, although the run it resumed had recorded progress up to key %d: the snapshot did not resume from its progress", i+1, k.run+1, m, last)
		}
	}
	if len(readRows) < rows/2 {
		t.Errorf("only %d distinct rows delivered as READ for a table of %d rows", len(readRows), rows)
	}

	var again int
	for _, n := range readRows {
		if n > 1 {
			again++
		}
	}
	var maxResume time.Duration
	for i, k := range killed {
		maxResume = max(maxResume, k.resumed)
		t.Logf("kill %d: run %d at %s, progress seen %s; resume point %s; next run's first record %s after the kill",
			i+1, k.run, k.at.Round(time.Millisecond), k.before, k.resume, k.resumed.Round(time.Millisecond))
	}
	t.Logf("SNAPSHOT rows=%d kills=%d finish=%s final_progress={%s} writes=%d (%.0f/s, %d deadlocks retried) table_rows=%d deliveries=%d reads=%d read_rows=%d rows_read_again=%d duplicates=%d",
		rows, len(killed), finish.Round(time.Millisecond), final, nWrites, float64(nWrites)/writeTime.Seconds(), writers[0].errs.Load()+writers[1].errs.Load(),
		tableRows, deliveries, reads, len(readRows), again, duplicates)
	figures(t, "snapshot-kill9", int(tableRows), equalRows, duplicates, maxResume)
}

// firstDiff counts the keys where the mirror and the table differ and
// describes the first one (in key order).
func firstDiff(t *testing.T, src *pgxpool.Pool, mirror map[int64]string) (int, string) {
	t.Helper()
	ctx, cancel := ctxT(5 * time.Minute)
	defer cancel()
	rows, err := src.Query(ctx, `SELECT id, row_to_json(t)::text FROM snap t`)
	if err != nil {
		return 0, err.Error()
	}
	table := map[int64]string{}
	var id int64
	var js string
	if _, err := pgx.ForEachRow(rows, []any{&id, &js}, func() error { table[id] = js; return nil }); err != nil {
		return 0, err.Error()
	}
	var diff []int64
	for k, v := range table {
		if m, ok := mirror[k]; !ok || m != v {
			diff = append(diff, k)
		}
	}
	for k := range mirror {
		if _, ok := table[k]; !ok {
			diff = append(diff, k)
		}
	}
	if len(diff) == 0 {
		return 0, "none (the checksums differ on equal rows?)"
	}
	slices.Sort(diff)
	k := diff[0]
	m, inMirror := mirror[k]
	v, inTable := table[k]
	var b strings.Builder
	fmt.Fprintf(&b, "id %d: ", k)
	if inMirror {
		fmt.Fprintf(&b, "mirror %s, ", m)
	} else {
		b.WriteString("not in the mirror, ")
	}
	if inTable {
		fmt.Fprintf(&b, "table %s", v)
	} else {
		b.WriteString("not in the table")
	}
	return len(diff), b.String()
}

func equalPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func strPtr(s *string) string {
	if s == nil {
		return "NULL"
	}
	return *s
}
