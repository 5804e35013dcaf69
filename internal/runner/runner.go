// Package runner runs the sessions of a capture engine: one session per
// connection, reconnecting with backoff after failures, stopping on errors
// that reconnecting cannot fix, and reporting the source's state. Both
// engines (internal/logical, internal/trigger) plug their session into it,
// so the loop, the error classification and the DSN handling live once.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc/internal/backoff"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/observe"
)

// ErrStandby is returned (wrapped) by a session that found the source held
// by another instance: the runner stands by and tries again after the
// shortest wait, without reporting a failure.
var ErrStandby = errors.New("source held by another instance")

// Outcome is what a session reports besides its error.
type Outcome struct {
	// Success: the session did its work for a while (it streamed and moved
	// the position on, or lasted): the next failure is a first one again
	// and waits the shortest interval.
	Success bool
}

// Config configures Run.
type Config struct {
	Name         string // the source name, for logs
	Engine       string // "replication" or "trigger", for logs
	MinReconnect time.Duration
	MaxReconnect time.Duration
	OnError      func(error)
	Logger       *slog.Logger
	Observe      *observe.Source
	// Session runs one connection's life. Handlers run under ctx (cancelled
	// only when the worker stops without waiting for them); readCtx ends
	// when the source is asked to stop reading.
	Session func(ctx, readCtx context.Context) (Outcome, error)
	// Retry, when set, sees each failed session's error before the runner
	// waits, and may return a fatal error instead (a failure that repeats
	// the same way, see errs.Fatal).
	Retry func(err error, o Outcome) error
}

// Run runs sessions until ctx is done (returns ctx.Err()), stop is closed
// (returns nil once the session in progress finished), or a session fails
// with an errs.Fatal (returned).
func Run(ctx context.Context, stop <-chan struct{}, cfg Config) (err error) {
	defer func() { cfg.Observe.SetState(observe.Stopped, err) }()
	readCtx, cancelRead := context.WithCancel(ctx)
	defer cancelRead()
	go func() {
		select {
		case <-stop:
			cancelRead()
		case <-readCtx.Done():
		}
	}()
	ended := func() error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	}
	wait := backoff.Backoff{Min: cfg.MinReconnect, Max: cfg.MaxReconnect}
	for {
		cfg.Observe.SetState(observe.Connecting, nil)
		o, err := cfg.Session(ctx, readCtx)
		if o.Success {
			wait.Reset()
		}
		if readCtx.Err() != nil {
			return ended()
		}
		if err != nil && cfg.Retry != nil && !errs.IsFatal(err) {
			err = cfg.Retry(err, o)
		}
		if errs.IsFatal(err) {
			return err
		}
		if err == nil {
			err = errors.New("session ended")
		}
		var delay time.Duration
		if errors.Is(err, ErrStandby) {
			cfg.Logger.Info("pgcdc: source held by another instance; standing by", "source", cfg.Name, "reason", err)
			wait.Reset()
			delay = wait.Next()
			cfg.Observe.SetState(observe.Standby, nil)
		} else {
			delay = wait.Next()
			cfg.Observe.SetState(observe.BackingOff, err)
			cfg.Logger.Warn("pgcdc: "+cfg.Engine+" source disconnected; reconnecting", "source", cfg.Name, "error", err, "retry_in", delay)
			if cfg.OnError != nil {
				cfg.OnError(err)
			}
		}
		if !backoff.Sleep(readCtx, delay) {
			return ended()
		}
	}
}

// ParseDSN parses a source's DSN. Its error never quotes the DSN, which
// may hold a password, and is fatal: reconnecting cannot fix it.
func ParseDSN(dsn, label string) (*pgconn.Config, error) {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return nil, &errs.Fatal{Err: fmt.Errorf("%w: source %s: cannot parse DSN: %v", errs.ErrConfig, label, Redact(err))}
	}
	return cfg, nil
}

// Redact hides pgconn's parse errors, which can quote the DSN (and its
// password).
func Redact(err error) error {
	var pe *pgconn.ParseConfigError
	if errors.As(err, &pe) {
		return errors.New("invalid connection string (check its syntax; the string itself is not shown because it may contain a password)")
	}
	return err
}

// ClassifyConnect turns connection errors that reconnecting cannot fix
// (the server refused the credentials, the database does not exist) into
// fatal ones.
func ClassifyConnect(label string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "28P01", "28000":
			return &errs.Fatal{Err: fmt.Errorf("%w: source %s: the server refused the login (%s): check the user and password of the DSN", errs.ErrConfig, label, pgErr.Message)}
		case "3D000":
			return &errs.Fatal{Err: fmt.Errorf("%w: source %s: %s: check the database name of the DSN", errs.ErrConfig, label, pgErr.Message)}
		}
	}
	return fmt.Errorf("source %s: connecting: %w", label, err)
}
