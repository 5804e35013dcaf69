// Package change defines the unit that flows from a capture engine through
// the dispatcher to a handler: one row change, already rendered as the JSON
// event that handlers receive.
package change

import (
	"encoding/json"
	"time"

	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// Actions of a change.
const (
	Insert   = "INSERT"
	Update   = "UPDATE"
	Delete   = "DELETE"
	Truncate = "TRUNCATE"
	// Transaction is the action of the change that carries a whole
	// transaction to the transaction route (see Change.Tx).
	Transaction = "TRANSACTION"
)

// Resolver is told when a change has been resolved: its handler succeeded or
// it was dead-lettered. Only then may the engine confirm its position.
type Resolver interface {
	Done()
}

// Change is one committed row change of one table.
type Change struct {
	Source   string // source name ("" for the default source)
	Schema   string
	Table    string
	RouteKey string // dispatcher key ("schema.table" as routed); "" means Schema.Table
	Action   string // INSERT, UPDATE, DELETE, TRUNCATE
	EventID  string // md5 hex, stable across redeliveries
	Message  []byte // the event JSON handed to handlers
	PartKey  uint64 // hash of the row's key; changes of one key keep their order
	// KeyColumns are the primary key columns of the table, in key order
	// (nil without a primary key); shared, not to be modified.
	KeyColumns []string
	LSN        uint64 // commit LSN of the transaction
	XID        uint32
	CommitTime time.Time
	// Pos resolves the change's position once handled. It may be nil.
	Pos Resolver
	// Reserved is the share of the dispatcher's memory budget the change
	// holds while queued (set and released by the dispatcher).
	Reserved int64
	// Tx, for a whole-transaction change (Action Transaction), holds the
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

// AppendLSN writes an LSN as PostgreSQL does: upper-case hex "16/B374D848".
func AppendLSN(b []byte, lsn uint64) []byte {
	const digits = "0123456789ABCDEF"
	hexU32 := func(b []byte, v uint32) []byte {
		if v == 0 {
			return append(b, '0')
		}
		var buf [8]byte
		i := len(buf)
		for v > 0 {
			i--
			buf[i] = digits[v&0xF]
			v >>= 4
		}
		return append(b, buf[i:]...)
	}
	b = hexU32(b, uint32(lsn>>32))
	b = append(b, '/')
	return hexU32(b, uint32(lsn))
}

// FormatLSN returns an LSN as PostgreSQL writes it ("16/B374D848").
func FormatLSN(lsn uint64) string { return string(AppendLSN(nil, lsn)) }
