package pgcdc_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// Action and changed-column filters: filtered events are acknowledged
// (the position moves past them) without calling the handler.
func TestActionAndChangedColumnFilters(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE acc (id int PRIMARY KEY, status text, note text); ALTER TABLE acc REPLICA IDENTITY FULL;
			CREATE TABLE ins (id int PRIMARY KEY, v int)`)
		changed, inserts := newRecorder(), newRecorder()
		w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
		w.Handle("acc", changed.handle, pgcdc.WithChangedColumns("status"))
		w.Handle("ins", inserts.handle, pgcdc.WithActions(pgcdc.ActionInsert, pgcdc.ActionDelete))
		serve(t, w)
		m.ready(t, dsn, defaultSlot, 2)
		exec(t, dsn, `INSERT INTO acc VALUES (1, 'new', 'a');
			UPDATE acc SET note = 'b' WHERE id = 1;
			UPDATE acc SET status = 'paid' WHERE id = 1;
			UPDATE acc SET note = 'c' WHERE id = 1;
			INSERT INTO ins VALUES (1, 1); UPDATE ins SET v = 2; DELETE FROM ins`)
		m.settled(t, dsn, defaultSlot)
		got := changed.snapshot()
		if len(got) != 2 || got[0].Action != "INSERT" || got[1].Action != "UPDATE" || !strings.Contains(string(got[1].Data.New), `"paid"`) {
			t.Fatalf("changed-column route got %d events: %+v", len(got), got)
		}
		if got := inserts.snapshot(); len(got) != 2 || got[0].Action != "INSERT" || got[1].Action != "DELETE" {
			t.Fatalf("action route got %+v", got)
		}
	})
}

// WithoutColumns keeps a column out of the events in both modes; in the
// logical mode the server does not even send it (publication column list).
func TestColumnFilters(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text, bio text);
			CREATE TABLE notes (id int PRIMARY KEY, title text, body text)`)
		users, notes := newRecorder(), newRecorder()
		w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn))
		w.Handle("users", users.handle, pgcdc.WithoutColumns("password_hash"))
		w.Handle("notes", notes.handle, pgcdc.WithColumns("id", "title"))
		serve(t, w)
		m.ready(t, dsn, defaultSlot, 2)
		exec(t, dsn, `INSERT INTO users VALUES (1, 'a@x', 'secret', 'hi'); UPDATE users SET bio = 'there';
			INSERT INTO notes VALUES (1, 't', 'long body')`)
		u := users.waitCount(t, 2)
		if string(u[0].Data.New) != `{"id":1,"email":"a@x","bio":"hi"}` || strings.Contains(string(u[1].Data.New)+string(u[1].Data.Old), "secret") {
			t.Fatalf("users events: %s / %s %s", u[0].Data.New, u[1].Data.Old, u[1].Data.New)
		}
		if n := notes.waitCount(t, 1); string(n[0].Data.New) != `{"id":1,"title":"t"}` {
			t.Fatalf("notes event: %s", n[0].Data.New)
		}
		if m.name == "logical" {
			cols := queryStrings(t, dsn, `SELECT array_to_string(attnames, ',') FROM pg_publication_tables WHERE pubname = $1 AND tablename = 'users'`, defaultSlot)
			if len(cols) != 1 || cols[0] != "id,email,bio" {
				t.Fatalf("publication column list of users: %v", cols)
			}
		}
	})
}

func TestFilterSettingsRefused(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, a text)`)
	for name, tc := range map[string]struct {
		opts []pgcdc.HandlerOption
		want string
	}{
		"both column lists":       {[]pgcdc.HandlerOption{pgcdc.WithColumns("id"), pgcdc.WithoutColumns("a")}, "WithColumns and WithoutColumns"},
		"unknown action":          {[]pgcdc.HandlerOption{pgcdc.WithActions("UPSERT")}, "UPSERT"},
		"primary key left out":    {[]pgcdc.HandlerOption{pgcdc.WithoutColumns("id")}, "primary key"},
		"changed without old row": {[]pgcdc.HandlerOption{pgcdc.WithChangedColumns("a")}, "REPLICA IDENTITY FULL"},
	} {
		w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
		w.Handle("t", func(*pgcdc.EventContext) error { return nil }, tc.opts...)
		err := w.Serve(context.Background())
		if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want ErrConfig saying %q", name, err, tc.want)
		}
	}
}

// A column added after the publication's column list was set is not sent
// by the server: that is reported (error callback), not silent.
func TestColumnAddedAfterColumnListIsReported(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE u (id int PRIMARY KEY, secret text, a text)`)
	errc := make(chan error, 4)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetOnErrorConnectionCallback(func(err error) {
		select {
		case errc <- err:
		default:
		}
	}))
	w.Handle("u", rec.handle, pgcdc.WithoutColumns("secret"))
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `ALTER TABLE u ADD COLUMN extra text; INSERT INTO u VALUES (1, 's', 'a', 'e')`)
	if ev := rec.waitCount(t, 1)[0]; strings.Contains(string(ev.Data.New), "secret") {
		t.Fatalf("event %s", ev.Data.New)
	}
	select {
	case err := <-errc:
		if !strings.Contains(err.Error(), `"extra"`) || !strings.Contains(err.Error(), "restart") {
			t.Fatalf("error callback: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the unpublished column was not reported")
	}
}
