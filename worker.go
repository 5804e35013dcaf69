package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/logical"
	"github.com/pgcdc/pgcdc/internal/observe"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// HandlerOption adjusts one route's handling.
type HandlerOption func(*handlerConfig)

type handlerConfig struct {
	maxGoroutines int
	maxRetries    int
	retriesSet    bool
	truncate      bool
	filter        filter
	snapshot      SnapshotMode
	inTx          inTxOptions // HandleInTx settings (inbox.go)
}

// WithMaxGoroutines overrides SetMaxGoroutines for one route (1 to
// MaxGoroutinesLimit; 0 keeps the worker's setting, as SetMaxGoroutines(0)
// keeps the default).
func WithMaxGoroutines(n int) HandlerOption {
	return func(c *handlerConfig) {
		if n != 0 {
			c.maxGoroutines = n
		}
	}
}

// WithTruncate makes TRUNCATE of the route's table an event (action
// ActionTruncate, old and new null). It is handled after every earlier change
// of the stream. Without it, TRUNCATE is not delivered.
func WithTruncate() HandlerOption {
	return func(c *handlerConfig) { c.truncate = true }
}

// WithMaxRetries overrides SetMaxRetries for one route.
func WithMaxRetries(n int) HandlerOption {
	return func(c *handlerConfig) { c.maxRetries, c.retriesSet = n, true }
}

// HandlerGroup collects the routes a module mounts.
type HandlerGroup struct {
	handlers []handlerEntry
}

type handlerEntry struct {
	route string
	fn    HandlerFunc
	opts  []HandlerOption
	tx    bool // grouped per transaction (HandleTx)
}

// Add registers fn for route: "table" (schema public), "schema.table", or
// CreateHandlerRoute(source, table) for a named source. Route names are as
// stored in the catalog: case-sensitive, without SQL quotes.
func (g *HandlerGroup) Add(route string, fn HandlerFunc, opts ...HandlerOption) {
	g.handlers = append(g.handlers, handlerEntry{route: route, fn: fn, opts: opts})
}

// Worker streams the changes of the routed tables to their handlers. Create
// it with NewWorker, register routes with Handle or Mount, then call Serve.
// Handle and Mount must be called before Serve.
type Worker struct {
	opt option

	mu      sync.Mutex
	group   HandlerGroup
	state   int // 0 new, 1 serving, 2 closed
	stop    chan struct{}
	done    chan struct{}
	hard    context.CancelFunc
	sources map[string]engine
	obs     map[string]*observe.Source // per source: what Status and the hooks report

	inbox inboxRegistry // HandleInTx routes (inbox.go)

	txHandler TxHandlerFunc
	txRoutes  []string
	txCalls   int
}

// NewWorker checks the options and returns a worker. It does no I/O; every
// problem found is returned at once (test with errors.Is(err, ErrConfig)).
func NewWorker(opts ...OptionFunc) (*Worker, error) {
	w := &Worker{stop: make(chan struct{}), done: make(chan struct{})}
	for _, fn := range opts {
		if fn != nil {
			fn(&w.opt)
		}
	}
	w.opt.fill()
	if err := w.opt.validate(); err != nil {
		return nil, err
	}
	w.obs = w.observers()
	return w, nil
}

// Mount registers the routes of a module (candi style). Routes mounted
// after Serve started are not served: that is logged as an error.
func (w *Worker) Mount(m interface{ MountHandlers(*HandlerGroup) }) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.late("Mount") {
		return
	}
	m.MountHandlers(&w.group)
}

// Handle registers fn for one route; see HandlerGroup.Add. Routes added
// after Serve started are not served: that is logged as an error.
func (w *Worker) Handle(route string, fn HandlerFunc, opts ...HandlerOption) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.late("Handle(" + route + ")") {
		return
	}
	w.group.Add(route, fn, opts...)
}

// late reports (and logs) a registration after Serve started. Called with
// w.mu held.
func (w *Worker) late(what string) bool {
	if w.state == 0 {
		return false
	}
	w.opt.logger.Error("pgcdc: "+what+" called after Serve started: ignored; register every route before Serve", "worker_type", w.opt.workerType)
	return true
}

// serving reports whether Serve started and has not returned yet.
func (w *Worker) serving() bool {
	w.mu.Lock()
	started := w.state != 0 && w.sources != nil
	w.mu.Unlock()
	if !started {
		return false
	}
	select {
	case <-w.done:
		return false
	default:
		return true
	}
}

// Serve streams until ctx is done, Shutdown is called, or an error that
// reconnecting cannot fix (a bad route, wal_level, privileges, a lost slot).
// It returns nil after Shutdown, ctx.Err() when ctx ended, and the error
// otherwise. Connection failures are retried (see SetOnErrorConnectionCallback).
func (w *Worker) Serve(ctx context.Context) error {
	w.mu.Lock()
	if w.state != 0 {
		w.mu.Unlock()
		return ErrWorkerClosed
	}
	plan, err := w.plan()
	if err != nil {
		w.mu.Unlock()
		return err
	}
	w.state = 1
	hardCtx, hard := context.WithCancel(ctx)
	w.hard = hard
	w.sources = map[string]engine{}
	for _, cfg := range plan {
		w.sources[cfg.Name] = w.newEngine(cfg)
	}
	w.mu.Unlock()
	defer close(w.done)
	defer hard()
	defer w.startInbox(hardCtx)() // after every handler returned

	// One failing source stops the others gracefully.
	stopAll := make(chan struct{})
	var stopOnce sync.Once
	halt := func() { stopOnce.Do(func() { close(stopAll) }) }
	go func() {
		select {
		case <-w.stop:
			halt()
		case <-hardCtx.Done():
		}
	}()
	errc := make(chan error, len(w.sources))
	var wg sync.WaitGroup
	for _, s := range w.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.Run(hardCtx, stopAll)
			if err != nil && !errors.Is(err, context.Canceled) {
				halt()
			}
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	var first error
	for err := range errc {
		if err != nil && !errors.Is(err, context.Canceled) && first == nil {
			first = err
		}
	}
	if first != nil {
		return first
	}
	return ctx.Err()
}

// Shutdown stops reading, lets the handlers in flight finish, confirms the
// position reached and makes Serve return. If ctx ends first, the handlers'
// contexts are cancelled and Shutdown returns ctx.Err() at once; Serve
// returns as soon as every handler has returned, so a handler that ignores
// its context delays Serve (never Shutdown), and its event is not
// acknowledged: it is delivered again by the next Serve, like every event
// not handled.
func (w *Worker) Shutdown(ctx context.Context) error {
	w.mu.Lock()
	prev := w.state
	if w.state != 2 {
		w.state = 2
		close(w.stop)
	}
	hard := w.hard
	w.mu.Unlock()
	if prev == 0 {
		return nil
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		hard()
		return ctx.Err()
	}
}

// Lag returns the replication lag of a source in bytes: how far the
// server's WAL is ahead of the position pgcdc has confirmed. It is -1 while
// the source is not streaming, and for the trigger engine (see Backlog).
func (w *Worker) Lag(sourceName string) int64 {
	if !w.serving() {
		return -1
	}
	w.mu.Lock()
	s := w.sources[sourceName]
	w.mu.Unlock()
	if s == nil {
		return -1
	}
	return s.LagBytes()
}

// Sources describes the configured sources and the names of the slot and
// publication each one uses.
func (w *Worker) Sources() []PostgresSource {
	out := make([]PostgresSource, 0, len(w.opt.sources))
	for _, s := range w.opt.sources {
		name := w.slotName(s.name)
		out = append(out, PostgresSource{Name: s.name, Slot: name, Publication: name})
	}
	return out
}

// slotName is "pgcdc_<worker type>_<source name or default>", reduced to
// the characters slot names allow.
func (w *Worker) slotName(source string) string {
	if source == "" {
		source = "default"
	}
	return pgident.SlotName("pgcdc", w.opt.workerType, source)
}

// plan turns the routes into one engine configuration per source. It
// returns every route problem at once.
func (w *Worker) plan() ([]logical.Config, error) {
	var problems []error
	bad := func(format string, args ...any) {
		problems = append(problems, fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...))
	}
	cfgs := map[string]*logical.Config{}
	var order []string
	for _, s := range w.opt.sources {
		c := w.sourceConfig(s)
		cfgs[s.name] = &c
		order = append(order, s.name)
	}
	seen := map[string]string{}
	entries := w.group.handlers
	for _, r := range w.txRoutes {
		entries = append(entries, handlerEntry{route: r, tx: true})
	}
	if len(w.txRoutes) > 0 && w.txHandler == nil {
		bad("HandleTx: nil transaction handler")
	}
	if w.txCalls > 1 {
		bad("HandleTx called %d times: a worker has one transaction handler; pass every table to one HandleTx call (each event says which table it is of)", w.txCalls)
	}
	txRoutes := map[string]string{}
	if len(w.txRoutes) > 0 && w.opt.captureMode != CaptureLogical {
		bad("HandleTx needs SetCaptureMode(CaptureLogical): only logical replication knows transaction boundaries")
	}
	for _, h := range entries {
		src, schema, name := parseRoute(h.route)
		table := schema + "." + name
		if _, ok := cfgs[src]; !ok && src == "" && len(w.opt.sources) == 1 {
			src = w.opt.sources[0].name // plain routes go to the only source
		}
		cfg, ok := cfgs[src]
		switch {
		case !ok && src == "":
			bad("route %q names no source and there are several: use CreateHandlerRoute(source, %q)", h.route, table)
			continue
		case !ok:
			bad("route %q: source %q was not added (AddPostgresDSN)", h.route, src)
			continue
		case h.fn == nil && !h.tx:
			bad("route %q: nil handler", h.route)
			continue
		}
		if schema == "" || name == "" {
			bad("route %q: empty schema or table name", h.route)
			continue
		}
		key := src + "\x00" + schema + "\x00" + name
		if prev, dup := seen[key]; dup {
			bad("route %q: table %s already has a handler (route %q)", h.route, pgident.Qualified(schema, name), prev)
			continue
		}
		seen[key] = h.route
		hc := handlerConfig{maxGoroutines: w.opt.maxGoroutines, maxRetries: w.opt.maxRetries, snapshot: w.opt.snapshot}
		for _, o := range h.opts {
			if o != nil {
				o(&hc)
			}
		}
		switch {
		case hc.snapshot == "" || hc.snapshot == SnapshotNever:
		case hc.snapshot == SnapshotInitial && h.tx:
			bad("route %q: snapshots are delivered to Handle routes, not to HandleTx", h.route)
			continue
		case hc.snapshot == SnapshotInitial && w.opt.captureMode == CaptureTrigger:
			bad("route %q: snapshots need the logical capture mode (SetCaptureMode(CaptureLogical) or CaptureAuto with a role allowed to replicate)", h.route)
			continue
		case hc.snapshot != SnapshotInitial:
			bad("route %q: snapshot mode %q: want %q or %q", h.route, hc.snapshot, SnapshotNever, SnapshotInitial)
			continue
		}
		if msg := hc.filter.check(); msg != "" {
			bad("route %q: %s", h.route, msg)
			continue
		}
		if err := hc.inTx.misuse(h.route); err != nil {
			problems = append(problems, err)
		}
		if hc.maxGoroutines < 1 || hc.maxGoroutines > MaxGoroutinesLimit || hc.maxRetries < 0 {
			bad("route %q: WithMaxGoroutines must be from 1 to %d and WithMaxRetries not negative", h.route, MaxGoroutinesLimit)
			continue
		}
		retry := dispatch.RetryPolicy{MaxRetries: hc.maxRetries, MinBackoff: w.opt.minRetryBackoff, MaxBackoff: w.opt.maxRetryBackoff}
		if h.tx {
			txRoutes[schema+"."+name] = h.route
			cfg.Tables = append(cfg.Tables, logical.Table{Schema: schema, Table: name, Route: dispatch.Route{Name: h.route, Tx: true}})
			if cfg.TxRoute == nil && w.txHandler != nil {
				cfg.TxRoute = &dispatch.Route{Name: "transaction", Handler: w.adaptTx(w.txHandler, txRoutes), Retry: retry}
				cfg.TxBufferBytes = w.opt.txBufferBytes
			}
			continue
		}
		var f *filter
		if !hc.filter.empty() {
			f = &hc.filter
		}
		cfg.Tables = append(cfg.Tables, logical.Table{Schema: schema, Table: name, Route: dispatch.Route{
			Name: h.route, Handler: w.adapt(src, h.route, h.fn, f), Lanes: hc.maxGoroutines,
			Truncate: hc.truncate, Retry: retry,
		}, Columns: hc.filter.include, Exclude: hc.filter.exclude, NeedOld: len(hc.filter.changed) > 0,
			Snapshot: hc.snapshot == SnapshotInitial})
	}
	var out []logical.Config
	for _, name := range order {
		if c := cfgs[name]; len(c.Tables) > 0 {
			out = append(out, *c)
		}
	}
	if len(out) == 0 && len(problems) == 0 {
		bad("no route: register handlers with Handle or Mount before Serve")
	}
	problems = append(problems, w.inboxProblems()...)
	if err := errors.Join(problems...); err != nil {
		return nil, err
	}
	return out, nil
}

func (w *Worker) sourceConfig(s source) logical.Config {
	name := w.slotName(s.name)
	cfg := logical.Config{
		Name: s.name, DSN: s.dsn, Slot: name, Publication: name, StateSchema: w.TriggerSchema(),
		MinReconnect: w.opt.minReconnectInterval, MaxReconnect: w.opt.maxReconnectInterval,
		OnError: w.opt.onErrorConnection, Logger: w.opt.logger,
		RecreateLostSlot: w.opt.recreateLostSlot,
		NoStreaming:      w.opt.noStreaming, TxBufferBytes: w.opt.txBufferBytes,
	}
	if w.opt.locker != nil {
		cfg.Locker = w.opt.locker
	}
	if len(w.opt.dbOptions) > 0 {
		fns := w.opt.dbOptions
		cfg.ConfigureConn = func(c *pgconn.Config) {
			for _, fn := range fns {
				fn(c)
			}
		}
	}
	if !w.opt.deadLetterOff {
		cfg.NewDeadLetter = func(ctx context.Context, pool *pgxpool.Pool) (dispatch.DeadLetter, error) {
			return w.openDeadLetter(ctx, pool)
		}
	}
	return w.observed(cfg)
}

// adapt turns a HandlerFunc into the dispatcher's handler.
// f, when not nil, filters the events first (see WithActions).
func (w *Worker) adapt(source, route string, fn HandlerFunc, f *filter) dispatch.Handler {
	wt, debug, log := w.opt.workerType, w.opt.debugMode, w.opt.logger
	obs, hooks, timed := w.obs[source], &w.opt.hooks, len(w.opt.hooks.handled) > 0
	return func(ctx context.Context, c *change.Change) error {
		if f != nil {
			msg, skip, err := f.apply(c.Action, c.Message)
			if err != nil {
				return err
			}
			if skip {
				ec := &EventContext{ctx: ctx, c: c, route: route, workerType: wt, filtered: true}
				hooks.eventHandled(obs, ec, time.Now(), nil)
				return nil
			}
			if len(msg) != len(c.Message) {
				fc := *c
				fc.Message = msg
				c = &fc
			}
		}
		ec := &EventContext{ctx: ctx, c: c, route: route, workerType: wt}
		if debug {
			log.Info("pgcdc: event", "route", route, "event_id", c.EventID, "action", c.Action, "lsn", lsnString(c.LSN))
		}
		var start time.Time
		if timed {
			start = time.Now()
		}
		err := fn(ec)
		if err != nil {
			ec.err = err
		}
		hooks.eventHandled(obs, ec, start, err)
		return err
	}
}
