package pgcdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
)

// NewEventContext builds the EventContext a handler registered for route
// gets for an event, from the event's JSON (as EventContext.Message returns
// it: what a recording or a sink holds). It is for tests and tools that
// hand events to handlers without a database; package pgcdctest builds the
// JSON. The context's Context is ctx.
func NewEventContext(ctx context.Context, route, workerType string, message []byte) (*EventContext, error) {
	c, err := changeOf(message)
	if err != nil {
		return nil, err
	}
	return &EventContext{ctx: ctx, c: c, route: route, workerType: workerType}, nil
}

// eventFields are the fields of an event's JSON that a Change carries.
type eventFields struct {
	change.Header
	Source     string    `json:"source"`
	LSN        string    `json:"lsn"`
	XID        uint32    `json:"xid"`
	CommitTime time.Time `json:"commit_time"`
}

// changeOf rebuilds the Change of an event's JSON.
func changeOf(message []byte) (*change.Change, error) {
	var f eventFields
	if err := json.Unmarshal(message, &f); err != nil {
		return nil, fmt.Errorf("%w: the event is not an event's JSON: %v", ErrConfig, err)
	}
	if f.Table == "" || f.Action == "" {
		return nil, fmt.Errorf("%w: the event has no table or action", ErrConfig)
	}
	if f.Schema == "" {
		f.Schema = "public"
	}
	var lsn uint64
	if f.LSN != "" {
		l, err := pglogrepl.ParseLSN(f.LSN)
		if err != nil {
			return nil, fmt.Errorf("%w: the event's lsn %q: %v", ErrConfig, f.LSN, err)
		}
		lsn = uint64(l)
	}
	return &change.Change{Source: f.Source, Schema: f.Schema, Table: f.Table, Action: f.Action,
		EventID: f.EventID, Message: message, LSN: lsn, XID: f.XID, CommitTime: f.CommitTime}, nil
}

// ErrNoRoute is returned by Deliver for an event whose table no route of
// the worker handles.
var ErrNoRoute = errors.New("pgcdc: no route handles the event's table")

// Deliver hands one event (its JSON, as EventContext.Message returns it)
// to the handler the worker has registered for the event's source and
// table, on the caller's goroutine, as Serve would: the same route, the
// route's retries (without the waits between them, so tests stay fast and
// deterministic), a panic turned into an error. It returns nil once the
// handler succeeded, ErrNoRoute when no route handles the table (Serve would
// skip the event), and, when the retries are exhausted, the *HandlerError
// Serve would dead-letter (nothing is stored). Events of a table grouped
// with HandleTx reach the transaction handler as a transaction of one
// event. Deliver needs no database and works without Serve; package
// pgcdctest replays recordings through it.
func (w *Worker) Deliver(ctx context.Context, message []byte) error {
	c, err := changeOf(message)
	if err != nil {
		return err
	}
	w.mu.Lock()
	plan, err := w.plan()
	w.mu.Unlock()
	if err != nil {
		return err
	}
	for _, cfg := range plan {
		if cfg.Name != c.Source {
			continue
		}
		for _, t := range cfg.Tables {
			if t.Schema != c.Schema || t.Table != c.Table {
				continue
			}
			r := t.Route
			if r.Tx {
				if cfg.TxRoute == nil {
					break
				}
				r = *cfg.TxRoute
				r.Handler = redeliverTx(r.Handler)
			}
			if c.Action == ActionTruncate && (t.Route.Tx || !t.Route.Truncate) {
				return fmt.Errorf("%w: route %q does not take TRUNCATE (WithTruncate)", ErrNoRoute, t.Route.Name)
			}
			for attempt := 0; ; attempt++ {
				err = dispatch.Call(ctx, r.Handler, c)
				if err == nil {
					return nil
				}
				if attempt >= r.Retry.MaxRetries || IsPermanent(err) || ctx.Err() != nil {
					return &HandlerError{Route: t.Route.Name, EventID: c.EventID, Err: err}
				}
			}
		}
	}
	return fmt.Errorf("%w: source %q, table %s.%s", ErrNoRoute, c.Source, c.Schema, c.Table)
}
