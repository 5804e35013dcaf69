package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/sink"
)

const deadLettersHelp = `Usage: pgcdc dead-letters list|redeliver|purge -c FILE [--source S] [--table T] [--limit N]

Dead letters are events whose delivery kept failing (or failed for good, e.g. a
webhook answering 400); they wait in each source's dead-letter table.

  list       print them, oldest first (--limit: at most N, default 50; --json)
  redeliver  deliver them again to the sinks their table is routed to now,
             oldest first; delivered ones are removed, failing ones stay with
             the new error (--limit: at most N, default all)
  purge      delete them (asks first unless --yes)

--source limits to one source of the file, --table to one table ("orders" or
"sales.orders").
`

// handlerPrefix is the library's "which handler, which event" part of a
// dead letter's error, left out of the list's short error column.
var handlerPrefix = regexp.MustCompile(`^pgcdc: handler for route .* failed on event [0-9a-f]+: `)

// deadLetterRow is one row of a dead-letter table.
type deadLetterRow struct {
	ID        int64     `json:"id"`
	CreatedAt time.Time `json:"created_at"`
	Source    string    `json:"source"`
	Route     string    `json:"route"`
	EventID   string    `json:"event_id"`
	Schema    string    `json:"schema"`
	Table     string    `json:"table"`
	Action    string    `json:"action"`
	LSN       string    `json:"lsn,omitempty"`
	Attempts  int       `json:"attempts"`
	Error     string    `json:"error"`
	Payload   string    `json:"-"`
}

func cmdDeadLetters(ctx context.Context, args []string, env *cliEnv) error {
	if len(args) == 0 || (args[0] != "list" && args[0] != "redeliver" && args[0] != "purge") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
			fmt.Fprint(env.stderr, deadLettersHelp)
			return flag.ErrHelp
		}
		fmt.Fprint(env.stderr, deadLettersHelp)
		return usageError{errors.New("want list, redeliver or purge")}
	}
	sub := args[0]
	fs, path := commandFlags("dead-letters "+sub, deadLettersHelp, env.stderr)
	source := fs.String("source", "", "only this source of the file")
	table := fs.String("table", "", `only this table ("orders" or "schema.table")`)
	limit := fs.Int("limit", -1, "at most this many (list: default 50; redeliver: default all)")
	asJSON := fs.Bool("json", false, "list: print JSON lines")
	yes := fs.Bool("yes", false, "purge: do not ask for confirmation")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	sources := cfg.sourceOrder
	if *source != "" {
		if cfg.Sources[*source] == nil {
			return fmt.Errorf("--source %q is not a source of %s (sources: %s)", *source, *path, strings.Join(cfg.sourceOrder, ", "))
		}
		sources = []string{*source}
	}
	var schema, tbl string
	if *table != "" {
		schema, tbl = splitTable(*table)
	}
	switch sub {
	case "list":
		n := *limit
		if n < 0 {
			n = 50
		}
		return listDeadLetters(ctx, env, cfg, sources, schema, tbl, n, *asJSON)
	case "redeliver":
		return redeliverDeadLetters(ctx, env, cfg, sources, schema, tbl, max(*limit, 0))
	default:
		if !*yes && !env.confirm(fmt.Sprintf("Delete the dead letters of %s%s?", strings.Join(sources, ", "), tableNote(*table))) {
			return errors.New("not confirmed; nothing deleted")
		}
		return purgeDeadLetters(ctx, env, cfg, sources, schema, tbl)
	}
}

func tableNote(t string) string {
	if t == "" {
		return ""
	}
	return " for table " + t
}

// dlWhere is the filter of the dead-letter commands.
func dlWhere(sc *SourceConfig, source, schema, table string) (string, []any) {
	where := `worker_type = $1 AND source = $2`
	args := []any{workerTypeOf(sc), source}
	if table != "" {
		where += ` AND schema_name = $3 AND table_name = $4`
		args = append(args, schema, table)
	}
	return where, args
}

// withDeadLetters connects to a source and calls fn with its dead-letter
// table and the condition (with its arguments) selecting the source's
// dead letters, of table when it is not "". A source without a dead-letter
// table (nothing was dead-lettered) is skipped. Errors name the source.
func withDeadLetters(ctx context.Context, sc *SourceConfig, name, schema, table string,
	fn func(conn *pgx.Conn, qtable, where string, args []any) error) error {
	conn, err := pgx.Connect(ctx, sc.DSN)
	if err != nil {
		return fmt.Errorf("source %q: %w", name, redactDSN(err))
	}
	defer conn.Close(context.Background())
	dlSchema, dlTable := deadLetterTable(ctx, conn, sc)
	qtable := pgident.Qualified(dlSchema, dlTable)
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, qtable).Scan(&exists); err != nil {
		return fmt.Errorf("source %q: %w", name, err)
	}
	if !exists {
		return nil
	}
	where, args := dlWhere(sc, name, schema, table)
	if err := fn(conn, qtable, where, args); err != nil {
		return fmt.Errorf("source %q: %w", name, err)
	}
	return nil
}

func selectDeadLetters(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, qtable, where string, args []any, limit int, lock bool) ([]deadLetterRow, error) {
	sql := `SELECT id, created_at, source, route, event_id, schema_name, table_name, action, coalesce(lsn::text, ''), attempts, error, payload::text
		FROM ` + qtable + ` WHERE ` + where + ` ORDER BY id`
	if limit > 0 {
		sql += fmt.Sprintf(" LIMIT %d", limit)
	}
	if lock {
		sql += " FOR UPDATE SKIP LOCKED"
	}
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (deadLetterRow, error) {
		var d deadLetterRow
		err := r.Scan(&d.ID, &d.CreatedAt, &d.Source, &d.Route, &d.EventID, &d.Schema, &d.Table, &d.Action, &d.LSN, &d.Attempts, &d.Error, &d.Payload)
		return d, err
	})
}

func listDeadLetters(ctx context.Context, env *cliEnv, cfg *Config, sources []string, schema, table string, limit int, asJSON bool) error {
	tw := tabwriter.NewWriter(env.stdout, 0, 4, 2, ' ', 0)
	if !asJSON {
		fmt.Fprintln(tw, "SOURCE\tID\tCREATED\tTABLE\tACTION\tEVENT ID\tATTEMPTS\tERROR")
	}
	enc := json.NewEncoder(env.stdout)
	total := 0
	for _, name := range sources {
		var rows []deadLetterRow
		err := withDeadLetters(ctx, cfg.Sources[name], name, schema, table, func(conn *pgx.Conn, qtable, where string, args []any) error {
			var err error
			if rows, err = selectDeadLetters(ctx, conn, qtable, where, args, limit, false); err != nil {
				return fmt.Errorf("reading %s: %w", qtable, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range rows {
			total++
			if asJSON {
				if err := enc.Encode(r); err != nil {
					return err
				}
				continue
			}
			msg := handlerPrefix.ReplaceAllString(strings.ReplaceAll(r.Error, "\n", " "), "")
			if len(msg) > 120 {
				msg = msg[:117] + "..."
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", name, r.ID, r.CreatedAt.UTC().Format(time.RFC3339), tableLabel(r.Schema, r.Table), r.Action, r.EventID, r.Attempts, msg)
		}
	}
	if asJSON {
		return nil
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(env.stdout, "%d dead letter(s)\n", total)
	return nil
}

// redeliverDeadLetters delivers dead letters through the routes of the
// file to the sinks: each row is locked while it is delivered (so two
// redeliveries never send it twice), removed once delivered, and kept with
// the new error otherwise.
func redeliverDeadLetters(ctx context.Context, env *cliEnv, cfg *Config, sources []string, schema, table string, limit int) error {
	d := &daemon{cfg: cfg, reg: env.reg, logger: newLogger(cfg.Log, env.stderr), stdout: env.stdout}
	if err := d.openSinks(ctx); err != nil {
		return err
	}
	defer d.closeSinks()
	delivered, failed := 0, 0
	for _, name := range sources {
		sc := cfg.Sources[name]
		tables, _, _, err := resolveTables(ctx, cfg, name)
		if err != nil {
			return err
		}
		var n, f int
		err = withDeadLetters(ctx, sc, name, schema, table, func(conn *pgx.Conn, qtable, where string, args []any) error {
			var err error
			n, f, err = redeliverSource(ctx, conn, qtable, where, args, limit, func(r deadLetterRow) error {
				rules, routed := tables[r.Schema+"."+r.Table]
				if !routed {
					return fmt.Errorf("table %s is not routed by the configuration", pgident.Qualified(r.Schema, r.Table))
				}
				p := &pipeline{rules: rules, sinks: d.sinks, logger: d.logger}
				_, err := p.deliver(ctx, sink.Message{EventID: r.EventID, Source: r.Source, Schema: r.Schema, Table: r.Table,
					Action: r.Action, LSN: lsnOrEmpty(r.LSN), Payload: []byte(r.Payload)})
				return err
			})
			return err
		})
		delivered, failed = delivered+n, failed+f
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(env.stdout, "%d dead letter(s) delivered and removed, %d failed again (kept with the new error)\n", delivered, failed)
	if failed > 0 {
		return fmt.Errorf("%d dead letter(s) failed again", failed)
	}
	return nil
}

func redeliverSource(ctx context.Context, conn *pgx.Conn, qtable, where string, args []any, limit int, deliver func(deadLetterRow) error) (delivered, failed int, err error) {
	var done []int64
	for limit == 0 || delivered+failed < limit {
		// One row per transaction, locked while it is delivered.
		tx, err := conn.Begin(ctx)
		if err != nil {
			return delivered, failed, err
		}
		w := where
		if len(done) > 0 {
			w += fmt.Sprintf(" AND NOT (id = ANY($%d))", len(args)+1)
		}
		rows, err := selectDeadLetters(ctx, tx, qtable, w, append(slices.Clip(args), anyIDs(done)...), 1, true)
		if err != nil || len(rows) == 0 {
			_ = tx.Rollback(ctx)
			return delivered, failed, err
		}
		r := rows[0]
		done = append(done, r.ID)
		if derr := deliver(r); derr != nil {
			failed++
			_, err = tx.Exec(ctx, `UPDATE `+qtable+` SET error = $2, attempts = attempts + 1 WHERE id = $1`, r.ID, derr.Error())
		} else {
			delivered++
			_, err = tx.Exec(ctx, `DELETE FROM `+qtable+` WHERE id = $1`, r.ID)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(ctx)
			return delivered, failed, err
		}
	}
	return delivered, failed, nil
}

func anyIDs(ids []int64) []any {
	if len(ids) == 0 {
		return nil
	}
	return []any{ids}
}

func purgeDeadLetters(ctx context.Context, env *cliEnv, cfg *Config, sources []string, schema, table string) error {
	total := int64(0)
	for _, name := range sources {
		err := withDeadLetters(ctx, cfg.Sources[name], name, schema, table, func(conn *pgx.Conn, qtable, where string, args []any) error {
			tag, err := conn.Exec(ctx, `DELETE FROM `+qtable+` WHERE `+where, args...)
			total += tag.RowsAffected()
			return err
		})
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(env.stdout, "%d dead letter(s) deleted\n", total)
	return nil
}

func lsnOrEmpty(lsn string) string {
	if lsn == "0/0" {
		return ""
	}
	return lsn
}
