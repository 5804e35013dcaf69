package trigger

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/runner"
)

// Teardown removes what Install created in schema ("" means "pgcdc"),
// found by the "pgcdc " COMMENT tags: every trigger that calls a tagged
// function of the schema, those functions, the tagged tables of the schema
// (the event table, with its undelivered events) and the schema itself if pgcdc created it. Nothing untagged
// is touched: when the schema also holds objects pgcdc did not create, it
// is kept and Teardown says so in its error after removing the rest. A
// dead-letter table in the schema (the default location) is kept, and so
// is the schema then, without an error. A schema that does not exist is
// not an error.
func Teardown(ctx context.Context, dsn string, schema string, configure func(*pgconn.Config)) error {
	schema = schemaOrDefault(schema)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("teardown: %w", runner.Redact(err))
	}
	cfg.RuntimeParams["application_name"] = "pgcdc"
	if configure != nil {
		configure(&cfg.Config)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("teardown: connecting: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("teardown: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_advisory_xact_lock($1)`, lockKey(schema)); err != nil {
		return fmt.Errorf("teardown: taking the install lock: %w", err)
	}
	var schemaTagged *bool
	if err := tx.QueryRow(ctx, `SELECT obj_description(oid, 'pg_namespace') LIKE 'pgcdc %'
		FROM pg_catalog.pg_namespace WHERE nspname = $1`, schema).Scan(&schemaTagged); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		return fmt.Errorf("teardown: reading schema %s: %w", pgident.Quote(schema), err)
	}

	// Triggers calling our functions, then the functions, then the tables.
	var drops []string
	err = collect(ctx, tx, &drops, `SELECT 'DROP TRIGGER ' || quote_ident(t.tgname) || ' ON ' || t.tgrelid::regclass::text
		FROM pg_catalog.pg_trigger t
		JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
		JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
		WHERE n.nspname = $1 AND obj_description(p.oid, 'pg_proc') LIKE 'pgcdc %' AND NOT t.tgisinternal`, schema)
	if err == nil {
		err = collect(ctx, tx, &drops, `SELECT 'DROP FUNCTION ' || p.oid::regprocedure::text
			FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
			WHERE n.nspname = $1 AND obj_description(p.oid, 'pg_proc') LIKE 'pgcdc %'`, schema)
	}
	if err == nil {
		err = collect(ctx, tx, &drops, `SELECT 'DROP TABLE ' || c.oid::regclass::text
			FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND obj_description(c.oid, 'pg_class') LIKE 'pgcdc %'
				AND obj_description(c.oid, 'pg_class') NOT LIKE $2`, schema, deadLetterTag+"%")
	}
	if err != nil {
		return fmt.Errorf("teardown: reading the catalog: %w", err)
	}
	for _, d := range drops {
		if _, err := tx.Exec(ctx, d); err != nil {
			return privilegeHint(fmt.Errorf("teardown: %s: %w", d, err))
		}
	}
	var kept error
	var deadLetters bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND obj_description(c.oid, 'pg_class') LIKE $2)`, schema, deadLetterTag+"%").Scan(&deadLetters); err != nil {
		return fmt.Errorf("teardown: reading the catalog: %w", err)
	}
	if schemaTagged != nil && *schemaTagged && !deadLetters {
		if _, err := tx.Exec(ctx, `SAVEPOINT drop_schema`); err != nil {
			return fmt.Errorf("teardown: %w", err)
		}
		if _, err := tx.Exec(ctx, `DROP SCHEMA `+pgident.Quote(schema)); err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "2BP01" { // dependent objects
				return privilegeHint(fmt.Errorf("teardown: dropping schema %s: %w", pgident.Quote(schema), err))
			}
			if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT drop_schema`); err != nil {
				return fmt.Errorf("teardown: %w", err)
			}
			kept = fmt.Errorf("teardown: schema %s was kept because it holds objects pgcdc did not create (%s); everything pgcdc created was removed",
				pgident.Quote(schema), strings.TrimSpace(pgErr.Detail))
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("teardown: commit: %w", err)
	}
	return kept
}

// deadLetterTag starts the COMMENT of a dead-letter table (package
// deadletter), which Teardown keeps.
const deadLetterTag = "pgcdc dead letters"

func collect(ctx context.Context, tx pgx.Tx, out *[]string, sql string, args ...any) error {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	*out = append(*out, got...)
	return err
}
