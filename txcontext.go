package pgcdc

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
)

// Execer runs SQL: pgx.Tx, *pgx.Conn and *pgxpool.Conn are Execers.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// TxContextSQL is what SetTxContext runs, with the context's JSON as $1,
// for writers that are not written in Go: run it inside the writing
// transaction.
const TxContextSQL = `SELECT pg_catalog.pg_logical_emit_message(true, 'pgcdc', $1::text),
	pg_catalog.set_config('pgcdc.context', $1::text, true)`

// SetTxContext attaches a small JSON context (who made the change: an
// actor, a request id, a W3C traceparent, ...) to every event of the
// transaction tx writes, as the events' "context" field (and
// EventContext.Header()["context"]). Call it inside the transaction, before
// or after its writes; a later call replaces the context for the changes
// after it. It writes one transactional logical message, which the logical
// capture mode reads, and sets the transaction-local setting pgcdc.context,
// which the trigger mode's function reads (TxContextSQL): one small WAL
// record, and no privilege beyond EXECUTE on pg_logical_emit_message, which
// PostgreSQL grants to everyone by default.
func SetTxContext(ctx context.Context, tx Execer, values map[string]any) error {
	b, err := json.Marshal(values)
	if err != nil {
		return fmt.Errorf("pgcdc: SetTxContext: %w", err)
	}
	if _, err := tx.Exec(ctx, TxContextSQL, string(b)); err != nil {
		return fmt.Errorf("pgcdc: SetTxContext: %w", err)
	}
	return nil
}
