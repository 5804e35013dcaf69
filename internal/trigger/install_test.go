package trigger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

const installDDL = `
CREATE TABLE items (id int PRIMARY KEY, name text);
CREATE TABLE other (id int PRIMARY KEY, v text);
CREATE TABLE unrouted (id int PRIMARY KEY);
CREATE TABLE audit (what text);
CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (TG_TABLE_NAME || ' ' || TG_OP); RETURN NEW; END $$;
CREATE TRIGGER audit_other AFTER INSERT OR UPDATE ON other FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE TRIGGER a_before BEFORE INSERT ON other FOR EACH ROW EXECUTE FUNCTION audit_fn();
CREATE SCHEMA "Shop";
CREATE TABLE "Shop"."we""ird" ("a b" text, id int, "ñ" text, PRIMARY KEY ("a b", id));
`

func pool(t testing.TB, dsn string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// triggers lists "table:trigger(args)" for every non-internal trigger.
func triggers(t *testing.T, conn *pgx.Conn) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT tgrelid::regclass::text || ':' || tgname || '(' ||
			replace(rtrim(encode(tgargs, 'escape'), '\000'), '\000', ',') || ')'
		FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInstallIdempotentAndSelective(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, installDDL)
	ctx := context.Background()
	p := pool(t, dsn)
	conn := connect(t, dsn)
	rec := newRecorder()
	tables := []dispatch.Table{
		route("public", "items", 1, rec.handle),
		route("public", "other", 1, rec.handle),
		route("Shop", `we"ird`, 1, rec.handle),
	}
	tables[0].Route.Truncate = true
	// Concurrent installs from several instances serialize on the lock.
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errc <- Install(ctx, p, "", tables) })
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		if err != nil {
			t.Fatalf("concurrent Install: %v", err)
		}
	}
	want := []string{
		`"Shop"."we""ird":pgcdc_capture(a b,id)`,
		"items:pgcdc_capture(id)",
		"items:pgcdc_truncate()",
		"other:a_before()",
		"other:audit_other()",
		"other:pgcdc_capture(id)",
	}
	if got := triggers(t, conn); !slices.Equal(got, want) {
		t.Fatalf("triggers after install:\n got %q\nwant %q", got, want)
	}
	if err := Install(ctx, p, "", tables); err != nil {
		t.Fatal(err)
	}
	if got := triggers(t, conn); !slices.Equal(got, want) {
		t.Fatalf("triggers after a second install:\n got %q\nwant %q", got, want)
	}

	// Writes: routed tables are captured (the unrelated triggers still
	// run), unrouted ones are not.
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1, 'x'); INSERT INTO other VALUES (1, 'y');
		INSERT INTO unrouted VALUES (1); INSERT INTO "Shop"."we""ird" VALUES ('k', 1, 'ñ'); TRUNCATE items`)
	if n := queryInt(t, conn, `SELECT count(*) FROM audit`); n != 2 {
		t.Errorf("unrelated triggers ran %d times, want 2", n)
	}
	rows, err := conn.Query(ctx, `SELECT schema_name || '.' || table_name || ' ' || action FROM pgcdc.events ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	wantEv := []string{"public.items INSERT", "public.other INSERT", `Shop.we"ird INSERT`, "public.items TRUNCATE"}
	if !slices.Equal(got, wantEv) {
		t.Errorf("captured %q, want %q", got, wantEv)
	}

	// An outdated function is replaced; a changed key re-creates the trigger;
	// a route that no longer wants TRUNCATE loses the TRUNCATE trigger.
	pgtest.Exec(t, dsn, `CREATE OR REPLACE FUNCTION pgcdc.capture() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
		COMMENT ON FUNCTION pgcdc.capture() IS 'pgcdc capture function v0';
		ALTER TABLE items DROP CONSTRAINT items_pkey, ADD PRIMARY KEY (name, id)`)
	tables[0].Route.Truncate = false
	if err := Install(ctx, p, "", tables); err != nil {
		t.Fatal(err)
	}
	want = slices.DeleteFunc(want, func(s string) bool { return strings.HasPrefix(s, "items:") })
	want = append(want[:1], append([]string{"items:pgcdc_capture(name,id)"}, want[1:]...)...)
	if got := triggers(t, conn); !slices.Equal(got, want) {
		t.Fatalf("triggers after key change:\n got %q\nwant %q", got, want)
	}
	var comment string
	if err := conn.QueryRow(ctx, `SELECT obj_description('pgcdc.capture()'::regprocedure, 'pg_proc')`).Scan(&comment); err != nil || comment != fmt.Sprintf(functionTag, FunctionVersion) {
		t.Errorf("function comment = %q, %v", comment, err)
	}
	// One function per key: the one of the old key (id) is still used by
	// other and "Shop"."we""ird"'s is; none is left unused.
	fns := queryInt(t, conn, `SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgcdc'::regnamespace`)
	if fns != 4 { // capture, capture_<id>, capture_<a b,id>, capture_<name,id>
		t.Errorf("%d functions in the schema, want 4", fns)
	}
	before := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`)
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (2, 'z')`)
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`); n != before+1 {
		t.Errorf("the replaced function does not capture: %d events, want %d", n, before+1)
	}

	// A foreign trigger with our name is an error, not overwritten.
	pgtest.Exec(t, dsn, `CREATE TABLE clash (id int PRIMARY KEY);
		CREATE TRIGGER pgcdc_capture AFTER INSERT ON clash FOR EACH ROW EXECUTE FUNCTION audit_fn()`)
	err = Install(ctx, p, "", append(tables, route("public", "clash", 1, rec.handle)))
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrConfig) {
		t.Errorf("Install over a foreign trigger = %v, want a fatal ErrConfig", err)
	}
}

func TestTeardownLeavesNothing(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, installDDL)
	ctx := context.Background()
	p := pool(t, dsn)
	conn := connect(t, dsn)
	rec := newRecorder()
	tables := []dispatch.Table{route("public", "items", 1, rec.handle), route("public", "other", 1, rec.handle), route("Shop", `we"ird`, 1, rec.handle)}
	tables[1].Route.Truncate = true
	userTriggers := triggers(t, conn)
	if err := Install(ctx, p, "", tables); err != nil {
		t.Fatal(err)
	}
	// A second pgcdc schema in a schema the user created (and owns
	// other objects in) capturing the same tables.
	pgtest.Exec(t, dsn, `CREATE SCHEMA app; CREATE TABLE app.mine (x int)`)
	if err := Install(ctx, p, "app", tables[:1]); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1, 'a')`)
	if n := queryInt(t, conn, `SELECT (SELECT count(*) FROM pgcdc.events) + (SELECT count(*) FROM app.events)`); n != 2 {
		t.Fatalf("%d events, want one per schema", n)
	}

	if err := Teardown(ctx, dsn, "", nil); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_namespace WHERE nspname = 'pgcdc'`); n != 0 {
		t.Error("schema pgcdc left behind")
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname IN ('pgcdc_capture', 'pgcdc_truncate')`); n != 0 {
		t.Errorf("%d pgcdc triggers left behind", n)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcdc_capture_app'`); n != 1 {
		t.Errorf("the other schema's trigger was touched")
	}
	if err := Teardown(ctx, dsn, "app", nil); err != nil {
		t.Fatalf("Teardown of a user schema: %v", err)
	}
	if err := Teardown(ctx, dsn, "", nil); err != nil {
		t.Fatalf("second Teardown: %v", err)
	}
	if got := triggers(t, conn); !slices.Equal(got, userTriggers) {
		t.Errorf("triggers after teardown %q, want the user's %q", got, userTriggers)
	}
	checks := map[string]string{
		"pgcdc functions":     `SELECT count(*) FROM pg_proc WHERE obj_description(oid, 'pg_proc') LIKE 'pgcdc %'`,
		"pgcdc tables":        `SELECT count(*) FROM pg_class WHERE obj_description(oid, 'pg_class') LIKE 'pgcdc %' OR relname = 'events'`,
		"pgcdc schemas":       `SELECT count(*) FROM pg_namespace WHERE obj_description(oid, 'pg_namespace') LIKE 'pgcdc %'`,
		"user schema app":     `SELECT count(*) - 1 FROM pg_namespace WHERE nspname = 'app'`,
		"user table app.mine": `SELECT count(*) - 1 FROM pg_class WHERE oid = 'app.mine'::regclass`,
		"user function":       `SELECT count(*) - 1 FROM pg_proc WHERE proname = 'audit_fn'`,
	}
	for what, sql := range checks {
		if n := queryInt(t, conn, sql); n != 0 {
			t.Errorf("%s: %d", what, n)
		}
	}

	// A pgcdc schema holding a user object: everything of pgcdc goes, the
	// schema and the object stay, and the error says why.
	if err := Install(ctx, p, "", tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `CREATE TABLE pgcdc.users_own (x int)`)
	err := Teardown(ctx, dsn, "", nil)
	if err == nil || !strings.Contains(err.Error(), "kept") {
		t.Errorf("Teardown with a user object = %v, want a 'kept' error", err)
	}
	if n := queryInt(t, conn, `SELECT count(*) FROM pg_class WHERE relnamespace = 'pgcdc'::regnamespace AND relkind = 'r'`); n != 1 {
		t.Errorf("%d tables in pgcdc, want only the user's", n)
	}
	if got := triggers(t, conn); !slices.Equal(got, userTriggers) {
		t.Errorf("triggers after teardown %q, want the user's %q", got, userTriggers)
	}
}

func TestBacklogAndLag(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE more (id int PRIMARY KEY)`)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rec := newRecorder()
	block := make(chan struct{})
	rec.fn = func(ctx context.Context, p payload) error {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return ctx.Err()
	}
	cfg := config(dsn, route("public", "items", 1, rec.handle))
	other := config(dsn, route("public", "more", 1, rec.handle))
	if err := Install(ctx, pool(t, dsn), "", append(cfg.Tables, other.Tables...)); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 25); INSERT INTO more SELECT generate_series(1, 7)`)
	s := New(cfg)
	if s.LagBytes() != -1 {
		t.Errorf("LagBytes = %d, want -1", s.LagBytes())
	}
	if n, err := s.Backlog(ctx); n != 25 || err != nil {
		t.Fatalf("Backlog before running = %d, %v; want 25", n, err)
	}
	r := start(t, cfg)
	waitUntil(t, 30*time.Second, "a claim", func() bool {
		conn := connect(t, dsn)
		return queryInt(t, conn, `SELECT count(*) FROM pgcdc.events WHERE claimed_by IS NOT NULL`) > 0
	})
	if n, err := r.s.Backlog(ctx); n != 25 || err != nil {
		t.Errorf("Backlog while claimed = %d, %v; want 25", n, err)
	}
	close(block)
	rec.waitFor(t, 30*time.Second, "25 events", atLeast(25))
	waitUntil(t, 30*time.Second, "empty backlog", func() bool {
		n, err := r.s.Backlog(ctx)
		return err == nil && n == 0
	})
	if n, err := New(other).Backlog(ctx); n != 7 || err != nil {
		t.Errorf("Backlog of the other source = %d, %v; want 7", n, err)
	}
}

// TestPrivileges: a writer with no privilege on the pgcdc schema is
// captured (the function is SECURITY DEFINER) but cannot write events
// itself; a consumer role without CREATE (granted use of the event table)
// can run Install once everything is in place and consume, and gets a fatal
// ErrPrivilege for a table it may not put a trigger on.
func TestPrivileges(t *testing.T) {
	if !pgtest.Shared(t).Owned() {
		t.Skip("creates login roles without passwords: needs the throwaway cluster")
	}
	dsn := pgtest.NewDatabase(t)
	suffix := strings.ToLower(strings.NewReplacer("/", "_").Replace(t.Name()))
	writer, weak := "w_"+suffix, "weak_"+suffix
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE later (id int PRIMARY KEY);
		DROP ROLE IF EXISTS `+writer+`; DROP ROLE IF EXISTS `+weak+`;
		CREATE ROLE `+writer+` LOGIN; CREATE ROLE `+weak+` LOGIN;
		GRANT SELECT, INSERT, UPDATE, DELETE ON items TO `+writer+`;
		REVOKE CREATE ON SCHEMA public FROM PUBLIC`)
	t.Cleanup(func() {
		pgtest.Exec(t, dsn, `DROP OWNED BY `+writer+`, `+weak+` CASCADE; DROP ROLE `+writer+`; DROP ROLE `+weak)
	})
	asRole := func(role string) string {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Replace(dsn, "://"+cfg.User+"@", "://"+role+"@", 1)
	}
	ctx := context.Background()
	rec := newRecorder()
	tables := []dispatch.Table{route("public", "items", 1, rec.handle)}
	if err := Install(ctx, pool(t, dsn), "", tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, asRole(writer), `INSERT INTO items VALUES (1); UPDATE items SET id = 2; DELETE FROM items`)
	conn := connect(t, dsn)
	if n := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`); n != 3 {
		t.Errorf("%d events from the unprivileged writer, want 3", n)
	}
	w, err := pgx.Connect(ctx, asRole(writer))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close(ctx)
	if _, err := w.Exec(ctx, `INSERT INTO pgcdc.events (schema_name, table_name, action, row_key, xid) VALUES ('public', 'items', 'INSERT', 0, '1')`); err == nil {
		t.Error("the writer could insert events directly")
	}

	// What an owner grants a separate consumer role.
	pgtest.Exec(t, dsn, `GRANT USAGE ON SCHEMA pgcdc TO `+weak+`; GRANT SELECT, UPDATE, DELETE ON pgcdc.events TO `+weak)
	weakPool := pool(t, asRole(weak))
	if err := Install(ctx, weakPool, "", tables); err != nil {
		t.Errorf("Install by a role without CREATE once installed: %v", err)
	}
	cfg := config(asRole(weak), tables...)
	start(t, cfg)
	rec.waitFor(t, 30*time.Second, "3 events consumed by the consumer role", atLeast(3))
	err = Install(ctx, weakPool, "", append(tables, route("public", "later", 1, rec.handle)))
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrPrivilege) {
		t.Errorf("Install on a table the role does not own = %v, want a fatal ErrPrivilege", err)
	}
}

// TestRowKeyFromColumnsMatchesVersion1: the row key read from the key
// columns themselves hashes the same text version 1 took from the row's
// JSON, so events captured before and after an upgrade keep their order.
func TestRowKeyFromColumnsMatchesVersion1(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TYPE pair AS (a int, b text);
		CREATE TABLE k (i bigint, s text, u uuid, ts timestamptz, n numeric, f float8, d date, p pair, arr int[], b bool, j jsonb, doc json,
			PRIMARY KEY (i, s, u, ts, n, f, d, p, arr, b, j))`)
	rec := newRecorder()
	ctx := context.Background()
	if err := Install(ctx, pool(t, dsn), "", []dispatch.Table{route("public", "k", 1, rec.handle)}); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `SET timezone = 'Asia/Kolkata'; SET datestyle = 'SQL, DMY';
		INSERT INTO k VALUES (9007199254740993, E'tab\there "q" \\ é\x01', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
			'2024-02-29 12:34:56.789+05:30', 12.50, 0.1, '0044-03-15 BC', ROW(1, 'x "y"'), '{1,NULL,3}', true, '{"b": [1, "\u00e9"]}',
			E'{"a":"\u00e9 \\n"}');
		UPDATE k SET doc = '{}'; DELETE FROM k`)
	conn := connect(t, dsn)
	// Version 1's key text: each key column's value taken with ->> from
	// row_to_json of the row (the old row for DELETE), then chr(31).
	var got, want []int64
	rows, err := conn.Query(ctx, `SELECT e.row_key, hashtextextended('public' || chr(31) || 'k' || chr(31) ||
			(SELECT string_agg(coalesce(coalesce(e.new, e.old) ->> c.name, '') || chr(31), '' ORDER BY c.ord)
				FROM unnest(ARRAY['i','s','u','ts','n','f','d','p','arr','b','j']) WITH ORDINALITY c(name, ord)), 0)
		FROM pgcdc.events e ORDER BY e.id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var g, w int64
		if err := rows.Scan(&g, &w); err != nil {
			t.Fatal(err)
		}
		got, want = append(got, g), append(want, w)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if len(got) != 3 || !slices.Equal(got, want) {
		t.Errorf("row keys %v, version 1 keys %v", got, want)
	}
}
