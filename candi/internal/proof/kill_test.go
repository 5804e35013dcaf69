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
func TestKill9(t *testing.T) {
	const n = 3000
	for _, variant := range []string{"candi", "pgcdc"} {
		t.Run(variant, func(t *testing.T) {
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
			t.Logf("FIGURE kill -9 %s: %d rows written (one per transaction, ~1/ms), killed after %d handled, restarted at once: %d delivered, %d lost, %d duplicates",
				variant, n, killedAt, d, n-d, len(got)-d)
			if variant == "pgcdc" && d != n {
				t.Errorf("pgcdc lost %d rows", n-d)
			}
		})
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
