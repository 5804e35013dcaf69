package sinktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/sink"
)

// EndToEnd plugs a sink into EndToEndTest.
type EndToEnd struct {
	// DSN is a fresh database (internal/pgtest's NewDatabase) the test
	// may create a table in.
	DSN string
	// Sink is the sink under test (on the broker Harness.Read reads).
	Sink sink.Sink
	// Prepare and Read are as in Harness.
	Prepare func(t *testing.T, table string)
	Read    func(t *testing.T, table string) []Received
	// Handler, if set, is the handler under test instead of
	// sink.Handler(Sink) (a sink.Batcher's, say); MaxGoroutines is the
	// route's (default 8).
	Handler       pgcdc.HandlerFunc
	MaxGoroutines int
	// Dedup says the broker drops a message whose event_id it stored
	// already (JetStream's duplicate window): then a forced redelivery
	// must leave no duplicate.
	Dedup bool
}

// EndToEndTest runs a pgcdc.Worker on e.DSN with sink.Handler(e.Sink) (or
// e.Handler) for
// a new table of source "sinktest", writes inserts, updates and deletes,
// and checks that every change reached the broker, each row's changes in
// commit order. The handler fails once after the sink delivered every
// tenth event, as if the acknowledgement had been lost, so the worker
// delivers those events again: with e.Dedup the broker must drop them.
func EndToEndTest(t *testing.T, e EndToEnd) {
	t.Helper()
	tbl := table(t)
	if e.Prepare != nil {
		e.Prepare(t, tbl)
	}
	execSQL(t, e.DSN, fmt.Sprintf(`CREATE TABLE %q (id int PRIMARY KEY, v text)`, tbl))

	var (
		mu      sync.Mutex
		forced  = map[string]bool{}
		handler = e.Handler
	)
	if handler == nil {
		handler = sink.Handler(e.Sink)
	}
	if e.MaxGoroutines == 0 {
		e.MaxGoroutines = 8
	}
	w, err := pgcdc.NewWorker(
		pgcdc.AddPostgresDSN("sinktest", e.DSN),
		pgcdc.SetLogger(slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))),
		pgcdc.SetMaxRetries(10),
		pgcdc.SetRetryBackoff(10*time.Millisecond, 200*time.Millisecond),
		pgcdc.SetMinReconnectInterval(50*time.Millisecond),
		pgcdc.SetMaxReconnectInterval(time.Second),
	)
	if err != nil {
		t.Fatal(err)
	}
	w.Handle(pgcdc.CreateHandlerRoute("sinktest", tbl), func(ec *pgcdc.EventContext) error {
		if err := handler(ec); err != nil {
			return err
		}
		var row struct{ ID int }
		if ev := ec.Event(); ev != nil {
			_ = ev.Data.DecodeNew(&row)
		}
		mu.Lock()
		defer mu.Unlock()
		if row.ID%10 == 0 && row.ID > 0 && !forced[ec.Key()] {
			forced[ec.Key()] = true
			return errors.New("sinktest: acknowledgement lost (forced redelivery)")
		}
		return nil
	}, pgcdc.WithMaxGoroutines(e.MaxGoroutines))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	defer func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		if err := w.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		cancel()
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("Serve: %v", err)
		}
	}()

	// The worker may still be setting up its slot or trigger: write until
	// the first event shows on the broker, then the real load.
	waitUntil(t, 60*time.Second, "the first event on the broker", func() bool {
		execSQL(t, e.DSN, fmt.Sprintf(`INSERT INTO %q VALUES (0, 'probe') ON CONFLICT (id) DO UPDATE SET v = 'probe'`, tbl))
		return len(e.Read(t, tbl)) > 0
	})
	const rows = 300
	for i := 1; i <= rows; i += 50 {
		execSQL(t, e.DSN, fmt.Sprintf(`INSERT INTO %q SELECT g, 'v' || g FROM generate_series(%d, %d) g`, tbl, i, i+49))
	}
	execSQL(t, e.DSN, fmt.Sprintf(`UPDATE %q SET v = 'updated' WHERE id BETWEEN 1 AND 100`, tbl))
	execSQL(t, e.DSN, fmt.Sprintf(`DELETE FROM %q WHERE id > 250`, tbl))
	want := rows + 100 + 50

	var got []Received
	waitUntil(t, 90*time.Second, fmt.Sprintf("%d changes on the broker", want), func() bool {
		got = e.Read(t, tbl)
		ids := map[string]bool{}
		for _, r := range got {
			var ev pgcdc.EventPayload
			if json.Unmarshal(r.Payload, &ev) == nil && !isProbe(ev) {
				ids[r.EventID] = true
			}
		}
		return len(ids) >= want
	})
	seen := map[string]bool{}
	actions := map[int][]string{}
	dups := 0
	for _, r := range got {
		var ev pgcdc.EventPayload
		if err := json.Unmarshal(r.Payload, &ev); err != nil {
			t.Fatalf("payload is not the event JSON: %v: %s", err, r.Payload)
		}
		if isProbe(ev) {
			continue
		}
		if ev.EventID != r.EventID {
			t.Errorf("message event_id %q, payload's %q", r.EventID, ev.EventID)
		}
		if seen[r.EventID] {
			dups++
			continue
		}
		seen[r.EventID] = true
		var row struct{ ID int }
		if ev.Action == pgcdc.ActionDelete {
			_ = ev.Data.DecodeOld(&row)
		} else {
			_ = ev.Data.DecodeNew(&row)
		}
		actions[row.ID] = append(actions[row.ID], ev.Action)
	}
	if len(seen) != want {
		t.Errorf("%d distinct changes on the broker, want %d", len(seen), want)
	}
	for id := 1; id <= rows; id++ {
		exp := []string{pgcdc.ActionInsert}
		if id <= 100 {
			exp = append(exp, pgcdc.ActionUpdate)
		}
		if id > 250 {
			exp = append(exp, pgcdc.ActionDelete)
		}
		if fmt.Sprint(actions[id]) != fmt.Sprint(exp) {
			t.Errorf("row %d: changes %v arrived, want %v", id, actions[id], exp)
		}
	}
	mu.Lock()
	nforced := len(forced)
	mu.Unlock()
	if nforced == 0 {
		t.Fatal("no redelivery was forced")
	}
	if e.Dedup && dups != 0 {
		t.Errorf("%d duplicates after %d forced redeliveries: the broker should have dropped them", dups, nforced)
	}
	if !e.Dedup && dups < nforced {
		t.Errorf("%d duplicates after %d forced redeliveries: a redelivery went missing", dups, nforced)
	}
	t.Logf("%d changes arrived in order; %d forced redeliveries, %d duplicates on the broker", want, nforced, dups)
}

func isProbe(ev pgcdc.EventPayload) bool {
	var row struct{ ID *int }
	_ = ev.Data.DecodeNew(&row)
	if row.ID == nil {
		_ = ev.Data.DecodeOld(&row)
	}
	return row.ID != nil && *row.ID == 0
}

func waitUntil(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond) // polling PostgreSQL or the broker
	}
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
