package trigger

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/logical"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestSameEventsAsLogicalEngine runs the logical engine and this one side by
// side on the oracle data set (REPLICA IDENTITY FULL, so the logical engine
// has full old rows too) and compares every message byte for byte, except
// the fields that differ by design: event_id (derived differently),
// commit_time (transaction start here) and lsn (absent here).
func TestSameEventsAsLogicalEngine(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ddl, dml := pgtest.AllTypes()
	pgtest.Exec(t, dsn, ddl+`; ALTER TABLE t REPLICA IDENTITY FULL`)

	var mu sync.Mutex
	got := map[string][][]byte{} // engine -> messages in handling order
	handler := func(engine string) dispatch.Handler {
		return func(ctx context.Context, c *change.Change) error {
			mu.Lock()
			got[engine] = append(got[engine], append([]byte(nil), c.Message...))
			mu.Unlock()
			return nil
		}
	}
	// One lane each: both engines then hand over the table's changes in
	// commit order.
	trig := config(dsn, route("public", "t", 1, handler("trigger")))
	trig.Name = "src"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := Install(ctx, pool(t, dsn), "", trig.Tables); err != nil {
		t.Fatal(err)
	}
	log := logical.New(logical.Config{
		Name: "src", DSN: dsn, Slot: "xeng", Publication: "xeng",
		Tables:       []dispatch.Table{route("public", "t", 1, handler("logical"))},
		MinReconnect: 50 * time.Millisecond, MaxReconnect: time.Second, Logger: testLogger(),
	})
	done := make(chan error, 1)
	go func() { done <- log.Run(ctx, nil) }()
	defer func() { cancel(); <-done }()
	conn := connect(t, dsn)
	waitUntil(t, time.Minute, "the replication slot", func() bool {
		var active bool
		err := conn.QueryRow(ctx, `SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = 'xeng'`).Scan(&active)
		return err == nil && active
	})

	w := writerConn(t, dsn)
	if _, err := w.PgConn().Exec(ctx, dml).ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec(ctx, `UPDATE public.t SET c_text = c_text || '!' WHERE id % 3 = 0`); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec(ctx, `DELETE FROM public.t WHERE id % 2 = 0`); err != nil {
		t.Fatal(err)
	}
	total := int(queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`))
	start(t, trig)
	waitUntil(t, 2*time.Minute, "both engines", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got["trigger"]) >= total && len(got["logical"]) >= total
	})

	mu.Lock()
	defer mu.Unlock()
	if len(got["trigger"]) != len(got["logical"]) {
		t.Fatalf("trigger engine delivered %d events, logical %d", len(got["trigger"]), len(got["logical"]))
	}
	id := regexp.MustCompile(`^\{"event_id":"[0-9a-f]{32}"`)
	lsn := regexp.MustCompile(`,"lsn":"[0-9A-F]+/[0-9A-F]+"`)
	when := regexp.MustCompile(`,"commit_time":"[^"]+"\}$`)
	norm := func(b []byte) []byte {
		b = id.ReplaceAll(b, []byte(`{"event_id":"-"`))
		b = lsn.ReplaceAll(b, nil)
		return when.ReplaceAll(b, []byte(`,"commit_time":"-"}`))
	}
	for i := range got["trigger"] {
		a, b := norm(got["trigger"][i]), norm(got["logical"][i])
		if !bytes.Equal(a, b) {
			t.Fatalf("event %d differs:\n trigger: %s\n logical: %s", i, clip(a), clip(b))
		}
	}
	t.Logf("%d events identical in both engines", len(got["trigger"]))
}

// TestCommitTimestamp: with track_commit_timestamp on, commit_time is the
// transaction's commit time (as in the logical engine), not its start.
func TestCommitTimestamp(t *testing.T) {
	if os.Getenv(pgtest.EnvDSN) != "" {
		t.Skip("needs its own cluster with track_commit_timestamp = on")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"track_commit_timestamp": "on"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	name, err := c.CreateDatabase(ctx, "committs")
	if err != nil {
		t.Fatal(err)
	}
	dsn := c.DSN(name)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	rec := newRecorder()
	cfg := config(dsn, route("public", "items", 1, rec.handle))
	if err := Install(ctx, pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	// The transaction starts, waits, then commits: start and commit differ.
	pgtest.Exec(t, dsn, `BEGIN; INSERT INTO items VALUES (1); SELECT pg_sleep(0.2); COMMIT`)
	r := start(t, cfg)
	evs := rec.waitFor(t, time.Minute, "1 event", atLeast(1))
	conn := connect(t, dsn)
	var committed time.Time
	if err := conn.QueryRow(ctx, `SELECT pg_xact_commit_timestamp(xmin) FROM items`).Scan(&committed); err != nil {
		t.Fatal(err)
	}
	if !evs[0].CommitTime.Equal(committed) {
		t.Errorf("commit_time %s, want the commit timestamp %s", evs[0].CommitTime, committed)
	}
	_ = r.halt(t)
}
