package pgcdc_test

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// Routing a partitioned table delivers its partitions' changes under its
// own name, partitions attached mid-stream included; routing a partition
// alone keeps working; routing both is refused.
func TestPartitionedTablesLogical(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE meas (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
		CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us');
		CREATE TABLE meas_ap (id int, region text, v int, PRIMARY KEY (id, region));
		CREATE TABLE solo (id int, k text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
		CREATE TABLE solo_a PARTITION OF solo FOR VALUES IN ('a')`)

	rec, part := newRecorder(), newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle("meas", rec.handle)
	w.Handle("solo_a", part.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)

	exec(t, dsn, `INSERT INTO meas VALUES (1, 'eu', 10), (2, 'us', 20);
		UPDATE meas SET v = 11 WHERE id = 1;
		ALTER TABLE meas ATTACH PARTITION meas_ap FOR VALUES IN ('ap');
		INSERT INTO meas VALUES (3, 'ap', 30);
		DELETE FROM meas WHERE id = 2;
		INSERT INTO solo VALUES (7, 'a')`)
	evs := rec.waitCount(t, 5)
	want := []string{"INSERT", "INSERT", "UPDATE", "INSERT", "DELETE"}
	for i, ev := range evs {
		if ev.Table != "meas" || ev.Action != want[i] {
			t.Fatalf("event %d: table %q action %q; want meas %s (all: %+v)", i, ev.Table, ev.Action, want[i], evs)
		}
	}
	var row struct {
		ID     int
		Region string
	}
	if err := evs[3].Data.DecodeNew(&row); err != nil || row.ID != 3 || row.Region != "ap" {
		t.Fatalf("change in the attached partition: %s (%v)", evs[3].Data.New, err)
	}
	if p := part.waitCount(t, 1); p[0].Table != "solo_a" {
		t.Fatalf("partition route got %+v", p[0])
	}

	// A partitioned table and one of its partitions routed together.
	w2 := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("both"))
	w2.Handle("meas", rec.handle)
	w2.Handle("meas_eu", rec.handle)
	err := w2.Serve(context.Background())
	if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "partition") {
		t.Fatalf("routing a partitioned table and its partition: %v; want ErrConfig about partitions", err)
	}
}

// Worker types that normalise to the same name get their own slots and
// each gets its own events; a second worker of one type with other routes
// is refused instead of changing the publication under the first.
func TestWorkerTypesNeverShareASlot(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)`)
	recA, recB := newRecorder(), newRecorder()
	wa := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("Billing-Sync"))
	wa.Handle("a", recA.handle)
	wb := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("billing_sync"))
	wb.Handle("b", recB.handle)
	if wa.Sources()[0].Slot == wb.Sources()[0].Slot {
		t.Fatalf("both worker types use slot %q", wa.Sources()[0].Slot)
	}
	serve(t, wa)
	serve(t, wb)
	waitStreaming(t, dsn, wa.Sources()[0].Slot)
	waitStreaming(t, dsn, wb.Sources()[0].Slot)
	exec(t, dsn, `INSERT INTO a SELECT generate_series(1, 300); INSERT INTO b SELECT generate_series(1, 300)`)
	recA.waitCount(t, 300)
	recB.waitCount(t, 300)
	for _, ev := range append(recA.snapshot(), recB.snapshot()...) {
		if ev.Table != "a" && ev.Table != "b" {
			t.Fatalf("unexpected event %+v", ev)
		}
	}
	if n := len(recA.snapshot()); n != 300 || recA.snapshot()[0].Table != "a" {
		t.Fatalf("worker A got %d events", n)
	}

	// Same type as A, other routes, while A streams.
	wc := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("Billing-Sync"))
	wc.Handle("b", recB.handle)
	err := wc.Serve(context.Background())
	if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "SetWorkerType") {
		t.Fatalf("second worker of one type with other routes: %v; want ErrConfig naming SetWorkerType", err)
	}
	exec(t, dsn, `INSERT INTO a VALUES (1000)`)
	recA.waitCount(t, 301)
}

// A change whose column type was dropped while it waited in the WAL is
// delivered with the text the server sent, instead of wedging the source.
func TestDroppedTypeInBacklog(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TYPE mood AS ENUM ('happy', 'sad'); CREATE TABLE t (id int PRIMARY KEY, m mood); CREATE TABLE other (id int PRIMARY KEY)`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle("t", rec.handle)
	w.Handle("other", rec.handle)
	r := serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	r.stop(t)

	exec(t, dsn, `INSERT INTO t VALUES (1, 'happy')`)
	exec(t, dsn, `ALTER TABLE t ALTER COLUMN m TYPE text; DROP TYPE mood`)
	exec(t, dsn, `INSERT INTO t VALUES (2, 'plain'); INSERT INTO other VALUES (1)`)

	w2 := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w2.Handle("t", rec.handle)
	w2.Handle("other", rec.handle)
	serve(t, w2)
	evs := rec.waitCount(t, 3)
	if string(evs[0].Data.New) != `{"id":1,"m":"happy"}` || string(evs[1].Data.New) != `{"id":2,"m":"plain"}` || evs[2].Table != "other" {
		t.Fatalf("events: %s, %s, %s", evs[0].Data.New, evs[1].Data.New, evs[2].Table)
	}
}

// A SQL_ASCII database may hold bytes that are not UTF-8: logical mode
// delivers them as U+FFFD and keeps streaming.
func TestSQLASCIIInvalidBytesLogical(t *testing.T) {
	c := pgtest.Shared(t)
	admin := c.DSN("postgres")
	exec(t, admin, `DROP DATABASE IF EXISTS pgcdc_sqlascii`)
	exec(t, admin, `CREATE DATABASE pgcdc_sqlascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)
	t.Cleanup(func() { pgtest.Exec(t, admin, `DROP DATABASE IF EXISTS pgcdc_sqlascii WITH (FORCE)`) })
	dsn := c.DSN("pgcdc_sqlascii")
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, s text)`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle("t", rec.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO t VALUES (1, E'caf\xe9'); INSERT INTO t VALUES (2, 'ok ü')`)
	evs := rec.waitCount(t, 2)
	if string(evs[0].Data.New) != `{"id":1,"s":"caf`+"\uFFFD"+`"}` || string(evs[1].Data.New) != `{"id":2,"s":"ok ü"}` {
		t.Fatalf("events: %s / %s", evs[0].Data.New, evs[1].Data.New)
	}
}

// A second HandleTx is refused; inside Each, HandlerRoute is the route as
// registered.
func TestHandleTxOnceAndRoutes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)`)
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.HandleTx(func(*pgcdc.TxContext) error { return nil }, "a")
	w.HandleTx(func(*pgcdc.TxContext) error { return nil }, "public.b")
	if err := w.Serve(context.Background()); !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "HandleTx") {
		t.Fatalf("two HandleTx calls: %v", err)
	}

	routes := make(chan string, 4)
	w2 := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w2.HandleTx(func(tx *pgcdc.TxContext) error {
		return tx.Each(func(ec *pgcdc.EventContext) error {
			routes <- ec.HandlerRoute()
			return nil
		})
	}, "a", "public.b")
	serve(t, w2)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); COMMIT`)
	for _, want := range []string{"a", "public.b"} {
		select {
		case got := <-routes:
			if got != want {
				t.Fatalf("HandlerRoute = %q, want %q", got, want)
			}
		case <-time.After(time.Minute):
			t.Fatal("transaction not delivered")
		}
	}
}

// Shutdown returns by its context even when a handler ignores its own, on
// the direct path and on the lanes; Serve returns once the handler has.
func TestShutdownReturnsByItsContext(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lanes int
	}{{"direct", 1}, {"lanes", 4}} {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pgtest.NewDatabase(t)
			exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
			release := make(chan struct{})
			blocked := make(chan struct{})
			var n atomic.Int32
			w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(tc.lanes))
			w.Handle("t", func(ec *pgcdc.EventContext) error {
				if n.Add(1) == 10 {
					close(blocked)
					<-release // ignores ec.Context()
				}
				return nil
			})
			errc := make(chan error, 1)
			go func() { errc <- w.Serve(context.Background()) }()
			waitStreaming(t, dsn, defaultSlot)
			for i := range 10 { // one row per transaction: the first ones prove the handler fast
				exec(t, dsn, `INSERT INTO t VALUES ($1)`, i)
			}
			<-blocked
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := w.Shutdown(ctx)
			if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
				t.Fatalf("Shutdown: %v after %s; want the deadline within about a second", err, time.Since(start))
			}
			select {
			case err := <-errc:
				t.Fatalf("Serve returned (%v) while a handler still ran", err)
			default:
			}
			close(release)
			select {
			case <-errc:
			case <-time.After(time.Minute):
				t.Fatal("Serve did not return after the handler did")
			}
		})
	}
}

// A handler's slow first call does not hold up the other tables of the
// source.
func TestSlowFirstCallDoesNotStallOtherTables(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)`)
	release := make(chan struct{})
	defer close(release)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(8))
	w.Handle("a", func(ec *pgcdc.EventContext) error {
		select {
		case <-release:
		case <-ec.Context().Done():
		}
		return ec.Context().Err()
	})
	w.Handle("b", rec.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO a VALUES (1)`)
	exec(t, dsn, `INSERT INTO b VALUES (1)`)
	rec.waitFor(t, 10*time.Second, "b's event while a's first call blocks", func(e []pgcdc.EventPayload) bool { return len(e) == 1 })
}

// Relations that are not tables, and system catalogs, are refused saying
// what they are; a dot in a schema name can be routed with
// CreateTableRoute; Lag is -1 and Teardown works once Serve returned.
func TestRouteKindsAndLifecycle(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY); CREATE VIEW v AS SELECT * FROM t;
		CREATE MATERIALIZED VIEW mv AS SELECT * FROM t; CREATE SEQUENCE sq;
		CREATE SCHEMA "my.schema"; CREATE TABLE "my.schema".d (id int PRIMARY KEY)`)
	for route, want := range map[string]string{"v": "a view", "mv": "a materialized view", "sq": "a sequence", "pg_catalog.pg_class": "system catalog"} {
		w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
		w.Handle(route, func(*pgcdc.EventContext) error { return nil })
		if err := w.Serve(context.Background()); err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "REPLICA IDENTITY") {
			t.Errorf("route %q: %v; want an error saying %q", route, err, want)
		}
	}

	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle(pgcdc.CreateTableRoute("", "my.schema", "d"), rec.handle)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO "my.schema".d VALUES (1)`)
	if ev := rec.waitCount(t, 1)[0]; ev.Schema != "my.schema" || ev.Table != "d" {
		t.Fatalf("event %+v", ev)
	}
	cancel()
	<-errc
	if lag := w.Lag(""); lag != -1 {
		t.Errorf("Lag after Serve returned = %d, want -1", lag)
	}
	if err := w.Teardown(context.Background()); err != nil {
		t.Fatalf("Teardown after Serve returned: %v", err)
	}
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database()`, defaultSlot)[0]; n != "0" {
		t.Fatalf("slot still there after Teardown")
	}
}

// Generated columns: PostgreSQL 15 does not publish them, so logical-mode
// events name them in "omitted_generated" instead of silently differing
// from the trigger mode's.
func TestGeneratedColumnsNamedWhenOmitted(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE g (id int PRIMARY KEY, price numeric, qty int, total numeric GENERATED ALWAYS AS (price * qty) STORED)`)
		rec := newRecorder()
		w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
		w.Handle("g", rec.handle)
		serve(t, w)
		m.ready(t, dsn, defaultSlot, 1)
		exec(t, dsn, `INSERT INTO g VALUES (1, 2.5, 4)`)
		ev := rec.waitCount(t, 1)[0]
		want := queryStrings(t, dsn, `SELECT row_to_json(g)::text FROM g`)[0]
		switch {
		case string(ev.Data.New) == want && len(ev.OmittedGenerated) == 0:
		case m.name == "logical" && string(ev.Data.New) == `{"id":1,"price":2.5,"qty":4}` && len(ev.OmittedGenerated) == 1 && ev.OmittedGenerated[0] == "total":
		default:
			t.Fatalf("new %s omitted %v; row_to_json %s", ev.Data.New, ev.OmittedGenerated, want)
		}
	})
}

// Trigger mode captures partitioned tables too: the partitions' changes
// (also of a partition attached later) come under the partitioned table's
// name.
func TestPartitionedTablesTrigger(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE meas (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
		CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
		CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us');
		CREATE TABLE meas_ap (id int, region text, v int, PRIMARY KEY (id, region))`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger))
	w.Handle("meas", rec.handle)
	serve(t, w)
	modes[1].ready(t, dsn, defaultSlot, 1)
	exec(t, dsn, `INSERT INTO meas VALUES (1, 'eu', 10), (2, 'us', 20);
		UPDATE meas SET v = 11 WHERE id = 1;
		ALTER TABLE meas ATTACH PARTITION meas_ap FOR VALUES IN ('ap');
		INSERT INTO meas VALUES (3, 'ap', 30);
		DELETE FROM meas WHERE id = 2`)
	evs := rec.waitCount(t, 5)
	want := []string{"INSERT", "INSERT", "UPDATE", "INSERT", "DELETE"}
	for i, ev := range evs {
		if ev.Table != "meas" || ev.Action != want[i] {
			t.Fatalf("event %d: table %q action %q; want meas %s", i, ev.Table, ev.Action, want[i])
		}
	}
	w2 := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger), pgcdc.SetWorkerType("both"))
	w2.Handle("meas", rec.handle)
	w2.Handle("meas_eu", rec.handle)
	if err := w2.Serve(context.Background()); !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "partition") {
		t.Fatalf("routing a partitioned table and its partition: %v", err)
	}
}

// EventContext.KeyColumns names the primary key in key order, in both
// engines, for the sinks that key records by it.
func TestKeyColumns(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE k (v int, region text, id int, PRIMARY KEY (id, region)); CREATE TABLE nk (v int); ALTER TABLE nk REPLICA IDENTITY FULL`)
		keys := make(chan string, 4)
		w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
		for _, route := range []string{"k", "nk"} {
			w.Handle(route, func(ec *pgcdc.EventContext) error {
				keys <- ec.HandlerRoute() + ":" + strings.Join(ec.KeyColumns(), ",")
				return nil
			})
		}
		serve(t, w)
		m.ready(t, dsn, defaultSlot, 2)
		exec(t, dsn, `INSERT INTO k VALUES (1, 'eu', 7); DELETE FROM k; INSERT INTO nk VALUES (1)`)
		got := map[string]int{}
		for range 3 {
			select {
			case k := <-keys:
				got[k]++
			case <-time.After(time.Minute):
				t.Fatal("events not delivered")
			}
		}
		if got["k:id,region"] != 2 || got["nk:"] != 1 {
			t.Fatalf("KeyColumns per event: %v", got)
		}
	})
}
