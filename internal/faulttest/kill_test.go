package faulttest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// loadPhase is one part of the load: kind "single" commits each row alone,
// "multi" commits batch rows per transaction (one INSERT ... SELECT), "copy"
// writes all its rows with one COPY in one transaction (every row then shares
// the transaction's commit LSN).
type loadPhase struct {
	kind  string
	rows  int
	batch int
}

// mixedLoad splits n rows into single-row transactions, multi-row
// transactions and one COPY.
func mixedLoad(n int) []loadPhase {
	return []loadPhase{
		{kind: "single", rows: n * 10 / 100},
		{kind: "multi", rows: n * 20 / 100, batch: 50},
		{kind: "copy", rows: n * 40 / 100},
		{kind: "multi", rows: n * 15 / 100, batch: 200},
		{kind: "single", rows: n - n*85/100},
	}
}

// writeLoad writes the phases into table (id bigint PRIMARY KEY, kind text,
// pad text), ids 1..n in order.
func writeLoad(ctx context.Context, dsn, table string, phases []loadPhase) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	tbl := pgx.Identifier{table}.Sanitize()
	next := int64(1)
	for _, ph := range phases {
		switch ph.kind {
		case "single":
			for i := 0; i < ph.rows; i++ {
				if _, err := conn.Exec(ctx, `INSERT INTO `+tbl+` VALUES ($1::bigint, 'single', md5($1::bigint::text))`, next); err != nil {
					return err
				}
				next++
			}
		case "multi":
			for done := 0; done < ph.rows; {
				n := min(ph.batch, ph.rows-done)
				if _, err := conn.Exec(ctx, `INSERT INTO `+tbl+` SELECT g, 'multi', md5(g::text) FROM generate_series($1::bigint, $2::bigint) g`, next, next+int64(n)-1); err != nil {
					return err
				}
				next += int64(n)
				done += n
			}
		case "copy":
			rows := make([][]any, ph.rows)
			for i := range rows {
				rows[i] = []any{next, "copy", strconv.FormatInt(next, 16)}
				next++
			}
			if _, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "kind", "pad"}, pgx.CopyFromRows(rows)); err != nil {
				return err
			}
		}
	}
	return nil
}

// killSample is what the test saw at one kill.
type killSample struct {
	run       int    // the run that was killed
	confirmed uint64 // the slot's confirmed_flush_lsn once its walsender was gone
	resume    time.Duration
}

// TestKillConsumer kills the consumer process (SIGKILL) at random points of a
// load of single-row transactions, multi-row transactions and a COPY, starting
// a new one each time. Every written row must be recorded at least once, a
// redelivered event keeps its event_id, and the slot's confirmed position
// never passes what the handlers had durably recorded: once the killed
// consumer's walsender is gone, every change whose commit LSN is below the
// slot's confirmed_flush_lsn must have been recorded by that run or an
// earlier one.
func TestKillConsumer(t *testing.T) {
	sz := suiteSizes()
	rng := newRand(t)
	dsn := pgtest.NewDatabase(t)
	recDSN := newRecordDB(t)
	execSQL(t, dsn, `CREATE TABLE rows (id bigint PRIMARY KEY, kind text NOT NULL, pad text)`)
	src, rec := newPool(t, dsn), newPool(t, recDSN)
	bin := buildConsumer(t)
	const wt = "ft_kill"
	slot := slotName(wt)

	run := 0
	var cur *proc
	startRun := func() {
		run++
		cur = startConsumer(t, bin, fmt.Sprintf("run%02d", run), "-dsn", dsn, "-record-dsn", recDSN, "-table", "rows",
			"-worker-type", wt, "-run", strconv.Itoa(run), "-instance", "solo", "-goroutines", "8",
			"-jitter", "500us", "-fail-rate", "0.002", "-min-reconnect", "50ms", "-max-reconnect", "1s")
	}
	startRun()
	// Rows written before the slot exists are not captured: start the load
	// only once the first consumer streams.
	waitSlotActive(t, src, slot, true)

	loadCtx, stopLoad := context.WithCancel(context.Background())
	defer stopLoad()
	load := goAsync(func() error { return writeLoad(loadCtx, dsn, "rows", mixedLoad(sz.rows)) })
	loadStart := time.Now()

	// Kill points: positions in the load (the highest row id the current run
	// has recorded), at random.
	points := make([]int64, sz.kills)
	for i := range points {
		points[i] = int64(sz.rows/50) + rng.Int64N(int64(sz.rows*95/100-sz.rows/50))
	}
	slices.Sort(points)
	t.Logf("kill points (row positions): %v", points)

	// One more kill in the middle of the COPY transaction: once the current
	// run has recorded half of its rows (they all share one commit LSN).
	copyFrom, copyTo := int64(0), int64(0)
	for _, ph := range mixedLoad(sz.rows) {
		if ph.kind == "copy" {
			copyTo = copyFrom + int64(ph.rows)
			break
		}
		copyFrom += int64(ph.rows)
	}
	copyFrom++
	midCopyDone := false

	var samples []killSample
	var lastKill time.Time
	for pi := 0; pi < len(points) || !midCopyDone; {
		// Wait for the next point or the middle of the COPY, and for the
		// current run to have recorded something (so each kill hits a
		// streaming consumer).
		why := ""
		waitUntil(t, 3*time.Minute, 10*time.Millisecond, fmt.Sprintf("kill point %d/%d (mid-COPY done: %v) for run %d", pi, len(points), midCopyDone, run), func(ctx context.Context) (bool, error) {
			if cur.exited() {
				return false, fmt.Errorf("consumer run %d exited: %v", run, cur.err)
			}
			if err, done := load.result(); done && err != nil {
				t.Fatalf("load: %v", err)
			}
			var maxRow *int64
			if err := rec.QueryRow(ctx, `SELECT max(row_id) FROM seen WHERE run = $1`, run).Scan(&maxRow); err != nil {
				return false, err
			}
			if maxRow == nil {
				return false, nil
			}
			if pi < len(points) && *maxRow >= points[pi] {
				why = fmt.Sprintf("row %d+", points[pi])
				pi++
				return true, nil
			}
			if !midCopyDone {
				var n int64
				if err := rec.QueryRow(ctx, `SELECT count(DISTINCT row_id) FROM seen WHERE run = $1 AND row_id BETWEEN $2 AND $3`, run, copyFrom, copyTo).Scan(&n); err != nil {
					return false, err
				}
				if n >= (copyTo-copyFrom+1)/2 {
					why = fmt.Sprintf("mid-COPY (%d of its %d rows recorded by this run)", n, copyTo-copyFrom+1)
					midCopyDone = true
					return true, nil
				}
			}
			if pi >= len(points) && !midCopyDone {
				// Only the mid-COPY kill is left: if the COPY is already
				// confirmed, it cannot happen any more.
				st, err := readSlot(ctx, src, slot)
				if err != nil {
					return false, err
				}
				var copyLSN *string
				if err := rec.QueryRow(ctx, `SELECT max(lsn)::text FROM seen WHERE row_id = $1`, copyFrom).Scan(&copyLSN); err != nil {
					return false, err
				}
				if copyLSN != nil && st.confirmed != "" && mustLSN(t, st.confirmed) > mustLSN(t, *copyLSN) {
					t.Errorf("the COPY transaction was confirmed before any run recorded half of it: the mid-COPY kill did not happen")
					midCopyDone = true
					return false, nil
				}
			}
			return false, nil
		})
		if why == "" {
			break
		}
		if !lastKill.IsZero() {
			samples[len(samples)-1].resume = resumeTime(t, rec, run, lastKill)
		}
		time.Sleep(time.Duration(rng.Int64N(int64(30 * time.Millisecond)))) // a random instant
		cur.kill()
		lastKill = time.Now()
		// Once the walsender has noticed the death, the slot's confirmed
		// position is final for this run.
		waitSlotActive(t, src, slot, false)
		st, err := readSlotNow(src, slot)
		if err != nil || !st.exists {
			t.Fatalf("slot after kill: %+v %v", st, err)
		}
		samples = append(samples, killSample{run: run, confirmed: mustLSN(t, st.confirmed)})
		t.Logf("killed run %d at %s (load %s in); slot confirmed_flush_lsn %s", run, why, time.Since(loadStart).Round(time.Millisecond), st.confirmed)
		startRun()
	}

	if err := load.wait(5 * time.Minute); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Logf("load of %d rows written in %s", sz.rows, time.Since(loadStart).Round(time.Millisecond))
	endLSN := currentLSN(t, src)
	waitSlotConfirmed(t, src, slot, endLSN, 3*time.Minute)
	if !lastKill.IsZero() {
		samples[len(samples)-1].resume = resumeTime(t, rec, run, lastKill)
	}
	cur.term(t, 30*time.Second)

	written := writtenIDs(t, src, "rows")
	if len(written) != sz.rows {
		t.Fatalf("table holds %d rows, want %d", len(written), sz.rows)
	}
	tl := countSeen(t, written, loadSeen(t, rec))
	tl.check(t)

	// The confirmed position never passed what was recorded.
	var maxResume time.Duration
	for _, s := range samples {
		maxResume = max(maxResume, s.resume)
		var bad []string
		for id, e := range tl.events {
			if e.lsn < s.confirmed && e.minRun > s.run {
				bad = append(bad, fmt.Sprintf("%s (row %d, lsn %s, first recorded by run %d)", id, e.rowID, fmtLSN(e.lsn), e.minRun))
			}
		}
		if len(bad) > 0 {
			if len(bad) > 5 {
				bad = bad[:5]
			}
			t.Errorf("ACK AHEAD OF RECORD: after run %d was killed the slot's confirmed_flush_lsn was %s, yet changes below it were not recorded by then: %v",
				s.run, fmtLSN(s.confirmed), bad)
		}
	}
	for _, s := range samples {
		t.Logf("run %d: confirmed %s at kill, next run's first record %s after the kill", s.run, fmtLSN(s.confirmed), s.resume.Round(time.Millisecond))
	}
	figures(t, "kill9", tl.written, tl.delivered, tl.duplicates, maxResume)
}

func readSlotNow(p *pgxpool.Pool, slot string) (slotState, error) {
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	return readSlot(ctx, p, slot)
}

// resumeTime is the time from since to the first delivery recorded by run.
func resumeTime(t *testing.T, rec *pgxpool.Pool, run int, since time.Time) time.Duration {
	t.Helper()
	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	var at *time.Time
	if err := rec.QueryRow(ctx, `SELECT min(at) FROM seen WHERE run = $1`, run).Scan(&at); err != nil {
		t.Fatal(err)
	}
	if at == nil {
		return 0
	}
	return at.Sub(since)
}
