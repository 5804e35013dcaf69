package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// checker prints one line per check.
type checker struct {
	out    io.Writer
	failed int
}

func (c *checker) ok(format string, args ...any) {
	fmt.Fprintf(c.out, "  ✓ %s\n", fmt.Sprintf(format, args...))
}

// fail prints a failed check and what to do about it.
func (c *checker) fail(fix, format string, args ...any) {
	c.failed++
	fmt.Fprintf(c.out, "  ✗ %s\n", fmt.Sprintf(format, args...))
	if fix != "" {
		fmt.Fprintf(c.out, "      fix: %s\n", fix)
	}
}

// warn prints advice that does not stop run.
func (c *checker) warn(advice, format string, args ...any) {
	fmt.Fprintf(c.out, "  ! %s\n", fmt.Sprintf(format, args...))
	if advice != "" {
		fmt.Fprintf(c.out, "      advice: %s\n", advice)
	}
}

func cmdCheck(ctx context.Context, args []string, env *cliEnv) error {
	fs, path := commandFlags("check", "Usage: pgcdc check -c FILE\n\nConnects to every source and sink and checks what run needs: wal_level,\nprivileges, free replication slots, that the routed tables exist and have a\nreplica identity, and that the sinks are reachable. Prints each check with\n✓ or ✗ and, for ✗, the fix. Exit status 1 if any check failed.\n", env.stderr)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := env.load(*path)
	if err != nil {
		return err
	}
	c := &checker{out: env.stdout}
	for _, name := range cfg.sourceOrder {
		fmt.Fprintf(env.stdout, "source %s:\n", name)
		checkSource(ctx, c, cfg, name)
	}
	for _, name := range cfg.sinkOrder {
		sc := cfg.Sinks[name]
		fmt.Fprintf(env.stdout, "sink %s (%s):\n", name, sc.Type)
		if err := checkSink(ctx, env, name, sc); err != nil {
			c.fail("make the destination reachable from this machine, or correct sinks."+name, "%v", err)
		} else {
			c.ok("reachable")
		}
	}
	if c.failed > 0 {
		return fmt.Errorf("%d check(s) failed", c.failed)
	}
	fmt.Fprintln(env.stdout, "all checks passed")
	return nil
}

func checkSink(ctx context.Context, env *cliEnv, name string, sc *SinkConfig) error {
	t := env.reg[sc.Type]
	if t.check != nil {
		return t.check(ctx, sc.Settings)
	}
	s, err := t.open(ctx, sc.Settings, sinkEnv{Name: name, Stdout: io.Discard, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	return s.Close(ctx)
}

func checkSource(ctx context.Context, c *checker, cfg *Config, name string) {
	sc := cfg.Sources[name]
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, sc.DSN)
	if err != nil {
		c.fail("check the host, port, user, password and database of sources."+name+".dsn, and that the server accepts connections from here (pg_hba.conf)",
			"connect: %v", redactDSN(err))
		return
	}
	defer conn.Close(context.Background())
	var version, walLevel, user string
	var replication, super bool
	var freeSlots int
	err = conn.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('wal_level'), current_user,
		r.rolreplication, r.rolsuper,
		current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&version, &walLevel, &user, &replication, &super, &freeSlots)
	if err != nil {
		c.fail("", "reading the server settings: %v", err)
		return
	}
	c.ok("connected as %s (PostgreSQL %s)", user, version)

	engine := sc.Capture
	logicalOK := walLevel == "logical" && (replication || super)
	switch {
	case engine == "auto" && logicalOK:
		engine = "logical"
		c.ok("capture auto: logical replication is available")
	case engine == "auto":
		engine = "trigger"
		c.ok("capture auto: the trigger engine will be used (wal_level is %s, REPLICATION %v)", walLevel, replication || super)
	}
	slot := pgident.SlotName("pgcdc", workerTypeOf(sc), name)
	if engine == "logical" {
		if walLevel == "logical" {
			c.ok("wal_level = logical")
		} else {
			c.fail("ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (or use capture: trigger)", "wal_level is %s, not logical", walLevel)
		}
		if replication || super {
			c.ok("role %s may replicate", user)
		} else {
			c.fail(fmt.Sprintf("ALTER ROLE %s REPLICATION; (or use capture: trigger)", pgident.Quote(user)), "role %s has no REPLICATION attribute", user)
		}
		var exists bool
		_ = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&exists)
		switch {
		case exists:
			c.ok("replication slot %s exists", slot)
		case freeSlots > 0:
			c.ok("a replication slot is free for %s", slot)
		default:
			c.fail("raise max_replication_slots (and restart), or drop an unused slot", "no free replication slot for %s", slot)
		}
	}

	tables, order, empty, err := resolveTables(ctx, cfg, name)
	if err != nil {
		c.fail("", "%v", err)
		return
	}
	for _, e := range empty {
		c.fail("create tables in that schema or correct the pattern", "%s matches no table", e)
	}
	needFull := map[string]bool{}
	for t, rs := range tables {
		for _, r := range rs {
			if len(r.changed) > 0 {
				needFull[t] = true
			}
		}
	}
	for _, t := range order {
		schema, table := splitTable(t)
		q, show := pgident.Qualified(schema, table), schema+"."+table
		var ident string
		var hasKey, owner, canTrigger bool
		err := conn.QueryRow(ctx, `SELECT c.relreplident::text,
			EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)),
			pg_has_role(current_user, c.relowner, 'USAGE'), has_table_privilege(c.oid, 'TRIGGER')
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`,
			schema, table).Scan(&ident, &hasKey, &owner, &canTrigger)
		if errors.Is(err, pgx.ErrNoRows) {
			c.fail("create the table, or correct the route (names are case-sensitive, without quotes)", "table %s does not exist", show)
			continue
		}
		if err != nil {
			c.fail("", "table %s: %v", show, err)
			continue
		}
		switch {
		case engine == "trigger":
			if canTrigger || owner {
				c.ok("table %s: triggers can be created", show)
			} else {
				c.fail(fmt.Sprintf("GRANT TRIGGER ON %s TO %s;", q, pgident.Quote(user)), "table %s: role %s may not create triggers on it", show, user)
			}
		case ident == "n" || (ident == "d" && !hasKey):
			c.fail(fmt.Sprintf("ALTER TABLE %s ADD PRIMARY KEY (...); or ALTER TABLE %s REPLICA IDENTITY FULL;", q, q),
				"table %s has no replica identity: PostgreSQL would refuse its UPDATEs and DELETEs once published", show)
		default:
			c.ok("table %s: replica identity %s", show, map[string]string{"d": "default (primary key)", "f": "full", "i": "index"}[ident])
		}
		if engine == "logical" && !owner && !super {
			c.fail(fmt.Sprintf("ALTER TABLE %s OWNER TO %s; or have the owner create the publication %s", q, pgident.Quote(user), slot),
				"table %s: role %s does not own it, so it cannot add it to the publication", show, user)
		}
		if engine == "logical" && needFull[t] && ident != "f" {
			c.warn(fmt.Sprintf("ALTER TABLE %s REPLICA IDENTITY FULL;", q), "table %s: changed_columns needs the old row; without REPLICA IDENTITY FULL every UPDATE passes the filter", show)
		}
	}

	if sc.DeadLetters.Enabled == nil || *sc.DeadLetters.Enabled {
		schema, table := deadLetterTable(ctx, conn, sc)
		q, show := pgident.Qualified(schema, table), schema+"."+table
		var exists, canCreate, canWrite bool
		err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL,
			CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2) THEN has_schema_privilege($2, 'CREATE')
				ELSE has_database_privilege(current_database(), 'CREATE') END,
			to_regclass($1) IS NOT NULL AND has_table_privilege(to_regclass($1), 'INSERT, SELECT, DELETE, UPDATE')`,
			q, schema).Scan(&exists, &canCreate, &canWrite)
		switch {
		case err != nil:
			c.fail("", "dead-letter table %s: %v", show, err)
		case exists && canWrite:
			c.ok("dead-letter table %s is writable", show)
		case exists:
			c.fail(fmt.Sprintf("GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %s;", q, pgident.Quote(user)), "dead-letter table %s: role %s may not write it", show, user)
		case canCreate:
			c.ok("dead-letter table %s can be created", show)
		default:
			c.fail(fmt.Sprintf("GRANT CREATE ON SCHEMA %s TO %s; or set sources.%s.dead_letters.table to a schema it may create in", pgident.Quote(schema), pgident.Quote(user), name),
				"dead-letter table %s does not exist and role %s may not create it", show, user)
		}
	}
	if engine == "trigger" {
		trig := sc.TriggerSchema
		if trig == "" {
			trig = "pgcdc"
		}
		var exists, mayCreate bool
		_ = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1), has_database_privilege(current_database(), 'CREATE')`, trig).Scan(&exists, &mayCreate)
		if exists || mayCreate {
			c.ok("trigger schema %s exists or can be created", trig)
		} else {
			c.fail(fmt.Sprintf("GRANT CREATE ON DATABASE <db> TO %s;", pgident.Quote(user)), "role %s may not create the schema %s", user, trig)
		}
	}
}

// newBareWorker is a source's worker without routes (teardown).
func newBareWorker(cfg *Config, name string, env *cliEnv) (*pgcdc.Worker, error) {
	logger := slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return pgcdc.NewWorker(workerOptions(name, cfg.Sources[name], logger)...)
}
