// Package pgcdc turns every committed INSERT, UPDATE and DELETE of chosen
// PostgreSQL tables into an event and hands it to a handler registered for
// its table, without losing one.
//
// # Quick start
//
//	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://app@db/shop"))
//	if err != nil { ... }
//	w.Handle("orders", func(ec *pgcdc.EventContext) error {
//		fmt.Println(string(ec.Message())) // {"event_id":..., "table":"orders", "action":"INSERT", "data":{"old":null,"new":{...}}}
//		return nil
//	})
//	err = w.Serve(ctx) // until ctx is done or w.Shutdown(ctx)
//
// # Capture
//
// pgcdc reads the changes through logical replication (the pgoutput plugin).
// For each source it creates, when missing, a publication of the routed
// tables and a replication slot, both named
// "pgcdc_<worker type>_<source name or default>" (see Worker.Sources). The
// server needs wal_level=logical and the role the REPLICATION attribute.
//
// # Delivery guarantee
//
// At-least-once. The position confirmed to PostgreSQL only moves past a
// change after its handler returned nil, or after the change was stored in
// the dead-letter table once the retries were used up. Whatever was not
// confirmed is delivered again after a crash, a restart or a lost
// connection, with the same event_id, so handlers can deduplicate. Changes
// of one row (same primary key) are handled one at a time, in commit order;
// changes of different rows run concurrently up to SetMaxGoroutines per
// table.
//
// # Concurrency
//
// A Worker's methods are safe for concurrent use. Handlers run on the
// worker's goroutines; an EventContext is only valid during its handler
// call. Every goroutine the worker starts has ended when Serve returns.
package pgcdc
