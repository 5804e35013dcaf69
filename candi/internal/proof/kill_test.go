package proof

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// writeRows inserts orders from..to, one transaction each, about one per
// millisecond, and reports the first error (nil when all committed).
func writeRows(dsn string, from, to int) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			done <- err
			return
		}
		defer conn.Close(ctx)
		pace := time.NewTicker(time.Millisecond)
		defer pace.Stop()
		for i := from; i <= to; i++ {
			<-pace.C
			if _, err := conn.Exec(ctx, `INSERT INTO orders (id, note) VALUES ($1, 'kill test')`, i); err != nil {
				done <- fmt.Errorf("insert %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	return done
}

// TestKill9 kills the service with SIGKILL while rows are written, starts it
// again at once, and counts what each worker delivered: pgcdc must deliver
// every row; candi's loss is recorded.
//
// Two scenarios: restarted at once, and restarted once 500 more rows were
// committed while it was down (a restart delay, a rolling deploy).
func TestKill9(t *testing.T) {
	const n = 3000
	for _, sc := range []struct {
		name string
		down int // rows committed while no instance runs
	}{{"at_once", 0}, {"after_500_commits", 500}} {
		for _, variant := range []string{"candi", "pgcdc"} {
			t.Run(sc.name+"/"+variant, func(t *testing.T) { killRun(t, variant, n, sc.down) })
		}
	}
}

func killRun(t *testing.T, variant string, n, down int) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, schema)
	out := filepath.Join(t.TempDir(), variant+".jsonl")
	a := start(t, variant, dsn, out, "a", "")
	ping(t, dsn, "customers", out)
	ping(t, dsn, "orders", out)

	writer := writeRows(dsn, 1, n)
	waitFor(t, out, 2*time.Minute, "a third of the rows", func(evs []event) bool { return len(real(evs, "orders")) >= n/3 })
	a.kill()
	killedAt := len(real(readEvents(t, out), "orders"))
	if down > 0 {
		waitCommitted(t, dsn, down)
	}
	start(t, variant, dsn, out, "b", "")
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	// Every row committed before this ping was handled once it
	// arrives (one handler goroutine per table, in commit order).
	ping(t, dsn, "orders", out)
	var evs []event
	if variant == "pgcdc" {
		evs = waitFor(t, out, 2*time.Minute, "every row", func(evs []event) bool { return distinct(real(evs, "orders"), n) == n })
	} else {
		evs = readEvents(t, out)
	}
	got := real(evs, "orders")
	d := distinct(got, n)
	t.Logf("FIGURE kill -9 %s: %d rows written (one per transaction, ~1/ms), killed after %d handled, restarted after %d more commits: %d delivered, %d lost, %d duplicates",
		variant, n, killedAt, down, d, n-d, len(got)-d)
	if variant == "pgcdc" && d != n {
		t.Errorf("pgcdc lost %d rows", n-d)
	}
}

// waitCommitted waits until delta more orders rows were committed.
func waitCommitted(t *testing.T, dsn string, delta int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	id := -1
	for {
		var max int
		if err := conn.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM orders`).Scan(&max); err != nil {
			t.Fatal(err)
		}
		if id < 0 {
			id = max + delta
		}
		if max >= id {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("row %d never committed", id)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// distinct counts the ids 1..n among evs.
func distinct(evs []event, n int) int {
	seen := make(map[int64]bool, n)
	for _, e := range evs {
		if e.id >= 1 && e.id <= int64(n) {
			seen[e.id] = true
		}
	}
	return len(seen)
}
