package postgresworker

import (
	"context"
	"database/sql"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// CandiTrigger is a row trigger that calls candi's notify_event() function
// (candi names them "<table>_notify_event").
type CandiTrigger struct {
	Schema, Table, Name string
}

// CandiNotify lists what candi's postgres_worker left in a database: its
// notify_event() trigger function and the triggers that call it. Each
// trigger costs every writer of its table a pg_notify, under a lock that
// serialises all notifying commits, for events nobody reads any more.
type CandiNotify struct {
	// Function is the schema-qualified, quoted name of candi's
	// notify_event() function, "" when there is none.
	Function string
	// Triggers are the triggers that call it.
	Triggers []CandiTrigger
}

// Found reports whether anything of candi's was found.
func (c CandiNotify) Found() bool { return c.Function != "" || len(c.Triggers) > 0 }

// DropSQL returns the statements that drop the triggers and then the
// function (identifiers quoted), one per line; "" when nothing was found.
func (c CandiNotify) DropSQL() string {
	var b strings.Builder
	for _, s := range c.dropStatements() {
		b.WriteString(s)
		b.WriteString(";\n")
	}
	return b.String()
}

func (c CandiNotify) dropStatements() []string {
	var out []string
	for _, t := range c.Triggers {
		out = append(out, fmt.Sprintf("DROP TRIGGER IF EXISTS %s ON %s", pgident.Quote(t.Name), pgident.Qualified(t.Schema, t.Table)))
	}
	if c.Function != "" {
		out = append(out, fmt.Sprintf("DROP FUNCTION IF EXISTS %s()", c.Function))
	}
	return out
}

// candiFunctionQuery finds candi's notify_event(): a trigger function without
// arguments of that name whose body notifies the channel "events".
const candiFunctionQuery = `SELECT p.oid, n.nspname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE p.proname = 'notify_event' AND p.pronargs = 0
  AND p.prorettype = 'trigger'::regtype
  AND p.prosrc LIKE '%pg_notify(''events''%'
ORDER BY n.nspname`

const candiTriggersQuery = `SELECT n.nspname, c.relname, t.tgname
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND t.tgfoid = $1
ORDER BY n.nspname, c.relname, t.tgname`

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

func findCandiNotify(ctx context.Context, q queryer) (CandiNotify, error) {
	var out CandiNotify
	rows, err := q.QueryContext(ctx, candiFunctionQuery)
	if err != nil {
		return out, fmt.Errorf("look for candi's notify_event() function: %w", err)
	}
	type fn struct {
		oid    uint32
		schema string
	}
	var fns []fn
	for rows.Next() {
		var f fn
		if err := rows.Scan(&f.oid, &f.schema); err != nil {
			rows.Close()
			return out, fmt.Errorf("look for candi's notify_event() function: %w", err)
		}
		fns = append(fns, f)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return out, fmt.Errorf("look for candi's notify_event() function: %w", err)
	}
	if len(fns) == 0 {
		return out, nil
	}
	// candi creates one function, in the first schema of the search_path.
	out.Function = pgident.Qualified(fns[0].schema, "notify_event")
	trows, err := q.QueryContext(ctx, candiTriggersQuery, fns[0].oid)
	if err != nil {
		return out, fmt.Errorf("look for candi's notify_event triggers: %w", err)
	}
	defer trows.Close()
	for trows.Next() {
		var t CandiTrigger
		if err := trows.Scan(&t.Schema, &t.Table, &t.Name); err != nil {
			return out, fmt.Errorf("look for candi's notify_event triggers: %w", err)
		}
		out.Triggers = append(out.Triggers, t)
	}
	if err := trows.Err(); err != nil {
		return out, fmt.Errorf("look for candi's notify_event triggers: %w", err)
	}
	return out, nil
}

// openDB opens a database/sql handle on dsn through pgx.
func openDB(dsn string) (*sql.DB, error) {
	cfg, err := pgxConfig(dsn)
	if err != nil {
		return nil, err
	}
	return stdlib.OpenDB(*cfg), nil
}

// FindCandiTriggers reports candi's notify_event() function and the triggers
// calling it in the database dsn (candi's "postgres://" form or any DSN pgx
// accepts).
func FindCandiTriggers(ctx context.Context, dsn string) (CandiNotify, error) {
	db, err := openDB(dsn)
	if err != nil {
		return CandiNotify{}, err
	}
	defer db.Close()
	return findCandiNotify(ctx, db)
}

// DropCandiTriggers drops candi's notify_event triggers and function from the
// database dsn, in one transaction, and returns what it dropped. Run it once
// every instance of the service runs this worker (candi's worker recreates
// them when it starts). The role must own the tables and the function.
func DropCandiTriggers(ctx context.Context, dsn string) (CandiNotify, error) {
	db, err := openDB(dsn)
	if err != nil {
		return CandiNotify{}, err
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return CandiNotify{}, fmt.Errorf("drop candi's notify triggers: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	found, err := findCandiNotify(ctx, tx)
	if err != nil {
		return CandiNotify{}, err
	}
	if !found.Found() {
		return found, nil
	}
	for _, stmt := range found.dropStatements() {
		if _, err := tx.ExecContext(ctx, stmt); err != nil {
			return CandiNotify{}, fmt.Errorf("drop candi's notify triggers: %s: %w", stmt, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return CandiNotify{}, fmt.Errorf("drop candi's notify triggers: %w", err)
	}
	return found, nil
}
