package trigger

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// writerConn opens a session whose settings all differ from the ones
// events are rendered with: events must not depend on the writer.
func writerConn(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"TimeZone": "Asia/Kolkata", "DateStyle": "SQL, DMY", "IntervalStyle": "sql_standard",
		"extra_float_digits": "-3", "bytea_output": "escape", "search_path": "pg_catalog, public",
	} {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func clip(b []byte) string {
	if len(b) > 300 {
		return fmt.Sprintf("%s...(%d bytes)", b[:300], len(b))
	}
	return string(b)
}

// TestFidelityAllTypes writes the oracle data set (nearly every built-in
// type, arrays, enums, domains, composites, hstore, unicode, NULLs and a
// 1.3 MB value) through inserts, updates and deletes from a session with
// unusual settings, and checks every event against row_to_json byte for
// byte: the last new row and the deleted old row equal row_to_json of the
// row, and each event's old equals the previous event's new.
func TestFidelityAllTypes(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	ddl, dml := pgtest.AllTypes()
	pgtest.Exec(t, dsn, ddl)
	rec := newRecorder()
	cfg := config(dsn, route("public", "t", 4, rec.handle))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pool, err := New(cfg).newPool(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := Install(ctx, pool, "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pool.Close()

	w := writerConn(t, dsn)
	if _, err := w.PgConn().Exec(ctx, dml).ReadAll(); err != nil {
		t.Fatal(err)
	}
	oracle := connect(t, dsn)
	want := map[string][]byte{} // id -> row_to_json
	rows, err := oracle.Query(ctx, `SELECT id::text, row_to_json(t)::text FROM t`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var j []byte
		if err := rows.Scan(&id, &j); err != nil {
			t.Fatal(err)
		}
		want[id] = j
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	var writes int64
	if err := oracle.QueryRow(ctx, `SELECT count(*) FROM pgcdc.events`).Scan(&writes); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Exec(ctx, `DELETE FROM public.t`); err != nil {
		t.Fatal(err)
	}
	total := int(writes) + len(want)
	start(t, cfg)
	evs := rec.waitFor(t, time.Minute, fmt.Sprintf("%d events", total), atLeast(total))

	byID := map[string][]payload{}
	for _, e := range evs {
		row := e.Data.New
		if e.Action == "DELETE" {
			row = e.Data.Old
		}
		var key struct{ ID int }
		if err := jsonUnmarshal(row, &key); err != nil {
			t.Fatalf("event row is not JSON: %v: %s", err, clip(row))
		}
		id := fmt.Sprint(key.ID)
		byID[id] = append(byID[id], e)
	}
	compared := 0
	for id, w := range want {
		seq := byID[id]
		if len(seq) < 2 || seq[0].Action != "INSERT" || seq[len(seq)-1].Action != "DELETE" {
			t.Fatalf("row %s: unexpected event sequence of %d events", id, len(seq))
		}
		if string(seq[0].Data.Old) != "null" {
			t.Errorf("row %s: INSERT old = %s", id, clip(seq[0].Data.Old))
		}
		for i := 1; i < len(seq); i++ {
			if !bytes.Equal(seq[i].Data.Old, seq[i-1].Data.New) {
				t.Errorf("row %s event %d: old differs from the previous new:\n old: %s\n new: %s", id, i, clip(seq[i].Data.Old), clip(seq[i-1].Data.New))
			}
		}
		last := seq[len(seq)-2].Data.New
		if !bytes.Equal(last, w) {
			t.Errorf("row %s: last new differs from row_to_json:\n  event:       %s\n  row_to_json: %s", id, clip(last), clip(w))
		}
		del := seq[len(seq)-1]
		if !bytes.Equal(del.Data.Old, w) || string(del.Data.New) != "null" {
			t.Errorf("row %s: DELETE old differs from row_to_json:\n  event:       %s\n  row_to_json: %s", id, clip(del.Data.Old), clip(w))
		}
		compared += len(seq)
	}
	t.Logf("%d events of %d rows compared", compared, len(want))
}

// TestLargeAndCJKValues: a 1 MB value and 3,000 CJK characters commit and
// arrive intact (the NOTIFY-based design fails the writer past 8000 bytes).
func TestLargeAndCJKValues(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE docs (id int PRIMARY KEY, body text, data jsonb)`)
	rec := newRecorder()
	start(t, config(dsn, route("public", "docs", 1, rec.handle)))
	conn := connect(t, dsn)
	waitUntil(t, 30*time.Second, "install", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgcdc_capture'`) == 1
	})
	cjk := strings.Repeat("漢字かな한글", 500) // 3,000 characters, 9,000 bytes
	if n := utf8.RuneCountInString(cjk); n != 3000 {
		t.Fatalf("%d characters", n)
	}
	big := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `INSERT INTO docs VALUES (1, $1, jsonb_build_object('t', $1::text)), (2, $2, NULL)`, cjk, big); err != nil {
		t.Fatal(err)
	}
	evs := rec.waitFor(t, time.Minute, "2 events", atLeast(2))
	for _, id := range []int{1, 2} {
		var want []byte
		if err := conn.QueryRow(ctx, `SELECT row_to_json(d)::text FROM docs d WHERE id = $1`, id).Scan(&want); err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range evs {
			if bytes.Equal(e.Data.New, want) {
				found = true
			}
		}
		if !found {
			t.Errorf("row %d (%d bytes) did not arrive intact", id, len(want))
		}
	}
}
