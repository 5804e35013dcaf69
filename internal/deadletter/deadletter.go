// Package deadletter stores changes whose handlers kept failing in a table
// of the source database, with the error, so they are kept (not lost) and
// can be inspected and delivered again.
package deadletter

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// Names of the default location.
const (
	// LegacySchema and LegacyTable name the default table of earlier
	// versions, public.pgcdc_dead_letters: still used when it exists, so no
	// dead letter stored there is left behind.
	LegacySchema = "public"
	LegacyTable  = "pgcdc_dead_letters"
	// DefaultTable is the default table's name inside pgcdc's own schema.
	DefaultTable = "dead_letters"

	tableComment  = "pgcdc dead letters: events whose handler kept failing"
	schemaComment = "pgcdc schema: created by pgcdc, removed by its teardown"
)

// OpenDefault opens the default dead-letter table: public.pgcdc_dead_letters
// when it exists (created by an earlier version), else dead_letters in
// schema, pgcdc's own schema (created when missing: a role that may create
// pgcdc's objects may create it, where PostgreSQL 15 denies CREATE on
// public). A role that may not create that schema but may create in public
// gets public.pgcdc_dead_letters.
func OpenDefault(ctx context.Context, pool *pgxpool.Pool, schema, workerType string) (*Store, error) {
	var legacy bool
	err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))`, LegacySchema, LegacyTable).Scan(&legacy)
	if err != nil {
		return nil, fmt.Errorf("looking for the dead-letter table %s: %w", pgident.Qualified(LegacySchema, LegacyTable), err)
	}
	if legacy {
		return Open(ctx, pool, LegacySchema, LegacyTable, workerType)
	}
	st, err := Open(ctx, pool, schema, DefaultTable, workerType)
	var pgErr *pgconn.PgError
	if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		return st, err
	}
	// The role may not create pgcdc's schema (no CREATE on the database)
	// but may create in public (PostgreSQL 14 and older by default): the
	// earlier default. Once created there it is found first, so the choice
	// stays the same.
	var inPublic bool
	if qerr := pool.QueryRow(ctx, `SELECT pg_catalog.has_schema_privilege($1, 'CREATE')`, LegacySchema).Scan(&inPublic); qerr != nil || !inPublic {
		return nil, err
	}
	return Open(ctx, pool, LegacySchema, LegacyTable, workerType)
}

// Store writes dead letters into one table.
type Store struct {
	pool       *pgxpool.Pool
	table      string // quoted, schema-qualified
	workerType string
}

// Open creates the dead-letter table (and its schema) if missing.
func Open(ctx context.Context, pool *pgxpool.Pool, schema, table, workerType string) (*Store, error) {
	s := &Store{pool: pool, table: pgident.Qualified(schema, table), workerType: workerType}
	var owner, user *string
	var writable *bool
	if err := pool.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(c.relowner),
			pg_catalog.has_schema_privilege(n.oid, 'USAGE') AND pg_catalog.has_table_privilege(c.oid, 'INSERT'),
			current_user::text
		FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, schema, table).Scan(&owner, &writable, &user); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("dead-letter table %s: %w", s.table, err)
	}
	if owner != nil {
		// Nothing to create: a role without CREATE privileges can use a
		// table an owner created, if it may write it.
		if !*writable {
			return nil, fmt.Errorf("dead-letter table %s belongs to role %q and role %q may not insert into it: grant USAGE on its schema and INSERT (SELECT, UPDATE, DELETE to redeliver) to %q, or choose another table with SetDeadLetterTable",
				s.table, *owner, *user, *user)
		}
		return s, nil
	}
	// IF NOT EXISTS is not safe against a concurrent creator (two workers
	// starting together): serialize on an advisory lock, in one transaction.
	ddl := `BEGIN; SELECT pg_advisory_xact_lock(7245931182654219);
DO $pgcdc$ BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = ` + pgident.Literal(schema) + `) THEN
		CREATE SCHEMA ` + pgident.Quote(schema) + `;
		COMMENT ON SCHEMA ` + pgident.Quote(schema) + ` IS ` + pgident.Literal(schemaComment) + `;
	END IF;
END $pgcdc$;
CREATE TABLE IF NOT EXISTS ` + s.table + ` (
	id          bigserial PRIMARY KEY,
	created_at  timestamptz NOT NULL DEFAULT now(),
	worker_type text NOT NULL,
	source      text NOT NULL,
	route       text NOT NULL,
	event_id    text NOT NULL,
	schema_name text NOT NULL,
	table_name  text NOT NULL,
	action      text NOT NULL,
	lsn         pg_lsn,
	payload     json NOT NULL,
	error       text NOT NULL,
	attempts    integer NOT NULL
);
COMMENT ON TABLE ` + s.table + ` IS ` + pgident.Literal(tableComment) + `;
COMMIT`
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead-letter table %s: %w", s.table, err)
	}
	defer conn.Release()
	if _, err := conn.Conn().PgConn().Exec(ctx, ddl).ReadAll(); err != nil {
		return nil, fmt.Errorf("creating dead-letter table %s (grant CREATE on the schema, create it once as an owner, or choose another table with SetDeadLetterTable; see the README): %w", s.table, err)
	}
	return s, nil
}

// Table is the quoted, schema-qualified name of the table.
func (s *Store) Table() string { return s.table }

// Store records one change with the error that made it fail. A whole
// transaction is stored as one row per event, in one database transaction.
func (s *Store) Store(ctx context.Context, route string, c *change.Change, attempts int, cause error) error {
	if c.Tx != nil {
		return s.storeTx(ctx, route, c, attempts, cause)
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.table+`
		(worker_type, source, route, event_id, schema_name, table_name, action, lsn, payload, error, attempts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::pg_lsn, `+payloadSQL+`, $10, $11)`,
		s.workerType, c.Source, route, c.EventID, c.Schema, c.Table, c.Action,
		lsnText(c.LSN), c.Message, cause.Error(), attempts)
	return err
}

// payloadSQL stores the event JSON ($9, UTF-8 bytes) whatever the
// connection's client_encoding: the server converts it from UTF-8 to the
// database encoding.
const payloadSQL = `pg_catalog.convert_from($9::bytea, 'UTF8')::json`

// lsnText is the lsn column's value: nil (NULL) for the trigger engine's
// events, which have no WAL position.
func lsnText(lsn uint64) any {
	if lsn == 0 {
		return nil
	}
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}

// Redeliver hands stored dead letters of one worker type and source to
// handle, oldest first, at most limit (0 means all). A letter whose handler
// succeeds is deleted; one that fails again stays with the new error and one
// more attempt. It returns how many were delivered.
func (s *Store) Redeliver(ctx context.Context, source string, limit int, handle func(context.Context, *change.Change) error) (int, error) {
	q := `SELECT id, event_id, schema_name, table_name, action, coalesce(lsn::text, '0/0'), pg_catalog.convert_to(payload::text, 'UTF8')
		FROM ` + s.table + ` WHERE worker_type = $1 AND source = $2 ORDER BY id`
	args := []any{s.workerType, source}
	if limit > 0 {
		q += ` LIMIT $3`
		args = append(args, limit)
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("reading dead letters from %s: %w", s.table, err)
	}
	type letter struct {
		id int64
		c  change.Change
	}
	var letters []letter
	for rows.Next() {
		var l letter
		var lsn string
		var payload []byte
		if err := rows.Scan(&l.id, &l.c.EventID, &l.c.Schema, &l.c.Table, &l.c.Action, &lsn, &payload); err != nil {
			rows.Close()
			return 0, fmt.Errorf("reading dead letters from %s: %w", s.table, err)
		}
		var hi, lo uint32
		if _, err := fmt.Sscanf(lsn, "%X/%X", &hi, &lo); err == nil {
			l.c.LSN = uint64(hi)<<32 | uint64(lo)
		}
		l.c.Source, l.c.Message = source, payload
		letters = append(letters, l)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("reading dead letters from %s: %w", s.table, err)
	}
	delivered := 0
	for _, l := range letters {
		if herr := handle(ctx, &l.c); herr != nil {
			if _, err := s.pool.Exec(ctx, `UPDATE `+s.table+` SET error = $2, attempts = attempts + 1 WHERE id = $1`, l.id, herr.Error()); err != nil {
				return delivered, fmt.Errorf("updating dead letter %d: %w", l.id, err)
			}
			continue
		}
		if _, err := s.pool.Exec(ctx, `DELETE FROM `+s.table+` WHERE id = $1`, l.id); err != nil {
			return delivered, fmt.Errorf("deleting redelivered dead letter %d: %w", l.id, err)
		}
		delivered++
	}
	return delivered, nil
}

func (s *Store) storeTx(ctx context.Context, route string, c *change.Change, attempts int, cause error) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(ctx) }()
	err = c.Tx.Each(func(msg []byte) error {
		h, err := change.ParseHeader(msg)
		if err != nil {
			return fmt.Errorf("dead letter of transaction %d: %w", c.XID, err)
		}
		_, err = tx.Exec(ctx, `INSERT INTO `+s.table+`
			(worker_type, source, route, event_id, schema_name, table_name, action, lsn, payload, error, attempts)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::pg_lsn, `+payloadSQL+`, $10, $11)`,
			s.workerType, c.Source, route, h.EventID, h.Schema, h.Table, h.Action,
			lsnText(c.LSN), msg, cause.Error(), attempts)
		return err
	})
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}
