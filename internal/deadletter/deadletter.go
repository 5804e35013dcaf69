// Package deadletter stores changes whose handlers kept failing in a table
// of the source database, with the error, so they are kept (not lost) and
// can be inspected and delivered again.
package deadletter

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// Store writes dead letters into one table.
type Store struct {
	pool       *pgxpool.Pool
	table      string // quoted, schema-qualified
	workerType string
}

// Open creates the dead-letter table (and its schema) if missing.
func Open(ctx context.Context, pool *pgxpool.Pool, schema, table, workerType string) (*Store, error) {
	s := &Store{pool: pool, table: pgident.Qualified(schema, table), workerType: workerType}
	ddl := `CREATE SCHEMA IF NOT EXISTS ` + pgident.Quote(schema) + `;
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
COMMENT ON TABLE ` + s.table + ` IS 'pgcdc dead letters: events whose handler kept failing'`
	if schema == "public" || schema == "" {
		ddl = ddl[len(`CREATE SCHEMA IF NOT EXISTS `+pgident.Quote(schema)+`;`):]
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("dead-letter table %s: %w", s.table, err)
	}
	defer conn.Release()
	if _, err := conn.Conn().PgConn().Exec(ctx, ddl).ReadAll(); err != nil {
		return nil, fmt.Errorf("creating dead-letter table %s (grant CREATE on the schema, or create it once as an owner; see the README): %w", s.table, err)
	}
	return s, nil
}

// Table is the quoted, schema-qualified name of the table.
func (s *Store) Table() string { return s.table }

// Store records one change with the error that made it fail.
func (s *Store) Store(ctx context.Context, route string, c *change.Change, attempts int, cause error) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.table+`
		(worker_type, source, route, event_id, schema_name, table_name, action, lsn, payload, error, attempts)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::pg_lsn, $9::text::json, $10, $11)`,
		s.workerType, c.Source, route, c.EventID, c.Schema, c.Table, c.Action,
		lsnText(c.LSN), string(c.Message), cause.Error(), attempts)
	return err
}

func lsnText(lsn uint64) string {
	return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn))
}
