package inbox_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/inbox"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T, schema string) (*pgxpool.Pool, *inbox.Store, int32) {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := inbox.New(schema)
	if err := s.Ensure(t.Context(), pool); err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context(), pool); err != nil { // idempotent
		t.Fatal(err)
	}
	id, err := s.Stream(t.Context(), pool, "wt", "src")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := s.Stream(t.Context(), pool, "wt", "src"); err != nil || again != id {
		t.Fatalf("Stream again = %d, %v; want %d", again, err, id)
	}
	if other, err := s.Stream(t.Context(), pool, "wt", "other"); err != nil || other == id {
		t.Fatalf("Stream of another source = %d, %v", other, err)
	}
	return pool, s, id
}

func eid(i int) string { return fmt.Sprintf("%032x", i) }

func record(t *testing.T, pool *pgxpool.Pool, s *inbox.Store, stream int32, i int, lsn uint64, xid uint32) bool {
	t.Helper()
	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	fresh, err := s.Record(ctx, tx, stream, eid(i), lsn, xid)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return fresh
}

func remaining(t *testing.T, pool *pgxpool.Pool, s *inbox.Store) []string {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT replace(event_id::text, '-', '') FROM `+s.TableName()+` ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestRecordOnce(t *testing.T) {
	pool, s, stream := setup(t, `My "inbox"`)
	if !record(t, pool, s, stream, 1, 100, 7) || record(t, pool, s, stream, 1, 100, 7) {
		t.Fatal("the first Record must be fresh and the second not")
	}
	// A concurrent transaction recording the same event waits for the
	// first and then finds it.
	ctx := t.Context()
	tx1, _ := pool.Begin(ctx)
	defer tx1.Rollback(ctx)
	if fresh, err := s.Record(ctx, tx1, stream, eid(2), 0, 9); err != nil || !fresh {
		t.Fatalf("Record = %v, %v", fresh, err)
	}
	res := make(chan bool, 1)
	go func() {
		tx2, err := pool.Begin(ctx)
		if err != nil {
			res <- true
			return
		}
		defer tx2.Rollback(ctx)
		fresh, err := s.Record(ctx, tx2, stream, eid(2), 0, 9)
		res <- fresh || err != nil
	}()
	select {
	case <-res:
		t.Fatal("the second Record did not wait for the first transaction")
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if <-res {
		t.Fatal("the second Record ran although the first committed")
	}
	tx3, _ := pool.Begin(ctx)
	if _, err := s.Record(ctx, tx3, stream, "xyz", 0, 1); err == nil {
		t.Error("Record accepted an event id that is not 32 hex digits")
	}
	tx3.Rollback(ctx)
}

func TestPruneLogical(t *testing.T) {
	pool, s, stream := setup(t, "")
	for i, lsn := range []uint64{100, 200, 300} {
		record(t, pool, s, stream, i, lsn, 1)
	}
	record(t, pool, s, stream, 9, 0, 1) // a trigger-engine record: not the logical rule's
	n, err := s.PruneLogical(t.Context(), pool, stream, 200)
	if err != nil || n != 1 {
		t.Fatalf("PruneLogical = %d, %v; want 1 (strictly below the bound)", n, err)
	}
	if got := remaining(t, pool, s); !slices.Equal(got, []string{eid(1), eid(2), eid(9)}) {
		t.Errorf("remaining %v", got)
	}
	if _, ok, err := inbox.SlotRestart(t.Context(), pool, "no_such_slot"); ok || err != nil {
		t.Errorf("SlotConfirmed of a missing slot = %v, %v", ok, err)
	}
}

// TestPruneTrigger: records go once their transaction id is below every
// one still in the event table; records committed after the pruner's
// snapshot stay; the 32-bit ids are placed in the right epoch.
func TestPruneTrigger(t *testing.T) {
	pool, s, stream := setup(t, "")
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA ev; CREATE TABLE ev.events (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, xid xid8 NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	if _, _, ok, err := inbox.TriggerHorizon(ctx, pool, `ev.missing`); ok || err != nil {
		t.Fatalf("TriggerHorizon of a missing table = %v, %v", ok, err)
	}
	// Three writer transactions: old (acknowledged), pending, newer.
	var xids [3]uint64
	for i := range xids {
		tx, _ := pool.Begin(ctx)
		if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text::bigint`).Scan(&xids[i]); err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			if _, err := tx.Exec(ctx, `INSERT INTO ev.events (xid) VALUES (pg_current_xact_id())`); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		record(t, pool, s, stream, i, 0, uint32(xids[i]))
	}
	p, any, err := s.BeginTrigger(ctx, pool, stream)
	if err != nil || !any {
		t.Fatalf("BeginTrigger = %v, %v", any, err)
	}
	// Recorded after the snapshot, with an old transaction id: kept.
	record(t, pool, s, stream, 3, 0, uint32(xids[0]))
	xmax, pending, ok, err := inbox.TriggerHorizon(ctx, pool, `ev.events`)
	if err != nil || !ok || pending != xids[1] || xmax <= xids[2] {
		t.Fatalf("TriggerHorizon = %d, %d, %v, %v; want pending %d", xmax, pending, ok, err, xids[1])
	}
	if n, err := p.Finish(ctx, xmax, pending); err != nil || n != 1 {
		t.Fatalf("Finish = %d, %v; want 1", n, err)
	}
	if got := remaining(t, pool, s); !slices.Equal(got, []string{eid(1), eid(2), eid(3)}) {
		t.Errorf("remaining %v", got)
	}

	// Epochs: with xmax = 5<<32 | 100 and pending = 5<<32 | 50, the 32-bit
	// id 40 is 5<<32|40 (below: pruned), 60 is 5<<32|60 (kept), and
	// 4294967000 cannot be of epoch 5 (it would be after xmax), so it is
	// 4<<32|4294967000 (below: pruned).
	if _, err := pool.Exec(ctx, `TRUNCATE `+s.TableName()); err != nil {
		t.Fatal(err)
	}
	record(t, pool, s, stream, 40, 0, 40)
	record(t, pool, s, stream, 60, 0, 60)
	record(t, pool, s, stream, 7, 0, 4294967000)
	record(t, pool, s, stream, 8, 12345, 1) // logical record: not this rule's
	p, _, err = s.BeginTrigger(ctx, pool, stream)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := p.Finish(ctx, 5<<32|100, 5<<32|50); err != nil || n != 2 {
		t.Fatalf("Finish = %d, %v; want 2", n, err)
	}
	if got := remaining(t, pool, s); !slices.Equal(got, []string{eid(8), eid(60)}) {
		t.Errorf("remaining %v, want records 8 and 60", got)
	}
	// Nothing of the trigger engine: no snapshot, no event table read.
	if _, err := pool.Exec(ctx, `DELETE FROM `+s.TableName()+` WHERE lsn IS NULL`); err != nil {
		t.Fatal(err)
	}
	if p, any, err := s.BeginTrigger(context.Background(), pool, stream); p != nil || any || err != nil {
		t.Errorf("BeginTrigger without trigger records = %v, %v, %v", p, any, err)
	}
}
