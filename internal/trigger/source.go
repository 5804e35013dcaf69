package trigger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/observe"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/rowjson"
	"github.com/pgcdc/pgcdc/internal/runner"
)

// Defaults of the Config fields left zero.
const (
	// DefaultPollInterval is how often an idle consumer claims; see
	// BenchmarkWakeup for the measurement behind it.
	DefaultPollInterval = 50 * time.Millisecond
	// DefaultBatchSize is the number of events claimed at once.
	DefaultBatchSize = 500
	// DefaultClaimTimeout is how long a claim lasts without a heartbeat:
	// the time after which the events of a dead instance are redelivered.
	DefaultClaimTimeout = 30 * time.Second
)

// Config configures a Source.
type Config struct {
	Name   string // source name, "" for the default source
	DSN    string
	Schema string // pgcdc-owned schema; "" means "pgcdc"
	// Tables are the routed tables with their routes.
	Tables []dispatch.Table
	// ConfigureConn, if set, adjusts every connection config before use.
	ConfigureConn func(*pgconn.Config)
	// NewDeadLetter builds the dead-letter store on the source's pool; nil
	// means failed handlers are retried for ever.
	NewDeadLetter func(ctx context.Context, pool *pgxpool.Pool) (dispatch.DeadLetter, error)
	// MinReconnect and MaxReconnect bound the doubling wait between
	// connection attempts.
	MinReconnect, MaxReconnect time.Duration
	// OnError, if set, is called with each connection failure.
	OnError func(error)
	// Logger may be nil.
	Logger *slog.Logger
	// PollInterval is the wait between claims when the last batch was not
	// full; 0 means DefaultPollInterval.
	PollInterval time.Duration
	// BatchSize is the number of events claimed at once; 0 means
	// DefaultBatchSize.
	BatchSize int
	// ClaimTimeout is how long a claim lasts unless renewed (the consumer
	// renews its claims every ClaimTimeout/3); 0 means DefaultClaimTimeout.
	ClaimTimeout time.Duration
	// Observe, if set, is told the source's state and retries.
	Observe *observe.Source
}

// Source consumes the event table of one database for one set of routes.
// Several Sources with the same configuration, in one process or many,
// share the work.
type Source struct {
	cfg      Config
	instance string // unique per Source value
	label    string
	// claimer is what this instance writes in claimed_by: the instance and
	// a session number, so the claims of a failed session (some possibly
	// never read) count as another instance's for the ordering rule.
	claimer  string
	sessions int
	consumed bool                   // the current session got as far as consuming
	keyCols  map[[2]string][]string // {schema, table} → primary key columns, in key order

	// Identity, learned when a session connects.
	sourceID   string // "<system identifier>/<database>/trigger/<table oid>/"
	sourceJSON []byte
	commitTS   bool // track_commit_timestamp is on
	// readEncoding is what the claim converts the row JSON to: "UTF8", or
	// "SQL_ASCII" (no conversion) in a SQL_ASCII database.
	readEncoding string

	pool atomic.Pointer[pgxpool.Pool] // the current session's pool, for Backlog

	mu       sync.Mutex
	inflight map[int64]struct{} // claimed by this instance, unresolved
	truncs   map[int64]string   // the TRUNCATE events of inflight: their "schema.table"
	resolved []int64            // resolved, not deleted yet
	wake     chan struct{}      // signals the deleter
	room     chan struct{}      // signals the consumer: a claimed event was resolved
}

// New returns a source; Run starts it.
func New(cfg Config) *Source {
	cfg.Schema = schemaOrDefault(cfg.Schema)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.ClaimTimeout <= 0 {
		cfg.ClaimTimeout = DefaultClaimTimeout
	}
	if cfg.MinReconnect <= 0 {
		cfg.MinReconnect = time.Second
	}
	if cfg.MaxReconnect < cfg.MinReconnect {
		cfg.MaxReconnect = max(cfg.MinReconnect, time.Minute)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	host, _ := os.Hostname()
	label := "default"
	if cfg.Name != "" {
		label = fmt.Sprintf("%q", cfg.Name)
	}
	return &Source{
		cfg:        cfg,
		instance:   fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(rnd[:])),
		label:      label,
		sourceJSON: rowjson.AppendString(nil, cfg.Name),
		inflight:   map[int64]struct{}{},
		truncs:     map[int64]string{},
		wake:       make(chan struct{}, 1),
		room:       make(chan struct{}, 1),
	}
}

// LagBytes is -1: a trigger source has no WAL position. Use Backlog.
func (s *Source) LagBytes() int64 { return -1 }

// Backlog returns the number of events of this source's tables waiting in
// the event table (claimed or not).
func (s *Source) Backlog(ctx context.Context) (int64, error) {
	schemas, names := s.tableArrays()
	sql := `SELECT count(*) FROM ` + pgident.Qualified(s.cfg.Schema, EventTable) + `
		WHERE (schema_name, table_name) IN (SELECT * FROM unnest($1::text[], $2::text[]))`
	var n int64
	if pool := s.pool.Load(); pool != nil {
		if err := pool.QueryRow(ctx, sql, schemas, names).Scan(&n); err == nil {
			return n, nil
		}
	}
	pool, err := s.newPool(ctx, 1)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	if err := pool.QueryRow(ctx, sql, schemas, names).Scan(&n); err != nil {
		return 0, fmt.Errorf("source %s: backlog: %w", s.label, err)
	}
	return n, nil
}

func (s *Source) tableArrays() (schemas, names []string) {
	for _, t := range s.cfg.Tables {
		schemas = append(schemas, t.Schema)
		names = append(names, t.Table)
	}
	return schemas, names
}

// Run installs the capture objects (idempotently) and consumes events until
// ctx is done (handlers are cancelled; returns ctx.Err()), stop is closed
// (handlers in flight finish, nothing new is claimed; returns nil) or a
// fatal error (an *errs.Fatal: a missing table, bad DSN, missing
// privilege, a refused login). Connection errors are retried with backoff
// between MinReconnect and MaxReconnect, each reported to OnError. Run must
// not be called again before it returned.
func (s *Source) Run(ctx context.Context, stop <-chan struct{}) error {
	if len(s.cfg.Tables) == 0 {
		s.cfg.Observe.SetState(observe.Stopped, nil)
		return &errs.Fatal{Err: fmt.Errorf("%w: source %s: no routed table", errs.ErrConfig, s.label)}
	}
	for _, t := range s.cfg.Tables {
		if t.Snapshot {
			// Reached through CaptureAuto choosing this engine: refused
			// rather than serving the route without its snapshot.
			s.cfg.Observe.SetState(observe.Stopped, nil)
			return &errs.Fatal{Err: fmt.Errorf("%w: source %s: route %q asks for a snapshot, which needs the logical capture mode, but the trigger engine was chosen (wal_level or the role's REPLICATION attribute rule out logical replication): allow logical replication, or drop the snapshot option",
				errs.ErrConfig, s.label, t.Route.Name)}
		}
	}
	return runner.Run(ctx, stop, runner.Config{
		Name: s.cfg.Name, Engine: "trigger", MinReconnect: s.cfg.MinReconnect, MaxReconnect: s.cfg.MaxReconnect,
		OnError: s.cfg.OnError, Logger: s.cfg.Logger, Observe: s.cfg.Observe,
		Session: func(ctx, readCtx context.Context) (runner.Outcome, error) {
			s.consumed = false
			err := s.session(ctx, readCtx)
			// A session that consumed was a success: the next failure is a
			// first failure again.
			return runner.Outcome{Success: s.consumed}, err
		},
	})
}

func (s *Source) connConfig() (*pgconn.Config, error) {
	cfg, err := runner.ParseDSN(s.cfg.DSN, s.label)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "pgcdc"
	// Events are UTF-8 JSON whatever the database encoding: the server
	// converts the stored JSON to UTF-8. (Without this, pgx connections get
	// the database's encoding and LATIN1 bytes would reach handlers.)
	cfg.RuntimeParams["client_encoding"] = "UTF8"
	// The claim query's estimates can pass jit_above_cost on a large event
	// table; compiling it then costs far more (a second) than running it.
	cfg.RuntimeParams["jit"] = "off"
	// Claims, deletes and releases need not wait for the WAL flush: losing
	// the last of them in a server crash only means redeliveries (at least
	// once), and WAL order keeps a lost claim from outliving a kept delete.
	// Waiting would put the consumer's commits in the writers' way.
	cfg.RuntimeParams["synchronous_commit"] = "off"
	if s.cfg.ConfigureConn != nil {
		s.cfg.ConfigureConn(cfg)
	}
	return cfg, nil
}

func (s *Source) newPool(ctx context.Context, maxConns int32) (*pgxpool.Pool, error) {
	pcfg, err := s.connConfig()
	if err != nil {
		return nil, err
	}
	poolCfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return nil, err
	}
	poolCfg.ConnConfig.Config = *pcfg
	poolCfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.label, err)
	}
	return pool, nil
}
