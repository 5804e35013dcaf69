// Package logical is the logical-replication capture engine: it keeps one
// publication and one pgoutput replication slot per source, streams the
// committed changes of the routed tables, hands them to the dispatcher and
// confirms to PostgreSQL only the position below which every change has been
// resolved.
package logical

import (
	"context"
	"errors"
	"fmt"
	"github.com/pgcdc/pgcdc/internal/rawread"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/checkpoint"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/observe"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/rowjson"
	"github.com/pgcdc/pgcdc/internal/runner"
)

// Table is one routed table of a source.
type Table = dispatch.Table

// Locker grants the exclusive right to stream a slot.
type Locker interface {
	Lock(ctx context.Context, key string) (held context.Context, release func(), err error)
}

// Config configures a Source.
type Config struct {
	Name string // source name, "" for the default source
	// StateSchema is the schema of pgcdc's own tables (snapshot progress);
	// "" means pgcdc.
	StateSchema string
	DSN         string
	Slot        string
	Publication string
	Tables      []Table
	// TxRoute, if set, handles whole transactions of the tables whose route
	// has Tx set; TxBufferBytes bounds the memory a transaction's events
	// take before they spill to a temporary file (< 1 means 16 MiB).
	TxRoute       *dispatch.Route
	TxBufferBytes int64
	// NoStreaming keeps protocol 1: large transactions are sent at commit
	// (the server spills them to its disk meanwhile) instead of streamed.
	NoStreaming bool
	// ConfigureConn, if set, adjusts every connection config before use.
	ConfigureConn func(*pgconn.Config)
	DeadLetter    dispatch.DeadLetter // nil: retry failed handlers for ever
	// NewDeadLetter builds the dead-letter store on the source's pool when
	// DeadLetter is nil.
	NewDeadLetter    func(ctx context.Context, pool *pgxpool.Pool) (dispatch.DeadLetter, error)
	MinReconnect     time.Duration
	MaxReconnect     time.Duration
	StatusInterval   time.Duration // forced standby status period; 0 means 10s
	OnError          func(error)
	Locker           Locker
	RecreateLostSlot bool
	Logger           *slog.Logger
	Observe          *observe.Source // may be nil
}

// Source streams one database.
type Source struct {
	cfg           Config
	database      string
	sourceID      string // system identifier + database: part of every event_id
	tables        map[string]tableInfo
	live          []Table // the routed tables that exist (see check)
	sqlASCII      bool    // server_encoding SQL_ASCII: text may hold any bytes
	snap          *snapshots
	startPos      uint64 // the confirmed position the session started from
	progressed    bool   // the last session confirmed a position past startPos
	serverVersion int    // server_version_num
	hadSlot       bool
	types         *rowjson.Types
	tracker       *checkpoint.Tracker
	disp          *dispatch.Dispatcher
	lag           atomic.Int64
	streamed      time.Time // when the current session started streaming (zero: it did not)
}

// New returns a source; Run starts it.
func New(cfg Config) *Source {
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StateSchema == "" {
		cfg.StateSchema = "pgcdc"
	}
	return &Source{cfg: cfg, types: rowjson.NewTypes(), snap: newSnapshots()}
}

func (s *Source) label() string {
	if s.cfg.Name == "" {
		return "default"
	}
	return fmt.Sprintf("%q", s.cfg.Name)
}

// LagBytes is the distance in bytes between the server's WAL end last seen
// and the confirmed position, or -1 before the first connection.
func (s *Source) LagBytes() int64 { return s.lag.Load() }

// Run streams until ctx is done (handlers are cancelled), stop is closed
// (handlers finish, the final position is confirmed) or a fatal error. It
// reconnects with backoff after connection errors.
func (s *Source) Run(ctx context.Context, stop <-chan struct{}) error {
	s.lag.Store(-1)
	var undecodable struct {
		at pglogrepl.LSN
		n  int
	}
	return runner.Run(ctx, stop, runner.Config{
		Name: s.cfg.Name, Engine: "replication", MinReconnect: s.cfg.MinReconnect, MaxReconnect: s.cfg.MaxReconnect,
		OnError: s.cfg.OnError, Logger: s.cfg.Logger, Observe: s.cfg.Observe,
		Session: func(ctx, readCtx context.Context) (runner.Outcome, error) {
			s.streamed = time.Time{}
			err := s.session(ctx, readCtx)
			s.progressed = s.tracker != nil && s.tracker.Confirmed() > s.startPos
			// A session that streamed and moved on (or lasted) was a
			// success; one that fails where it started keeps backing off.
			ok := !s.streamed.IsZero() && (s.progressed || time.Since(s.streamed) >= max(s.cfg.MaxReconnect, time.Second))
			return runner.Outcome{Success: ok}, err
		},
		// The same message failing to decode session after session is no
		// transient fault: stop, naming it.
		Retry: func(err error, _ runner.Outcome) error {
			var de *decodeError
			if !errors.As(err, &de) {
				return err
			}
			if de.at == undecodable.at && !s.progressed {
				undecodable.n++
			} else {
				undecodable.at, undecodable.n = de.at, 1
			}
			if undecodable.n >= maxUndecodable {
				return &errs.Fatal{Err: fmt.Errorf("%w (%d sessions in a row failed on it)", err, undecodable.n)}
			}
			return err
		},
	})
}

var errSlotBusy = fmt.Errorf("replication slot is in use by another process: %w", runner.ErrStandby)

// maxUndecodable is how many sessions in a row may fail to decode the
// message at one WAL position before the source stops with ErrDecode.
const maxUndecodable = 5

func (s *Source) connConfig(replication bool) (*pgconn.Config, error) {
	cfg, err := runner.ParseDSN(s.cfg.DSN, s.label())
	if err != nil {
		return nil, err
	}
	for k, v := range rowjson.SessionParams() {
		cfg.RuntimeParams[k] = v
	}
	if replication {
		cfg.RuntimeParams["replication"] = "database"
		if s.sqlASCII {
			// The server cannot convert SQL_ASCII text, which may hold any
			// bytes, to UTF8: take it as it is; the decoder replaces what
			// is not UTF-8 (see decoder.text).
			cfg.RuntimeParams["client_encoding"] = "SQL_ASCII"
		}
		// The stream's many small reads skip the runtime's system-call
		// bookkeeping (see internal/rawread): half the CPU of a live stream.
		dial := cfg.DialFunc
		cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dial(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return rawread.Conn(c), nil
		}
	}
	cfg.RuntimeParams["application_name"] = "pgcdc"
	if s.cfg.ConfigureConn != nil {
		s.cfg.ConfigureConn(cfg)
	}
	return cfg, nil
}

// session is one connection's life: setup, stream, and on the way out,
// wait for the in-flight changes and confirm the final position.
func (s *Source) session(ctx, readCtx context.Context) (err error) {
	pcfg, err := s.connConfig(false)
	if err != nil {
		return err
	}
	poolCfg, err := pgxpool.ParseConfig("")
	if err != nil {
		return err
	}
	poolCfg.ConnConfig.Config = *pcfg
	poolCfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(readCtx, poolCfg)
	if err != nil {
		return fmt.Errorf("source %s: %w", s.label(), err)
	}
	defer pool.Close()
	if err := pool.Ping(readCtx); err != nil {
		return runner.ClassifyConnect(s.label(), err)
	}

	if err := s.check(readCtx, pool); err != nil {
		return err
	}
	if err := s.ensurePublication(readCtx, pool); err != nil {
		return err
	}

	if s.cfg.Locker != nil {
		held, release, err := s.cfg.Locker.Lock(readCtx, "pgcdc:"+s.database+":"+s.cfg.Slot)
		if err != nil {
			return fmt.Errorf("source %s: acquiring lock: %w", s.label(), err)
		}
		defer release()
		var cancel context.CancelFunc
		readCtx, cancel = context.WithCancel(readCtx)
		defer cancel()
		go func() {
			select {
			case <-held.Done():
			case <-readCtx.Done():
			}
			cancel()
		}()
	}

	rcfg, err := s.connConfig(true)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(readCtx, rcfg)
	if err != nil {
		return fmt.Errorf("source %s: replication connection: %w", s.label(), err)
	}
	defer conn.Close(context.Background())

	sys, err := pglogrepl.IdentifySystem(readCtx, conn)
	if err != nil {
		return fmt.Errorf("source %s: IDENTIFY_SYSTEM: %w", s.label(), err)
	}
	s.sourceID = sys.SystemID + "/" + s.database
	if err := s.ensureSlot(readCtx, pool, conn); err != nil {
		return err
	}
	slot, err := s.readSlot(readCtx, pool)
	if err != nil {
		return err
	}
	start := slot.confirmed
	if s.tracker != nil {
		start = max(start, pglogrepl.LSN(s.tracker.Confirmed()))
	}
	s.tracker = checkpoint.New(uint64(start))
	s.startPos = uint64(start)

	// messages: the writers' contexts (SetTxContext) come as logical
	// messages.
	args := []string{"proto_version '1'", "publication_names " + pgident.Literal(s.cfg.Publication), "messages 'true'"}
	if !s.cfg.NoStreaming && serverMajor(conn) >= 14 {
		// Large transactions arrive while in progress and wait in pgcdc's
		// buffer, not in the server's spill files.
		args = []string{"proto_version '2'", "streaming 'on'", "publication_names " + pgident.Literal(s.cfg.Publication), "messages 'true'"}
	}
	err = pglogrepl.StartReplication(readCtx, conn, s.cfg.Slot, start, pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			return errSlotBusy
		}
		return fmt.Errorf("source %s: START_REPLICATION: %w", s.label(), err)
	}
	if err := s.startDispatcher(ctx, pool); err != nil {
		return err
	}
	s.streamed = time.Now()
	s.cfg.Observe.SetState(observe.Streaming, nil)
	s.cfg.Logger.Info("pgcdc: streaming", "source", s.cfg.Name, "slot", s.cfg.Slot, "from", start)

	routeKeys := make(map[uint32]string, len(s.tables))
	for key, ti := range s.tables {
		routeKeys[ti.oid] = key
	}
	dec := newDecoder(decoderConfig{
		Source: s.cfg.Name, Label: s.label(), SourceID: s.sourceID, Types: s.types,
		Routed: s.disp.HandlesKey, Describe: s.describe(pool), RouteKeys: routeKeys,
		SQLASCII: s.sqlASCII, Logger: s.cfg.Logger,
	})
	st := &stream{s: s, conn: conn, pool: pool, dec: dec, tracker: s.tracker}
	lagDone := make(chan struct{})
	lagCtx, stopLag := context.WithCancel(readCtx)
	go func() {
		defer close(lagDone)
		s.watchLag(lagCtx, pool)
	}()
	snapDone := make(chan struct{})
	snapCtx, stopSnap := context.WithCancel(readCtx)
	go func() {
		defer close(snapDone)
		s.runSnapshots(snapCtx, pool)
	}()
	err = st.run(readCtx)
	stopSnap()
	<-snapDone
	stopLag()
	<-lagDone
	return s.finish(ctx, readCtx, conn, err)
}

func (s *Source) startDispatcher(ctx context.Context, pool *pgxpool.Pool) error {
	dl := s.cfg.DeadLetter
	if dl == nil && s.cfg.NewDeadLetter != nil {
		var err error
		if dl, err = s.cfg.NewDeadLetter(ctx, pool); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "42501" {
				return &errs.Fatal{Err: fmt.Errorf("%w: source %s: %v", errs.ErrPrivilege, s.label(), err)}
			}
			return fmt.Errorf("source %s: %w", s.label(), err)
		}
	}
	s.disp = dispatch.New(dispatch.Config{DeadLetter: dl, Logger: s.cfg.Logger, OnRetry: s.cfg.Observe.Retry})
	for _, t := range s.cfg.Tables {
		s.disp.Add(t.Schema, t.Table, t.Route)
	}
	if s.cfg.TxRoute != nil {
		r := *s.cfg.TxRoute
		r.Lanes = 1 // transactions are handled one at a time, in commit order
		s.disp.Add("\x00", "tx", r)
	}
	s.disp.Start(ctx)
	return nil
}

// finish ends a session: in-flight handlers end (cancelled only when ctx
// is), queued changes are left for the next session, and the final position
// is confirmed if the connection still works. The next session resumes from
// that position, so nothing unresolved is skipped.
func (s *Source) finish(ctx, readCtx context.Context, conn *pgconn.PgConn, cause error) error {
	if s.disp.Stop(ctx) != nil {
		// ctx ended meanwhile: the handlers are cancelled; wait for them
		// all the same, so that no handler outlives Run.
		_ = s.disp.Stop(context.Background())
	}
	s.disp = nil
	if !conn.IsClosed() {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		pos := pglogrepl.LSN(s.tracker.Confirmed())
		if err := pglogrepl.SendStandbyStatusUpdate(fctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: pos, WALFlushPosition: pos, WALApplyPosition: pos,
		}); err == nil {
			s.cfg.Observe.Confirmed(uint64(pos))
			_, _ = pglogrepl.SendStandbyCopyDone(fctx, conn)
		}
	}
	s.tracker = checkpoint.New(s.tracker.Confirmed())
	if readCtx.Err() != nil {
		return nil
	}
	return cause
}

// watchLag samples, every second, how many bytes of WAL the server
// holds for the slot: the distance from the server's current WAL position to
// the slot's confirmed position (what LagBytes reports).
func (s *Source) watchLag(ctx context.Context, pool *pgxpool.Pool) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		var lag int64
		err := pool.QueryRow(ctx, `SELECT coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, -1)
			FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&lag)
		if err == nil {
			s.lag.Store(lag)
			s.cfg.Observe.Lag(lag)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serverMajor is the server's major version (0 if unknown).
func serverMajor(conn *pgconn.PgConn) int {
	v := conn.ParameterStatus("server_version")
	n := 0
	for _, r := range v {
		if r < '0' || r > '9' {
			break
		}
		n = n*10 + int(r-'0')
	}
	return n
}
