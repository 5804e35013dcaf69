// Package sink delivers pgcdc events to systems outside the process: files,
// HTTP endpoints and brokers. A Sink is plugged into a pgcdc.Worker as a
// handler (Handler), so the worker's one delivery path still holds: an event
// is acknowledged only after the sink reported it durable.
//
// Each concrete sink lives in its own package below this one (sink/file,
// sink/webhook, sink/nats, ...); this module, not the library's, carries
// their client dependencies.
package sink

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/pgcdc/pgcdc"
)

// Message is one event as a sink sees it.
type Message struct {
	// EventID is the event's event_id: stable across redeliveries, usable
	// as a deduplication id (Nats-Msg-Id, AMQP message_id, ...).
	EventID string
	// Source, Schema, Table and Action name where the change came from.
	Source, Schema, Table, Action string
	// LSN is the commit position of the change's transaction ("" in
	// trigger capture mode).
	LSN string
	// RowKey is a hash of the row's identity: messages of one RowKey must
	// stay in the order given.
	RowKey uint64
	// KeyColumns are the primary key columns of the table, in key order
	// (nil without a primary key); see KeyJSON.
	KeyColumns []string
	// Payload is the event JSON exactly as the library delivers it.
	Payload []byte
}

// KeyJSON returns the row's primary key as a JSON object in key order
// ({"id":42}, {"region":"eu","id":7}), values exactly as in the event, taken
// from data.new (data.old for a DELETE); nil when the table has no primary
// key or the row lacks a key column. Brokers that partition by key (Kafka)
// use it as the record key, so every change of a row lands in one
// partition, in order, and compacted topics keep the row's last state.
func KeyJSON(m Message) []byte {
	if len(m.KeyColumns) == 0 {
		return nil
	}
	var ev struct {
		Action string `json:"action"`
		Data   struct {
			Old, New map[string]json.RawMessage
		} `json:"data"`
	}
	if err := json.Unmarshal(m.Payload, &ev); err != nil {
		return nil
	}
	row := ev.Data.New
	if row == nil {
		row = ev.Data.Old
	}
	b := []byte{'{'}
	for i, c := range m.KeyColumns {
		v, ok := row[c]
		if !ok {
			return nil
		}
		if i > 0 {
			b = append(b, ',')
		}
		k, _ := json.Marshal(c)
		b = append(append(append(b, k...), ':'), v...)
	}
	return append(b, '}')
}

// FromEvent builds the Message of a handler's event.
func FromEvent(ec *pgcdc.EventContext) Message {
	h := ec.Header()
	return Message{
		EventID:    ec.Key(),
		Source:     h["source_name"],
		Schema:     h["schema"],
		Table:      h["table"],
		Action:     h["action"],
		LSN:        h["lsn"],
		RowKey:     ec.RowKey(),
		KeyColumns: ec.KeyColumns(),
		Payload:    ec.Message(),
	}
}

// Sink delivers messages durably.
type Sink interface {
	// Deliver writes msgs and returns nil only once every one of them is
	// durable at the destination (written and synced, acknowledged by the
	// broker, answered 2xx). Messages of one RowKey are given in order and
	// must be delivered in that order. An error means none of msgs may be
	// taken as delivered; wrap it with Permanent when retrying cannot help.
	// Deliver may be called from several goroutines at once.
	Deliver(ctx context.Context, msgs []Message) error
	// Close releases the sink's connections. Deliver is not called after.
	Close(ctx context.Context) error
}

// Permanent marks err as one that retrying cannot fix: the event is
// dead-lettered at once (pgcdc.Permanent). Permanent(nil) is nil.
func Permanent(err error) error { return pgcdc.Permanent(err) }

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool { return pgcdc.IsPermanent(err) }

// Handler turns s into a handler: each event is delivered on its own, and
// the handler returns once s reported it durable. Run several goroutines
// per route (pgcdc.SetMaxGoroutines) to have several events in flight; the
// worker keeps per-row order.
func Handler(s Sink) pgcdc.HandlerFunc {
	return func(ec *pgcdc.EventContext) error {
		msg := [1]Message{FromEvent(ec)}
		return s.Deliver(ec.Context(), msg[:])
	}
}

// ErrClosed is returned by Deliver after Close.
var ErrClosed = errors.New("pgcdc/sink: sink closed")
