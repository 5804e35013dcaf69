package rowjson

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// connect opens a session with SessionParams plus extra settings.
func connect(t *testing.T, dsn string, extra map[string]string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range SessionParams() {
		cfg.RuntimeParams[k] = v
	}
	for k, v := range extra {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// oracleSchema creates the oracle table t and fills it.
func oracleSchema(t *testing.T, dsn string) {
	ddl, dml := pgtest.AllTypes()
	pgtest.Exec(t, dsn, ddl+dml)
}

type column struct {
	name string
	typ  uint32
}

func tableColumns(t *testing.T, conn *pgx.Conn, table string) []column {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT attname::text, atttypid FROM pg_attribute
		WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, table)
	if err != nil {
		t.Fatal(err)
	}
	cols, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (column, error) {
		var c column
		err := r.Scan(&c.name, &c.typ)
		return c, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return cols
}

// compareTable renders every row of table with AppendValue and compares it
// with row_to_json, as a whole and column by column. It returns the number
// of values compared.
func compareTable(t *testing.T, conn *pgx.Conn, types *Types, table string) int {
	t.Helper()
	ctx := context.Background()
	cols := tableColumns(t, conn, table)
	oids := make([]uint32, len(cols))
	for i, c := range cols {
		oids[i] = c.typ
	}
	if err := types.Resolve(ctx, conn, oids...); err != nil {
		t.Fatal(err)
	}
	sel := []string{"row_to_json(x)::text"}
	for _, c := range cols {
		// row_to_json of a one-field record: {"f1":value}, exact bytes
		// (json's -> operator would drop whitespace around a json value).
		sel = append(sel, fmt.Sprintf("row_to_json(ROW(x.%s))::text", pgx.Identifier{c.name}.Sanitize()))
	}
	for _, c := range cols {
		sel = append(sel, "x."+pgx.Identifier{c.name}.Sanitize())
	}
	q := fmt.Sprintf("SELECT %s FROM %s x ORDER BY 1", strings.Join(sel, ", "), pgx.Identifier{table}.Sanitize())
	res, err := conn.PgConn().Exec(ctx, q).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, row := range res[0].Rows {
		want := row[0]
		got := []byte{'{'}
		for i, c := range cols {
			if i > 0 {
				got = append(got, ',')
			}
			got = AppendString(got, c.name)
			got = append(got, ':')
			text := row[1+len(cols)+i]
			var one []byte
			if text == nil {
				one = []byte("null")
			} else if one, err = types.AppendValue(nil, c.typ, text); err != nil {
				t.Errorf("column %s: %v", c.name, err)
			}
			n++
			pg := bytes.TrimSuffix(bytes.TrimPrefix(row[1+i], []byte(`{"f1":`)), []byte("}"))
			if !bytes.Equal(one, pg) {
				t.Errorf("column %s (type %d), text %s:\n  postgres: %s\n  rowjson:  %s",
					c.name, c.typ, clip(text), clip(pg), clip(one))
			}
			got = append(got, one...)
		}
		got = append(got, '}')
		if !bytes.Equal(got, want) {
			t.Errorf("row differs:\n  postgres: %s\n  rowjson:  %s", clip(want), clip(got))
		}
	}
	return n
}

func clip(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%s...(%d bytes)", b[:300], len(b))
	}
	return string(b)
}

func TestOracle(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	oracleSchema(t, dsn)
	conn := connect(t, dsn, nil)
	n := compareTable(t, conn, NewTypes(), "t")
	t.Logf("compared %d values", n)
}

// TestOracleTimeZones checks the timestamptz conversion under session time
// zones with half-hour offsets and historical (LMT) offsets with seconds.
func TestOracleTimeZones(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE tz (id int, a timestamptz, b timestamptz[], c timestamp, d date);
		INSERT INTO tz SELECT i, v, ARRAY[v, NULL], v::timestamp, v::date FROM unnest(ARRAY[
		'2024-01-02 03:04:05.123456+00', '2024-07-01 00:00:00+00', '1800-01-01 00:00:00+00', '1900-01-01 00:00:00+00',
		'0044-03-15 12:00:00+00 BC', '12345-01-01 00:00:00+00', 'infinity', '-infinity']::timestamptz[]) WITH ORDINALITY AS u(v, i)`)
	types := NewTypes()
	for _, zone := range []string{"UTC", "Asia/Kolkata", "America/St_Johns", "Europe/Amsterdam", "Pacific/Chatham", "UTC+20", "Asia/Kathmandu"} {
		t.Run(strings.ReplaceAll(zone, "/", "_"), func(t *testing.T) {
			conn := connect(t, dsn, map[string]string{"TimeZone": zone})
			compareTable(t, conn, types, "tz")
		})
	}
}

// TestBuiltinTable checks the hard-coded built-in types against pg_type.
func TestBuiltinTable(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	conn := connect(t, dsn, nil)
	rows, err := conn.Query(context.Background(), `SELECT oid, typname::text, typtype::text, typelem, typdelim::text,
		typsubscript = 'array_subscript_handler'::regproc FROM pg_type
		t WHERE oid < 16384 AND typtype IN ('b', 'r', 'm', 'p')
		AND NOT EXISTS (SELECT FROM pg_type e WHERE e.oid = t.typelem AND e.typtype IN ('c', 'd')) ORDER BY oid`)
	if err != nil {
		t.Fatal(err)
	}
	type pgType struct {
		oid, elem            uint32
		name, typtype, delim string
		isArray              bool
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (pgType, error) {
		var p pgType
		err := r.Scan(&p.oid, &p.name, &p.typtype, &p.elem, &p.delim, &p.isArray)
		return p, err
	})
	if err != nil {
		t.Fatal(err)
	}
	types := NewTypes()
	seen := 0
	for _, p := range all {
		oid, elem, name, isArray := p.oid, p.elem, p.name, p.isArray
		seen++
		ti, ok := types.Lookup(oid)
		if !ok {
			t.Errorf("built-in type %d %s missing", oid, name)
			continue
		}
		if ti.Name != name {
			t.Errorf("type %d: name %q, catalog %q", oid, ti.Name, name)
		}
		if isArray {
			eti, ok := types.Lookup(elem)
			wantKind := KindArray
			if oid == 22 || oid == 30 {
				wantKind = KindVector
			}
			if ti.Kind != wantKind || ti.Elem != elem || !ok {
				t.Errorf("type %d %s: kind %v elem %d, want %v of %d", oid, name, ti.Kind, ti.Elem, wantKind, elem)
			}
			if ok && wantKind == KindArray && eti.Kind != KindVector {
				var edelim string
				if err := conn.QueryRow(context.Background(), "SELECT typdelim::text FROM pg_type WHERE oid = $1", elem).Scan(&edelim); err != nil {
					t.Fatal(err)
				}
				if string(ti.Delim) != edelim {
					t.Errorf("array %s: delim %q, want %q", name, ti.Delim, edelim)
				}
			}
		}
	}
	known := 0
	for _, ti := range builtinByOID {
		if ti != nil {
			known++
		}
	}
	if known != seen {
		t.Errorf("table has %d built-in types, catalog %d", known, seen)
	}
}

// TestResolveAlterType checks that a changed composite is detected and that
// Refresh and Forget pick up the new definition.
func TestResolveAlterType(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TYPE c AS (a int, b text); CREATE TABLE ct (id int, v c, w c[]);
		INSERT INTO ct VALUES (1, ROW(1, 'x'), ARRAY[ROW(2, 'y')::c])`)
	conn := connect(t, dsn, nil)
	types := NewTypes()
	compareTable(t, conn, types, "ct")
	var coid uint32
	if err := conn.QueryRow(context.Background(), "SELECT 'c'::regtype::oid").Scan(&coid); err != nil {
		t.Fatal(err)
	}
	if err := types.Resolve(context.Background(), conn, 1, 2); !errors.Is(err, ErrUnknownType) {
		t.Errorf("Resolve of a missing OID: %v, want ErrUnknownType", err)
	}

	pgtest.Exec(t, dsn, `ALTER TYPE c ADD ATTRIBUTE d numeric; UPDATE ct SET v.d = 1.5`)
	if _, err := types.AppendValue(nil, coid, []byte("(1,x,1.5)")); !errors.Is(err, ErrTypeChanged) {
		t.Fatalf("stale composite: %v, want ErrTypeChanged", err)
	}
	if err := types.Refresh(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
	compareTable(t, conn, types, "ct")

	pgtest.Exec(t, dsn, `ALTER TYPE c DROP ATTRIBUTE b; ALTER TYPE c RENAME ATTRIBUTE a TO "A a"`)
	types.Forget(coid)
	compareTable(t, conn, types, "ct")
	if ti, ok := types.Lookup(coid); !ok || len(ti.Fields) != 2 || ti.Fields[0].Name != "A a" {
		t.Errorf("after Forget+Resolve: %+v", ti)
	}
}

// TestUserCast checks that a type with a user-defined cast to json, which
// row_to_json calls, is reported as unsupported rather than mis-rendered.
func TestUserCast(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TYPE color AS ENUM ('red', 'green');
		CREATE FUNCTION color_json(color) RETURNS json LANGUAGE sql IMMUTABLE AS $$ SELECT json_build_object('c', $1::text) $$;
		CREATE CAST (color AS json) WITH FUNCTION color_json(color);
		CREATE DOMAIN dcolor AS color;`)
	conn := connect(t, dsn, nil)
	var got string
	if err := conn.QueryRow(context.Background(), "SELECT row_to_json(x)::text FROM (SELECT 'red'::dcolor AS v) x").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != `{"v":{"c" : "red"}}` {
		t.Fatalf("row_to_json does not use the cast: %s", got)
	}
	var color, dcolor uint32
	if err := conn.QueryRow(context.Background(), "SELECT 'color'::regtype::oid, 'dcolor'::regtype::oid").Scan(&color, &dcolor); err != nil {
		t.Fatal(err)
	}
	types := NewTypes()
	if err := types.Resolve(context.Background(), conn, dcolor); err != nil {
		t.Fatal(err)
	}
	for _, oid := range []uint32{color, dcolor} {
		if ti, _ := types.Lookup(oid); ti == nil || ti.Kind != KindCast {
			t.Errorf("type %d: %+v, want KindCast", oid, ti)
		}
		if _, err := types.AppendValue(nil, oid, []byte("red")); !errors.Is(err, ErrUnsupported) {
			t.Errorf("AppendValue(%d): %v, want ErrUnsupported", oid, err)
		}
	}
}

// TestResolveConcurrent resolves, refreshes and renders from several
// goroutines at once (run with -race).
func TestResolveConcurrent(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TYPE p AS (a int, b text); CREATE DOMAIN dp AS p[]`)
	types := NewTypes()
	var oid uint32
	if err := connect(t, dsn, nil).QueryRow(context.Background(), "SELECT 'dp'::regtype::oid").Scan(&oid); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 4)
	for g := 0; g < 4; g++ {
		conn := connect(t, dsn, nil)
		go func() {
			for i := 0; i < 20; i++ {
				var err error
				if i%5 == 4 {
					err = types.Refresh(context.Background(), conn)
				} else {
					err = types.Resolve(context.Background(), conn, oid)
				}
				if err == nil {
					var out []byte
					out, err = types.AppendValue(nil, oid, []byte(`{"(1,x)",NULL}`))
					if err == nil && string(out) != `[{"a":1,"b":"x"},null]` {
						err = fmt.Errorf("got %s", out)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for g := 0; g < 4; g++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
