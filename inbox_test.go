package pgcdc_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// redeliverOnce is a HookEventHandled that panics the first time it sees
// each event: the dispatcher then counts the call as failed and delivers
// the event again, after the inbox transaction committed, as a crash
// between the commit and the acknowledgement would.
type redeliverOnce struct {
	mu   sync.Mutex
	seen map[string]int
}

func (h *redeliverOnce) OnEventHandled(ev pgcdc.HandledEvent) {
	h.mu.Lock()
	h.seen[ev.EventID]++
	first := h.seen[ev.EventID] == 1
	h.mu.Unlock()
	if first {
		panic("redeliver " + ev.EventID)
	}
}

func (h *redeliverOnce) reports() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.seen {
		n += c
	}
	return n
}

func queryInt(t *testing.T, dsn, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n *int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	if n == nil {
		return 0
	}
	return *n
}

// TestInTxExactlyOnce: every event is delivered twice (the first
// acknowledgement fails after the commit) and some handler calls fail after
// writing; the counters still count each event exactly once, and the
// inbox is pruned once everything is confirmed. Per event and with group
// commit, on the source database and on another one, in both engines.
func TestInTxExactlyOnce(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		for _, v := range []struct {
			name    string
			batch   bool
			elsewhr bool
		}{{"per_event", false, false}, {"batched_other_db", true, true}} {
			t.Run(v.name, func(t *testing.T) {
				dsn := pgtest.NewDatabase(t)
				target := dsn
				if v.elsewhr {
					target = pgtest.NewDatabase(t)
				}
				exec(t, dsn, `CREATE TABLE src (id int PRIMARY KEY, v int)`)
				exec(t, target, `CREATE TABLE counts (k int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
					INSERT INTO counts (k) SELECT g FROM generate_series(0, 3) g`)
				hook := &redeliverOnce{seen: map[string]int{}}
				w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetHooks(hook), pgcdc.SetMaxGoroutines(8),
					pgcdc.SetRetryBackoff(time.Millisecond, 20*time.Millisecond), pgcdc.DisableDeadLetter())
				var calls, fails atomic.Int64
				opts := []pgcdc.HandlerOption{pgcdc.WithInboxPruneInterval(50 * time.Millisecond)}
				if v.batch {
					opts = append(opts, pgcdc.WithInTxBatch(16, time.Millisecond))
				}
				if v.elsewhr {
					opts = append(opts, pgcdc.WithTargetDSN(target))
				}
				var failedOnce sync.Map
				w.HandleInTx("src", func(ec *pgcdc.EventContext, tx pgx.Tx) error {
					var row struct{ ID int }
					if err := ec.Event().Data.DecodeNew(&row); err != nil {
						return err
					}
					if _, err := tx.Exec(ec.Context(), `UPDATE counts SET n = n + 1 WHERE k = $1`, row.ID%4); err != nil {
						return err
					}
					if row.ID%7 == 0 {
						if _, loaded := failedOnce.LoadOrStore(row.ID, true); !loaded {
							fails.Add(1)
							return errors.New("fail after writing: rolled back")
						}
					}
					if err := tx.Commit(ec.Context()); !errors.Is(err, pgcdc.ErrInboxTxOwned) {
						return fmt.Errorf("Commit by the handler = %v, want ErrInboxTxOwned", err)
					}
					calls.Add(1)
					return nil
				}, opts...)
				serve(t, w)
				m.ready(t, dsn, defaultSlot, 1)
				const n = 300
				exec(t, dsn, `INSERT INTO src SELECT g, 0 FROM generate_series(1, 100) g`)
				for i := 101; i <= n; i++ {
					exec(t, dsn, `INSERT INTO src VALUES ($1, 0)`, i)
				}
				// (settled compares with pg_current_wal_lsn, the WAL write
				// position, which may trail the commits just made.)
				waitQuery(t, target, `SELECT sum(n) >= $1 FROM counts`, n)
				m.settled(t, dsn, defaultSlot)
				// Everything is confirmed: the pruner empties the inbox (in
				// logical mode once the slot's restart_lsn passed the events:
				// it moves at running-transactions records, which a
				// CHECKPOINT writes).
				waitInboxEmpty(t, dsn, target)
				if got := queryInt(t, target, `SELECT sum(n) FROM counts`); got != n {
					t.Errorf("counters sum to %d, want exactly %d", got, n)
				}
				for k := 0; k < 4; k++ {
					want := int64(0)
					for i := 1; i <= n; i++ {
						if i%4 == k {
							want++
						}
					}
					if got := queryInt(t, target, `SELECT n FROM counts WHERE k = $1`, k); got != want {
						t.Errorf("counter %d = %d, want %d", k, got, want)
					}
				}
				// With group commit, a failing call makes the others of its
				// group run again (only the committed run has an effect).
				if c := calls.Load(); c != n && !(v.batch && c > n) {
					t.Errorf("handler succeeded %d times for %d events", c, n)
				}
				if fails.Load() != n/7 {
					t.Errorf("%d injected failures, want %d", fails.Load(), n/7)
				}
				if r := hook.reports(); r != 2*n {
					t.Errorf("%d handled reports, want %d (each event acknowledged after a redelivery)", r, 2*n)
				}
				if got := queryInt(t, target, `SELECT count(*) FROM pgcdc.inbox_streams WHERE worker_type = $1`, pgcdc.DefaultWorkerType); got != 1 {
					t.Errorf("%d inbox streams, want 1", got)
				}
			})
		}
	})
}

// TestInTxRecordOutlivesCrash (HandleTxInTx, logical engine): a worker
// that meets source transactions again whose records are in the inbox
// skips them. The slot is rewound by a copy taken before the transactions,
// as a crash after the inbox commits and before any confirmation would
// leave it. (internal/inbox tests that pruning keeps such records.)
func TestInTxRecordOutlivesCrash(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE src (id int PRIMARY KEY); CREATE TABLE counts (id int PRIMARY KEY, n int NOT NULL)`)
	handler := func(calls *atomic.Int64) pgcdc.TxInTxFunc {
		return func(tc *pgcdc.TxContext, tx pgx.Tx) error {
			calls.Add(1)
			return tc.Each(func(ec *pgcdc.EventContext) error {
				var row struct{ ID int }
				if err := ec.Event().Data.DecodeNew(&row); err != nil {
					return err
				}
				_, err := tx.Exec(ec.Context(), `INSERT INTO counts VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1`, row.ID)
				return err
			})
		}
	}
	var first atomic.Int64
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.HandleTxInTx([]string{"src"}, handler(&first), pgcdc.WithInboxPruneInterval(time.Hour))
	r := serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `SELECT pg_copy_logical_replication_slot($1, 'rewind')`, defaultSlot)
	exec(t, dsn, `BEGIN; INSERT INTO src VALUES (1), (2), (3); COMMIT`)
	exec(t, dsn, `INSERT INTO src VALUES (4)`)
	exec(t, dsn, `INSERT INTO src VALUES (5)`)
	lsn := queryStrings(t, dsn, `SELECT pg_current_wal_insert_lsn()::text`)[0]
	waitSlotConfirmed(t, dsn, defaultSlot, lsn)
	r.stop(t)
	if first.Load() != 3 {
		t.Fatalf("first worker handled %d transactions, want 3", first.Load())
	}
	// Rewind: the slot goes back to before the three transactions.
	exec(t, dsn, `SELECT pg_drop_replication_slot($1)`, defaultSlot)
	exec(t, dsn, `SELECT pg_copy_logical_replication_slot('rewind', $1)`, defaultSlot)
	exec(t, dsn, `SELECT pg_drop_replication_slot('rewind')`)

	var second atomic.Int64
	w2 := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w2.HandleTxInTx([]string{"src"}, handler(&second), pgcdc.WithInboxPruneInterval(20*time.Millisecond))
	serve(t, w2)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO src VALUES (6)`)
	lsn = queryStrings(t, dsn, `SELECT pg_current_wal_insert_lsn()::text`)[0]
	waitSlotConfirmed(t, dsn, defaultSlot, lsn)
	if got := second.Load(); got != 1 {
		t.Errorf("after the rewind the handler ran for %d transactions, want 1 (the three redelivered ones were recorded)", got)
	}
	if got := queryStrings(t, dsn, `SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM counts`)[0]; got != "1:1 2:1 3:1 4:1 5:1 6:1" {
		t.Errorf("counts = %s, want each row once", got)
	}
	waitInboxEmpty(t, dsn, dsn)
}

// waitInboxEmpty waits until the inbox of target is empty, running a
// CHECKPOINT on the source now and then.
func waitInboxEmpty(t *testing.T, source, target string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for queryInt(t, target, `SELECT count(*) FROM pgcdc.inbox`) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the inbox still holds %d records a minute after everything was confirmed", queryInt(t, target, `SELECT count(*) FROM pgcdc.inbox`))
		}
		exec(t, source, `CHECKPOINT`)
		time.Sleep(200 * time.Millisecond)
	}
}

// TestInTxDeliverTwice: outside Serve (Deliver, RedeliverDeadLetters) the
// handler runs on a connection of its own and the inbox still holds.
func TestInTxDeliverTwice(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE src (id int PRIMARY KEY); CREATE TABLE counts (n int NOT NULL); INSERT INTO counts VALUES (0)`)
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	var calls atomic.Int64
	w.HandleInTx("src", func(ec *pgcdc.EventContext, tx pgx.Tx) error {
		calls.Add(1)
		_, err := tx.Exec(ec.Context(), `UPDATE counts SET n = n + 1`)
		return err
	})
	msg := []byte(`{"event_id":"0123456789abcdef0123456789abcdef","table":"src","action":"INSERT","data":{"old":null,"new":{"id":1}},"schema":"public","source":"","lsn":"0/16B3748","xid":750,"commit_time":"2026-11-28T02:49:20Z"}`)
	for i := 0; i < 3; i++ {
		if err := w.Deliver(t.Context(), msg); err != nil {
			t.Fatalf("Deliver %d: %v", i, err)
		}
	}
	if calls.Load() != 1 || queryInt(t, dsn, `SELECT n::bigint FROM counts`) != 1 {
		t.Errorf("handler ran %d times and counted %d for one event delivered 3 times", calls.Load(), queryInt(t, dsn, `SELECT n::bigint FROM counts`))
	}
	bad := []byte(strings.Replace(string(msg), "0123456789abcdef0123456789abcdef", "not-an-md5", 1))
	if err := w.Deliver(t.Context(), bad); err == nil || !strings.Contains(err.Error(), "32 hex") {
		t.Errorf("Deliver with a bad event id = %v", err)
	}
}

func TestInTxOptionErrors(t *testing.T) {
	pool, err := pgxpool.New(t.Context(), "postgres://u@127.0.0.1:1/db")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, c := range []struct {
		name string
		reg  func(*pgcdc.Worker)
		want string
	}{
		{"inbox option on Handle", func(w *pgcdc.Worker) {
			w.Handle("a", func(*pgcdc.EventContext) error { return nil }, pgcdc.WithTargetDSN("postgres://x@h/db"))
		}, "only apply to HandleInTx"},
		{"DSN and pool", func(w *pgcdc.Worker) {
			w.HandleInTx("a", func(*pgcdc.EventContext, pgx.Tx) error { return nil }, pgcdc.WithTargetDSN("postgres://x@h/db"), pgcdc.WithTargetPool(pool))
		}, "not both"},
		{"bad DSN", func(w *pgcdc.Worker) {
			w.HandleInTx("a", func(*pgcdc.EventContext, pgx.Tx) error { return nil }, pgcdc.WithTargetDSN("postgres://x:secret@h:notaport/db"))
		}, "cannot be parsed"},
		{"negative batch", func(w *pgcdc.Worker) {
			w.HandleInTx("a", func(*pgcdc.EventContext, pgx.Tx) error { return nil }, pgcdc.WithInTxBatch(-1, 0))
		}, "WithInTxBatch"},
		{"batch on HandleTxInTx", func(w *pgcdc.Worker) {
			w.HandleTxInTx([]string{"a"}, func(*pgcdc.TxContext, pgx.Tx) error { return nil }, pgcdc.WithInTxBatch(8, 0))
		}, "one at a time"},
		{"nil handler", func(w *pgcdc.Worker) { w.HandleInTx("a", nil) }, "nil handler"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := newWorker(t, pgcdc.SetPostgresDSN("postgres://u@127.0.0.1:1/db"))
			c.reg(w)
			err := w.Serve(t.Context())
			if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), c.want) || strings.Contains(err.Error(), "secret") {
				t.Fatalf("Serve = %v, want ErrConfig mentioning %q", err, c.want)
			}
		})
	}
}

// TestInTxTriggerRecordOutlivesCrash is TestInTxRecordOutlivesCrash for
// the trigger engine: the event rows a first worker handled (and deleted)
// are put back, as a crash after the inbox commits and before the deletes
// would leave them; the next worker claims them again and skips them.
func TestInTxTriggerRecordOutlivesCrash(t *testing.T) {
	m := modes[1]
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE src (id int PRIMARY KEY); CREATE TABLE counts (id int PRIMARY KEY, n int NOT NULL)`)
	handler := func(calls *atomic.Int64) pgcdc.InTxFunc {
		return func(ec *pgcdc.EventContext, tx pgx.Tx) error {
			calls.Add(1)
			var row struct{ ID int }
			if err := ec.Event().Data.DecodeNew(&row); err != nil {
				return err
			}
			_, err := tx.Exec(ec.Context(), `INSERT INTO counts VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1`, row.ID)
			return err
		}
	}
	var first atomic.Int64
	w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.HandleInTx("src", handler(&first), pgcdc.WithInboxPruneInterval(time.Hour))
	r := serve(t, w)
	m.ready(t, dsn, defaultSlot, 1)
	// Keep a copy of every event row.
	exec(t, dsn, `CREATE TABLE bk (LIKE pgcdc.events);
		CREATE FUNCTION bk_copy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO bk SELECT NEW.*; RETURN NULL; END $$;
		CREATE TRIGGER bk_copy AFTER INSERT ON pgcdc.events FOR EACH ROW EXECUTE FUNCTION bk_copy()`)
	for i := 1; i <= 5; i++ {
		exec(t, dsn, `INSERT INTO src VALUES ($1)`, i)
	}
	waitQuery(t, dsn, `SELECT coalesce(sum(n), 0) = $1 FROM counts`, 5)
	m.settled(t, dsn, defaultSlot)
	r.stop(t)
	// Put the handled events back, unclaimed.
	exec(t, dsn, `DROP TRIGGER bk_copy ON pgcdc.events;
		INSERT INTO pgcdc.events (id, schema_name, table_name, action, row_key, old, new, xid, tx_time)
		OVERRIDING SYSTEM VALUE SELECT id, schema_name, table_name, action, row_key, old, new, xid, tx_time FROM bk`)
	if n := queryInt(t, dsn, `SELECT count(*) FROM pgcdc.events`); n != 5 {
		t.Fatalf("%d event rows put back, want 5", n)
	}

	var second atomic.Int64
	w2 := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w2.HandleInTx("src", handler(&second), pgcdc.WithInboxPruneInterval(20*time.Millisecond))
	serve(t, w2)
	m.settled(t, dsn, defaultSlot) // the five are claimed again and deleted
	exec(t, dsn, `INSERT INTO src VALUES (6)`)
	waitQuery(t, dsn, `SELECT coalesce(sum(n), 0) >= $1 FROM counts`, 6)
	m.settled(t, dsn, defaultSlot)
	if got := queryStrings(t, dsn, `SELECT string_agg(id || ':' || n, ' ' ORDER BY id) FROM counts`)[0]; got != "1:1 2:1 3:1 4:1 5:1 6:1" {
		t.Errorf("counts = %s, want each row once", got)
	}
	if first.Load() != 5 || second.Load() != 1 {
		t.Errorf("handler ran %d then %d times, want 5 then 1 (the five put back were recorded)", first.Load(), second.Load())
	}
	waitInboxEmpty(t, dsn, dsn)
}
