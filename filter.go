package pgcdc

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/pgcdc/pgcdc/internal/rowjson"
)

// WithActions delivers only events of the given actions (ActionInsert,
// ActionUpdate, ActionDelete, ActionTruncate) to the route; the others are
// acknowledged without calling the handler (hooks report them as
// OutcomeFiltered). TRUNCATE also needs WithTruncate.
func WithActions(actions ...string) HandlerOption {
	return func(c *handlerConfig) { c.filter.actions = append(c.filter.actions, actions...) }
}

// WithChangedColumns delivers an UPDATE only when one of the given columns
// changed (Hasura's column-based update triggers); other UPDATEs are
// acknowledged without calling the handler. INSERT, DELETE and TRUNCATE are
// not affected. Telling what changed needs the old row: in the logical
// capture mode the table must have REPLICA IDENTITY FULL (Serve refuses the
// route otherwise); the trigger mode always has it.
func WithChangedColumns(columns ...string) HandlerOption {
	return func(c *handlerConfig) { c.filter.changed = append(c.filter.changed, columns...) }
}

// WithColumns limits the route's events to the given columns: the others
// are left out of data.old and data.new. Columns not in the table are
// ignored. See WithoutColumns for the opposite.
func WithColumns(columns ...string) HandlerOption {
	return func(c *handlerConfig) { c.filter.include = append(c.filter.include, columns...) }
}

// WithoutColumns leaves the given columns (a password_hash) out of the
// route's events. In the logical capture mode, for a table whose replica
// identity is its primary key, the publication's column list keeps the
// server from even sending them; otherwise pgcdc removes them before the
// handler (they never reach it, nor a sink; a dead-lettered event is stored
// as captured, in the source database). A primary key column cannot be
// left out.
func WithoutColumns(columns ...string) HandlerOption {
	return func(c *handlerConfig) { c.filter.exclude = append(c.filter.exclude, columns...) }
}

// filter is a route's event filter.
type filter struct {
	actions          []string
	changed          []string
	include, exclude []string
}

func (f *filter) empty() bool {
	return len(f.actions) == 0 && len(f.changed) == 0 && len(f.include) == 0 && len(f.exclude) == 0
}

// check reports what is wrong with the filter's settings ("" if nothing).
func (f *filter) check() string {
	for _, a := range f.actions {
		switch a {
		case ActionInsert, ActionUpdate, ActionDelete, ActionTruncate, ActionRead:
		default:
			return fmt.Sprintf("WithActions(%q): want INSERT, UPDATE, DELETE, TRUNCATE or READ", a)
		}
	}
	if len(f.include) > 0 && len(f.exclude) > 0 {
		return "WithColumns and WithoutColumns together: give one of them"
	}
	for _, c := range slices.Concat(f.changed, f.include, f.exclude) {
		if c == "" {
			return "empty column name in a column filter"
		}
	}
	return ""
}

// keeps reports whether column name is delivered.
func (f *filter) keeps(name string) bool {
	if len(f.include) > 0 {
		return slices.Contains(f.include, name)
	}
	return !slices.Contains(f.exclude, name)
}

// apply decides what the handler gets of an event: skip reports that it
// gets nothing (the event is acknowledged as filtered); otherwise msg is
// the event, with the filtered columns left out.
func (f *filter) apply(action string, msg []byte) (out []byte, skip bool, err error) {
	if len(f.actions) > 0 && !slices.Contains(f.actions, action) {
		return nil, true, nil
	}
	if len(f.changed) == 0 && len(f.include) == 0 && len(f.exclude) == 0 {
		return msg, false, nil
	}
	var ev struct {
		Data struct {
			Old json.RawMessage `json:"old"`
			New json.RawMessage `json:"new"`
		} `json:"data"`
	}
	if err := json.Unmarshal(msg, &ev); err != nil {
		return nil, false, fmt.Errorf("pgcdc: filtering event: %w", err)
	}
	if action == ActionUpdate && len(f.changed) > 0 && !f.changes(ev.Data.Old, ev.Data.New) {
		return nil, true, nil
	}
	if len(f.include) == 0 && len(f.exclude) == 0 {
		return msg, false, nil
	}
	data := func(old, new []byte) []byte {
		b := append([]byte(`"data":{"old":`), old...)
		b = append(b, `,"new":`...)
		b = append(b, new...)
		return append(b, '}')
	}
	was := data(ev.Data.Old, ev.Data.New)
	i := bytes.Index(msg, was)
	if i < 0 {
		return nil, false, fmt.Errorf("pgcdc: filtering event: unexpected event layout")
	}
	old, err := f.columns(ev.Data.Old)
	if err != nil {
		return nil, false, err
	}
	new, err := f.columns(ev.Data.New)
	if err != nil {
		return nil, false, err
	}
	out = make([]byte, 0, len(msg))
	out = append(out, msg[:i]...)
	out = append(out, data(old, new)...)
	return append(out, msg[i+len(was):]...), false, nil
}

// changes reports whether one of the watched columns differs between the
// old and new rows. Without an old row (or a column missing from new, an
// unchanged TOASTed value) nothing can be told: an old row missing counts
// as changed, so nothing is dropped on a guess.
func (f *filter) changes(oldRaw, newRaw json.RawMessage) bool {
	var old, new map[string]json.RawMessage
	if json.Unmarshal(oldRaw, &old) != nil || old == nil {
		return true
	}
	if json.Unmarshal(newRaw, &new) != nil {
		return true
	}
	for _, c := range f.changed {
		n, inNew := new[c]
		if inNew && !bytes.Equal(old[c], n) {
			return true
		}
	}
	return false
}

// columns renders a row object without the filtered columns, keeping the
// order and every value's bytes.
func (f *filter) columns(row json.RawMessage) ([]byte, error) {
	if len(row) == 0 || string(row) == "null" {
		return row, nil
	}
	dec := json.NewDecoder(bytes.NewReader(row))
	if _, err := dec.Token(); err != nil { // {
		return nil, fmt.Errorf("pgcdc: filtering row: %w", err)
	}
	out := []byte{'{'}
	first := true
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("pgcdc: filtering row: %w", err)
		}
		name, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("pgcdc: filtering row: %w", err)
		}
		if !f.keeps(name) {
			continue
		}
		if !first {
			out = append(out, ',')
		}
		first = false
		out = rowjson.AppendString(out, name)
		out = append(out, ':')
		out = append(out, v...)
	}
	return append(out, '}'), nil
}
