package faulttest

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// eoSizes are the counts of the exactly-once scenario: CI (default) or
// full (PGCDC_FAULT_FULL=1).
type eoSizes struct {
	rows, kills, restarts int
}

func exactlyOnceSizes() eoSizes {
	if os.Getenv("PGCDC_FAULT_FULL") != "" {
		return eoSizes{rows: 50_000, kills: 20, restarts: 2}
	}
	return eoSizes{rows: 5_000, kills: 5, restarts: 1}
}

// counterSum reads the sum and the per-key values of a counter table.
func counterSum(ctx context.Context, p *pgxpool.Pool, table string) (int64, []int64, error) {
	rows, err := p.Query(ctx, `SELECT n FROM `+table+` ORDER BY k`)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	var sum int64
	var per []int64
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			return 0, nil, err
		}
		sum += n
		per = append(per, n)
	}
	return sum, per, rows.Err()
}

// TestExactlyOnceKill runs three consumer processes on one table, each
// with its own slot: two increment a counter row per event through the
// inbox (HandleInTx, a tenth of a percent of their calls failing after the
// write; one of them with group commit, WithInTxBatch(4, 0)), the third
// does the same UPDATE with a plain handler. All are killed with
// SIGKILL at random points and PostgreSQL is restarted in immediate mode
// while rows are written. At the end both inbox counters must equal the
// number of rows exactly, per counter row; the plain counters may only be
// above (at-least-once), and the test reports by how much.
func TestExactlyOnceKill(t *testing.T) {
	sz := exactlyOnceSizes()
	rng := newRand(t)
	c := ownCluster(t, nil)
	dsn := createDatabase(t, c, "eo")
	execSQL(t, dsn, `CREATE TABLE rows (id bigint PRIMARY KEY, kind text, pad text);
		CREATE TABLE counts_inbox (k int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		CREATE TABLE counts_plain (k int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		CREATE TABLE counts_batch (k int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
		INSERT INTO counts_inbox (k) SELECT g FROM generate_series(0, 15) g;
		INSERT INTO counts_batch (k) SELECT g FROM generate_series(0, 15) g;
		INSERT INTO counts_plain (k) SELECT g FROM generate_series(0, 15) g;`)
	src := newPool(t, dsn)
	bin := buildConsumer(t)

	type consumer struct {
		name, mode, wt, table string
		batch                 int
		run                   int
		cur                   *proc
	}
	cons := []*consumer{
		{name: "inbox", mode: "inbox", wt: "ft_eo_inbox", table: "counts_inbox"},
		{name: "batch", mode: "inbox", wt: "ft_eo_batch", table: "counts_batch", batch: 4},
		{name: "plain", mode: "plain", wt: "ft_eo_plain", table: "counts_plain"},
	}
	start := func(cn *consumer) {
		cn.run++
		args := []string{"-dsn", dsn, "-table", "rows", "-worker-type", cn.wt, "-run", strconv.Itoa(cn.run),
			"-instance", cn.name, "-goroutines", "8", "-batch", strconv.Itoa(cn.batch), "-min-reconnect", "50ms", "-max-reconnect", "1s",
			"-count", cn.mode, "-count-table", cn.table, "-prune", "200ms"}
		if cn.mode == "inbox" {
			args = append(args, "-fail-rate", "0.001")
		}
		cn.cur = startConsumer(t, bin, fmt.Sprintf("%s-run%02d", cn.name, cn.run), args...)
	}
	for _, cn := range cons {
		start(cn)
		waitSlotActive(t, src, slotName(cn.wt), true)
	}

	wr := startWriter(dsn, "rows", 20, 4*time.Millisecond, rng.Uint64())
	// The writer stops at the nominal row count (the last transaction may
	// pass it by a few rows).
	var stopWriter sync.Once
	defer stopWriter.Do(wr.stop)
	capped := goAsync(func() error {
		for wr.next.Load() <= int64(sz.rows) && !wr.stopped() {
			time.Sleep(5 * time.Millisecond)
		}
		stopWriter.Do(wr.stop)
		return nil
	})
	loadStart := time.Now()

	// Faults at random positions of the inbox consumer's progress: kills of
	// both consumers and server restarts, in one sorted schedule.
	type fault struct {
		at      int64
		restart bool
	}
	var faults []fault
	for i := 0; i < sz.kills+sz.restarts; i++ {
		faults = append(faults, fault{at: int64(sz.rows/20) + rng.Int64N(int64(sz.rows*85/100)), restart: i >= sz.kills})
	}
	slices.SortFunc(faults, func(a, b fault) int { return int(a.at - b.at) })
	t.Logf("faults (counted events before each): %+v", faults)

	for i, f := range faults {
		waitUntil(t, 3*time.Minute, 10*time.Millisecond, fmt.Sprintf("fault %d at %d counted events", i, f.at), func(ctx context.Context) (bool, error) {
			for _, cn := range cons {
				if cn.cur.exited() {
					return false, fmt.Errorf("%s consumer run %d exited: %v\n%s", cn.name, cn.run, cn.cur.err, cn.cur.tail(2000))
				}
			}
			sum, _, err := counterSum(ctx, src, "counts_inbox")
			return err == nil && sum >= f.at, err
		})
		time.Sleep(time.Duration(rng.Int64N(int64(30 * time.Millisecond))))
		if f.restart {
			ctx, cancel := ctxT(2 * time.Minute)
			if err := c.Stop(ctx, "immediate"); err != nil {
				cancel()
				t.Fatalf("fault %d: stop: %v", i, err)
			}
			time.Sleep(time.Duration(rng.Int64N(int64(300 * time.Millisecond))))
			if err := c.Start(ctx); err != nil {
				cancel()
				t.Fatalf("fault %d: start: %v", i, err)
			}
			cancel()
			src.Reset() // its connections died with the server
			t.Logf("fault %d: PostgreSQL restarted (immediate) after %s of load", i, time.Since(loadStart).Round(time.Millisecond))
			continue
		}
		// Kill every consumer, each at its own random instant.
		for _, cn := range cons {
			time.Sleep(time.Duration(rng.Int64N(int64(10 * time.Millisecond))))
			cn.cur.kill()
		}
		for _, cn := range cons {
			waitSlotActive(t, src, slotName(cn.wt), false)
			start(cn)
		}
		t.Logf("fault %d: all consumers killed after %s of load", i, time.Since(loadStart).Round(time.Millisecond))
	}

	if err := capped.wait(5 * time.Minute); err != nil {
		t.Fatalf("writer: %v", err)
	}
	t.Logf("writer: %d rows in %s, %d errors (last: %v)", wr.next.Load()-1, time.Since(loadStart).Round(time.Millisecond), wr.errors.Load(), wr.lastError())
	written := writtenIDs(t, src, "rows")
	want := make([]int64, 16)
	for _, id := range written {
		want[id%16]++
	}

	// Everything handled and confirmed, then a graceful stop.
	end := currentLSN(t, src)
	var insertEnd string
	if err := src.QueryRow(context.Background(), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&insertEnd); err == nil && mustLSN(t, insertEnd) > mustLSN(t, end) {
		end = insertEnd
	}
	for _, cn := range cons {
		waitSlotConfirmed(t, src, slotName(cn.wt), end, 5*time.Minute)
	}
	// The inbox is pruned once everything is confirmed and the slot's
	// restart_lsn moved past it (it moves at running-transactions records,
	// which a CHECKPOINT writes at once).
	waitUntil(t, 2*time.Minute, 500*time.Millisecond, "inbox pruned", func(ctx context.Context) (bool, error) {
		var n int64
		err := src.QueryRow(ctx, `SELECT count(*) FROM pgcdc.inbox`).Scan(&n)
		if err == nil && n > 0 {
			_, err = src.Exec(ctx, `CHECKPOINT`)
		}
		return err == nil && n == 0, err
	})
	for _, cn := range cons {
		cn.cur.term(t, 30*time.Second)
	}

	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	inSum, inPer, err := counterSum(ctx, src, "counts_inbox")
	if err != nil {
		t.Fatal(err)
	}
	baSum, baPer, err := counterSum(ctx, src, "counts_batch")
	if err != nil {
		t.Fatal(err)
	}
	if baSum != int64(len(written)) || !slices.Equal(baPer, want) {
		t.Errorf("EXACTLY-ONCE BROKEN (group commit): inbox counters sum to %d for %d rows; per key %v, want %v", baSum, len(written), baPer, want)
	}
	plSum, plPer, err := counterSum(ctx, src, "counts_plain")
	if err != nil {
		t.Fatal(err)
	}
	if inSum != int64(len(written)) || !slices.Equal(inPer, want) {
		t.Errorf("EXACTLY-ONCE BROKEN: inbox counters sum to %d for %d rows; per key %v, want %v", inSum, len(written), inPer, want)
	}
	for k := range want {
		if plPer[k] < want[k] {
			t.Errorf("LOST: plain counter %d is %d, below the %d rows of its key", k, plPer[k], want[k])
		}
	}
	over := plSum - int64(len(written))
	t.Logf("FIGURES scenario=exactly_once rows=%d kills=%d pg_restarts=%d inbox_count=%d inbox_batch_count=%d plain_count=%d plain_overcount=%d (%.2f%%)",
		len(written), sz.kills, sz.restarts, inSum, baSum, plSum, over, 100*float64(over)/float64(max(len(written), 1)))
}
