// Package trigger is the trigger capture engine, for databases where logical
// replication is not allowed (no REPLICATION privilege, wal_level below
// logical, managed services, poolers). It produces the same events as the
// logical engine and hands them to the same dispatcher.
//
// # Capture
//
// Install creates, in a pgcdc-owned schema (default "pgcdc"), a durable
// event table and one trigger function, and puts one AFTER INSERT OR UPDATE
// OR DELETE FOR EACH ROW trigger on every routed table. The trigger writes a
// row into the event table inside the writer's own transaction, so an event
// exists exactly when its change committed, whether or not a consumer is
// connected. The row holds row_to_json(OLD) and row_to_json(NEW) in json
// columns (json keeps row_to_json's bytes; jsonb would reorder keys), the
// action, schema, table, the transaction id and the transaction time. There
// is no size limit beyond PostgreSQL's own (1 GB per value): large rows are
// TOASTed, and no NOTIFY payload is involved.
//
// Routes that want TRUNCATE events (dispatch.Route.Truncate) also get an
// AFTER TRUNCATE FOR EACH STATEMENT trigger that records one, with old and
// new null.
//
// The functions are SECURITY DEFINER, so writers need no privilege on the
// pgcdc schema (EXECUTE is revoked from PUBLIC; only triggers call it), with
// search_path fixed to pg_catalog, public as such functions must be (reg*
// values render relative to it). It also fixes the settings that shape
// row_to_json's output (TimeZone UTC, DateStyle ISO, IntervalStyle postgres,
// extra_float_digits 1, bytea_output hex: the session settings the logical
// engine renders with), so events do not depend on the writer's session.
// These SET clauses cost about 15 µs per row on top of about 35 µs for the
// capture itself (single-session CPU time per INSERT); testing the writer's
// settings in the body and setting them only when they differ measured
// slower. Its version is in its COMMENT and it is replaced when outdated. Every object is tagged with a COMMENT
// starting "pgcdc " and Teardown removes exactly the tagged objects. A
// transaction-level advisory lock serializes concurrent installs.
//
// # Keys and order
//
// Install creates one trigger function per primary key (column names):
// "capture_<hash>", with the key columns written into its body, shared by
// the tables with the same key column names ("capture", without a key, for
// tables without a primary key and for TRUNCATE). It stores row_key, a
// 64-bit hash (hashtextextended) of schema, table and the key values taken
// from the new row (the old row for DELETE), each read from the row's own
// column (to_json of the value, unquoted for strings: the text row_to_json
// holds), never from the row's JSON: parsing that decodes every string in
// it and fails for values a json column accepts ("\u0000", or a
// character the database encoding lacks), which would fail the writer's
// statement. The key columns are also the trigger's arguments; Install
// re-creates the trigger when the key changes and drops the functions no
// trigger uses. A table without a primary key hashes to one key per table.
// row_key is both the
// dispatch partition key (changes of one key go to one lane, in order) and
// what the claim query uses to keep the order across batches and instances.
// Distinct keys that collide are only ordered more strictly than needed.
//
// Event ids come from an identity column with CACHE 1, so they are handed
// out in time order. For one key, a later change can only be written after
// the transaction of the earlier change committed (it waits for the row
// lock, or for the unique index on a re-inserted key), so the events of one
// key are in id order, and a snapshot that sees the later event also sees
// the earlier one. (An UPDATE of the primary key is ordered with the new
// key, as in the logical engine. Rows of a table without a primary key are
// ordered by id among committed events.)
//
// # Claiming
//
// Each Source has one consumer goroutine that claims batches in id order,
// in one statement:
//
//	cand:    SELECT ... WHERE claimed_until IS NULL OR claimed_until < now()
//	         ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED
//	earlier: the events with id below the batch's last one that are not in
//	         the batch and not validly claimed by this session
//	UPDATE ... SET claimed_until = now() + ClaimTimeout, claimed_by = <session>
//	WHERE id IN cand AND no event of earlier has the same row_key and a
//	      smaller id (for a TRUNCATE event: the same table)
//	RETURNING ...
//
// SKIP LOCKED lets several instances claim at the same time without
// waiting for each other, and no row is claimed by two of them. The earlier
// condition stops a later event of a key from overtaking an earlier one: if
// an earlier event of the key is claimed by another instance, being claimed
// right now (locked, hence skipped) or otherwise left out of the batch, the
// later one is not claimed either and waits for a later round. Earlier
// events claimed by this same session do not block: they went to the same
// dispatch lane before, and a lane is first in, first out, so a hot key
// streams without waiting for each batch to finish. The earlier set comes
// from one range scan of the primary key below the batch's end; it holds
// only unfinished events (delivered rows are deleted), so no index on
// row_key is needed and writers maintain one index only.
//
// A TRUNCATE is a barrier for its table: the claim also skips any event
// whose table has an earlier TRUNCATE that is outside the batch or cannot
// be claimed now, and a TRUNCATE whose table has an earlier event held back.
//
// The claimed changes go, in id order, to the dispatcher's lanes; the
// dispatcher retries failed handlers and dead-letters exhausted ones. A
// TRUNCATE event is handed over only once every earlier event this session
// claimed is resolved, and a later event of its table only once the
// TRUNCATE is resolved. A row is deleted only when its change is resolved
// (handler succeeded or dead-lettered); deletes are batched by a second
// goroutine. A heartbeat extends the claims of this session's unfinished
// rows every ClaimTimeout/3, so a slow handler keeps its claim. A session
// holds at most two batches of unresolved events, leaving the rest to other
// instances, and one claim takes at most about 16 MB of stored event data
// (always at least one event), so a backlog of large rows does not fill
// memory; the dispatcher's byte budget bounds its queues as well.
//
// # Stopping and crash recovery
//
// When stop is closed the consumer stops claiming, the handlers in flight
// finish, resolved rows are deleted and the claims on rows that were claimed
// but not handled are released at once, so another instance (or the next
// Run) takes them without waiting. When ctx ends the same happens with the
// handlers cancelled. When the connection fails, the session ends the same
// way; what it could not delete or release is done when the next session
// connects, before it claims anything, and the new session claims under a
// new name, so rows of the old one (even ones it never read) hold back later
// events of their keys until they are released or expire. If the process
// dies (kill -9), its claims expire after ClaimTimeout and the rows are
// claimed again, by any instance, in id order: nothing is lost, and the
// redelivered events carry the same event_id. Delivery is at least once: a
// change whose handler ran but whose delete did not commit is delivered
// again.
//
// # Event id
//
// event_id is the md5 hex of "<system identifier>/<database>/trigger/<event
// table oid>/<event row id>". The oid makes ids of a re-created event table
// (after Teardown and a new Install, whose row ids start again at 1) differ
// from those of the old one; everything else is fixed for the life of the
// row, so a redelivered event has the same id.
//
// # Wake-up
//
// The consumer polls: it claims every PollInterval (default 50 ms), and
// again at once when the last claim was full (it claimed events and its
// candidate scan reached the batch size), so under load it never waits.
// A NOTIFY from the trigger would cut the idle latency but makes every
// writing transaction take the cluster-wide NOTIFY lock at commit, which
// serializes committing writers. Measured with BenchmarkWakeup (one INSERT
// per transaction, the consumer running; PostgreSQL 15 on 2 vCPUs shared
// with other jobs, load average 7 to 11 during the run, so compare within
// a column; median of 3 runs, transactions/s):
//
//	durable commits (fsync, synchronous_commit on)   1 client   8 clients   32 clients
//	  no capture                                         1136       2413         4017
//	  pgcdc trigger, polling (default)                    807       1779         2709
//	  pgcdc trigger + NOTIFY wake-up per write            695        946          873
//	  candi: pg_notify(row JSON), no table               1036       1163         1071
//	fsync and synchronous_commit off
//	  no capture                                         4444       8311         5071
//	  pgcdc trigger, polling (default)                   2913       5437         4816
//	  pgcdc trigger + NOTIFY wake-up per write           3686       3525         2182
//	  candi: pg_notify(row JSON), no table               2139       2565         2367
//
// With durable commits, adding a NOTIFY wake-up to the trigger costs 1.9
// times the write throughput at 8 clients and 3.1 times at 32, and polling
// beats candi's NOTIFY design by 2.5 times at 32 clients (2.0 times without
// fsync). BenchmarkPollLatency gives the price of polling, commit-to-handler
// latency p50/p99 at a light load: 3-6/12-14 ms at a 5 ms interval, 12/25 ms
// at 20 ms, 27/54 ms at 50 ms and 52/102 ms at 100 ms, for an idle claim of
// 0.3 to 0.6 ms round trip (at 50 ms, about 1% of a core per instance). 50
// ms keeps the idle cost negligible with latency far below human scale; set
// PollInterval lower for tighter latency. BenchmarkDrain: one consumer
// empties a backlog at about 13,000 events/s with batches of 100, 22,000
// with 500 (the default) and 24,000 with 2,000, far above the write rates
// above, so the consumer keeps up.
//
// Commands:
//
//	go test -run '^$' -bench Wakeup -benchtime 10000x -count 3 ./internal/trigger/
//	go test -run '^$' -bench PollLatency -benchtime 400x ./internal/trigger/
//	go test -run '^$' -bench Drain -benchtime 50000x ./internal/trigger/
//
// # Retention
//
// Delivered rows are deleted, so the table holds only the backlog
// (Backlog reports it). The table is created with autovacuum settings for a
// queue (vacuum after 1000 dead rows whatever the table size, no cost delay)
// and fillfactor 80 so the claim update can usually stay on the same page
// (HOT); no explicit VACUUM is run. Consumer connections run with
// synchronous_commit off: a claim, delete or release lost in a server crash
// only causes a redelivery, and not waiting for the WAL flush keeps the
// consumer's commits from queueing for fsync next to the writers'. They
// run with jit off:
// the claim query's estimates can pass jit_above_cost on a large table, and
// compiling it took a second where running it takes milliseconds.
//
// Events of tables that still carry this schema's trigger but are routed
// by no source are never claimed; the source logs them at start. One pgcdc
// schema serves one worker type: the Sources reading it share (split) its
// events. The root package gives each worker type its own schema by
// default, so each gets every change; Install refuses, naming the owner, a
// schema this role may not use (another application's).
//
// # Encodings
//
// Consumer connections use client_encoding UTF8, and the claim reads the
// row JSON with convert_to(..., 'UTF8'), so events are UTF-8 whatever the
// database encoding. A SQL_ASCII database cannot be converted: its bytes
// are read as they are, and any byte that is not part of valid UTF-8 is
// delivered as U+FFFD, with a warning naming the table.
package trigger
