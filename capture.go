package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc/internal/backoff"
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
	// writes every change into a durable event table (schema "pgcdc" unless
	// SetTriggerSchema says otherwise), in the writer's own transaction;
	// workers claim and delete those rows. For servers where logical
	// replication is not allowed. Events have the same JSON, without "lsn".
	CaptureTrigger CaptureMode = "trigger"
	// CaptureAuto uses logical replication when the server and role allow
	// it, and the trigger engine otherwise, logging why.
	CaptureAuto CaptureMode = "auto"
)

// SetCaptureMode selects the capture engine (default CaptureLogical).
func SetCaptureMode(m CaptureMode) OptionFunc {
	return func(o *option) { o.captureMode = m }
}

// SetTriggerSchema names the schema the trigger engine owns (default
// "pgcdc"): its event table, trigger function and bookkeeping live there.
func SetTriggerSchema(name string) OptionFunc {
	return func(o *option) { o.triggerSchema = name }
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
		Name: cfg.Name, DSN: cfg.DSN, Schema: w.opt.triggerSchema, Tables: cfg.Tables,
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
		useLogical, why, err := probeLogical(ctx, a.cfg)
		if err == nil {
			var e engine
			if useLogical {
				e = logical.New(a.cfg)
			} else {
				a.cfg.Logger.Warn("pgcdc: logical replication is not available; using the trigger capture engine",
					"source", a.cfg.Name, "reason", why)
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
		if err := trigger.Teardown(ctx, s.dsn, w.opt.triggerSchema, cfg.ConfigureConn); err != nil {
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
