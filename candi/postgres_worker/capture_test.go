package postgresworker

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// With the default capture mode (auto) and a role that may not replicate,
// the worker falls back to pgcdc's trigger engine; handlers see the same
// shape, and UPDATE/DELETE carry the full old row without REPLICA IDENTITY
// FULL.
func TestAutoFallsBackToTriggers(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	role := "app_" + strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(u.Path, "/")), "-", "_")
	if len(role) > 60 {
		role = role[:60]
	}
	pgtest.Exec(t, dsn, fmt.Sprintf(`CREATE ROLE %[1]s LOGIN NOREPLICATION NOSUPERUSER;
		GRANT CREATE ON DATABASE %[2]q TO %[1]s; GRANT ALL ON SCHEMA public TO %[1]s;
		SET ROLE %[1]s; CREATE TABLE items (id int PRIMARY KEY, v text); RESET ROLE;`, role, strings.TrimPrefix(u.Path, "/")))
	t.Cleanup(func() {
		pgtest.Exec(t, dsn, fmt.Sprintf(`DROP OWNED BY %[1]s CASCADE; DROP ROLE %[1]s`, role))
	})
	u.User = url.User(role)
	appDSN := u.String()

	rec := newRecorder()
	mod := &testModule{wt: types.PostgresListener, mount: func(g *types.WorkerHandlerGroup) { g.Add("items", rec.handler) }}
	w := NewWorker(&testService{mods: []factory.ModuleFactory{mod}}, SetPostgresDSN(appDSN), SetDebugMode(false))
	serve(t, w)

	// The trigger exists once the worker started: insert until one arrives.
	for id := -1; len(rec.snapshot()) == 0; id-- {
		pgtest.Exec(t, appDSN, fmt.Sprintf(`INSERT INTO items VALUES (%d, 'ping')`, id))
		select {
		case <-rec.ch:
		case <-time.After(200 * time.Millisecond):
		}
		if id < -300 {
			t.Fatal("no event within a minute")
		}
	}
	before := len(rec.snapshot())
	pgtest.Exec(t, appDSN, `INSERT INTO items VALUES (1, 'a')`)
	pgtest.Exec(t, appDSN, `UPDATE items SET v = 'b' WHERE id = 1`)
	pgtest.Exec(t, appDSN, `DELETE FROM items WHERE id = 1`)
	got := rec.waitN(t, before+3, time.Minute)[before:]
	for i, want := range []string{ActionInsert, ActionUpdate, ActionDelete} {
		if got[i].Payload.Action != want || got[i].Key != got[i].Payload.EventID || !md5Hex.MatchString(got[i].Key) {
			t.Errorf("event %d: %s key %q event_id %q", i, got[i].Payload.Action, got[i].Key, got[i].Payload.EventID)
		}
	}
	if m := string(got[1].Message); !strings.Contains(m, `"data":{"old_id":"","new_id":"","old":{"id":1,"v":"a"},"new":{"id":1,"v":"b"}}`) {
		t.Errorf("UPDATE without REPLICA IDENTITY FULL in trigger mode: %s", m)
	}
	if m := string(got[2].Message); !strings.Contains(m, `"old":{"id":1,"v":"b"},"new":null}`) {
		t.Errorf("DELETE: %s", m)
	}
}
