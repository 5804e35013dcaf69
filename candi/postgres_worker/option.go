package postgresworker

import (
	"database/sql"
	"log/slog"
	"time"

	"github.com/golangid/candi/candiutils"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/golangid/candi/codebase/interfaces"
	"github.com/pgcdc/pgcdc"
)

type (
	option struct {
		workerType            types.Worker
		maxGoroutines         int
		debugMode             bool
		locker                interfaces.Locker
		minReconnectInterval  time.Duration
		maxReconnectInterval  time.Duration
		onErrorConnectionFunc func(error)
		dbOption              func(*sql.DB)

		sources map[string]*PostgresSource
		order   []string // source names in the order they were given

		// pgcdc's own options.
		captureMode  pgcdc.CaptureMode
		logger       *slog.Logger
		lockInterval time.Duration
		keepTriggers bool
		pgcdcOpts    []pgcdc.OptionFunc
	}

	// OptionFunc configures the worker, as in candi's postgres_worker.
	OptionFunc func(*option)
)

// Defaults that differ from the pgcdc library's: candi's own.
const (
	defaultMinReconnectInterval = 500 * time.Millisecond
	defaultMaxReconnectInterval = time.Second
	defaultLockInterval         = time.Second
)

func getDefaultOption(service factory.ServiceFactory) option {
	opt := option{
		workerType:           types.PostgresListener,
		maxGoroutines:        1,
		debugMode:            true,
		sources:              make(map[string]*PostgresSource),
		minReconnectInterval: defaultMinReconnectInterval,
		maxReconnectInterval: defaultMaxReconnectInterval,
		captureMode:          pgcdc.CaptureAuto,
		lockInterval:         defaultLockInterval,
	}
	if service != nil && service.GetDependency() != nil {
		if redisPool := service.GetDependency().GetRedisPool(); redisPool != nil {
			opt.locker = candiutils.NewRedisLocker(redisPool.WritePool())
		}
	}
	return opt
}

func (o *option) addSource(s *PostgresSource) {
	if _, ok := o.sources[s.name]; !ok {
		o.order = append(o.order, s.name)
	}
	o.sources[s.name] = s
}

// SetWorkerType sets the worker type (default types.PostgresListener): the
// module handlers are looked up with WorkerHandler(workerType), and the name
// is part of the replication slot and publication names, so two workers of
// different types on one database each get every change.
func SetWorkerType(wt types.Worker) OptionFunc {
	return func(o *option) {
		o.workerType = wt
	}
}

// SetPostgresDSN sets the DSN of the default source (routes that are plain
// table names). Without it and without AddPostgresDSN, candi's
// SQL_DB_WRITE_DSN (env.BaseEnv().DbSQLWriteDSN) is used.
func SetPostgresDSN(dsn string) OptionFunc {
	return func(o *option) {
		o.addSource(&PostgresSource{dsn: dsn})
	}
}

// SetMaxGoroutines sets how many handler goroutines run per table (default
// 1). Changes of one row (same primary key) are always handled one at a
// time, in commit order.
func SetMaxGoroutines(maxGoroutines int) OptionFunc {
	return func(o *option) {
		o.maxGoroutines = maxGoroutines
	}
}

// SetDebugMode logs every event handled (table, source, action), as
// candi's worker does (default true, like candi).
func SetDebugMode(debugMode bool) OptionFunc {
	return func(o *option) {
		o.debugMode = debugMode
	}
}

// SetLocker sets the candi locker that elects the one instance streaming
// each source (by default candi's Redis locker when the service has a Redis
// pool, else none: the replication slot itself lets one instance stream).
// candiutils.NoopLocker means no lock. See docs/candi.md, "Several
// instances".
func SetLocker(locker interfaces.Locker) OptionFunc {
	return func(o *option) {
		o.locker = locker
	}
}

// SetMinReconnectInterval sets the first wait before reconnecting after a
// connection failure (default 500ms, candi's); it doubles up to the maximum.
func SetMinReconnectInterval(minReconnectInterval time.Duration) OptionFunc {
	return func(o *option) {
		o.minReconnectInterval = minReconnectInterval
	}
}

// SetMaxReconnectInterval caps the wait between reconnection attempts
// (default 1s, candi's).
func SetMaxReconnectInterval(maxReconnectInterval time.Duration) OptionFunc {
	return func(o *option) {
		o.maxReconnectInterval = maxReconnectInterval
	}
}

// AddPostgresDSN adds a named source. Mount its tables with
// CreateHandlerRoute(sourceName, table).
func AddPostgresDSN(sourceName, dsn string) OptionFunc {
	return func(o *option) {
		o.addSource(&PostgresSource{name: sourceName, dsn: dsn})
	}
}

// SetOnErrorConnectionCallback sets a function called with every connection
// failure of a source, before the worker reconnects.
func SetOnErrorConnectionCallback(callback func(error)) OptionFunc {
	return func(o *option) {
		o.onErrorConnectionFunc = callback
	}
}

// SetDBOption sets a function applied to the *sql.DB the worker opens on each
// source for its own checks (candi's notify_event triggers). The connections
// that stream the changes are pgx connections: configure them with
// SetPgcdcOptions(pgcdc.SetDBOption(...)).
func SetDBOption(dbOption func(*sql.DB)) OptionFunc {
	return func(o *option) {
		o.dbOption = dbOption
	}
}

// SetCaptureMode selects pgcdc's capture engine (default pgcdc.CaptureAuto:
// logical replication when the server and role allow it, else the trigger
// engine).
func SetCaptureMode(mode pgcdc.CaptureMode) OptionFunc {
	return func(o *option) {
		o.captureMode = mode
	}
}

// SetMaxRetries sets how many times a failing handler is retried before the
// event is stored in the dead-letter table (pgcdc's default 5).
func SetMaxRetries(n int) OptionFunc {
	return SetPgcdcOptions(pgcdc.SetMaxRetries(n))
}

// SetRetryBackoff sets the wait before the first retry and its cap (pgcdc's
// defaults 100ms and 10s).
func SetRetryBackoff(minWait, maxWait time.Duration) OptionFunc {
	return SetPgcdcOptions(pgcdc.SetRetryBackoff(minWait, maxWait))
}

// SetDeadLetterTable sets the table, in each source database, where events
// whose handler kept failing are stored (default: dead_letters in pgcdc's
// schema, or public.pgcdc_dead_letters where an earlier version made it;
// see pgcdc.SetDeadLetterTable).
func SetDeadLetterTable(name string) OptionFunc {
	return SetPgcdcOptions(pgcdc.SetDeadLetterTable(name))
}

// DisableDeadLetter makes the worker retry a failing handler for ever instead
// of dead-lettering the event.
func DisableDeadLetter() OptionFunc {
	return SetPgcdcOptions(pgcdc.DisableDeadLetter())
}

// SetLogger sets the structured logger pgcdc's engine logs through. By
// default its messages are printed in candi's style (errors and warnings
// always, the rest in debug mode).
func SetLogger(l *slog.Logger) OptionFunc {
	return func(o *option) {
		o.logger = l
	}
}

// SetLockInterval sets how often a standby instance tries the locker and the
// active one renews its lease (default 1s). An active instance that stops
// renewing (killed) is replaced after three intervals.
func SetLockInterval(d time.Duration) OptionFunc {
	return func(o *option) {
		o.lockInterval = d
	}
}

// KeepCandiTriggers silences the start-up warning about candi's
// notify_event() triggers left on a source database. They still cost every
// writer a pg_notify; drop them with DropCandiTriggers.
func KeepCandiTriggers() OptionFunc {
	return func(o *option) {
		o.keepTriggers = true
	}
}

// SetPgcdcOptions passes options of the pgcdc library through (capture
// mode, retries, dead letters, streaming, pgx connection settings, ...).
// They are applied after the ones this package derives from candi's
// options, so they win.
func SetPgcdcOptions(opts ...pgcdc.OptionFunc) OptionFunc {
	return func(o *option) {
		o.pgcdcOpts = append(o.pgcdcOpts, opts...)
	}
}
