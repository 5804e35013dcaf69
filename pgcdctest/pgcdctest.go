// Package pgcdctest helps test pgcdc handlers without PostgreSQL: it builds
// events exactly as pgcdc delivers them, the EventContext a handler gets for
// one, records a live stream to a JSON-lines file, and replays such a file
// into a worker's handlers, synchronously and deterministically, with the
// worker's routing and retries.
//
// A handler test in a few lines:
//
//	ev := pgcdctest.Insert("orders", pgcdctest.R("id", 1, "total", 12.5))
//	ec, err := ev.Context(context.Background(), "orders")
//	if err != nil {
//		t.Fatal(err)
//	}
//	if err := myHandler(ec); err != nil {
//		t.Fatal(err)
//	}
package pgcdctest

import (
	"bufio"
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pgcdc/pgcdc"
)

// Column is one column of a Row.
type Column struct {
	Name  string
	Value any // rendered with encoding/json; a json.RawMessage as it is
}

// Row is a row as row_to_json renders it: its columns in table order.
type Row []Column

// R builds a Row from name, value pairs: R("id", 1, "name", "Ann").
// Values are rendered with encoding/json; give a json.RawMessage for an
// exact rendering (a numeric with every digit: json.RawMessage("12.50")).
// A name that is not a string, or a missing value, is reported by JSON.
func R(pairs ...any) Row {
	r := make(Row, 0, len(pairs)/2)
	for i := 0; i < len(pairs); i += 2 {
		name, _ := pairs[i].(string)
		if name == "" {
			name = fmt.Sprint(pairs[i])
		}
		var v any = missing{}
		if i+1 < len(pairs) {
			v = pairs[i+1]
		}
		r = append(r, Column{Name: name, Value: v})
	}
	return r
}

type missing struct{}

// MarshalJSON renders the row as a JSON object in column order.
func (r Row) MarshalJSON() ([]byte, error) {
	if r == nil {
		return []byte("null"), nil
	}
	b := []byte{'{'}
	for i, c := range r {
		if _, bad := c.Value.(missing); bad {
			return nil, fmt.Errorf("pgcdctest: column %q has no value", c.Name)
		}
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(c.Name)
		b = append(append(b, k...), ':')
		v, err := marshal(c.Value)
		if err != nil {
			return nil, fmt.Errorf("pgcdctest: column %q: %w", c.Name, err)
		}
		b = append(b, v...)
	}
	return append(b, '}'), nil
}

// marshal renders a value as pgcdc does: without HTML escaping.
func marshal(v any) ([]byte, error) {
	if raw, ok := v.(json.RawMessage); ok {
		if !json.Valid(raw) {
			return nil, fmt.Errorf("invalid JSON %q", raw)
		}
		return raw, nil
	}
	var sb strings.Builder
	enc := json.NewEncoder(&sb)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return []byte(strings.TrimSuffix(sb.String(), "\n")), nil
}

// Event is an event as pgcdc delivers it. Build one with Insert, Update,
// Delete or Truncate, adjust its fields, then take its JSON or Context.
type Event struct {
	// EventID is the event_id; when empty, JSON derives a stable one (an
	// md5 hex, like pgcdc's) from the other fields.
	EventID string
	// Source is the source name ("" for the default source).
	Source string
	// Schema and Table name the table; Schema "" means public.
	Schema, Table string
	// Action is pgcdc.ActionInsert, ActionUpdate, ActionDelete or
	// ActionTruncate.
	Action string
	// Old and New are the rows before and after the change (nil: null).
	Old, New Row
	// LSN is the commit position ("0/1521818"); "" leaves "lsn" out, as
	// the trigger capture mode does.
	LSN string
	// XID is the transaction id.
	XID uint32
	// CommitTime is when the transaction committed (zero: the Unix epoch).
	CommitTime time.Time
	// UnchangedToast and OmittedGenerated are the event's optional lists
	// (see pgcdc.EventPayload).
	UnchangedToast, OmittedGenerated []string
}

// Insert is the event of an INSERT into table ("table" or "schema.table").
func Insert(table string, new Row) Event { return event(table, pgcdc.ActionInsert, nil, new) }

// Update is the event of an UPDATE.
func Update(table string, old, new Row) Event { return event(table, pgcdc.ActionUpdate, old, new) }

// Delete is the event of a DELETE.
func Delete(table string, old Row) Event { return event(table, pgcdc.ActionDelete, old, nil) }

// Truncate is the event of a TRUNCATE (for routes with pgcdc.WithTruncate).
func Truncate(table string) Event { return event(table, pgcdc.ActionTruncate, nil, nil) }

func event(table, action string, old, new Row) Event {
	schema := "public"
	if i := strings.IndexByte(table, '.'); i >= 0 {
		schema, table = table[:i], table[i+1:]
	}
	return Event{Schema: schema, Table: table, Action: action, Old: old, New: new, LSN: "0/0", XID: 1}
}

// JSON is the event exactly as EventContext.Message would hold it: the
// fields in pgcdc's order, commit_time in UTC.
func (e Event) JSON() ([]byte, error) {
	old, err := e.Old.MarshalJSON()
	if err != nil {
		return nil, err
	}
	new, err := e.New.MarshalJSON()
	if err != nil {
		return nil, err
	}
	schema := e.Schema
	if schema == "" {
		schema = "public"
	}
	str := func(s string) string { b, _ := marshal(s); return string(b) }
	var tail strings.Builder
	tail.WriteString(`,"schema":` + str(schema) + `,"source":` + str(e.Source))
	for _, l := range []struct {
		key  string
		cols []string
	}{{"unchanged_toast", e.UnchangedToast}, {"omitted_generated", e.OmittedGenerated}} {
		if len(l.cols) > 0 {
			b, _ := marshal(l.cols)
			tail.WriteString(`,"` + l.key + `":` + string(b))
		}
	}
	if e.LSN != "" {
		tail.WriteString(`,"lsn":` + str(e.LSN))
	}
	tail.WriteString(`,"xid":` + strconv.FormatUint(uint64(e.XID), 10))
	tail.WriteString(`,"commit_time":` + str(e.CommitTime.UTC().Format(time.RFC3339Nano)))
	body := `,"table":` + str(e.Table) + `,"action":` + str(e.Action) +
		`,"data":{"old":` + string(old) + `,"new":` + string(new) + `}` + tail.String() + `}`
	id := e.EventID
	if id == "" {
		sum := md5.Sum([]byte(body))
		id = hex.EncodeToString(sum[:])
	}
	return []byte(`{"event_id":` + str(id) + body), nil
}

// Context is the EventContext a handler registered for route gets for the
// event (worker type "postgres_listener").
func (e Event) Context(ctx context.Context, route string) (*pgcdc.EventContext, error) {
	msg, err := e.JSON()
	if err != nil {
		return nil, err
	}
	return pgcdc.NewEventContext(ctx, route, pgcdc.DefaultWorkerType, msg)
}

// Recorder is a handler that writes each event it gets as one line of JSON
// (the event exactly as delivered) to w, and acknowledges it once written.
// Mount it for the routes to record; it is safe for concurrent use. Replay
// reads what it wrote.
func Recorder(w io.Writer) pgcdc.HandlerFunc {
	var mu sync.Mutex
	return func(ec *pgcdc.EventContext) error {
		mu.Lock()
		defer mu.Unlock()
		line := append(append(make([]byte, 0, len(ec.Message())+1), ec.Message()...), '\n')
		_, err := w.Write(line)
		return err
	}
}

// Result is what Replay did.
type Result struct {
	// Delivered counts the events whose handler succeeded.
	Delivered int
	// Failed holds, per event whose handler kept failing past the route's
	// retries, the *pgcdc.HandlerError that Serve would dead-letter.
	Failed []error
	// Unrouted counts the events no route handles (Serve skips those).
	Unrouted int
}

// Replay hands every event of r (JSON lines, as Recorder writes them) to
// w's handlers with w.Deliver: in file order, one at a time on the caller's
// goroutine (so the changes of one row keep their order), with each route's
// retries. A failing event does not stop the replay; it is listed in the
// result. It returns early only when ctx ends or r cannot be read.
func Replay(ctx context.Context, w *pgcdc.Worker, r io.Reader) (Result, error) {
	var res Result
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<30)
	line := 0
	for sc.Scan() {
		line++
		msg := sc.Bytes()
		if len(strings.TrimSpace(string(msg))) == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		err := w.Deliver(ctx, append([]byte(nil), msg...))
		var he *pgcdc.HandlerError
		switch {
		case err == nil:
			res.Delivered++
		case errors.Is(err, pgcdc.ErrNoRoute):
			res.Unrouted++
		case errors.As(err, &he):
			res.Failed = append(res.Failed, err)
		default:
			return res, fmt.Errorf("pgcdctest: line %d: %w", line, err)
		}
	}
	return res, sc.Err()
}

// NewWorker returns a worker for replaying events into handlers in a test:
// it has a default source that is never connected to (Deliver and Replay
// need no database) and the given options.
func NewWorker(opts ...pgcdc.OptionFunc) (*pgcdc.Worker, error) {
	return pgcdc.NewWorker(append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN("postgres://pgcdctest.invalid/replay")}, opts...)...)
}
