// Package logical is the logical replication capture engine: it keeps a
// publication and a replication slot per source, reads the pgoutput stream,
// turns row messages into events and confirms a position only once every
// change before it was resolved.
//
// # Files
//
//   - source.go: Source.Run, the reconnect loop; session, one connection's
//     life (checks, publication, slot, START_REPLICATION, stream, finish).
//   - setup.go: the up-front checks and the publication and slot (the only
//     DDL the engine runs).
//   - stream.go: the read loop of one replication connection and the
//     standby status it reports.
//   - streaming.go: protocol 2 streamed (in-progress) transactions.
//   - decode.go, rowmsg.go: the decoder, pure: bytes and its relation cache
//     in, changes out. What it needs from outside comes through
//     decoderConfig (the routing predicate, Source.describe for the
//     catalog), so it is tested without a connection or a dispatcher.
//
// # Goroutines and ownership
//
// Per session:
//
//   - The stream goroutine (the one calling stream.run) owns the
//     replication connection and all of the stream's state: it reads,
//     decodes, hands changes to the dispatcher and sends standby status
//     updates.
//   - The dispatcher's lane goroutines run handlers and resolve changes in
//     the checkpoint.Tracker, which is safe for concurrent use; they never
//     touch the connection.
//   - The dispatcher's keeper goroutine: while a fast handler runs directly
//     on the stream goroutine (see package dispatch), the stream goroutine
//     is inside that handler call and does not use the connection; if the
//     call lasts more than a second, the keeper calls the stream's idle
//     function, which sends a standby status update, so the server does not
//     drop the connection. The keeper only calls idle between keeper.begin
//     and keeper.end, which the stream goroutine calls around the handler,
//     under the keeper's mutex: the connection is used by one goroutine at
//     a time, never concurrently.
//   - The lag watcher samples the slot's lag through the pool, not the
//     replication connection.
//
// Lock order: the keeper's mutex is taken before anything the idle
// function takes (the tracker's mutex, briefly); the tracker never calls
// out while holding its own.
package logical
