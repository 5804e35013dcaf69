package pgcdc_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestAllTypesThroughReplication streams the oracle data set (nearly every
// type, user types, NULLs, a 1.3 MB value) and checks that the final event
// of every row equals row_to_json of that row byte for byte, and that the
// DELETE events carry the same rows as old.
func TestAllTypesThroughReplication(t *testing.T) { forEachMode(t, testAllTypesThroughReplication) }

func testAllTypesThroughReplication(t *testing.T, m mode) {
	dsn := pgtest.NewDatabase(t)
	ddl, dml := pgtest.AllTypes()
	exec(t, dsn, ddl+"ALTER TABLE t REPLICA IDENTITY FULL;")
	rec := newRecorder()
	w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(4))
	w.Handle("t", rec.handle)
	serve(t, w)
	m.ready(t, dsn, defaultSlot, 1)
	exec(t, dsn, dml)
	want := map[int]string{}
	for _, row := range queryStrings(t, dsn, `SELECT row_to_json(t)::text FROM t`) {
		var id struct{ ID int }
		if err := json.Unmarshal([]byte(row), &id); err != nil {
			t.Fatal(err)
		}
		want[id.ID] = row
	}
	exec(t, dsn, `DELETE FROM t`)
	evs := rec.waitFor(t, 2*time.Minute, "every DELETE", func(e []pgcdc.EventPayload) bool {
		n := 0
		for _, ev := range e {
			if ev.Action == pgcdc.ActionDelete {
				n++
			}
		}
		return n == len(want)
	})
	last := map[int]string{}
	deleted := map[int]string{}
	for _, ev := range evs {
		var id struct{ ID int }
		switch ev.Action {
		case pgcdc.ActionInsert, pgcdc.ActionUpdate:
			_ = json.Unmarshal(ev.Data.New, &id)
			last[id.ID] = string(ev.Data.New)
		case pgcdc.ActionDelete:
			_ = json.Unmarshal(ev.Data.Old, &id)
			deleted[id.ID] = string(ev.Data.Old)
		}
	}
	for id, w := range want {
		if got := last[id]; got != w {
			t.Errorf("row %d: last event new differs from row_to_json:\n%s", id, diffJSON(got, w))
		}
		if got := deleted[id]; got != w {
			t.Errorf("row %d: DELETE old differs from row_to_json:\n%s", id, diffJSON(got, w))
		}
	}
}

// diffJSON names the first differing byte of two renderings.
func diffJSON(got, want string) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	from := max(0, i-80)
	clip := func(s string) string {
		if i >= len(s) {
			return s[from:]
		}
		return s[from:min(len(s), i+80)]
	}
	return fmt.Sprintf(" at byte %d\n got  ...%s\n want ...%s", i, clip(got), strings.TrimSpace(clip(want)))
}
