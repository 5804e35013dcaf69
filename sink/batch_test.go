package sink_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// memSink keeps what it was given; rows whose id is a multiple of 7
// cannot be delivered (a permanent error).
type memSink struct {
	mu      sync.Mutex
	got     map[int]int // row id -> deliveries
	batches []int       // sizes of the Deliver calls
}

func (s *memSink) Deliver(_ context.Context, msgs []sink.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, len(msgs))
	for _, m := range msgs {
		var ev pgcdc.EventPayload
		if err := json.Unmarshal(m.Payload, &ev); err != nil {
			return err
		}
		var row struct{ ID int }
		_ = ev.Data.DecodeNew(&row)
		if row.ID%7 == 0 {
			return sink.Permanent(fmt.Errorf("row %d cannot be delivered", row.ID))
		}
	}
	for _, m := range msgs {
		var ev pgcdc.EventPayload
		_ = json.Unmarshal(m.Payload, &ev)
		var row struct{ ID int }
		_ = ev.Data.DecodeNew(&row)
		s.got[row.ID]++
	}
	return nil
}

func (s *memSink) Close(context.Context) error { return nil }

// The Batcher delivers the worker's concurrent events together, and a
// permanent error dead-letters only the events that cause it.
func TestBatcher(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	ms := &memSink{got: map[int]int{}}
	b := sink.NewBatcher(ms, sink.BatchOptions{MaxBatch: 64})
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetLogger(slog.New(slog.DiscardHandler)), pgcdc.SetMaxRetries(1), pgcdc.SetRetryBackoff(time.Millisecond, 10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("items", b.Handler(), pgcdc.WithMaxGoroutines(128))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()

	const rows = 2000
	deadline := time.Now().Add(90 * time.Second)
	inserted := false
	for {
		if !inserted {
			// Retried until the worker captures (its slot or trigger is set up).
			pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1) ON CONFLICT (id) DO UPDATE SET id = excluded.id`)
			ms.mu.Lock()
			ready := ms.got[1] > 0
			ms.mu.Unlock()
			if ready {
				pgtest.Exec(t, dsn, fmt.Sprintf(`INSERT INTO items SELECT generate_series(2, %d)`, rows))
				inserted = true
			}
		} else if dead := countDead(t, dsn); dead == rows/7 {
			break
		}
		if time.Now().After(deadline) {
			ms.mu.Lock()
			n := len(ms.got)
			ms.mu.Unlock()
			t.Fatalf("timed out: inserted %v, %d rows delivered, %d dead letters", inserted, n, countDead(t, dsn))
		}
		time.Sleep(50 * time.Millisecond) // polling PostgreSQL
	}
	sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
	defer c()
	if err := w.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	if err := b.Close(sctx); err != nil {
		t.Fatal(err)
	}
	ms.mu.Lock()
	defer ms.mu.Unlock()
	for id := 1; id <= rows; id++ {
		if id%7 != 0 && ms.got[id] == 0 {
			t.Errorf("row %d never delivered", id)
		}
		if id%7 == 0 && ms.got[id] != 0 {
			t.Errorf("row %d delivered", id)
		}
	}
	biggest := 0
	for _, n := range ms.batches {
		biggest = max(biggest, n)
	}
	if biggest < 2 {
		t.Errorf("no batch held more than one event (sizes %v...)", ms.batches[:min(20, len(ms.batches))])
	}
	t.Logf("%d Deliver calls, largest batch %d", len(ms.batches), biggest)
}

func countDead(t *testing.T, dsn string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+pgcdc.DefaultDeadLetterTable).Scan(&n); err != nil {
		return -1 // not created yet
	}
	return n
}
