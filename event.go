package pgcdc

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
)

// Actions of an event.
const (
	ActionInsert   = change.Insert
	ActionUpdate   = change.Update
	ActionDelete   = change.Delete
	ActionTruncate = change.Truncate
)

// EventPayload is the typed view of an event's JSON (EventContext.Message).
type EventPayload struct {
	// EventID is an md5 hex string, unique per change and the same every
	// time that change is delivered: use it to deduplicate.
	EventID string `json:"event_id"`
	// Table is the table name, without schema.
	Table string `json:"table"`
	// Action is ActionInsert, ActionUpdate, ActionDelete, or ActionTruncate
	// for routes that opted in (WithTruncate).
	Action string `json:"action"`
	// Data holds the row before and after the change.
	Data EventPayloadData `json:"data"`
	// Schema is the table's schema.
	Schema string `json:"schema"`
	// Source is the source name ("" for the default source).
	Source string `json:"source"`
	// LSN is the commit position of the change's transaction ("16/B374D848").
	LSN string `json:"lsn"`
	// XID is the transaction id.
	XID uint32 `json:"xid"`
	// CommitTime is when the transaction committed.
	CommitTime time.Time `json:"commit_time"`
	// UnchangedToast lists the columns of Data.New left out because their
	// large (TOASTed) value did not change and the old row was not available
	// (see the README, "TOAST").
	UnchangedToast []string `json:"unchanged_toast,omitempty"`
	// OmittedGenerated lists the table's generated columns that are not in
	// Data: PostgreSQL before version 18 does not publish them to logical
	// replication (the trigger capture mode has them).
	OmittedGenerated []string `json:"omitted_generated,omitempty"`
	// Context is the writer's context of the change's transaction
	// (SetTxContext), or nil when none was set.
	Context json.RawMessage `json:"context,omitempty"`
}

// EventPayloadData holds the old and new rows, as JSON objects exactly as
// PostgreSQL's row_to_json renders them (or JSON null).
type EventPayloadData struct {
	Old json.RawMessage `json:"old"`
	New json.RawMessage `json:"new"`
}

// DecodeOld unmarshals the old row into v; v is left untouched when there
// is no old row.
func (d EventPayloadData) DecodeOld(v any) error { return decodeRow(d.Old, v) }

// DecodeNew unmarshals the new row into v; v is left untouched when there
// is no new row.
func (d EventPayloadData) DecodeNew(v any) error { return decodeRow(d.New, v) }

func decodeRow(raw json.RawMessage, v any) error {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	return json.Unmarshal(raw, v)
}

// PostgresSource describes a configured source (Worker.Sources): its name
// and the replication slot and publication the logical capture mode uses
// for it (they exist once the worker has streamed the source).
type PostgresSource struct {
	// Name is the source name given to AddPostgresDSN ("" for SetPostgresDSN).
	Name string
	// Slot and Publication are the replication slot and publication the
	// worker streams the source through.
	Slot        string
	Publication string
}

// HandlerFunc handles one event. Returning nil acknowledges it; an error (or
// a panic) makes the worker retry it and finally dead-letter it.
type HandlerFunc func(*EventContext) error

// EventContext is what a handler gets for one event. It is valid only
// during the handler call and is not safe for concurrent use.
type EventContext struct {
	ctx        context.Context
	c          *change.Change
	route      string
	workerType string
	header     map[string]string
	event      *EventPayload
	eventOnce  sync.Once
	err        error
	filtered   bool // see Filtered
}

// Context is cancelled when the worker stops without waiting for handlers
// (Serve's context done, or Shutdown's context expired).
func (e *EventContext) Context() context.Context { return e.ctx }

// Message is the event's JSON; see EventPayload. Do not modify it.
func (e *EventContext) Message() []byte { return e.c.Message }

// Key is the event_id.
func (e *EventContext) Key() string { return e.c.EventID }

// Header holds metadata: source_name, schema, table, action, xid, lsn (in
// the logical capture mode), and
// context when the writer set one (SetTxContext).
func (e *EventContext) Header() map[string]string {
	if e.header == nil {
		e.header = map[string]string{
			"source_name": e.c.Source,
			"schema":      e.c.Schema,
			"table":       e.c.Table,
			"action":      e.c.Action,
			"xid":         strconv.FormatUint(uint64(e.c.XID), 10),
		}
		if e.c.LSN != 0 { // the trigger engine has no LSN
			e.header["lsn"] = lsnString(e.c.LSN)
		}
		if bytes.Contains(e.c.Message, []byte(`,"context":`)) {
			if ev := e.Event(); ev != nil && len(ev.Context) > 0 {
				e.header["context"] = string(ev.Context)
			}
		}
	}
	return e.header
}

// HandlerRoute is the route the handler was registered with.
func (e *EventContext) HandlerRoute() string { return e.route }

// WorkerType is the worker's type (SetWorkerType).
func (e *EventContext) WorkerType() string { return e.workerType }

// Event is the typed view of Message.
func (e *EventContext) Event() *EventPayload {
	e.eventOnce.Do(func() {
		var p EventPayload
		if err := json.Unmarshal(e.c.Message, &p); err == nil {
			e.event = &p
		}
	})
	return e.event
}

// Err returns the error recorded for this event (by SetError, or the
// handler's returned error once it returned).
func (e *EventContext) Err() error { return e.err }

// SetError records an error for this event (for logging and tracing). It
// does not by itself fail the event: return the error to have it retried.
func (e *EventContext) SetError(err error) { e.err = err }

func lsnString(lsn uint64) string { return change.FormatLSN(lsn) }

// KeyColumns are the primary key columns of the event's table, in key
// order (nil when the table has none): data.new (data.old for a DELETE)
// holds the row's key under these names. Do not modify the slice.
func (e *EventContext) KeyColumns() []string { return e.c.KeyColumns }

// RowKey is a hash of the row's identity (its primary key or replica
// identity columns): every change of one row has the same RowKey, and
// handlers see the changes of one RowKey in commit order. Sinks use it to
// keep per-row order (a partition, a message group).
func (e *EventContext) RowKey() uint64 { return e.c.PartKey }
