// Package change defines the unit that flows from a capture engine through
// the dispatcher to a handler: one row change, already rendered as the JSON
// event that handlers receive.
package change

import (
	"encoding/json"
	"time"

	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// Resolver is told when a change has been resolved: its handler succeeded or
// it was dead-lettered. Only then may the engine confirm its position.
type Resolver interface {
	Done()
}

// Change is one committed row change of one table.
type Change struct {
	Source     string // source name ("" for the default source)
	Schema     string
	Table      string
	RouteKey   string // dispatcher key ("schema.table" as routed); "" means Schema.Table
	Action     string // INSERT, UPDATE, DELETE, TRUNCATE
	EventID    string // md5 hex, stable across redeliveries
	Message    []byte // the event JSON handed to handlers
	PartKey    uint64 // hash of the row's key; changes of one key keep their order
	LSN        uint64 // commit LSN of the transaction
	XID        uint32
	CommitTime time.Time
	// Pos resolves the change's position once handled. It may be nil.
	Pos Resolver
	// Reserved is the share of the dispatcher's memory budget the change
	// holds while queued (set and released by the dispatcher).
	Reserved int64
	// Tx, for a whole-transaction change (Action "TRANSACTION"), holds the
	// events of the transaction's grouped tables, in commit order. The
	// dispatcher closes it once the change is resolved or dropped.
	Tx *txbuf.Buffer
}

// Header is the routing part of an event's JSON.
type Header struct {
	EventID string `json:"event_id"`
	Table   string `json:"table"`
	Action  string `json:"action"`
	Schema  string `json:"schema"`
}

// ParseHeader reads the routing fields of an event's JSON (the events of a
// grouped transaction travel as JSON only).
func ParseHeader(msg []byte) (Header, error) {
	var h Header
	err := json.Unmarshal(msg, &h)
	return h, err
}
