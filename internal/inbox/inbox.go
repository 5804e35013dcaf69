// Package inbox keeps the transactional inbox of exactly-once handlers: one
// small row per handled event, written in the same transaction as the
// handler's own writes, in the target database.
//
// # Tables
//
// In a schema of the target database (default "pgcdc"):
//
//	inbox_streams (id int identity PRIMARY KEY, worker_type text, source text, UNIQUE (worker_type, source))
//	inbox         (stream int, event_id uuid, lsn bigint NULL, xid bigint, PRIMARY KEY (stream, event_id))
//
// A stream is one (worker type, source) pair; its id keeps the per-event
// row at about 60 bytes (a 16-byte uuid for the md5 event id, two 8-byte
// positions) and the primary key is the only index writers maintain.
//
// # Recording
//
// Record inserts the row with ON CONFLICT DO NOTHING before the handler
// runs: one statement both checks and records. If a concurrent transaction
// recorded the same event (two instances of the trigger engine handling an
// event whose claim expired), the insert waits for it and then finds the
// row, so the handler never runs twice for one committed record.
//
// # Pruning
//
// A row is needed only while its event can still be delivered again. Each
// engine says when that is over, so pruning asks the source, never the
// clock (a consumer may crash after its commit and stay down for days):
//
//   - logical engine (lsn set): PostgreSQL resumes decoding at the slot's
//     confirmed position and skips every transaction whose commit record
//     starts below it. The confirmed position shown while streaming is not
//     yet on disk (a server crash moves it back), but the slot's restart_lsn
//     is saved as soon as it moves and never passes the saved confirmed
//     position, so rows with lsn below the restart_lsn seen one pruning
//     round earlier (by then surely saved) can go;
//   - trigger engine (lsn NULL): an event is delivered again only while its
//     row is in the event table. Rows of the inbox visible in a snapshot
//     taken before reading the event table, whose transaction id is below
//     the smallest one still in the event table, can go: their event rows
//     were deleted (acknowledged), the deletes are made durable before the
//     rows go (see TriggerHorizon), and they cannot come back.
package inbox

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcdc/pgcdc/internal/pgident"
)

// DefaultSchema is the schema of the inbox tables unless told otherwise.
const DefaultSchema = "pgcdc"

// Table names inside the schema.
const (
	Table   = "inbox"
	Streams = "inbox_streams"
)

// tag is the comment on the tables. It does not start with "pgcdc " so
// the trigger engine's Teardown (which drops the tagged objects of its
// schema) leaves the inbox alone: it guards effects, not capture.
const tag = "pgcdc-inbox: exactly-once records of HandleInTx; rows are pruned once their events cannot be delivered again"

// Querier is what the functions need: a pool, a connection or a transaction.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Store is the inbox of one schema.
type Store struct {
	schema  string
	table   string // qualified
	streams string // qualified
	record  string // the record statement
}

// New returns the store of schema ("" means DefaultSchema).
func New(schema string) *Store {
	if schema == "" {
		schema = DefaultSchema
	}
	s := &Store{schema: schema, table: pgident.Qualified(schema, Table), streams: pgident.Qualified(schema, Streams)}
	s.record = `INSERT INTO ` + s.table + ` (stream, event_id, lsn, xid) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`
	return s
}

// Schema is the store's schema.
func (s *Store) Schema() string { return s.schema }

// TableName is the qualified, quoted name of the inbox table.
func (s *Store) TableName() string { return s.table }

// Ensure creates the schema and tables when missing. It only needs the
// CREATE privilege the first time; an advisory lock serializes concurrent
// instances.
func (s *Store) Ensure(ctx context.Context, q Querier) error {
	var ok bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND to_regclass($2) IS NOT NULL`, s.table, s.streams).Scan(&ok); err != nil {
		return fmt.Errorf("inbox: looking for %s: %w", s.table, err)
	}
	if ok {
		return nil
	}
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("inbox: creating %s: %w", s.table, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock($1)`, lockKey(s.schema)); err != nil {
		return fmt.Errorf("inbox: creating %s: %w", s.table, err)
	}
	ddl := `CREATE SCHEMA IF NOT EXISTS ` + pgident.Quote(s.schema) + `;
CREATE TABLE IF NOT EXISTS ` + s.streams + ` (
	id          int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	worker_type text NOT NULL,
	source      text NOT NULL,
	UNIQUE (worker_type, source)
);
COMMENT ON TABLE ` + s.streams + ` IS ` + pgident.Literal(tag) + `;
CREATE TABLE IF NOT EXISTS ` + s.table + ` (
	stream   int NOT NULL,
	event_id uuid NOT NULL,
	lsn      bigint,
	xid      bigint NOT NULL,
	PRIMARY KEY (stream, event_id)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
	autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);
COMMENT ON TABLE ` + s.table + ` IS ` + pgident.Literal(tag)
	if _, err := tx.Exec(ctx, ddl); err != nil {
		return fmt.Errorf("inbox: creating %s (the role needs CREATE on the database the first time, or create it beforehand): %w", s.table, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("inbox: creating %s: %w", s.table, err)
	}
	return nil
}

func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgcdc inbox\x00" + schema))
	return int64(h.Sum64())
}

// Stream returns the id of the (workerType, source) stream, registering it
// when new.
func (s *Store) Stream(ctx context.Context, q Querier, workerType, source string) (int32, error) {
	var id int32
	err := q.QueryRow(ctx, `WITH ins AS (
		INSERT INTO `+s.streams+` (worker_type, source) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id)
	SELECT id FROM ins UNION ALL SELECT id FROM `+s.streams+` WHERE worker_type = $1 AND source = $2`, workerType, source).Scan(&id)
	if err != nil {
		return 0, fmt.Errorf("inbox: registering stream (worker type %q, source %q) in %s: %w", workerType, source, s.streams, err)
	}
	return id, nil
}

// EventUUID turns an md5 hex event id into the inbox key.
func EventUUID(eventID string) (pgtype.UUID, error) {
	var u pgtype.UUID
	if len(eventID) != 32 {
		return u, fmt.Errorf("inbox: event id %q is not 32 hex digits", eventID)
	}
	if _, err := hex.Decode(u.Bytes[:], []byte(eventID)); err != nil {
		return u, fmt.Errorf("inbox: event id %q is not 32 hex digits", eventID)
	}
	u.Valid = true
	return u, nil
}

// Event identifies one recorded event.
type Event struct {
	Stream  int32
	EventID string // md5 hex
	LSN     uint64 // commit LSN; 0 (trigger engine) is stored as NULL
	XID     uint32
}

// Record records an event in tx and reports whether it is new (false: it
// was recorded by an earlier, committed transaction, so its handler must
// not run again). It raises the transaction's synchronous_commit from off
// to on.
func (s *Store) Record(ctx context.Context, tx pgx.Tx, stream int32, eventID string, lsn uint64, xid uint32) (bool, error) {
	fresh, err := s.RecordAll(ctx, tx, []Event{{Stream: stream, EventID: eventID, LSN: lsn, XID: xid}})
	if err != nil {
		return false, err
	}
	return fresh[0], nil
}

// RecordAll records events in tx in one round trip and reports, for each,
// whether it is new; see Record.
func (s *Store) RecordAll(ctx context.Context, tx pgx.Tx, events []Event) ([]bool, error) {
	// The commit must be durable before the events are acknowledged: with
	// synchronous_commit off, a crash could lose the records and the
	// effects after the source confirmed the events.
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_catalog.set_config('synchronous_commit', 'on', true) WHERE pg_catalog.current_setting('synchronous_commit') = 'off'`)
	for _, e := range events {
		u, err := EventUUID(e.EventID)
		if err != nil {
			return nil, err
		}
		var l *int64
		if e.LSN != 0 {
			v := int64(e.LSN)
			l = &v
		}
		b.Queue(s.record, e.Stream, u, l, int64(e.XID))
	}
	br := tx.SendBatch(ctx, b)
	fresh := make([]bool, len(events))
	_, err := br.Exec()
	for i := 0; err == nil && i < len(events); i++ {
		var tag pgconn.CommandTag
		tag, err = br.Exec()
		fresh[i] = tag.RowsAffected() == 1
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("inbox: recording %d event(s) in %s: %w", len(events), s.table, err)
	}
	return fresh, nil
}

// Count returns the rows of a stream.
func (s *Store) Count(ctx context.Context, q Querier, stream int32) (int64, error) {
	var n int64
	err := q.QueryRow(ctx, `SELECT count(*) FROM `+s.table+` WHERE stream = $1`, stream).Scan(&n)
	return n, err
}

// SlotRestart reads the restart_lsn of a logical slot of the current
// database; ok is false when the slot does not exist (or has no restart
// position).
//
// The confirmed_flush_lsn that pg_replication_slots shows is the
// walsender's memory: it reaches disk only at the next checkpoint, so after
// a server crash the slot goes back to an older confirmed position and
// transactions below the one shown are decoded again. restart_lsn is saved
// to disk as soon as it moves, together with a confirmed position at or
// above it (PostgreSQL moves it only once the client confirmed past the
// point that makes it valid), so every transaction whose commit starts
// below a restart_lsn that was on disk stays skipped, crash or not. It
// trails the confirmed position by about one running-transactions record
// (written every 15 s while the server is busy).
func SlotRestart(ctx context.Context, q Querier, slot string) (lsn uint64, ok bool, err error) {
	var v *int64
	err = q.QueryRow(ctx, `SELECT (restart_lsn - '0/0'::pg_lsn)::bigint FROM pg_catalog.pg_replication_slots
		WHERE slot_name = $1 AND database = current_database()`, slot).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil || v == nil {
		return 0, false, err
	}
	return uint64(*v), true, nil
}

// PruneLogical deletes the stream's rows of the logical engine whose commit
// LSN is below bound: a restart_lsn of the slot known to be on disk (see
// SlotRestart).
func (s *Store) PruneLogical(ctx context.Context, q Querier, stream int32, bound uint64) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM `+s.table+` WHERE stream = $1 AND lsn IS NOT NULL AND lsn < $2`, stream, int64(bound))
	if err != nil {
		return 0, fmt.Errorf("inbox: pruning %s: %w", s.table, err)
	}
	return tag.RowsAffected(), nil
}

// TriggerHorizon reads, from a source database, the full transaction id
// not yet assigned (xmax of its snapshot) and the smallest transaction id
// still in the trigger engine's event table eventTable (qualified); when
// the table is empty, pending is xmax. ok is false when the event table
// does not exist.
//
// The trigger engine deletes delivered rows with synchronous_commit off, so
// a delete it sees may still be lost in a server crash (the row, and its
// event, would come back). TriggerHorizon therefore commits a transaction
// of its own with synchronous_commit on after reading: its commit record
// follows the commits of every delete it saw, and PostgreSQL flushes the
// WAL in order, so once it returns those deletes are durable.
func TriggerHorizon(ctx context.Context, q Querier, eventTable string) (xmax, pending uint64, ok bool, err error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, eventTable).Scan(&exists); err != nil {
		return 0, 0, false, err
	}
	if !exists {
		return 0, 0, false, nil
	}
	tx, err := q.Begin(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var x, p int64
	// An xid makes the commit write (and flush) a commit record.
	if _, err = tx.Exec(ctx, `SET LOCAL synchronous_commit = on; SELECT pg_catalog.pg_current_xact_id()`); err == nil {
		err = tx.QueryRow(ctx, `SELECT pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint,
		coalesce((SELECT xid::text::bigint FROM `+eventTable+` ORDER BY xid LIMIT 1),
			pg_catalog.pg_snapshot_xmax(pg_catalog.pg_current_snapshot())::text::bigint)`).Scan(&x, &p)
	}
	if err == nil {
		err = tx.Commit(ctx) // flushes the WAL up to here: the deletes seen are durable
	}
	if err != nil {
		return 0, 0, false, err
	}
	return uint64(x), uint64(p), true, nil
}

// TriggerPruner prunes the rows of the trigger engine in two steps: Begin
// takes the inbox snapshot (before the caller reads the event table with
// TriggerHorizon), Finish deletes what the horizon allows.
type TriggerPruner struct {
	s      *Store
	tx     pgx.Tx
	stream int32
}

// BeginTrigger opens a repeatable-read transaction on the target and
// reports whether the stream has rows of the trigger engine at all (when
// not, the pruner is already finished and the event table need not be
// read).
func (s *Store) BeginTrigger(ctx context.Context, q Querier, stream int32) (*TriggerPruner, bool, error) {
	tx, err := q.Begin(ctx)
	if err != nil {
		return nil, false, err
	}
	var any bool
	if _, err = tx.Exec(ctx, `SET TRANSACTION ISOLATION LEVEL REPEATABLE READ`); err == nil {
		err = tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+s.table+` WHERE stream = $1 AND lsn IS NULL)`, stream).Scan(&any)
	}
	if err != nil || !any {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return nil, false, err
	}
	return &TriggerPruner{s: s, tx: tx, stream: stream}, true, nil
}

// Finish deletes the rows, visible in the pruner's snapshot, whose full
// transaction id (rebuilt from the 32-bit one relative to xmax, which can
// only make it larger, never smaller) is below pending, and commits.
func (p *TriggerPruner) Finish(ctx context.Context, xmax, pending uint64) (int64, error) {
	defer func() { _ = p.tx.Rollback(context.WithoutCancel(ctx)) }()
	tag, err := p.tx.Exec(ctx, `DELETE FROM `+p.s.table+` WHERE stream = $1 AND lsn IS NULL
		AND (($2::bigint & ~4294967295::bigint) | xid) - CASE WHEN (($2::bigint & ~4294967295::bigint) | xid) >= $2::bigint THEN 4294967296 ELSE 0 END < $3::bigint`,
		p.stream, int64(xmax), int64(pending))
	if err != nil {
		return 0, fmt.Errorf("inbox: pruning %s: %w", p.s.table, err)
	}
	if err := p.tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("inbox: pruning %s: %w", p.s.table, err)
	}
	return tag.RowsAffected(), nil
}

// Abort ends the pruner without deleting.
func (p *TriggerPruner) Abort(ctx context.Context) {
	_ = p.tx.Rollback(context.WithoutCancel(ctx))
}
