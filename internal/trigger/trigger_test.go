package trigger

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestBasicInsertUpdateDelete(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, name text)`)
	rec := newRecorder()
	r := start(t, config(dsn, route("public", "items", 2, rec.handle)))
	waitUntil(t, 30*time.Second, "install", func() bool {
		conn := connect(t, dsn)
		return queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcdc_capture'`) == 1
	})
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1, 'a'); UPDATE items SET name = 'b' WHERE id = 1; DELETE FROM items WHERE id = 1`)
	evs := rec.waitFor(t, 30*time.Second, "3 events", atLeast(3))
	want := []struct{ action, old, new string }{
		{"INSERT", "null", `{"id":1,"name":"a"}`},
		{"UPDATE", `{"id":1,"name":"a"}`, `{"id":1,"name":"b"}`},
		{"DELETE", `{"id":1,"name":"b"}`, "null"},
	}
	for i, w := range want {
		e := evs[i]
		if e.Action != w.action || string(e.Data.Old) != w.old || string(e.Data.New) != w.new || e.Table != "items" || e.Schema != "public" {
			t.Errorf("event %d = %s", i, rec.raw[i])
		}
		if len(e.EventID) != 32 || e.XID == 0 || e.CommitTime.IsZero() {
			t.Errorf("event %d: bad id/xid/time: %s", i, rec.raw[i])
		}
	}
	if err := r.halt(t); err != nil {
		t.Fatalf("Run after stop = %v, want nil", err)
	}
	conn := connect(t, dsn)
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`); n != 0 {
		t.Errorf("%d rows left in the event table", n)
	}
}

func TestMissingTableIsFatal(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE present (id int PRIMARY KEY)`)
	rec := newRecorder()
	cfg := config(dsn, route("public", "present", 1, rec.handle), route("Shop", "Gone", 1, rec.handle))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := New(cfg).Run(ctx, nil)
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrTableNotFound) {
		t.Fatalf("Run = %v, want a fatal ErrTableNotFound", err)
	}
	if !strings.Contains(err.Error(), `"Shop"."Gone"`) || !strings.Contains(err.Error(), `route "Shop.Gone"`) {
		t.Errorf("error does not name the table and route: %v", err)
	}
	conn := connect(t, dsn)
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'pgcdc'`); n != 0 {
		t.Errorf("schema created although a table is missing")
	}
}
