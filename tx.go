package pgcdc

import (
	"context"
	"fmt"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
)

// TxHandlerFunc handles every change of one committed transaction, of the
// tables routed with HandleTx, in one call. Returning nil acknowledges the
// whole transaction; an error (or a panic) retries the whole transaction,
// and after the retries its events go to the dead-letter table, one row
// each. Transactions are handled one at a time, in commit order.
type TxHandlerFunc func(*TxContext) error

// TxContext is what a transaction handler gets. It is valid only during
// the call.
type TxContext struct {
	ctx        context.Context
	c          *change.Change
	workerType string
	routes     map[string]string // "schema.table" → route
}

// Context is cancelled when the worker stops without waiting for handlers.
func (t *TxContext) Context() context.Context { return t.ctx }

// Source is the source name ("" for the default source).
func (t *TxContext) Source() string { return t.c.Source }

// XID is the transaction id.
func (t *TxContext) XID() uint32 { return t.c.XID }

// LSN is the transaction's commit position ("16/B374D848").
func (t *TxContext) LSN() string { return lsnString(t.c.LSN) }

// CommitTime is when the transaction committed.
func (t *TxContext) CommitTime() time.Time { return t.c.CommitTime }

// ID is an md5 hex string, the same every time this transaction is
// delivered: use it to make the handler idempotent.
func (t *TxContext) ID() string { return t.c.EventID }

// Len is the number of events in the transaction.
func (t *TxContext) Len() int { return t.c.Tx.Len() }

// Each calls fn with each event of the transaction, in commit order,
// stopping at fn's first error. The EventContext (and its Message) is only
// valid during fn. Events beyond the memory budget (SetTxBufferBytes) are
// read back from a temporary file, so Each may return an I/O error.
func (t *TxContext) Each(fn func(*EventContext) error) error {
	return t.c.Tx.Each(func(msg []byte) error {
		ec, err := eventFromMessage(t.ctx, msg, t.c, t.workerType, t.routes)
		if err != nil {
			return err
		}
		return fn(ec)
	})
}

// eventFromMessage rebuilds an event's context from its JSON.
// routes maps "schema.table" to the route the table was registered with.
func eventFromMessage(ctx context.Context, msg []byte, tx *change.Change, workerType string, routes map[string]string) (*EventContext, error) {
	h, err := change.ParseHeader(msg)
	if err != nil {
		return nil, fmt.Errorf("pgcdc: transaction event is not JSON: %w", err)
	}
	c := &change.Change{Source: tx.Source, Schema: h.Schema, Table: h.Table, Action: h.Action,
		EventID: h.EventID, Message: msg, LSN: tx.LSN, XID: tx.XID, CommitTime: tx.CommitTime}
	route, ok := routes[h.Schema+"."+h.Table]
	if !ok {
		route = h.Schema + "." + h.Table
	}
	return &EventContext{ctx: ctx, c: c, route: route, workerType: workerType}, nil
}

// HandleTx registers fn for whole transactions of the routed tables
// (routes as in Handle). A table is either handled per event (Handle) or per
// transaction (HandleTx), not both. Only the logical capture mode groups
// transactions.
//
// A worker has one transaction handler: a second call makes Serve fail
// with ErrConfig (pass every table to one call; the transaction's events
// say which table each is of).
func (w *Worker) HandleTx(fn TxHandlerFunc, routes ...string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.late("HandleTx") {
		return
	}
	w.txCalls++
	w.txHandler = fn
	w.txRoutes = append(w.txRoutes, routes...)
}

// SetTxBufferBytes bounds the memory that the events of one transaction
// take, for HandleTx, before they spill to a temporary file (default 16 MiB).
func SetTxBufferBytes(n int64) OptionFunc {
	return func(o *option) { o.txBufferBytes = n }
}

// adaptTx turns a TxHandlerFunc into the dispatcher's handler.
// routes maps "schema.table" to each grouped table's route.
func (w *Worker) adaptTx(fn TxHandlerFunc, routes map[string]string) dispatch.Handler {
	wt := w.opt.workerType
	return func(ctx context.Context, c *change.Change) error {
		return fn(&TxContext{ctx: ctx, c: c, workerType: wt, routes: routes})
	}
}
