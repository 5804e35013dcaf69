package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/backoff"
	"github.com/pgcdc/pgcdc/internal/deadletter"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/logical"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/trigger"
)

// CaptureMode selects how changes are captured.
type CaptureMode string

// Capture modes.
const (
	// CaptureLogical reads logical replication (pgoutput): the default. It
	// needs wal_level=logical and a role with REPLICATION.
	CaptureLogical CaptureMode = "logical"
	// CaptureTrigger installs a row trigger on each routed table that
	// writes every change into a durable event table (in the worker type's
	// schema, see TriggerSchema), in the writer's own transaction;
	// workers claim and delete those rows. For servers where logical
	// replication is not allowed. Events have the same JSON, without "lsn".
	CaptureTrigger CaptureMode = "trigger"
	// CaptureAuto uses logical replication when the server and role allow
	// it, and the trigger engine otherwise, logging why. An engine that
	// already holds the source's capture state (its slot, or its triggers
	// on the routed tables) keeps it, so a change of the role's REPLICATION
	// attribute never loses nor duplicates a change; when that engine cannot
	// run, Serve stops with ErrConfig saying how to switch.
	CaptureAuto CaptureMode = "auto"
)

// SetCaptureMode selects the capture engine (default CaptureLogical).
func SetCaptureMode(m CaptureMode) OptionFunc {
	return func(o *option) { o.captureMode = m }
}

// SetTriggerSchema names the schema the trigger engine owns: its event
// table, trigger functions and (by default) the dead-letter table live
// there. The default is "pgcdc" for the default worker type and
// "pgcdc_<worker type>" for any other (see TriggerSchema), so each worker
// type gets every change, as each gets its own slot in logical mode.
// Workers of one type share the schema's events (each event goes to one of
// them).
func SetTriggerSchema(name string) OptionFunc {
	return func(o *option) { o.triggerSchema = name }
}

// TriggerSchema is the schema the trigger engine uses: SetTriggerSchema's,
// else "pgcdc" for DefaultWorkerType and "pgcdc_<worker type>" for any
// other (cut to 63 bytes with a hash when longer). The logical engine keeps
// its default dead-letter table there too.
func (w *Worker) TriggerSchema() string {
	if w.opt.triggerSchema != "" {
		return w.opt.triggerSchema
	}
	if w.opt.workerType == DefaultWorkerType {
		return trigger.DefaultSchema
	}
	return trigger.WorkerTypeSchema(w.opt.workerType)
}

// openDeadLetter opens the dead-letter store of a source: the table of
// SetDeadLetterTable, else the default one (public.pgcdc_dead_letters
// when an earlier version created it, else dead_letters in TriggerSchema).
func (w *Worker) openDeadLetter(ctx context.Context, pool *pgxpool.Pool) (*deadletter.Store, error) {
	if w.opt.deadLetterTable == "" {
		return deadletter.OpenDefault(ctx, pool, w.TriggerSchema(), w.opt.workerType)
	}
	return deadletter.Open(ctx, pool, w.opt.deadLetterSchema, w.opt.deadLetterTable, w.opt.workerType)
}

// engine is a capture engine of one source.
type engine interface {
	Run(ctx context.Context, stop <-chan struct{}) error
	LagBytes() int64
}

func (w *Worker) newEngine(cfg logical.Config) engine {
	switch w.opt.captureMode {
	case CaptureTrigger:
		return trigger.New(w.triggerConfig(cfg))
	case CaptureAuto:
		return &autoEngine{w: w, cfg: cfg}
	default:
		return logical.New(cfg)
	}
}

func (w *Worker) triggerConfig(cfg logical.Config) trigger.Config {
	return trigger.Config{
		Name: cfg.Name, DSN: cfg.DSN, Schema: w.TriggerSchema(), Tables: cfg.Tables,
		ConfigureConn: cfg.ConfigureConn, NewDeadLetter: cfg.NewDeadLetter,
		MinReconnect: cfg.MinReconnect, MaxReconnect: cfg.MaxReconnect,
		OnError: cfg.OnError, Logger: cfg.Logger, Observe: cfg.Observe,
	}
}

// autoEngine probes the server once it can reach it, then runs the engine
// the server allows.
type autoEngine struct {
	w      *Worker
	cfg    logical.Config
	chosen atomic.Pointer[engine]
}

func (a *autoEngine) LagBytes() int64 {
	if e := a.chosen.Load(); e != nil {
		return (*e).LagBytes()
	}
	return -1
}

func (a *autoEngine) Run(ctx context.Context, stop <-chan struct{}) error {
	wait := backoff.Backoff{Min: a.cfg.MinReconnect, Max: a.cfg.MaxReconnect}
	for {
		useLogical, err := a.choose(ctx)
		if err == nil {
			var e engine
			if useLogical {
				e = logical.New(a.cfg)
			} else {
				e = trigger.New(a.w.triggerConfig(a.cfg))
			}
			a.chosen.Store(&e)
			return e.Run(ctx, stop)
		}
		if errs.IsFatal(err) {
			return err
		}
		if a.cfg.OnError != nil {
			a.cfg.OnError(err)
		}
		delay := wait.Next()
		a.cfg.Logger.Warn("pgcdc: cannot reach the source to choose a capture mode; retrying", "source", a.cfg.Name, "error", err, "retry_in", delay)
		waitCtx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-stop:
				cancel()
			case <-waitCtx.Done():
			}
		}()
		waited := backoff.Sleep(waitCtx, delay)
		cancel()
		if !waited {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return nil
		}
	}
}

// choose picks the engine. An engine that already holds this source's
// capture state (its replication slot, or its capture triggers on the
// routed tables) keeps the source, so a change of the role's REPLICATION
// attribute between runs never leaves captured changes behind nor
// delivers them twice under two event ids: switching would need the old
// engine's backlog drained with the new engine capturing from exactly where
// the old one stopped, which neither engine can guarantee on its own. When
// the engine holding the state cannot run, or both hold state, choose
// returns a fatal ErrConfig that says how to resolve it.
func (a *autoEngine) choose(ctx context.Context) (bool, error) {
	useLogical, why, err := probeLogical(ctx, a.cfg)
	if err != nil {
		return false, err
	}
	schema := a.w.TriggerSchema()
	slot, triggers, err := captureState(ctx, a.cfg, schema)
	if err != nil {
		return false, err
	}
	label := "the default source"
	if a.cfg.Name != "" {
		label = fmt.Sprintf("source %q", a.cfg.Name)
	}
	dropSlot := fmt.Sprintf("SELECT pg_drop_replication_slot(%s); DROP PUBLICATION IF EXISTS %s",
		pgident.Literal(a.cfg.Slot), pgident.Quote(a.cfg.Publication))
	dropTriggers := fmt.Sprintf("DROP TRIGGER %s ON <table> for %s", pgident.Quote(trigger.TriggerName(schema)), strings.Join(triggers, ", "))
	switch {
	case slot && len(triggers) > 0:
		return false, &errs.Fatal{Err: fmt.Errorf("%w: %s: CaptureAuto found both engines' capture state: replication slot %q and trigger capture (schema %s) on %s; "+
			"each may hold changes the other lacks, so pgcdc will not pick one. Deliver the trigger engine's backlog with SetCaptureMode(CaptureTrigger) until Backlog is 0, "+
			"then either keep trigger capture (%s) or keep logical replication (%s; the slot then repeats the changes it kept meanwhile)",
			ErrConfig, label, a.cfg.Slot, pgident.Quote(schema), strings.Join(triggers, ", "), dropSlot, dropTriggers)}
	case slot && !useLogical:
		return false, &errs.Fatal{Err: fmt.Errorf("%w: %s: this source captures with logical replication (slot %q) but it is no longer available (%s); "+
			"CaptureAuto does not switch to triggers, which would lose the changes the slot holds. Make logical replication available again, "+
			"or give up those changes and switch: %s",
			ErrConfig, label, a.cfg.Slot, why, dropSlot)}
	case len(triggers) > 0 && useLogical:
		a.cfg.Logger.Warn("pgcdc: logical replication is available, but this source captures with triggers; keeping the trigger engine so that no change is lost or delivered twice. "+
			"To switch: stop the writers, let the worker deliver the backlog (Worker.Backlog reaches 0), stop it, remove the trigger engine (Worker.Teardown, or "+dropTriggers+"), and start again",
			"source", a.cfg.Name, "schema", schema, "tables", triggers)
		return false, nil
	case !useLogical:
		a.cfg.Logger.Warn("pgcdc: logical replication is not available; using the trigger capture engine",
			"source", a.cfg.Name, "reason", why)
	}
	return useLogical, nil
}

// captureState reports whether the source's replication slot exists and
// which routed tables the trigger engine of schema captures: those with its
// capture trigger or, when none has, those with undelivered events in its
// event table.
func captureState(ctx context.Context, cfg logical.Config, schema string) (bool, []string, error) {
	pc, err := pgx.ParseConfig(cfg.DSN)
	if err != nil {
		return false, nil, &errs.Fatal{Err: fmt.Errorf("%w: the DSN cannot be parsed", ErrConfig)}
	}
	if cfg.ConfigureConn != nil {
		cfg.ConfigureConn(&pc.Config)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(pctx, pc)
	if err != nil {
		return false, nil, err
	}
	defer conn.Close(context.Background())
	var schemas, names []string
	for _, t := range cfg.Tables {
		schemas = append(schemas, t.Schema)
		names = append(names, t.Table)
	}
	var slot bool
	var tables []string
	err = conn.QueryRow(pctx, `SELECT
			EXISTS (SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1 AND database = current_database()),
			ARRAY(SELECT pg_catalog.format('%I.%I', n.nspname, c.relname)
				FROM pg_catalog.pg_trigger t
				JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
				JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
				JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
				JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
				WHERE t.tgname = $2 AND pn.nspname = $3
					AND (n.nspname, c.relname) IN (SELECT * FROM unnest($4::text[], $5::text[]))
				ORDER BY 1)`,
		cfg.Slot, trigger.TriggerName(schema), schema, schemas, names).Scan(&slot, &tables)
	if err != nil {
		return false, nil, fmt.Errorf("reading the capture state: %w", err)
	}
	if len(tables) > 0 {
		return slot, tables, nil
	}
	// No trigger, but maybe undelivered events (a trigger dropped by hand).
	var readable bool
	events := pgident.Qualified(schema, trigger.EventTable)
	if err := conn.QueryRow(pctx, `SELECT coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass($1), 'SELECT'), false)`, events).Scan(&readable); err != nil {
		return false, nil, fmt.Errorf("reading the capture state: %w", err)
	}
	if readable {
		err = conn.QueryRow(pctx, `SELECT ARRAY(SELECT DISTINCT pg_catalog.format('%I.%I', schema_name, table_name) FROM `+events+`
			WHERE (schema_name, table_name) IN (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY 1)`, schemas, names).Scan(&tables)
		if err != nil {
			return false, nil, fmt.Errorf("reading the capture state: %w", err)
		}
	}
	return slot, tables, nil
}

// probeLogical reports whether the source allows logical replication, and
// if not, why.
func probeLogical(ctx context.Context, cfg logical.Config) (bool, string, error) {
	pc, err := pgconn.ParseConfig(cfg.DSN)
	if err != nil {
		return false, "", &errs.Fatal{Err: fmt.Errorf("%w: the DSN cannot be parsed", ErrConfig)}
	}
	if cfg.ConfigureConn != nil {
		cfg.ConfigureConn(pc)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(pctx, pc)
	if err != nil {
		return false, "", err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(pctx, `SELECT current_setting('wal_level'),
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)::text`).ReadAll()
	if err != nil {
		return false, "", err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return false, "", errors.New("unexpected answer to the capture probe")
	}
	row := res[0].Rows[0]
	switch {
	case string(row[0]) != "logical":
		return false, "wal_level is " + string(row[0]) + ", not logical", nil
	case string(row[1]) != "true":
		return false, "the role has no REPLICATION attribute", nil
	}
	return true, "", nil
}

// Teardown removes what the worker created in each source database: the
// replication slot and publication (logical), and the trigger engine's
// triggers, function, event table and schema. The dead-letter table is
// kept. Undelivered changes are lost, so call it only when retiring the
// worker, and never while it serves.
func (w *Worker) Teardown(ctx context.Context) error {
	if w.serving() {
		return fmt.Errorf("%w: Teardown while Serve runs: call it after Serve returned", ErrConfig)
	}
	var problems []error
	for _, s := range w.opt.sources {
		cfg := w.sourceConfig(s)
		if err := trigger.Teardown(ctx, s.dsn, w.TriggerSchema(), cfg.ConfigureConn); err != nil {
			problems = append(problems, fmt.Errorf("source %q: %w", s.name, err))
		}
		if err := dropLogical(ctx, cfg); err != nil {
			problems = append(problems, fmt.Errorf("source %q: %w", s.name, err))
		}
	}
	return errors.Join(problems...)
}

func dropLogical(ctx context.Context, cfg logical.Config) error {
	pc, err := pgconn.ParseConfig(cfg.DSN)
	if err != nil {
		return fmt.Errorf("%w: the DSN cannot be parsed", ErrConfig)
	}
	if cfg.ConfigureConn != nil {
		cfg.ConfigureConn(pc)
	}
	conn, err := pgconn.ConnectConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	sql := `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
		WHERE slot_name = ` + pgident.Literal(cfg.Slot) + ` AND database = current_database();
		DROP PUBLICATION IF EXISTS ` + pgident.Quote(cfg.Publication)
	_, err = conn.Exec(ctx, sql).ReadAll()
	return err
}

// Backlog returns how many captured changes of a source wait in the trigger
// engine's event table (claimed or not). For the logical engine it returns
// -1; see Lag.
func (w *Worker) Backlog(ctx context.Context, sourceName string) (int64, error) {
	w.mu.Lock()
	e := w.sources[sourceName]
	w.mu.Unlock()
	if a, ok := e.(*autoEngine); ok {
		if c := a.chosen.Load(); c != nil {
			e = *c
		}
	}
	if b, ok := e.(interface {
		Backlog(context.Context) (int64, error)
	}); ok {
		return b.Backlog(ctx)
	}
	return -1, nil
}
