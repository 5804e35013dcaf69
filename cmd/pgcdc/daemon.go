package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/trigger"
	"github.com/pgcdc/pgcdc/sink"
)

// newLogger builds the daemon's logger from the log section.
func newLogger(c LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// workerOptions are the library options of one source.
func workerOptions(name string, sc *SourceConfig, logger *slog.Logger) []pgcdc.OptionFunc {
	opts := []pgcdc.OptionFunc{
		pgcdc.AddPostgresDSN(name, sc.DSN),
		pgcdc.SetCaptureMode(pgcdc.CaptureMode(sc.Capture)),
		pgcdc.SetLogger(logger),
	}
	if sc.WorkerType != "" {
		opts = append(opts, pgcdc.SetWorkerType(sc.WorkerType))
	}
	if sc.MaxGoroutines > 0 {
		opts = append(opts, pgcdc.SetMaxGoroutines(sc.MaxGoroutines))
	}
	if sc.TriggerSchema != "" {
		opts = append(opts, pgcdc.SetTriggerSchema(sc.TriggerSchema))
	}
	if sc.Retries.Max != nil {
		opts = append(opts, pgcdc.SetMaxRetries(*sc.Retries.Max))
	}
	if sc.Retries.MinBackoff != 0 || sc.Retries.MaxBackoff != 0 {
		opts = append(opts, pgcdc.SetRetryBackoff(sc.Retries.MinBackoff.D(), sc.Retries.MaxBackoff.D()))
	}
	if sc.Reconnect.Min != 0 {
		opts = append(opts, pgcdc.SetMinReconnectInterval(sc.Reconnect.Min.D()))
	}
	if sc.Reconnect.Max != 0 {
		opts = append(opts, pgcdc.SetMaxReconnectInterval(sc.Reconnect.Max.D()))
	}
	if sc.DeadLetters.Enabled != nil && !*sc.DeadLetters.Enabled {
		opts = append(opts, pgcdc.DisableDeadLetter())
	} else if sc.DeadLetters.Table != "" {
		opts = append(opts, pgcdc.SetDeadLetterTable(sc.DeadLetters.Table))
	}
	return opts
}

// deadLetterTable is the source's dead-letter table as schema and name, as
// the library resolves it: the configured one; else public.pgcdc_dead_letters
// when q (a connection to the source; nil: not looked at) shows that an
// earlier version created it; else dead_letters in the worker's pgcdc
// schema.
func deadLetterTable(ctx context.Context, q interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}, sc *SourceConfig) (schema, table string) {
	if t := sc.DeadLetters.Table; t != "" {
		return splitTable(t)
	}
	if q != nil {
		var legacy bool
		if err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgcdc.DefaultDeadLetterTable).Scan(&legacy); err == nil && legacy {
			return splitTable(pgcdc.DefaultDeadLetterTable)
		}
	}
	return triggerSchemaOf(sc), "dead_letters"
}

// triggerSchemaOf is the worker's pgcdc schema (Worker.TriggerSchema).
func triggerSchemaOf(sc *SourceConfig) string {
	if sc.TriggerSchema != "" {
		return sc.TriggerSchema
	}
	if wt := workerTypeOf(sc); wt != pgcdc.DefaultWorkerType {
		return trigger.WorkerTypeSchema(wt)
	}
	return trigger.DefaultSchema
}

// splitTable splits "schema.table" ("table" is in public).
func splitTable(t string) (schema, table string) {
	if s, n, ok := strings.Cut(t, "."); ok {
		return s, n
	}
	return "public", t
}

func workerTypeOf(sc *SourceConfig) string {
	if sc.WorkerType != "" {
		return sc.WorkerType
	}
	return pgcdc.DefaultWorkerType
}

// rulesOf compiles the routes of one source.
func rulesOf(cfg *Config, source string) []*rule {
	var out []*rule
	for i, r := range cfg.Routes {
		if r.Source != source {
			continue
		}
		out = append(out, &rule{index: i, sinks: r.Sinks, actions: r.Actions, changed: r.ChangedColumns, where: r.Where})
	}
	return out
}

// resolveTables expands the table patterns of a source's routes into
// tables ("schema.table") and the rules of each. Patterns ("schema.*") are
// matched against the catalog, so they need a connection; the dead-letter
// table and the trigger engine's schema never match one.
// empty lists the patterns that matched no table ("routes[0].tables[1] \"sales.*\"").
func resolveTables(ctx context.Context, cfg *Config, source string) (tables map[string][]*rule, order, empty []string, err error) {
	sc := cfg.Sources[source]
	rules := rulesOf(cfg, source)
	tables = map[string][]*rule{}
	add := func(t string, r *rule) {
		if _, ok := tables[t]; !ok {
			order = append(order, t)
		}
		if !containsRule(tables[t], r) {
			tables[t] = append(tables[t], r)
		}
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	dlSchema, dlTable := deadLetterTable(ctx, nil, sc)
	legacySchema, legacyTable := splitTable(pgcdc.DefaultDeadLetterTable)
	trigSchema := triggerSchemaOf(sc)
	for _, r := range rules {
		for j, pat := range cfg.Routes[r.index].Tables {
			schema, name := splitTable(pat)
			if name != "*" {
				add(schema+"."+name, r)
				continue
			}
			if conn == nil {
				if conn, err = pgx.Connect(ctx, sc.DSN); err != nil {
					return nil, nil, nil, fmt.Errorf("source %q: connecting to expand %q: %w", source, pat, redactDSN(err))
				}
			}
			rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
				WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition ORDER BY c.relname`, schema)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("source %q: listing the tables of schema %q: %w", source, schema, err)
			}
			names, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				return nil, nil, nil, fmt.Errorf("source %q: listing the tables of schema %q: %w", source, schema, err)
			}
			matched := 0
			for _, n := range names {
				if (schema == dlSchema && n == dlTable) || (schema == legacySchema && n == legacyTable) || schema == trigSchema {
					continue
				}
				add(schema+"."+n, r)
				matched++
			}
			if matched == 0 {
				empty = append(empty, fmt.Sprintf("routes[%d].tables[%d] %q", r.index, j, pat))
			}
		}
	}
	return tables, order, empty, nil
}

func containsRule(rs []*rule, r *rule) bool {
	for _, x := range rs {
		if x == r {
			return true
		}
	}
	return false
}

// redactDSN keeps connection errors from quoting a DSN.
func redactDSN(err error) error {
	msg := err.Error()
	if strings.Contains(msg, "password") || strings.Contains(msg, "://") {
		return errors.New("cannot connect (the error is not shown because it may quote the DSN and its password)")
	}
	return err
}

// daemon runs the sources of a configuration into its sinks.
type daemon struct {
	cfg     *Config
	reg     registry
	logger  *slog.Logger
	stdout  io.Writer
	sinks   map[string]sink.Sink
	metrics *metrics
	tracer  trace.Tracer

	mu      sync.Mutex
	workers map[string]*pgcdc.Worker // source name → worker, once built
}

// openSinks opens every sink of the file.
func (d *daemon) openSinks(ctx context.Context) error {
	d.sinks = map[string]sink.Sink{}
	for _, name := range d.cfg.sinkOrder {
		sc := d.cfg.Sinks[name]
		s, err := d.reg[sc.Type].open(ctx, sc.Settings, sinkEnv{Name: name, Stdout: d.stdout, Logger: d.logger})
		if err != nil {
			d.closeSinks()
			return fmt.Errorf("sink %q: %w", name, err)
		}
		if sc.BatchSize > 1 {
			s = sink.NewBatcher(s, sc.BatchSize, sc.BatchLinger.D())
		}
		d.sinks[name] = s
	}
	return nil
}

func (d *daemon) closeSinks() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for name, s := range d.sinks {
		if err := s.Close(ctx); err != nil {
			d.logger.Warn("pgcdc: closing sink", "sink", name, "error", err)
		}
	}
}

// buildWorker creates the worker of one source with a handler per routed
// table.
func (d *daemon) buildWorker(ctx context.Context, name string, hooks ...any) (*pgcdc.Worker, error) {
	sc := d.cfg.Sources[name]
	tables, order, empty, err := resolveTables(ctx, d.cfg, name)
	if err != nil {
		return nil, err
	}
	for _, e := range empty {
		d.logger.Warn("pgcdc: a table pattern matches no table (tables created later are not captured before a restart)", "source", name, "pattern", e)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("source %q: the routes match no table", name)
	}
	opts := workerOptions(name, sc, d.logger)
	if len(hooks) > 0 {
		opts = append(opts, pgcdc.SetHooks(hooks...))
	}
	w, err := pgcdc.NewWorker(opts...)
	if err != nil {
		return nil, fmt.Errorf("source %q: %w", name, err)
	}
	for _, t := range order {
		rules := tables[t]
		p := &pipeline{rules: rules, sinks: d.sinks, logger: d.logger, debug: d.cfg.Log.Level == "debug", tracer: d.tracer}
		var hopts []pgcdc.HandlerOption
		for _, r := range rules {
			if r.wantsTruncate() {
				hopts = append(hopts, pgcdc.WithTruncate())
				break
			}
		}
		w.Handle(pgcdc.CreateHandlerRoute(name, t), p.handler(), hopts...)
	}
	d.logger.Info("pgcdc: source routed", "source", name, "capture", sc.Capture, "tables", order)
	return w, nil
}

// status returns the state of every source, in file order; sources whose
// worker is not built yet are "connecting".
func (d *daemon) status(ctx context.Context) []pgcdc.SourceStatus {
	var out []pgcdc.SourceStatus
	for _, name := range d.cfg.sourceOrder {
		d.mu.Lock()
		w := d.workers[name]
		d.mu.Unlock()
		if w == nil {
			out = append(out, pgcdc.SourceStatus{Name: name, Engine: d.cfg.Sources[name].Capture, State: pgcdc.StateConnecting, LagBytes: -1, Backlog: -1})
			continue
		}
		out = append(out, w.Status(ctx)...)
	}
	return out
}

// run serves until ctx ends (then shuts down gracefully) or a source fails
// for good.
func (d *daemon) run(ctx context.Context) error {
	d.workers = map[string]*pgcdc.Worker{}
	d.metrics = newMetrics(d.status)
	tracer, stopTracing, err := startTracing(ctx, d.cfg.Tracing)
	if err != nil {
		return err
	}
	d.tracer = tracer
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			d.logger.Warn("pgcdc: flushing traces", "error", err)
		}
	}()
	if err := d.openSinks(ctx); err != nil {
		return err
	}
	defer d.closeSinks()

	if d.cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", d.cfg.HTTP.Listen)
		if err != nil {
			return fmt.Errorf("http.listen: %w", err)
		}
		srv := &http.Server{Handler: d.httpHandler(), ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		d.logger.Info("pgcdc: http listening", "addr", ln.Addr().String())
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
		}()
	}

	// Serve runs on a context that the signal does not cancel: the signal
	// asks for Shutdown, which lets in-flight deliveries finish.
	serveCtx, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	// Sources still being set up (waiting for their database) give up when
	// the daemon stops, for a signal or another source's fatal error.
	buildCtx, stopBuilding := context.WithCancel(ctx)
	defer stopBuilding()
	failed := make(chan error, len(d.cfg.sourceOrder))
	var wg sync.WaitGroup
	for _, name := range d.cfg.sourceOrder {
		wg.Go(func() {
			w, err := d.buildWithRetry(buildCtx, name)
			if err != nil {
				if buildCtx.Err() == nil {
					failed <- err
				}
				return
			}
			d.mu.Lock()
			d.workers[name] = w
			d.mu.Unlock()
			if err := w.Serve(serveCtx); err != nil && !errors.Is(err, context.Canceled) {
				failed <- fmt.Errorf("source %q: %w", name, err)
			}
		})
	}
	var fatal error
	select {
	case <-ctx.Done():
		d.logger.Info("pgcdc: stopping: finishing in-flight deliveries", "grace", d.cfg.ShutdownGrace.D().String())
	case fatal = <-failed:
		d.logger.Error("pgcdc: stopping after a fatal error", "error", fatal)
	}
	stopBuilding()
	graceCtx, cancel := context.WithTimeout(context.Background(), d.cfg.ShutdownGrace.D())
	defer cancel()
	var late error
	var lateMu sync.Mutex
	var sw sync.WaitGroup
	d.mu.Lock()
	for name, w := range d.workers {
		sw.Go(func() {
			if err := w.Shutdown(graceCtx); err != nil {
				lateMu.Lock()
				late = fmt.Errorf("source %q: the grace period (%s) ended before the in-flight deliveries; they are delivered again at the next start", name, d.cfg.ShutdownGrace.D())
				lateMu.Unlock()
			}
		})
	}
	d.mu.Unlock()
	sw.Wait()
	hardStop()
	wg.Wait()
	if fatal != nil {
		return fatal
	}
	return late
}

// buildWithRetry builds a source's worker, retrying while the database
// cannot be reached (patterns need the catalog) until ctx ends.
func (d *daemon) buildWithRetry(ctx context.Context, name string) (*pgcdc.Worker, error) {
	wait := time.Second
	for {
		w, err := d.buildWorker(ctx, name, d.metrics)
		if err == nil || errors.Is(err, pgcdc.ErrConfig) || strings.Contains(err.Error(), "match no table") {
			return w, err
		}
		d.logger.Warn("pgcdc: cannot set the source up; retrying", "source", name, "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}
