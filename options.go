package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc/internal/pgident"
)

// OptionFunc configures a Worker. Options only record values; NewWorker
// checks them all at once.
type OptionFunc func(*option)

// Locker grants one worker instance the exclusive right to stream a source.
// Lock blocks until the lock named key is held or ctx is done. The returned
// held context is cancelled when the lock is lost (the instance then stops
// streaming and tries to take it again); release frees the lock.
//
// Without a Locker, the replication slot itself is the lock: PostgreSQL lets
// one connection read a slot at a time, and other instances stand by.
type Locker interface {
	Lock(ctx context.Context, key string) (held context.Context, release func(), err error)
}

type source struct {
	name string
	dsn  string
}

type option struct {
	sources              []source
	maxGoroutines        int
	debugMode            bool
	locker               Locker
	minReconnectInterval time.Duration
	maxReconnectInterval time.Duration
	onErrorConnection    func(error)
	dbOptions            []func(*pgconn.Config)
	workerType           string
	logger               *slog.Logger
	maxRetries           int
	maxRetriesSet        bool // 0 is a valid choice
	minRetryBackoff      time.Duration
	maxRetryBackoff      time.Duration
	deadLetterSchema     string
	deadLetterTable      string
	deadLetterOff        bool
	deadLetterSet        bool // SetDeadLetterTable was given
	snapshot             SnapshotMode
	recreateLostSlot     bool
	txBufferBytes        int64
	noStreaming          bool
	captureMode          CaptureMode
	triggerSchema        string
	hooks                hookSet
}

// MaxGoroutinesLimit is the most handler goroutines a route may have
// (SetMaxGoroutines, WithMaxGoroutines): more would not run faster on any
// machine, only cost memory.
const MaxGoroutinesLimit = 1024

// Defaults used when an option is not given (or given as zero).
const (
	DefaultWorkerType           = "postgres_listener"
	DefaultMaxGoroutines        = 1
	DefaultMinReconnectInterval = time.Second
	DefaultMaxReconnectInterval = 30 * time.Second
	DefaultMaxRetries           = 5
	DefaultMinRetryBackoff      = 100 * time.Millisecond
	DefaultMaxRetryBackoff      = 10 * time.Second
	// DefaultDeadLetterTable is the dead-letter table of earlier versions:
	// still the default where it exists (see SetDeadLetterTable).
	DefaultDeadLetterTable = "public.pgcdc_dead_letters"
)

// SetPostgresDSN sets the DSN (URL or key=value form) of the default source,
// whose routes are plain table names. The role needs the REPLICATION
// attribute (or superuser) and the server wal_level=logical.
func SetPostgresDSN(dsn string) OptionFunc {
	return func(o *option) { o.sources = append(o.sources, source{name: "", dsn: dsn}) }
}

// AddPostgresDSN adds a named source. Route its tables with
// CreateHandlerRoute(sourceName, table). Each source gets its own
// publication and replication slot.
func AddPostgresDSN(sourceName, dsn string) OptionFunc {
	return func(o *option) { o.sources = append(o.sources, source{name: sourceName, dsn: dsn}) }
}

// SetMaxGoroutines sets how many handler goroutines run per table (default
// 1). Changes are partitioned by primary key, so the changes of one row are
// always handled one at a time, in commit order.
//
// A handler that returns within 50 µs on average runs on the source's
// receiving goroutine whenever its goroutine is idle: handing a change to
// a parked goroutine costs more than such a handler. While one of those
// calls blocks, the source waits for it; once a handler is seen to be
// slower, its changes go to its goroutines again.
func SetMaxGoroutines(n int) OptionFunc {
	return func(o *option) { o.maxGoroutines = n }
}

// SetDebugMode makes the worker log every delivered event (event_id, table,
// action; never row values) at Info level. Off by default.
func SetDebugMode(debug bool) OptionFunc {
	return func(o *option) { o.debugMode = debug }
}

// SetLocker sets the lock that elects the one instance streaming each
// source. See Locker.
func SetLocker(l Locker) OptionFunc {
	return func(o *option) { o.locker = l }
}

// SetMinReconnectInterval sets the first wait before reconnecting after a
// connection failure (default 1s); the wait doubles up to the maximum.
func SetMinReconnectInterval(d time.Duration) OptionFunc {
	return func(o *option) { o.minReconnectInterval = d }
}

// SetMaxReconnectInterval caps the wait between reconnection attempts
// (default 30s).
func SetMaxReconnectInterval(d time.Duration) OptionFunc {
	return func(o *option) { o.maxReconnectInterval = d }
}

// SetOnErrorConnectionCallback sets a function called with every connection
// failure of a source (before the worker reconnects). It is called from the
// source's goroutine and should return quickly.
func SetOnErrorConnectionCallback(fn func(error)) OptionFunc {
	return func(o *option) { o.onErrorConnection = fn }
}

// SetDBOption adds a function that adjusts the configuration of every
// connection the worker opens (TLS, dialer, timeouts, runtime parameters).
// The worker's own session settings are applied before it.
func SetDBOption(fn func(*pgconn.Config)) OptionFunc {
	return func(o *option) { o.dbOptions = append(o.dbOptions, fn) }
}

// SetWorkerType names this worker (default "postgres_listener"). The name is
// part of the replication slot and publication names, so two workers with
// different types on one database each get every change.
func SetWorkerType(name string) OptionFunc {
	return func(o *option) { o.workerType = name }
}

// SetLogger sets the structured logger (default slog.Default()).
func SetLogger(l *slog.Logger) OptionFunc {
	return func(o *option) { o.logger = l }
}

// SetMaxRetries sets how many times a failed handler is retried before the
// event is dead-lettered (default 5; 0 means no retry).
func SetMaxRetries(n int) OptionFunc {
	return func(o *option) { o.maxRetries, o.maxRetriesSet = n, true }
}

// SetRetryBackoff sets the wait before the first retry and its cap; the wait
// doubles after each attempt (defaults 100ms and 10s).
func SetRetryBackoff(minWait, maxWait time.Duration) OptionFunc {
	return func(o *option) { o.minRetryBackoff, o.maxRetryBackoff = minWait, maxWait }
}

// SetDeadLetterTable sets the table ("schema.table" or "table") in each
// source database where events whose handler kept failing are stored. It
// is created when missing. The default is public.pgcdc_dead_letters when
// that table exists (created by an earlier version), else dead_letters in
// the worker's pgcdc schema (Worker.TriggerSchema), in both capture modes.
func SetDeadLetterTable(name string) OptionFunc {
	return func(o *option) {
		o.deadLetterSchema, o.deadLetterTable = splitRoute(name)
		o.deadLetterSet = true
	}
}

// DisableDeadLetter makes the worker retry a failing handler for ever
// (with capped backoff) instead of dead-lettering the event: the stream
// stops advancing until the handler succeeds.
func DisableDeadLetter() OptionFunc {
	return func(o *option) { o.deadLetterOff = true }
}

// SetRecreateLostSlot lets the worker create a new replication slot when
// the one it used was dropped or lost its WAL. Changes made in between are
// missed; without this option (the default) Serve stops with ErrSlotLost.
func SetRecreateLostSlot(accept bool) OptionFunc {
	return func(o *option) { o.recreateLostSlot = accept }
}

// DisableStreaming keeps pgoutput protocol 1: a large transaction is sent
// only when it commits, and the server spills it to its own disk until
// then. By default (PostgreSQL 14 and later) large transactions are
// streamed while in progress and wait in pgcdc's buffer instead (memory up
// to SetTxBufferBytes, then a temporary file); either way no event reaches a
// handler before its transaction committed.
func DisableStreaming() OptionFunc {
	return func(o *option) { o.noStreaming = true }
}

func (o *option) fill() {
	if o.maxGoroutines == 0 {
		o.maxGoroutines = DefaultMaxGoroutines
	}
	if o.minReconnectInterval == 0 {
		o.minReconnectInterval = DefaultMinReconnectInterval
	}
	if o.maxReconnectInterval == 0 {
		o.maxReconnectInterval = max(DefaultMaxReconnectInterval, o.minReconnectInterval)
	}
	if o.workerType == "" {
		o.workerType = DefaultWorkerType
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	if !o.maxRetriesSet {
		o.maxRetries = DefaultMaxRetries
	}
	if o.minRetryBackoff == 0 {
		o.minRetryBackoff = DefaultMinRetryBackoff
	}
	if o.maxRetryBackoff == 0 {
		o.maxRetryBackoff = max(DefaultMaxRetryBackoff, o.minRetryBackoff)
	}
	if o.captureMode == "" {
		o.captureMode = CaptureLogical
	}
}

func (o *option) validate() error {
	var problems []error
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	if len(o.sources) == 0 {
		bad("no source: give SetPostgresDSN or AddPostgresDSN")
	}
	seen := map[string]bool{}
	for _, s := range o.sources {
		label := fmt.Sprintf("source %q", s.name)
		if s.name == "" {
			label = "the default source (SetPostgresDSN)"
		}
		if seen[s.name] {
			bad("%s is given more than once", label)
		}
		seen[s.name] = true
		if s.dsn == "" {
			bad("%s has an empty DSN", label)
		} else if _, err := pgconn.ParseConfig(s.dsn); err != nil {
			bad("%s: the DSN cannot be parsed (it is not shown because it may hold a password)", label)
		}
	}
	if o.maxGoroutines < 0 || o.maxGoroutines > MaxGoroutinesLimit {
		bad("SetMaxGoroutines(%d): must be from 1 to %d (0 means the default, %d)", o.maxGoroutines, MaxGoroutinesLimit, DefaultMaxGoroutines)
	}
	if o.minReconnectInterval < 0 || o.maxReconnectInterval < 0 {
		bad("reconnect intervals must not be negative")
	}
	if o.minReconnectInterval > o.maxReconnectInterval {
		bad("SetMinReconnectInterval(%s) is above SetMaxReconnectInterval(%s)", o.minReconnectInterval, o.maxReconnectInterval)
	}
	if o.maxRetries < 0 {
		bad("SetMaxRetries(%d): must not be negative", o.maxRetries)
	}
	if o.minRetryBackoff < 0 || o.minRetryBackoff > o.maxRetryBackoff {
		bad("SetRetryBackoff(%s, %s): need 0 <= min <= max", o.minRetryBackoff, o.maxRetryBackoff)
	}
	if o.deadLetterSet && (o.deadLetterTable == "" || o.deadLetterSchema == "") {
		bad("SetDeadLetterTable(%q): empty schema or table name", pgident.Qualified(o.deadLetterSchema, o.deadLetterTable))
	}
	switch o.captureMode {
	case CaptureLogical, CaptureTrigger, CaptureAuto:
	default:
		bad("SetCaptureMode(%q): want %q, %q or %q", o.captureMode, CaptureLogical, CaptureTrigger, CaptureAuto)
	}
	for _, fn := range o.dbOptions {
		if fn == nil {
			bad("SetDBOption(nil)")
		}
	}
	problems = append(problems, o.hooks.bad...)
	return errors.Join(problems...)
}
