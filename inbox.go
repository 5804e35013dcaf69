package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/inbox"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/trigger"
)

// InTxFunc handles one event inside a transaction of the target database
// (see HandleInTx). Returning nil commits the transaction together with
// the event's inbox record; an error (or a panic) rolls both back.
type InTxFunc func(ec *EventContext, tx pgx.Tx) error

// TxInTxFunc handles one whole source transaction inside a transaction of
// the target database (see HandleTxInTx).
type TxInTxFunc func(tc *TxContext, tx pgx.Tx) error

// DefaultInboxPruneInterval is how often the inbox is pruned unless
// WithInboxPruneInterval says otherwise.
const DefaultInboxPruneInterval = 10 * time.Second

// ErrInboxTxOwned is returned by Commit and Rollback of the transaction a
// HandleInTx handler gets: pgcdc commits it after the handler returned nil
// and rolls it back when the handler returns an error.
var ErrInboxTxOwned = errors.New("pgcdc: the inbox transaction is committed by pgcdc once the handler returns nil; return an error to roll it back")

// inTxOptions are the HandleInTx settings of a route (part of
// handlerConfig).
type inTxOptions struct {
	set        []string // names of the inbox options given (for misuse reports)
	registered bool     // the route was registered with HandleInTx / HandleTxInTx
	dsn        string
	pool       *pgxpool.Pool
	batch      int
	batchWait  time.Duration
	schema     string
	prune      time.Duration
}

// WithTargetDSN makes a HandleInTx route run its transactions in the
// database at dsn (default: the route's source database). pgcdc opens and
// closes the pool; SetDBOption functions apply to it as well.
func WithTargetDSN(dsn string) HandlerOption {
	return func(c *handlerConfig) { c.inTx.dsn = dsn; c.inTx.set = append(c.inTx.set, "WithTargetDSN") }
}

// WithTargetPool makes a HandleInTx route run its transactions on pool
// (default: a pool pgcdc opens on the route's source database). The caller
// owns the pool and closes it after Serve returned; it needs a connection
// per handler goroutine of the route (SetMaxGoroutines), plus one. An
// inbox transaction whose synchronous_commit is off is raised to on: a
// commit lost in a crash after the acknowledgement would lose the effect.
func WithTargetPool(pool *pgxpool.Pool) HandlerOption {
	return func(c *handlerConfig) { c.inTx.pool = pool; c.inTx.set = append(c.inTx.set, "WithTargetPool") }
}

// WithInTxBatch groups the calls of a HandleInTx route's handler goroutines
// into shared transactions (group commit): a call waiting for its commit
// joins the transaction being filled, up to max events, waiting at most
// maxWait for more (0: only the calls already waiting). Each handler
// goroutine still has one event at a time in flight and learns its result
// after the commit, so the changes of one row stay in order; the larger
// SetMaxGoroutines (or WithMaxGoroutines), the larger the groups. A group's
// handlers run one after the other on its connection, so the route runs
// one group transaction at a time per max of its goroutines (64 goroutines
// with max 16: four at a time). When one
// handler call fails, the group is rolled back, that event is retried as
// usual and the other events are run again in a new transaction (their
// handler is called again; only the committed call has an effect).
func WithInTxBatch(max int, maxWait time.Duration) HandlerOption {
	return func(c *handlerConfig) {
		c.inTx.batch, c.inTx.batchWait = max, maxWait
		c.inTx.set = append(c.inTx.set, "WithInTxBatch")
	}
}

// WithInboxSchema names the schema of the target database that holds the
// inbox tables (default "pgcdc").
func WithInboxSchema(schema string) HandlerOption {
	return func(c *handlerConfig) { c.inTx.schema = schema; c.inTx.set = append(c.inTx.set, "WithInboxSchema") }
}

// WithInboxPruneInterval sets how often the records of events that can no
// longer be delivered again are deleted (default 10s).
func WithInboxPruneInterval(d time.Duration) HandlerOption {
	return func(c *handlerConfig) { c.inTx.prune = d; c.inTx.set = append(c.inTx.set, "WithInboxPruneInterval") }
}

func markInTx() HandlerOption { return func(c *handlerConfig) { c.inTx.registered = true } }

// misuse reports inbox options given to a route not registered with
// HandleInTx (called by plan).
func (o *inTxOptions) misuse(route string) error {
	if o.registered || len(o.set) == 0 {
		return nil
	}
	return fmt.Errorf("%w: route %q: %v only apply to HandleInTx and HandleTxInTx", ErrConfig, route, o.set)
}

// inboxRegistry holds a worker's HandleInTx routes (a Worker field).
type inboxRegistry struct {
	routes  []*inTxRoute
	mu      sync.Mutex
	targets map[string]*inTxTarget // by schema and DSN or pool
}

// inTxRoute is one HandleInTx (or HandleTxInTx) registration.
type inTxRoute struct {
	w     *Worker
	route string // "" for HandleTxInTx
	opt   inTxOptions
	lanes int
	err   error

	mu      sync.Mutex
	targets map[string]*inTxTarget // by source name when the target is the source
	fixed   *inTxTarget            // WithTargetDSN / WithTargetPool

	cmMu   sync.RWMutex // held (read) while a request is handed to commit
	commit *committer   // WithInTxBatch, while serving
}

// HandleInTx registers fn for route (as Handle does) with exactly-once
// effects on a target database: for each event pgcdc begins a transaction
// there, records the event in its inbox table (schema "pgcdc" unless
// WithInboxSchema), calls fn with the transaction, commits, and only then
// acknowledges the event. An event delivered again (after a crash, a
// restart, a lost connection) finds its record and fn is not called again.
// fn's writes through tx therefore happen exactly once; anything else it
// does (an e-mail, an HTTP call, writes through another connection) is
// still at-least-once.
//
// The target is the route's source database unless WithTargetDSN or
// WithTargetPool names another. WithInTxBatch groups concurrent calls into
// shared transactions. The usual HandlerOptions apply (WithMaxGoroutines,
// WithMaxRetries, WithTruncate); an error from fn rolls back and is
// retried and dead-lettered as for Handle. Both capture engines work.
func (w *Worker) HandleInTx(route string, fn InTxFunc, opts ...HandlerOption) {
	r := w.newInTxRoute(route, opts)
	var h HandlerFunc
	if fn != nil {
		h = func(ec *EventContext) error {
			return r.handle(ec.ctx, ec.c.Source, ec.c, func(tx pgx.Tx) error { return fn(ec, tx) })
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.late("HandleInTx(" + route + ")") {
		return
	}
	w.inbox.routes = append(w.inbox.routes, r)
	w.group.Add(route, h, append(opts, markInTx())...)
}

// HandleTxInTx is HandleTx with exactly-once effects: each source
// transaction is handled in one transaction of the target database that
// also records the source transaction's id (TxContext.ID) in the inbox; see
// HandleInTx. Transactions are handled one at a time, so WithInTxBatch does
// not apply; WithTargetDSN, WithTargetPool, WithInboxSchema and
// WithInboxPruneInterval do. It counts as the worker's one HandleTx call.
func (w *Worker) HandleTxInTx(routes []string, fn TxInTxFunc, opts ...HandlerOption) {
	r := w.newInTxRoute("", opts)
	if r.err == nil && r.opt.batch != 0 {
		r.err = fmt.Errorf("%w: HandleTxInTx: WithInTxBatch does not apply (transactions are handled one at a time)", ErrConfig)
	}
	var h TxHandlerFunc
	if fn != nil {
		h = func(tc *TxContext) error {
			return r.handle(tc.ctx, tc.c.Source, tc.c, func(tx pgx.Tx) error { return fn(tc, tx) })
		}
	}
	w.mu.Lock()
	if w.late("HandleTxInTx") {
		w.mu.Unlock()
		return
	}
	w.inbox.routes = append(w.inbox.routes, r)
	w.mu.Unlock()
	w.HandleTx(h, routes...)
}

func (w *Worker) newInTxRoute(route string, opts []HandlerOption) *inTxRoute {
	hc := handlerConfig{maxGoroutines: w.opt.maxGoroutines}
	for _, o := range opts {
		if o != nil {
			o(&hc)
		}
	}
	r := &inTxRoute{w: w, route: route, opt: hc.inTx, lanes: max(hc.maxGoroutines, 1), targets: map[string]*inTxTarget{}}
	if r.opt.schema == "" {
		r.opt.schema = inbox.DefaultSchema
	}
	if r.opt.prune == 0 {
		r.opt.prune = DefaultInboxPruneInterval
	}
	label := "HandleInTx(" + route + ")"
	if route == "" {
		label = "HandleTxInTx"
	}
	var problems []string
	switch {
	case r.opt.dsn != "" && r.opt.pool != nil:
		problems = append(problems, "give WithTargetDSN or WithTargetPool, not both")
	case r.opt.dsn != "":
		if _, err := pgconn.ParseConfig(r.opt.dsn); err != nil {
			problems = append(problems, "WithTargetDSN: the DSN cannot be parsed (it is not shown because it may hold a password)")
		}
	}
	if r.opt.batch < 0 || r.opt.batch > MaxGoroutinesLimit || r.opt.batchWait < 0 {
		problems = append(problems, fmt.Sprintf("WithInTxBatch(%d, %s): want 0 to %d events and a wait not negative", r.opt.batch, r.opt.batchWait, MaxGoroutinesLimit))
	}
	if r.opt.prune < 0 {
		problems = append(problems, "WithInboxPruneInterval must not be negative")
	}
	if len(problems) > 0 {
		r.err = fmt.Errorf("%w: %s: %v", ErrConfig, label, problems)
	}
	return r
}

// inboxProblems returns the HandleInTx configuration errors (for plan).
func (w *Worker) inboxProblems() []error {
	var out []error
	for _, r := range w.inbox.routes {
		if r.err != nil {
			out = append(out, r.err)
		}
	}
	return out
}

// target returns the target database of an event of source.
func (r *inTxRoute) target(source string) (*inTxTarget, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fixed != nil {
		return r.fixed, nil
	}
	if t := r.targets[source]; t != nil {
		return t, nil
	}
	if r.opt.pool != nil || r.opt.dsn != "" {
		r.fixed = r.w.newTarget(r.opt.dsn, r.opt.pool, r.opt.schema)
		return r.fixed, nil
	}
	for _, s := range r.w.opt.sources {
		if s.name == source {
			t := r.w.newTarget(s.dsn, nil, r.opt.schema)
			r.targets[source] = t
			return t, nil
		}
	}
	return nil, fmt.Errorf("%w: no source %q for the inbox target", ErrConfig, source)
}

// handle runs one event (or source transaction) c through the inbox.
func (r *inTxRoute) handle(ctx context.Context, source string, c *change.Change, fn func(pgx.Tx) error) error {
	t, err := r.target(source)
	if err != nil {
		return err
	}
	r.cmMu.RLock()
	if cm := r.commit; cm != nil {
		req := &inTxReq{ctx: ctx, source: source, c: c, fn: fn, done: make(chan error, 1)}
		cm.reqs <- req
		r.cmMu.RUnlock()
		return <-req.done
	}
	r.cmMu.RUnlock()
	q, release, err := t.acquire(ctx)
	if err != nil {
		return err
	}
	defer release()
	stream, err := t.stream(ctx, q, r.w.opt.workerType, source)
	if err != nil {
		return err
	}
	tx, err := q.Begin(ctx)
	if err != nil {
		return fmt.Errorf("inbox: begin on the target database: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	fresh, err := t.store.Record(ctx, tx, stream, c.EventID, c.LSN, c.XID)
	if err != nil {
		return err
	}
	if !fresh {
		r.skipped(c)
		return nil
	}
	if err := fn(ownedTx{tx}); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("inbox: commit on the target database: %w", err)
	}
	return nil
}

func (r *inTxRoute) skipped(c *change.Change) {
	r.w.opt.logger.Debug("pgcdc: event already recorded in the inbox; handler not called again",
		"route", r.route, "event_id", c.EventID, "source", c.Source)
}

// ownedTx is the transaction a handler gets: pgcdc commits it.
type ownedTx struct{ pgx.Tx }

func (ownedTx) Commit(context.Context) error   { return ErrInboxTxOwned }
func (ownedTx) Rollback(context.Context) error { return ErrInboxTxOwned }

// inTxTarget is one target database (and inbox schema).
type inTxTarget struct {
	w        *Worker
	dsn      string
	userPool *pgxpool.Pool
	store    *inbox.Store

	mu      sync.Mutex
	pool    *pgxpool.Pool // pgcdc's own, while serving
	lanes   int
	ensured bool
	streams map[string]int32 // by source
	sources map[string]bool  // sources whose records it holds (pruned)
	prune   time.Duration
	// restart is the slot's restart_lsn seen by the last pruning round, per
	// source: by the next round it is surely on disk.
	restart map[string]uint64
}

func (w *Worker) newTarget(dsn string, pool *pgxpool.Pool, schema string) *inTxTarget {
	key := schema + "\x00" + dsn
	if pool != nil {
		key = fmt.Sprintf("%s\x00%p", schema, pool)
	}
	w.inbox.mu.Lock()
	defer w.inbox.mu.Unlock()
	if w.inbox.targets == nil {
		w.inbox.targets = map[string]*inTxTarget{}
	}
	if t := w.inbox.targets[key]; t != nil {
		return t
	}
	t := &inTxTarget{w: w, dsn: dsn, userPool: pool, store: inbox.New(schema), streams: map[string]int32{},
		sources: map[string]bool{}, restart: map[string]uint64{}}
	w.inbox.targets[key] = t
	return t
}

// connConfig parses a DSN with the worker's SetDBOption functions applied.
func (w *Worker) connConfig(dsn string) (*pgxpool.Config, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: the inbox target DSN cannot be parsed", ErrConfig)
	}
	for _, fn := range w.opt.dbOptions {
		fn(&cfg.ConnConfig.Config)
	}
	// An inbox commit must be durable before the event is acknowledged.
	cfg.ConnConfig.RuntimeParams["synchronous_commit"] = "on"
	return cfg, nil
}

// acquire returns something to run a transaction on: the user's pool, the
// target's pool while the worker serves, or a connection of its own
// outside Serve (RedeliverDeadLetters, Deliver).
func (t *inTxTarget) acquire(ctx context.Context) (inbox.Querier, func(), error) {
	if t.userPool != nil {
		return t.userPool, func() {}, nil
	}
	t.mu.Lock()
	p := t.pool
	t.mu.Unlock()
	if p != nil {
		return p, func() {}, nil
	}
	cfg, err := t.w.connConfig(t.dsn)
	if err != nil {
		return nil, nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.ConnConfig)
	if err != nil {
		return nil, nil, fmt.Errorf("inbox: connecting to the target database: %w", err)
	}
	return conn, func() { _ = conn.Close(context.WithoutCancel(ctx)) }, nil
}

// stream returns the inbox stream id of (workerType, source), creating the
// tables first when needed.
func (t *inTxTarget) stream(ctx context.Context, q inbox.Querier, workerType, source string) (int32, error) {
	t.mu.Lock()
	id, ok := t.streams[source]
	ensured := t.ensured
	t.mu.Unlock()
	if ok {
		return id, nil
	}
	if !ensured {
		if err := t.store.Ensure(ctx, q); err != nil {
			return 0, err
		}
	}
	id, err := t.store.Stream(ctx, q, workerType, source)
	if err != nil {
		return 0, err
	}
	t.mu.Lock()
	t.ensured = true
	t.streams[source] = id
	t.mu.Unlock()
	return id, nil
}

// startInbox opens the HandleInTx pools, committers and pruners for Serve;
// the returned function closes them once every handler has returned. It
// does no I/O.
func (w *Worker) startInbox(ctx context.Context) func() {
	if len(w.inbox.routes) == 0 {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var committers []*committer
	targets := map[*inTxTarget]bool{}
	for _, r := range w.inbox.routes {
		if r.err != nil {
			continue
		}
		var srcs []string
		if r.route != "" {
			src, _, _ := parseRoute(r.route)
			if src == "" && len(w.opt.sources) == 1 {
				src = w.opt.sources[0].name
			}
			srcs = []string{src}
		} else {
			for _, s := range w.opt.sources {
				srcs = append(srcs, s.name)
			}
		}
		for _, src := range srcs {
			t, err := r.target(src)
			if err != nil {
				continue
			}
			t.mu.Lock()
			t.lanes += r.lanes
			t.sources[src] = true
			if t.prune == 0 || r.opt.prune < t.prune {
				t.prune = r.opt.prune
			}
			t.mu.Unlock()
			targets[t] = true
		}
		if r.opt.batch > 1 {
			cm := &committer{r: r, reqs: make(chan *inTxReq), max: r.opt.batch, wait: r.opt.batchWait}
			r.cmMu.Lock()
			r.commit = cm
			r.cmMu.Unlock()
			committers = append(committers, cm)
			// One transaction at a time per max goroutines of the route.
			for range (r.lanes + r.opt.batch - 1) / r.opt.batch {
				wg.Add(1)
				go func() { defer wg.Done(); cm.run() }()
			}
		}
	}
	used := map[string]bool{}
	for t := range targets {
		for s := range t.sources {
			used[s] = true
		}
	}
	srcPools := map[string]*pgxpool.Pool{}
	for _, s := range w.opt.sources {
		if !used[s.name] {
			continue
		}
		if cfg, err := w.connConfig(s.dsn); err == nil {
			cfg.MaxConns = 1
			if p, err := pgxpool.NewWithConfig(ctx, cfg); err == nil {
				srcPools[s.name] = p
			}
		}
	}
	for t := range targets {
		if t.userPool == nil {
			if cfg, err := w.connConfig(t.dsn); err == nil {
				cfg.MaxConns = int32(min(t.lanes+2, 256))
				if p, err := pgxpool.NewWithConfig(ctx, cfg); err == nil {
					t.mu.Lock()
					t.pool = p
					t.mu.Unlock()
				}
			}
		}
		if t.prune > 0 {
			wg.Add(1)
			go func() { defer wg.Done(); t.pruneLoop(ctx, srcPools) }()
		}
	}
	return func() {
		for _, cm := range committers {
			cm.r.cmMu.Lock()
			cm.r.commit = nil
			close(cm.reqs)
			cm.r.cmMu.Unlock()
		}
		cancel()
		wg.Wait()
		for t := range targets {
			t.mu.Lock()
			if t.pool != nil {
				t.pool.Close()
				t.pool = nil
			}
			t.mu.Unlock()
		}
		for _, p := range srcPools {
			p.Close()
		}
	}
}

// pruneLoop deletes, every prune interval, the records of events that
// cannot be delivered again.
func (t *inTxTarget) pruneLoop(ctx context.Context, srcPools map[string]*pgxpool.Pool) {
	tick := time.NewTicker(t.prune)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		t.mu.Lock()
		var srcs []string
		for s := range t.sources {
			srcs = append(srcs, s)
		}
		t.mu.Unlock()
		for _, src := range srcs {
			if sp := srcPools[src]; sp != nil {
				if _, err := t.pruneOnce(ctx, src, sp); err != nil && ctx.Err() == nil {
					t.w.opt.logger.Warn("pgcdc: cannot prune the inbox; retrying at the next interval", "source", src, "table", t.store.TableName(), "error", err)
				}
			}
		}
	}
}

// pruneOnce prunes the records of one source; it returns how many it
// deleted.
func (t *inTxTarget) pruneOnce(ctx context.Context, source string, src *pgxpool.Pool) (int64, error) {
	q, release, err := t.acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer release()
	stream, err := t.stream(ctx, q, t.w.opt.workerType, source)
	if err != nil {
		return 0, err
	}
	var n int64
	// Logical engine: below the slot's restart_lsn of the round before
	// (see inbox.SlotRestart: a position already on disk).
	restart, ok, err := inbox.SlotRestart(ctx, src, t.w.slotName(source))
	if err != nil {
		return 0, err
	}
	t.mu.Lock()
	bound := min(t.restart[source], restart)
	if ok {
		t.restart[source] = restart
	} else {
		delete(t.restart, source)
	}
	t.mu.Unlock()
	if ok && bound > 0 {
		d, err := t.store.PruneLogical(ctx, q, stream, bound)
		if err != nil {
			return 0, err
		}
		n += d
	}
	// Trigger engine: snapshot the inbox first, then read the event table.
	p, any, err := t.store.BeginTrigger(ctx, q, stream)
	if err != nil || !any {
		return n, err
	}
	xmax, pending, ok, err := inbox.TriggerHorizon(ctx, src, pgident.Qualified(t.w.TriggerSchema(), trigger.EventTable))
	if err != nil || !ok {
		p.Abort(ctx)
		return n, err
	}
	d, err := p.Finish(ctx, xmax, pending)
	return n + d, err
}

// committer runs the calls of a WithInTxBatch route in shared
// transactions.
type committer struct {
	r    *inTxRoute
	reqs chan *inTxReq
	max  int
	wait time.Duration
}

type inTxReq struct {
	ctx    context.Context
	source string
	c      *change.Change
	fn     func(pgx.Tx) error
	done   chan error
}

func (cm *committer) run() {
	group := make([]*inTxReq, 0, cm.max)
	for {
		req, ok := <-cm.reqs
		if !ok {
			return
		}
		group = append(group[:0], req)
		closed := false
	gather:
		for len(group) < cm.max {
			select {
			case req, ok := <-cm.reqs:
				if !ok {
					closed = true
					break gather
				}
				group = append(group, req)
				continue
			default:
			}
			if cm.wait <= 0 {
				break
			}
			timer := time.NewTimer(cm.wait)
			select {
			case req, ok := <-cm.reqs:
				timer.Stop()
				if !ok {
					closed = true
					break gather
				}
				group = append(group, req)
			case <-timer.C:
				break gather
			}
		}
		cm.runGroup(group)
		if closed {
			return
		}
	}
}

// runGroup commits the group's events in one transaction. A failing call
// is answered with its error and the others run again without it; a
// failure of the transaction itself (connection, commit) runs each event
// alone, so only the events at fault fail.
func (cm *committer) runGroup(group []*inTxReq) {
	pending := append([]*inTxReq(nil), group...)
	for len(pending) > 0 {
		bad, err := cm.once(pending)
		if err == nil {
			for _, req := range pending {
				req.done <- nil
			}
			return
		}
		if bad >= 0 {
			pending[bad].done <- err
			pending = append(pending[:bad], pending[bad+1:]...)
			continue
		}
		if len(pending) == 1 {
			pending[0].done <- err
			return
		}
		for _, req := range pending {
			if _, err := cm.once([]*inTxReq{req}); err != nil {
				req.done <- err
			} else {
				req.done <- nil
			}
		}
		return
	}
}

// once runs the group in one transaction. On failure it returns the index
// of the request whose handler failed, or -1 when the transaction failed.
func (cm *committer) once(group []*inTxReq) (bad int, err error) {
	ctx := group[0].ctx
	t, err := cm.r.target(group[0].source)
	if err != nil {
		return -1, err
	}
	q, release, err := t.acquire(ctx)
	if err != nil {
		return -1, err
	}
	defer release()
	tx, err := q.Begin(ctx)
	if err != nil {
		return -1, fmt.Errorf("inbox: begin on the target database: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	evs := make([]inbox.Event, len(group))
	for i, req := range group {
		rt, err := cm.r.target(req.source)
		if err != nil {
			return i, err
		}
		if rt != t {
			return -1, errors.New("inbox: events of different target databases in one group")
		}
		stream, err := t.stream(ctx, q, cm.r.w.opt.workerType, req.source)
		if err != nil {
			return -1, err
		}
		evs[i] = inbox.Event{Stream: stream, EventID: req.c.EventID, LSN: req.c.LSN, XID: req.c.XID}
	}
	// Every record in one round trip, then the handlers in order.
	fresh, err := t.store.RecordAll(ctx, tx, evs)
	if err != nil {
		return -1, err
	}
	for i, req := range group {
		if !fresh[i] {
			cm.r.skipped(req.c)
			continue
		}
		if err := callSafe(req.fn, ownedTx{tx}); err != nil {
			return i, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return -1, fmt.Errorf("inbox: commit on the target database: %w", err)
	}
	return -1, nil
}

// callSafe runs fn, turning a panic into a *PanicError (the committer's
// goroutine must survive a handler's panic).
func callSafe(fn func(pgx.Tx) error, tx pgx.Tx) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return fn(tx)
}
