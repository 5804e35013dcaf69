package pgcdc_test

// Integration tests of the trigger-mode and CaptureAuto items of issue 10,
// each reproducing the report against a real server.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/internal/trigger"
)

// newEncodedDB creates a database with the given server encoding (C
// locale, template0), dropped when the test ends, and returns its DSN.
func newEncodedDB(t *testing.T, encoding string) string {
	t.Helper()
	base := pgtest.NewDatabase(t) // a unique name to derive ours from
	cfg, err := pgx.ParseConfig(base)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.ToLower(encoding) + "_" + cfg.Database
	if len(name) > 60 {
		name = name[:60]
	}
	exec(t, base, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()+` ENCODING '`+encoding+`' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := pgtest.Shared(t).DropDatabase(ctx, name); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	// Tests write in UTF-8 (pgx otherwise gets the database's encoding).
	return strings.Replace(base, "/"+cfg.Database, "/"+name, 1) + "&client_encoding=UTF8"
}

// asRole returns dsn with its user replaced by role.
func asRole(t *testing.T, dsn, role string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Replace(dsn, "://"+cfg.User+"@", "://"+role+"@", 1)
}

// needOwnedCluster skips tests that create login roles without passwords.
func needOwnedCluster(t *testing.T) {
	t.Helper()
	if !pgtest.Shared(t).Owned() {
		t.Skip("creates login roles without passwords: needs the throwaway cluster")
	}
}

// newRole creates a login role (dropped with what it owns at the end).
func newRole(t *testing.T, dsn, prefix, attrs string) string {
	t.Helper()
	role := strings.ToLower(prefix + "_" + strings.NewReplacer("/", "_", "-", "_").Replace(t.Name()))
	if len(role) > 60 {
		role = role[:60]
	}
	exec(t, dsn, `DROP ROLE IF EXISTS `+role+`; CREATE ROLE `+role+` LOGIN `+attrs)
	t.Cleanup(func() { pgtest.Exec(t, dsn, `DROP OWNED BY `+role+` CASCADE; DROP ROLE `+role) })
	return role
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

// triggerWorker builds a trigger-mode worker with quick polling defaults.
func triggerWorker(t *testing.T, dsn string, opts ...pgcdc.OptionFunc) *pgcdc.Worker {
	t.Helper()
	return newWorker(t, append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger)}, opts...)...)
}

// waitTrigger waits until the capture trigger of schema is on n tables.
func waitTrigger(t *testing.T, dsn, schema string, n int) {
	t.Helper()
	waitQuery(t, dsn, fmt.Sprintf(`SELECT count(*) >= %d FROM pg_trigger WHERE tgname = $1`, n), trigger.TriggerName(schema))
}

// #13: capture never makes a valid user write fail, whatever json value a
// column accepts.
func TestTriggerAwkwardValuesNeverFailWrites(t *testing.T) {
	t.Run("UTF8", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE aw (k text, n int, j json, jb jsonb, ja json[], tx text, PRIMARY KEY (k, n))`)
		rec := newRecorder()
		w := triggerWorker(t, dsn)
		w.Handle("aw", rec.handle)
		serve(t, w)
		waitTrigger(t, dsn, "pgcdc", 1)
		// Every one of these is accepted by the column; each used to fail
		// the INSERT (\u0000) or would with a key parsed from the row JSON.
		values := []string{
			`{"a":"\u0000"}`, `{"k\u00e9":"\u4e2d"}`, `"\ud83d\ude00"`, `"\ud800"`, `{"\u0000":1}`,
			`[1, "x\\\"y", {"z": null}]`, `{"a":1,"a":2}`, `{"sp" :  "aces"}`, `"\/\b\f\n\r\t"`,
		}
		for i, v := range values {
			exec(t, dsn, `INSERT INTO aw VALUES ($1, $2, $3::json, '{"x":"\u00e9"}', ARRAY[$3::json], $4)`, "key\x01\t\"'\\", i, v, "t\u00e9\u4e2d")
		}
		exec(t, dsn, `UPDATE aw SET tx = 'u' WHERE n = 0; DELETE FROM aw WHERE n = 1`)
		evs := rec.waitCount(t, len(values)+2)
		for i, raw := range rec.raw {
			if !utf8.Valid(raw) || !json.Valid(raw) {
				t.Errorf("event %d is not valid UTF-8 JSON: %q", i, raw)
			}
		}
		for i, v := range values {
			var row struct {
				J json.RawMessage `json:"j"`
			}
			if err := json.Unmarshal(evs[i].Data.New, &row); err != nil {
				t.Fatal(err)
			}
			if string(row.J) != v {
				t.Errorf("json value %d = %s, want %s as stored", i, row.J, v)
			}
		}
		if evs[len(values)].Action != "UPDATE" || evs[len(values)+1].Action != "DELETE" {
			t.Errorf("last events %s, %s: want UPDATE, DELETE", evs[len(values)].Action, evs[len(values)+1].Action)
		}
	})
	t.Run("LATIN1", func(t *testing.T) {
		dsn := newEncodedDB(t, "LATIN1")
		exec(t, dsn, `CREATE TABLE aw (k text PRIMARY KEY, j json)`)
		rec := newRecorder()
		w := triggerWorker(t, dsn)
		w.Handle("aw", rec.handle)
		serve(t, w)
		waitTrigger(t, dsn, "pgcdc", 1)
		exec(t, dsn, `INSERT INTO aw VALUES (E'k\xe9', '{"k\u00e9": "\u4e2d"}'), ('b', '{"a":"\u0000"}')`)
		exec(t, dsn, `UPDATE aw SET j = '{"\u4e2d":1}' WHERE k = 'b'`)
		evs := rec.waitCount(t, 3)
		if got := string(evs[0].Data.New); got != `{"k":"ké","j":{"k\u00e9": "\u4e2d"}}` {
			t.Errorf("new = %s", got)
		}
	})
}

// #14: events are UTF-8 JSON whatever the database encoding.
func TestTriggerLatin1DeliversUTF8(t *testing.T) {
	dsn := newEncodedDB(t, "LATIN1")
	exec(t, dsn, `CREATE TABLE "lät" (id int PRIMARY KEY, "téx" text, j json, jb jsonb, a text[])`)
	rec := newRecorder()
	var fixed atomic.Bool
	w := triggerWorker(t, dsn, pgcdc.SetMaxRetries(0))
	w.Handle("lät", func(ec *pgcdc.EventContext) error {
		if ec.Event().Data.New != nil && strings.Contains(string(ec.Event().Data.New), `"id":2`) && !fixed.Load() {
			return pgcdc.Permanent(errors.New("not yet"))
		}
		return rec.handle(ec)
	})
	serve(t, w)
	waitTrigger(t, dsn, "pgcdc", 1)
	// E'\xe9' is é in LATIN1, whatever the writing session's encoding.
	exec(t, dsn, `INSERT INTO "lät" VALUES (1, E'h\xe9llo \xdf', E'{"\xe9":"\xfc"}', E'{"\xe9":"\xfc"}', ARRAY[E'\xe4', E'\xf6'])`)
	evs := rec.waitCount(t, 1)
	// A dead letter keeps its characters, and comes back as UTF-8.
	exec(t, dsn, `INSERT INTO "lät" VALUES (2, E'\xe9t\xe9')`)
	waitQuery(t, dsn, `SELECT count(*) = 1 FROM pgcdc.dead_letters WHERE payload->'data'->'new'->>'téx' = 'été'`)
	fixed.Store(true)
	if n, err := w.RedeliverDeadLetters(context.Background(), "", 0); n != 1 || err != nil {
		t.Fatalf("RedeliverDeadLetters = %d, %v", n, err)
	}
	if got := rec.snapshot(); len(got) != 2 || string(got[1].Data.New) != `{"id":2,"téx":"été","j":null,"jb":null,"a":null}` {
		t.Errorf("redelivered %s", got[len(got)-1].Data.New)
	}
	if !utf8.Valid(rec.raw[0]) {
		t.Fatalf("event is not UTF-8: %q", rec.raw[0])
	}
	want := `{"id":1,"téx":"héllo ß","j":{"é":"ü"},"jb":{"é": "ü"},"a":["ä","ö"]}`
	if got := string(evs[0].Data.New); got != want {
		t.Errorf("new = %s, want %s", got, want)
	}
	if evs[0].Table != "lät" {
		t.Errorf("table = %q", evs[0].Table)
	}
}

// #15: a SQL_ASCII database holding bytes that are not UTF-8: each such
// byte is delivered as U+FFFD; the rows after it are delivered too.
func TestTriggerSQLASCIIInvalidBytes(t *testing.T) {
	dsn := newEncodedDB(t, "SQL_ASCII")
	exec(t, dsn, `CREATE TABLE s (id int PRIMARY KEY, tx text)`)
	rec := newRecorder()
	w := triggerWorker(t, dsn)
	w.Handle("s", rec.handle)
	serve(t, w)
	waitTrigger(t, dsn, "pgcdc", 1)
	exec(t, dsn, `INSERT INTO s VALUES (1, E'caf\xe9'), (2, 'ok'), (3, E'\xe4\xb8\xad')`)
	evs := rec.waitCount(t, 3)
	want := []string{"{\"id\":1,\"tx\":\"caf\uFFFD\"}", `{"id":2,"tx":"ok"}`, `{"id":3,"tx":"中"}`}
	for i, w := range want {
		if !utf8.Valid(rec.raw[i]) {
			t.Errorf("event %d is not UTF-8: %q", i, rec.raw[i])
		}
		if got := string(evs[i].Data.New); got != w {
			t.Errorf("event %d new = %s, want %s", i, got, w)
		}
	}
}

// #16: reg* values render the same in both engines when the database has
// its own search_path.
func TestRegTypesSameInBothEngines(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE SCHEMA app; CREATE SCHEMA ext; CREATE TABLE app.other (id int);
		CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
		CREATE TYPE app.mood AS ENUM ('x');
		CREATE TABLE public.r (id int PRIMARY KEY, c regclass, p regproc, ty regtype, cs regclass[]);
		ALTER DATABASE `+pgx.Identifier{dbName(t, dsn)}.Sanitize()+` SET search_path = app, ext, public`)
	logicalRec, triggerRec := newRecorder(), newRecorder()
	lw := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("lg"))
	lw.Handle("public.r", logicalRec.handle)
	serve(t, lw)
	tw := triggerWorker(t, dsn, pgcdc.SetWorkerType("tg"))
	tw.Handle("public.r", triggerRec.handle)
	serve(t, tw)
	waitStreaming(t, dsn, lw.Sources()[0].Slot)
	waitTrigger(t, dsn, tw.TriggerSchema(), 1)
	exec(t, dsn, `INSERT INTO public.r VALUES (1, 'app.other', 'app.f', 'app.mood', ARRAY['app.other'::regclass, 'pg_class'::regclass])`)
	l, tr := logicalRec.waitCount(t, 1), triggerRec.waitCount(t, 1)
	if string(l[0].Data.New) != string(tr[0].Data.New) {
		t.Errorf("engines differ:\nlogical %s\ntrigger %s", l[0].Data.New, tr[0].Data.New)
	}
	if want := `{"id":1,"c":"app.other","p":"app.f","ty":"app.mood","cs":["app.other","pg_class"]}`; string(tr[0].Data.New) != want {
		t.Errorf("trigger new = %s, want %s", tr[0].Data.New, want)
	}
}

// #10: two worker types routing one table each get every change; two
// instances of one type share them.
func TestTriggerWorkerTypesEachGetEverything(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	billing, search, billing2 := newRecorder(), newRecorder(), newRecorder()
	for _, c := range []struct {
		wt  string
		rec *recorder
	}{{"billing", billing}, {"search", search}, {"billing", billing2}} {
		w := triggerWorker(t, dsn, pgcdc.SetWorkerType(c.wt))
		w.Handle("t", c.rec.handle)
		serve(t, w)
		waitTrigger(t, dsn, w.TriggerSchema(), 1)
	}
	exec(t, dsn, `INSERT INTO t SELECT generate_series(1, 1000)`)
	search.waitCount(t, 1000)
	// Two recorders (each signals only its own waiters): poll both.
	for deadline := time.Now().Add(60 * time.Second); len(billing.snapshot())+len(billing2.snapshot()) < 1000; {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for 1000 billing events; got %d + %d", len(billing.snapshot()), len(billing2.snapshot()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	ids := func(recs ...*recorder) map[string]int {
		out := map[string]int{}
		for _, r := range recs {
			for _, e := range r.snapshot() {
				out[string(e.Data.New)]++
			}
		}
		return out
	}
	if got := ids(search); len(got) != 1000 {
		t.Errorf("search got %d distinct rows, want 1000", len(got))
	}
	if got := ids(billing, billing2); len(got) != 1000 {
		t.Errorf("billing got %d distinct rows, want 1000", len(got))
	}
	t.Logf("billing instances: %d + %d events", len(billing.snapshot()), len(billing2.snapshot()))
	schemas := queryStrings(t, dsn, `SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'pgcdc%' ORDER BY 1`)
	if !slices.Equal(schemas, []string{"pgcdc_billing", "pgcdc_search"}) {
		t.Errorf("schemas %q", schemas)
	}
}

// #11: a TRUNCATE is a barrier: nothing committed after it is handled
// before it, nothing before it after it.
func TestTriggerTruncateIsABarrier(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE tr (id int PRIMARY KEY)`)
	var mu sync.Mutex
	var seq []string // "I1", "T", ...
	w := triggerWorker(t, dsn, pgcdc.SetMaxGoroutines(4))
	w.Handle("tr", func(ec *pgcdc.EventContext) error {
		e := ec.Event()
		s := "T"
		if e.Action == "TRUNCATE" {
			// A slow TRUNCATE: a later insert handled meanwhile is recorded
			// before it.
			time.Sleep(5 * time.Millisecond)
		} else {
			time.Sleep(time.Millisecond) // slow enough for the lanes
			var row struct{ ID int }
			if err := json.Unmarshal(e.Data.New, &row); err != nil {
				return err
			}
			s = fmt.Sprintf("I%d", row.ID)
		}
		mu.Lock()
		seq = append(seq, s)
		mu.Unlock()
		return nil
	}, pgcdc.WithTruncate())
	serve(t, w)
	waitTrigger(t, dsn, "pgcdc", 1)
	const rounds = 20
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for range rounds {
		for _, sql := range []string{`INSERT INTO tr VALUES (1), (2)`, `TRUNCATE tr`, `INSERT INTO tr VALUES (3)`} {
			if _, err := conn.Exec(context.Background(), sql); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitQuery(t, dsn, `SELECT NOT EXISTS (SELECT 1 FROM pgcdc.events)`)
	mu.Lock()
	got := append([]string(nil), seq...)
	mu.Unlock()
	// Between two TRUNCATEs: the 3 of the round before and the 1, 2 of the
	// next, in any order (different rows); 1, 2 before the first; 3 after
	// the last.
	var segments [][]string
	cur := []string{}
	for _, s := range got {
		if s == "T" {
			segments = append(segments, cur)
			cur = []string{}
			continue
		}
		cur = append(cur, s)
	}
	segments = append(segments, cur)
	if len(segments) != rounds+1 {
		t.Fatalf("%d TRUNCATEs handled, want %d: %v", len(segments)-1, rounds, got)
	}
	for i, s := range segments {
		slices.Sort(s)
		want := []string{"I1", "I2", "I3"}
		switch i {
		case 0:
			want = []string{"I1", "I2"}
		case rounds:
			want = []string{"I3"}
		}
		if !slices.Equal(s, want) {
			t.Errorf("between TRUNCATE %d and %d: %v, want %v (whole sequence %v)", i, i+1, s, want, got)
		}
	}
}

// #4 and the dead-letter lsn: a plain application role (no REPLICATION,
// no superuser, CREATE on the database, no CREATE on public) with
// CaptureAuto and default options works, and its dead letters land in
// pgcdc's schema without an "lsn" of 0/0.
func TestPlainRoleDefaultsAndDeadLetters(t *testing.T) {
	needOwnedCluster(t)
	dsn := pgtest.NewDatabase(t)
	db := pgx.Identifier{dbName(t, dsn)}.Sanitize()
	app := newRole(t, dsn, "app", "")
	exec(t, dsn, `REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT CREATE ON DATABASE `+db+` TO `+app+`;
		CREATE SCHEMA shop AUTHORIZATION `+app)
	appDSN := asRole(t, dsn, app)
	exec(t, appDSN, `CREATE TABLE shop.orders (id int PRIMARY KEY)`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(appDSN), pgcdc.SetCaptureMode(pgcdc.CaptureAuto), pgcdc.SetMaxRetries(0))
	w.Handle("shop.orders", func(ec *pgcdc.EventContext) error {
		if strings.Contains(string(ec.Event().Data.New), `"id":13`) {
			return pgcdc.Permanent(errors.New("unlucky"))
		}
		return rec.handle(ec)
	})
	r := serve(t, w)
	waitTrigger(t, dsn, "pgcdc", 1)
	exec(t, appDSN, `INSERT INTO shop.orders VALUES (1), (13), (2)`)
	rec.waitCount(t, 2)
	waitQuery(t, dsn, `SELECT count(*) = 1 FROM pgcdc.dead_letters`)
	got := queryStrings(t, dsn, `SELECT coalesce(lsn::text, 'NULL') || ' ' || (payload::jsonb ? 'lsn')::text FROM pgcdc.dead_letters`)
	if got[0] != "NULL false" {
		t.Errorf("dead letter lsn / payload has lsn = %s, want NULL false", got[0])
	}
	r.stop(t)
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_class WHERE relname = 'pgcdc_dead_letters'`)[0]; n != "0" {
		t.Errorf("a public dead-letter table was created")
	}

	// A second application with another role and default options: refused
	// up front, naming SetTriggerSchema; with its own schema it works.
	other := newRole(t, dsn, "other", "")
	exec(t, dsn, `GRANT CREATE ON DATABASE `+db+` TO `+other+`; CREATE SCHEMA inv AUTHORIZATION `+other)
	otherDSN := asRole(t, dsn, other)
	exec(t, otherDSN, `CREATE TABLE inv.items (id int PRIMARY KEY)`)
	w2 := newWorker(t, pgcdc.SetPostgresDSN(otherDSN), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger))
	w2.Handle("inv.items", newRecorder().handle)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := w2.Serve(ctx)
	if !errors.Is(err, pgcdc.ErrPrivilege) || !strings.Contains(err.Error(), "SetTriggerSchema") || !strings.Contains(err.Error(), app) {
		t.Fatalf("second application's Serve = %v, want ErrPrivilege naming the owner and SetTriggerSchema", err)
	}
	// Another application's dead-letter table is refused up front too.
	w4 := newWorker(t, pgcdc.SetPostgresDSN(otherDSN), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger), pgcdc.SetTriggerSchema("pgcdc_inv"),
		pgcdc.SetDeadLetterTable("pgcdc.dead_letters"))
	w4.Handle("inv.items", newRecorder().handle)
	err = w4.Serve(ctx)
	if err == nil || !strings.Contains(err.Error(), "SetDeadLetterTable") || !strings.Contains(err.Error(), app) {
		t.Fatalf("Serve with another role's dead-letter table = %v, want an error naming the owner and SetDeadLetterTable", err)
	}
	rec2 := newRecorder()
	w3 := newWorker(t, pgcdc.SetPostgresDSN(otherDSN), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger), pgcdc.SetTriggerSchema("pgcdc_inv"))
	w3.Handle("inv.items", rec2.handle)
	serve(t, w3)
	waitTrigger(t, dsn, "pgcdc_inv", 1)
	exec(t, otherDSN, `INSERT INTO inv.items VALUES (7)`)
	rec2.waitCount(t, 1)
}

// #4: an existing public.pgcdc_dead_letters (earlier versions' default)
// is still used, in both engines.
func TestLegacyDeadLetterTableHonoured(t *testing.T) {
	forEachMode(t, func(t *testing.T, m mode) {
		dsn := pgtest.NewDatabase(t)
		exec(t, dsn, `CREATE TABLE d (id int PRIMARY KEY); CREATE TABLE public.pgcdc_dead_letters (
			id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), worker_type text NOT NULL,
			source text NOT NULL, route text NOT NULL, event_id text NOT NULL, schema_name text NOT NULL,
			table_name text NOT NULL, action text NOT NULL, lsn pg_lsn, payload json NOT NULL,
			error text NOT NULL, attempts integer NOT NULL)`)
		w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxRetries(0))
		w.Handle("d", func(*pgcdc.EventContext) error { return pgcdc.Permanent(errors.New("no")) })
		serve(t, w)
		m.ready(t, dsn, w.Sources()[0].Slot, 1)
		exec(t, dsn, `INSERT INTO d VALUES (1)`)
		waitQuery(t, dsn, `SELECT count(*) = 1 FROM public.pgcdc_dead_letters`)
		if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_class WHERE relname = 'dead_letters'`)[0]; n != "0" {
			t.Errorf("a second dead-letter table was created")
		}
	})
}

// #12: CaptureAuto when the role's REPLICATION attribute changes between
// runs: the engine holding the capture state keeps the source (nothing
// lost, nothing twice), and an impossible switch is refused, saying how.
func TestCaptureAutoDoesNotSwitchUnsafely(t *testing.T) {
	needOwnedCluster(t)
	dsn := pgtest.NewDatabase(t)
	db := pgx.Identifier{dbName(t, dsn)}.Sanitize()
	app := newRole(t, dsn, "auto", "")
	exec(t, dsn, `GRANT CREATE ON DATABASE `+db+` TO `+app+`; CREATE SCHEMA s AUTHORIZATION `+app)
	appDSN := asRole(t, dsn, app)
	exec(t, appDSN, `CREATE TABLE s.t (id int PRIMARY KEY)`)
	run := func(rec *recorder) *running {
		w := newWorker(t, pgcdc.SetPostgresDSN(appDSN), pgcdc.SetCaptureMode(pgcdc.CaptureAuto))
		w.Handle("s.t", rec.handle)
		return serve(t, w)
	}
	ids := func(rec *recorder) []string {
		var out []string
		for _, e := range rec.snapshot() {
			out = append(out, e.EventID)
		}
		return out
	}

	// Run 1: no REPLICATION: trigger.
	rec1 := newRecorder()
	r1 := run(rec1)
	waitTrigger(t, dsn, "pgcdc", 1)
	exec(t, appDSN, `INSERT INTO s.t VALUES (1)`)
	rec1.waitCount(t, 1)
	r1.stop(t)
	exec(t, appDSN, `INSERT INTO s.t VALUES (2)`) // written while stopped
	exec(t, dsn, `ALTER ROLE `+app+` REPLICATION`)

	// Run 2: REPLICATION granted: still trigger; row 2 delivered, no slot.
	rec2 := newRecorder()
	r2 := run(rec2)
	rec2.waitCount(t, 1)
	exec(t, appDSN, `INSERT INTO s.t VALUES (3)`)
	rec2.waitCount(t, 2)
	r2.stop(t)
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()`)[0]; n != "0" {
		t.Errorf("a replication slot was created although the trigger engine holds the source")
	}
	if got := rec2.snapshot(); string(got[0].Data.New) != `{"id":2}` || string(got[1].Data.New) != `{"id":3}` {
		t.Errorf("run 2 delivered %s, %s", got[0].Data.New, got[1].Data.New)
	}
	if all := append(ids(rec1), ids(rec2)...); len(all) != 3 || len(slices.Compact(slices.Sorted(slices.Values(all)))) != 3 {
		t.Errorf("event ids %v: want 3 distinct", all)
	}

	// A row waiting in the event table while its trigger was dropped by
	// hand also keeps the source on the trigger engine.
	exec(t, appDSN, `INSERT INTO s.t VALUES (5); DROP TRIGGER pgcdc_capture ON s.t`)
	rec2b := newRecorder()
	r2b := run(rec2b)
	if got := rec2b.waitCount(t, 1); string(got[0].Data.New) != `{"id":5}` {
		t.Errorf("run 2b delivered %s", got[0].Data.New)
	}
	r2b.stop(t)
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_replication_slots WHERE database = current_database()`)[0]; n != "0" {
		t.Errorf("a replication slot was created although the event table held a change")
	}

	// Retire the trigger engine; run 3 picks logical and creates its slot.
	w := newWorker(t, pgcdc.SetPostgresDSN(appDSN), pgcdc.SetCaptureMode(pgcdc.CaptureAuto))
	if err := w.Teardown(context.Background()); err != nil {
		t.Fatal(err)
	}
	rec3 := newRecorder()
	r3 := run(rec3)
	waitStreaming(t, dsn, w.Sources()[0].Slot)
	exec(t, appDSN, `INSERT INTO s.t VALUES (4)`)
	rec3.waitCount(t, 1)
	r3.stop(t)
	exec(t, dsn, `ALTER ROLE `+app+` NOREPLICATION`)

	// Run 4: REPLICATION revoked while the slot exists: refused, saying how.
	w4 := newWorker(t, pgcdc.SetPostgresDSN(appDSN), pgcdc.SetCaptureMode(pgcdc.CaptureAuto))
	w4.Handle("s.t", newRecorder().handle)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := w4.Serve(ctx)
	if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "pg_drop_replication_slot") || !strings.Contains(err.Error(), w.Sources()[0].Slot) {
		t.Fatalf("run 4 Serve = %v, want ErrConfig naming the slot and how to drop it", err)
	}
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_trigger WHERE tgname = 'pgcdc_capture'`)[0]; n != "0" {
		t.Errorf("the refused run installed triggers")
	}
}
