// Package faulttest is pgcdc's fault-injection suite. It holds no code of its
// own besides the tests (and the consumer program under consumer/, which the
// tests build and run as a separate process so it can be killed with
// SIGKILL). Every scenario runs against real PostgreSQL (a throwaway cluster
// from internal/pgtest, or PGCDC_TEST_DSN for the scenarios that need not stop
// the server), keeps a durable record of what the handlers saw and asserts
// that every written row was delivered at least once.
//
// Scenarios (one test each; see the test's doc comment):
//
//  1. TestKillConsumer: kill -9 of the consumer process at random points of
//     a load of single-row transactions, multi-row transactions and a COPY;
//     the slot's confirmed_flush_lsn, sampled after each kill, never passes
//     what the handlers had recorded.
//  2. TestPostgresRestart: PostgreSQL stopped in immediate mode and started
//     again under load.
//  3. TestConnectionCut: TCP connections cut by a proxy between pgcdc and
//     PostgreSQL; pgcdc resumes within the maximum reconnect interval.
//     TestConnectionCutBackoffResets: the reconnect wait starts again from
//     the minimum after a session that streamed.
//  4. TestPoisonEvent: one key whose handler always fails, among 16 lanes.
//  5. TestStandbyTakeover: several consumer processes of the same worker;
//     one streams, the others take over within 5 s of kill -9.
//  6. TestIdleTablesSlotLag: the slot's lag stays under 64 MB while WAL is
//     written elsewhere.
//  7. TestSlotDroppedWhileStreaming, TestSlotDroppedWhileStopped,
//     TestSlotWALLost: a lost or missing slot stops the worker with
//     pgcdc.ErrSlotLost.
//  8. TestBadInput: unreachable host, wrong password (a cluster whose
//     pg_hba.conf asks for SCRAM), missing REPLICATION, wal_level=replica,
//     missing table, table without a primary key, odd identifiers, a DSN
//     with a password that must never be printed.
//     FuzzPgoutputDecode: arbitrary pgoutput messages injected by a proxy
//     into a consumer's stream; the consumer must not panic.
//  9. TestSnapshotKill: kill -9 of the consumer in the middle of an initial
//     snapshot while rows are inserted, updated and deleted across the key
//     range; the events applied in handler order to a map rebuild the table
//     (checksum over row_to_json of every row), and each run resumes after
//     the recorded progress. TestSnapshotCommitVisibility: a commit in
//     the WAL before a chunk's low watermark but not yet visible to its read
//     (held by a paused synchronous standby) must not make the chunk deliver
//     a stale row.
//
// Each scenario logs one line
//
//	FIGURES scenario=NAME written=N delivered=N duplicates=N max_takeover=D
//
// where written is the number of rows (changes) committed, delivered the
// number of them delivered at least once, duplicates the number of
// deliveries beyond the first, and max_takeover the longest time from a
// fault to the next delivered event ("-" when the scenario has none).
//
// # Sizes
//
// By default the suite runs at CI size (10k rows, 5+1 kills, 2 restarts, 3
// cuts, 3 takeovers, 128 MB of WAL, a 50k-row snapshot with 2 kills; about
// 2 minutes with -race on 2 cores). The full size (100k rows, 20+1 kills,
// 5 restarts, 10 cuts, 10 takeovers, 1 GB of WAL, a 1M-row snapshot with 5
// kills) runs with:
//
//	PGCDC_FAULT_FULL=1 go test ./internal/faulttest/ -run . -v -timeout 60m
//
// Random choices (kill points, cut instants) come from a seed logged by
// each test; PGCDC_FAULT_SEED=N replays one.
package faulttest
