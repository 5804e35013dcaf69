package trigger

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// Names and tags of the objects Install creates.
const (
	// DefaultSchema is the schema used when none is configured.
	DefaultSchema = "pgcdc"
	// EventTable is the name of the event table inside the schema.
	EventTable = "events"
	// Function is the name of the trigger function inside the schema.
	Function = "capture"
	// FunctionVersion is the version of the trigger function's body. It is
	// kept in the function's COMMENT; an older function is replaced.
	FunctionVersion = 3

	tagPrefix   = "pgcdc "
	schemaTag   = "pgcdc schema: created by pgcdc, removed by its teardown"
	tableTag    = "pgcdc event table: captured row changes waiting for delivery"
	triggerTag  = "pgcdc capture trigger"
	functionTag = "pgcdc capture function v%d"

	// tgtype of an AFTER INSERT OR UPDATE OR DELETE FOR EACH ROW trigger:
	// TRIGGER_TYPE_ROW (1) | INSERT (4) | DELETE (8) | UPDATE (16).
	captureTgtype = 1 | 4 | 8 | 16
	// tgtype of an AFTER TRUNCATE FOR EACH STATEMENT trigger.
	truncateTgtype = 32
)

func schemaOrDefault(schema string) string {
	if schema == "" {
		return DefaultSchema
	}
	return schema
}

// TriggerName is the name of the capture trigger put on routed tables for
// the given pgcdc schema: "pgcdc_capture" for the default schema,
// "pgcdc_capture_<schema>" otherwise (cut to 63 bytes with a hash), so
// several pgcdc schemas can capture the same table.
func TriggerName(schema string) string { return triggerName(schema, "pgcdc_capture") }

// truncateTriggerName is the name of the TRUNCATE trigger, put on the
// tables whose route wants TRUNCATE events: "pgcdc_truncate", or
// "pgcdc_truncate_<schema>".
func truncateTriggerName(schema string) string { return triggerName(schema, "pgcdc_truncate") }

func triggerName(schema, base string) string {
	schema = schemaOrDefault(schema)
	if schema == DefaultSchema {
		return base
	}
	return cutName(base+"_"+schema, schema)
}

// WorkerTypeSchema is the default schema of a worker type that is not the
// default one: "pgcdc_<worker type>", cut to 63 bytes with a hash. Every
// worker type has its own, so each gets every change of the tables it
// routes.
func WorkerTypeSchema(workerType string) string {
	return cutName(DefaultSchema+"_"+workerType, workerType)
}

// cutName returns name when it fits in an identifier, else its start
// followed by "_" and a hash of key.
func cutName(name, key string) string {
	if len(name) <= pgident.MaxLen {
		return name
	}
	h := fnv.New32a()
	h.Write([]byte(key))
	tail := fmt.Sprintf("_%08x", h.Sum32())
	cut := pgident.MaxLen - len(tail)
	for cut > 0 && name[cut]&0xC0 == 0x80 { // do not split a UTF-8 sequence
		cut--
	}
	return name[:cut] + tail
}

// lockKey is the advisory lock key serializing installs and teardowns of
// one schema.
func lockKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgcdc trigger install\x00" + schema))
	return int64(h.Sum64())
}

// functionName is the trigger function for tables whose primary key is
// key: "capture" for no key (tables without a primary key, and the
// TRUNCATE trigger), else "capture_<16 hex digits>" of a hash of the key
// column names. The key columns are written into the function's body, so
// one function serves every table with the same key column names
// (PL/pgSQL compiles a trigger function separately for each table).
func functionName(key []string) string {
	if len(key) == 0 {
		return Function
	}
	h := fnv.New64a()
	for _, k := range key {
		h.Write([]byte(k))
		h.Write([]byte{0})
	}
	return fmt.Sprintf("%s_%016x", Function, h.Sum64())
}

// keyExpr is the PL/pgSQL expression of the row key text taken from rec
// (NEW or OLD): each key column's value as to_json renders it, unquoted
// for strings, followed by chr(31). It reads the columns themselves, never
// the row's JSON: parsing that JSON decodes every string in it, which
// fails for json values the column accepts (\u0000, or characters that
// the database encoding lacks). For the key columns (types with a btree
// operator class, so never json) the text is the one row_to_json holds,
// the same as function version 1 hashed.
func keyExpr(rec string, key []string) string {
	if len(key) == 0 {
		return "''"
	}
	var b strings.Builder
	for i, k := range key {
		if i > 0 {
			b.WriteString(" || ")
		}
		b.WriteString("coalesce(pg_catalog.to_json(" + rec + "." + pgident.Quote(k) + ") OPERATOR(pg_catalog.#>>) '{}', '') || chr(31)")
	}
	return b.String()
}

// functionSQL is the trigger function for tables with primary key key; see
// the package doc for row_key.
//
// args are the trigger's arguments: the key columns, then, for a
// partitioned table, routeMarker and the table's schema and name: its
// partitions' changes (the trigger is cloned onto every partition, also
// those attached later) are then reported under the partitioned table's
// name, as the logical engine's publish_via_partition_root does. The
// writer's context (pgcdc.SetTxContext: the transaction-local setting
// pgcdc.context) is stored with each event.
func functionSQL(schema string, args []string) string {
	key, route := splitRouteArgs(args)
	tableSchema, tableName := "TG_TABLE_SCHEMA", "TG_TABLE_NAME"
	if route != nil {
		tableSchema, tableName = quoteLiteral(route[0]), quoteLiteral(route[1])
	}
	return render(functionTmpl, map[string]string{
		"Function":    pgident.Qualified(schema, functionName(args)),
		"EventTable":  pgident.Qualified(schema, EventTable),
		"OldKey":      keyExpr("OLD", key),
		"NewKey":      keyExpr("NEW", key),
		"TableSchema": tableSchema,
		"TableName":   tableName,
	})
}

// routeMarker separates a partitioned table's key columns from its name in
// the trigger's arguments (see functionSQL).
const routeMarker = "pgcdc:partitioned"

// splitRouteArgs splits trigger arguments into the key columns and, for a
// partitioned table, its schema and name.
func splitRouteArgs(args []string) (key, route []string) {
	if i := slices.Index(args, routeMarker); i >= 0 && len(args) == i+3 {
		return args[:i], args[i+1:]
	}
	return args, nil
}

// tableSQL creates the event table. The identity has CACHE 1 so ids are
// handed out in time order across sessions (the order argument of the
// package doc depends on it).
func tableSQL(schema string) string {
	return render(tableTmpl, map[string]string{
		"EventTable": pgident.Qualified(schema, EventTable),
		"Tag":        quoteLiteral(tableTag),
	})
}

// tableRef is a routed table as found in the catalog.
type tableRef struct {
	schema, name string
	oid          uint32
	key          []string // primary key columns, in key order
	truncate     bool     // the route wants TRUNCATE events
	partitioned  bool     // a partitioned table: its partitions report under its name
}

// args are the capture trigger's arguments (see functionSQL).
func (r tableRef) args() []string {
	if !r.partitioned {
		return r.key
	}
	return append(slices.Clone(r.key), routeMarker, r.schema, r.name)
}

// lookupTables finds every routed table and its primary key. Missing or
// unsupported tables are fatal configuration errors, all reported at once.
func lookupTables(ctx context.Context, q querier, tables []dispatch.Table) ([]tableRef, error) {
	var db string
	if err := q.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		return nil, fmt.Errorf("reading database name: %w", err)
	}
	var problems []error
	var out []tableRef
	seen := map[string]bool{}
	for _, t := range tables {
		id := t.Schema + "\x00" + t.Table
		if seen[id] {
			continue
		}
		seen[id] = true
		ref := tableRef{schema: t.Schema, name: t.Table, truncate: t.Route.Truncate}
		var kind string
		err := q.QueryRow(ctx, `SELECT c.oid, c.relkind::text FROM pg_catalog.pg_class c
			JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, t.Schema, t.Table).Scan(&ref.oid, &kind)
		if errors.Is(err, pgx.ErrNoRows) {
			problems = append(problems, &errs.Fatal{Err: fmt.Errorf("%w: route %q: table %s does not exist in database %q (names are case-sensitive, as stored in the catalog)",
				errs.ErrTableNotFound, t.Route.Name, pgident.Qualified(t.Schema, t.Table), db)})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("looking up table %s: %w", pgident.Qualified(t.Schema, t.Table), err)
		}
		ref.partitioned = kind == "p"
		rows, err := q.Query(ctx, `SELECT a.attname FROM pg_catalog.pg_index i
			CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
			JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
			WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord`, ref.oid)
		if err == nil {
			ref.key, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			return nil, fmt.Errorf("reading primary key of %s: %w", pgident.Qualified(t.Schema, t.Table), err)
		}
		out = append(out, ref)
	}
	// A partitioned table's trigger is cloned onto its partitions: routing
	// one of them too would capture its changes twice.
	for _, r := range out {
		var parent *string
		err := q.QueryRow(ctx, `SELECT (SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_partition_ancestors($1) a
				JOIN pg_catalog.pg_class c ON c.oid = a.relid JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
				WHERE a.relid <> $1 AND a.relid = ANY ($2) LIMIT 1)`, r.oid, oids(out)).Scan(&parent)
		if err != nil {
			return nil, fmt.Errorf("looking up partitions of %s: %w", pgident.Qualified(r.schema, r.name), err)
		}
		if parent != nil {
			problems = append(problems, &errs.Fatal{Err: fmt.Errorf("%w: %s is a partition of %s and both are routed: the changes of a partition are delivered to its partitioned table's route; route only one of them",
				errs.ErrConfig, pgident.Qualified(r.schema, r.name), *parent)})
		}
	}
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	return out, nil
}

func oids(refs []tableRef) []uint32 {
	out := make([]uint32, len(refs))
	for i, r := range refs {
		out[i] = r.oid
	}
	return out
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Install creates (or brings up to date) the schema, event table, trigger
// function and one capture trigger per table. It is idempotent and safe to
// run from several instances at once (an advisory lock serializes them).
// When everything is in place it only reads the catalog, so a consumer role
// without CREATE privileges can run it after an owner installed once (such
// a role needs USAGE on the schema and SELECT, UPDATE, DELETE on the event
// table to consume). Errors that
// retrying cannot fix are *errs.Fatal: a missing table wraps
// errs.ErrTableNotFound (naming the table and its route), a partitioned
// table or a foreign trigger with pgcdc's name errs.ErrConfig, a refused
// CREATE or CREATE TRIGGER errs.ErrPrivilege.
func Install(ctx context.Context, pool *pgxpool.Pool, schema string, tables []dispatch.Table) error {
	schema = schemaOrDefault(schema)
	var version int
	var versionText string
	if err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('server_version')`).Scan(&version, &versionText); err != nil {
		return fmt.Errorf("install: reading the server version: %w", err)
	}
	if version < 130000 {
		return &errs.Fatal{Err: fmt.Errorf("%w: trigger capture needs PostgreSQL 13 or later (xid8, pg_current_xact_id); the server runs %s",
			errs.ErrConfig, versionText)}
	}
	// Check the tables before taking the lock, so a missing table is
	// reported without waiting for other installers.
	if _, err := lookupTables(ctx, pool, tables); err != nil {
		return err
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock($1)`, lockKey(schema)); err != nil {
		return fmt.Errorf("install: taking the install lock: %w", err)
	}
	if err := checkSchemaAccess(ctx, tx, schema); err != nil {
		return err
	}
	if err := installObjects(ctx, tx, schema); err != nil {
		return privilegeHint(err)
	}
	// Look the tables up again under the lock: a table may have changed.
	refs, err := lookupTables(ctx, tx, tables)
	if err != nil {
		return err
	}
	for _, r := range refs {
		if err := installTriggers(ctx, tx, schema, r); err != nil {
			return privilegeHint(err)
		}
	}
	if err := dropUnusedFunctions(ctx, tx, schema); err != nil {
		return privilegeHint(err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("install: commit: %w", err)
	}
	return nil
}

// checkSchemaAccess refuses, up front, a schema this role cannot use: one
// that another role (typically another application's) created. Without
// this check the install fails later with a bare "permission denied for
// schema".
func checkSchemaAccess(ctx context.Context, tx pgx.Tx, schema string) error {
	var owner string
	var usage bool
	var tableOK *bool
	err := tx.QueryRow(ctx, `SELECT pg_catalog.pg_get_userbyid(n.nspowner),
			pg_catalog.has_schema_privilege(n.oid, 'USAGE'),
			(SELECT pg_catalog.has_table_privilege(c.oid, 'SELECT, UPDATE, DELETE')
				FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relname = $2)
		FROM pg_catalog.pg_namespace n WHERE n.nspname = $1`, schema, EventTable).Scan(&owner, &usage, &tableOK)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // created by this install
	}
	if err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	if usage && (tableOK == nil || *tableOK) {
		return nil
	}
	var user string
	if err := tx.QueryRow(ctx, `SELECT current_user`).Scan(&user); err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	return &errs.Fatal{Err: fmt.Errorf("%w: the trigger engine's schema %s belongs to role %q (another application or worker type?) and role %q may not use it; "+
		"give this worker its own schema (SetTriggerSchema, or a distinct SetWorkerType), or have %q grant USAGE on the schema and SELECT, UPDATE, DELETE on %s to %q",
		errs.ErrPrivilege, pgident.Quote(schema), owner, user, owner, pgident.Qualified(schema, EventTable), user)}
}

// installObjects creates the schema, table and function when missing or
// outdated.
func installObjects(ctx context.Context, tx pgx.Tx, schema string) error {
	var hasSchema, hasTable bool
	var fnComment *string
	// Catalog lookups only: they need no privilege on the schema.
	err := tx.QueryRow(ctx, `SELECT
			EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1),
			EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = $1 AND c.relname = $2),
			(SELECT obj_description(p.oid, 'pg_proc') FROM pg_catalog.pg_proc p
				JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
				WHERE n.nspname = $1 AND p.proname = $3 AND p.pronargs = 0)`,
		schema, EventTable, Function).Scan(&hasSchema, &hasTable, &fnComment)
	if err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	if !hasSchema {
		if _, err := tx.Exec(ctx, `CREATE SCHEMA `+pgident.Quote(schema)+`; COMMENT ON SCHEMA `+pgident.Quote(schema)+` IS `+quoteLiteral(schemaTag)); err != nil {
			return fmt.Errorf("install: creating schema %s: %w", pgident.Quote(schema), err)
		}
	}
	if !hasTable {
		if _, err := tx.Conn().PgConn().Exec(ctx, tableSQL(schema)).ReadAll(); err != nil {
			return fmt.Errorf("install: creating event table %s: %w", pgident.Qualified(schema, EventTable), err)
		}
	} else if err := addContextColumn(ctx, tx, schema); err != nil {
		return err
	}
	if fnComment == nil || *fnComment != fmt.Sprintf(functionTag, FunctionVersion) {
		return createFunction(ctx, tx, schema, nil)
	}
	return nil
}

// addContextColumn adds the writer-context column to an event table made
// before function version 3.
func addContextColumn(ctx context.Context, tx pgx.Tx, schema string) error {
	var has bool
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
		WHERE attrelid = to_regclass($1) AND attname = 'context' AND NOT attisdropped)`,
		pgident.Qualified(schema, EventTable)).Scan(&has)
	if err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	if has {
		return nil
	}
	if _, err := tx.Exec(ctx, `ALTER TABLE `+pgident.Qualified(schema, EventTable)+` ADD COLUMN context text`); err != nil {
		return fmt.Errorf("install: adding the context column to %s: %w", pgident.Qualified(schema, EventTable), err)
	}
	return nil
}

// ensureFunction creates the trigger function for key when it is missing
// or outdated.
func ensureFunction(ctx context.Context, tx pgx.Tx, schema string, key []string) error {
	var fnComment *string
	err := tx.QueryRow(ctx, `SELECT (SELECT obj_description(p.oid, 'pg_proc') FROM pg_catalog.pg_proc p
			JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs = 0)`, schema, functionName(key)).Scan(&fnComment)
	if err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	if fnComment != nil && *fnComment == fmt.Sprintf(functionTag, FunctionVersion) {
		return nil
	}
	return createFunction(ctx, tx, schema, key)
}

func createFunction(ctx context.Context, tx pgx.Tx, schema string, key []string) error {
	fn := pgident.Qualified(schema, functionName(key))
	sql := functionSQL(schema, key) + `;
COMMENT ON FUNCTION ` + fn + `() IS ` + quoteLiteral(fmt.Sprintf(functionTag, FunctionVersion)) + `;
REVOKE ALL ON FUNCTION ` + fn + `() FROM PUBLIC`
	if _, err := tx.Conn().PgConn().Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("install: creating trigger function %s: %w", fn, err)
	}
	return nil
}

// dropUnusedFunctions drops the key functions of the schema that no
// trigger calls any more (their table's key changed, or the table went).
func dropUnusedFunctions(ctx context.Context, tx pgx.Tx, schema string) error {
	var drops []string
	err := collect(ctx, tx, &drops, `SELECT 'DROP FUNCTION ' || p.oid::regprocedure::text
		FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1 AND p.proname LIKE $2 AND p.pronargs = 0
			AND obj_description(p.oid, 'pg_proc') LIKE 'pgcdc %'
			AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)`,
		schema, Function+`\_%`)
	if err != nil {
		return fmt.Errorf("install: reading the catalog: %w", err)
	}
	for _, d := range drops {
		if _, err := tx.Exec(ctx, d); err != nil {
			return fmt.Errorf("install: %s: %w", d, err)
		}
	}
	return nil
}

// installTriggers puts the capture triggers on one table: the row
// trigger, re-created when its arguments (the key columns) or its type are
// outdated, and the TRUNCATE trigger when the route asks for TRUNCATE events
// (dropped when it no longer does). Only triggers with our names on this
// very table are looked at; other triggers on the table are left alone.
func installTriggers(ctx context.Context, tx pgx.Tx, schema string, r tableRef) error {
	if err := ensureFunction(ctx, tx, schema, r.args()); err != nil {
		return err
	}
	capture := triggerSpec{name: TriggerName(schema), want: true, tgtype: captureTgtype, args: r.args(), events: "INSERT OR UPDATE OR DELETE", level: "ROW"}
	if err := ensureTrigger(ctx, tx, schema, r, capture); err != nil {
		return err
	}
	truncate := triggerSpec{name: truncateTriggerName(schema), want: r.truncate, tgtype: truncateTgtype, events: "TRUNCATE", level: "STATEMENT"}
	return ensureTrigger(ctx, tx, schema, r, truncate)
}

// triggerSpec is one of pgcdc's triggers on a table.
type triggerSpec struct {
	name   string
	want   bool     // the trigger should exist (else it is dropped)
	tgtype int      // pg_trigger.tgtype it must have
	args   []string // its arguments: the key columns (see functionSQL)
	events string   // "INSERT OR UPDATE OR DELETE", "TRUNCATE"
	level  string   // "ROW", "STATEMENT"
}

// ensureTrigger makes the trigger name on r call the function of args (the
// key columns, also given as trigger arguments) when want, and drops it
// when not. A trigger with that name that calls no pgcdc function of the
// schema is someone else's: an error when want, left alone otherwise.
func ensureTrigger(ctx context.Context, tx pgx.Tx, schema string, r tableRef, spec triggerSpec) error {
	name, want, tgtype, args, events, level := spec.name, spec.want, spec.tgtype, spec.args, spec.events, spec.level
	table := pgident.Qualified(r.schema, r.name)
	fn := pgident.Qualified(schema, functionName(args))
	var ours, current bool
	var gotType int16
	var gotArgs []byte
	err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
				JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
				WHERE p.oid = t.tgfoid AND n.nspname = $3 AND (p.proname = $4 OR p.proname LIKE $5)
					AND obj_description(p.oid, 'pg_proc') LIKE 'pgcdc %'),
			t.tgfoid = to_regprocedure($6),
			t.tgtype, t.tgargs
		FROM pg_catalog.pg_trigger t WHERE t.tgrelid = $1 AND t.tgname = $2`,
		r.oid, name, schema, Function, Function+`\_%`, fn+"()").Scan(&ours, &current, &gotType, &gotArgs)
	exists := err == nil
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("install: reading triggers of %s: %w", table, err)
	}
	switch {
	case exists && !ours && want:
		return &errs.Fatal{Err: fmt.Errorf("%w: table %s already has a trigger named %s that pgcdc did not create; rename or drop it, or use another pgcdc schema",
			errs.ErrConfig, table, pgident.Quote(name))}
	case exists && !ours, !exists && !want:
		return nil
	case exists && want && current && int(gotType) == tgtype && slices.Equal(splitArgs(gotArgs), args):
		return nil
	}
	var sql strings.Builder
	if exists {
		sql.WriteString(`DROP TRIGGER ` + pgident.Quote(name) + ` ON ` + table + `; `)
	}
	if want {
		sql.WriteString(`CREATE TRIGGER ` + pgident.Quote(name) + ` AFTER ` + events + ` ON ` + table +
			` FOR EACH ` + level + ` EXECUTE FUNCTION ` + fn + `(`)
		for i, a := range args {
			if i > 0 {
				sql.WriteString(", ")
			}
			sql.WriteString(quoteLiteral(a))
		}
		sql.WriteString(`); COMMENT ON TRIGGER ` + pgident.Quote(name) + ` ON ` + table + ` IS ` + quoteLiteral(triggerTag))
	}
	if _, err := tx.Conn().PgConn().Exec(ctx, sql.String()).ReadAll(); err != nil {
		return fmt.Errorf("install: creating trigger %s on %s: %w", pgident.Quote(name), table, err)
	}
	return nil
}

// splitArgs decodes pg_trigger.tgargs: each argument ends with a NUL byte.
func splitArgs(b []byte) []string {
	var out []string
	for len(b) > 0 {
		i := bytes.IndexByte(b, 0)
		if i < 0 {
			out = append(out, string(b))
			break
		}
		out = append(out, string(b[:i]))
		b = b[i+1:]
	}
	return out
}

func privilegeHint(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return &errs.Fatal{Err: fmt.Errorf("%w: %v (trigger capture needs CREATE on the database to create its schema, and ownership of (or the TRIGGER privilege on) each routed table; an owner can run the install once)", errs.ErrPrivilege, err)}
	}
	return err
}

// quoteLiteral quotes s as an SQL string literal, in the E-prefixed form when it
// holds a backslash so it means the same whatever standard_conforming_strings
// says.
func quoteLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}
