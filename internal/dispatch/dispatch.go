// Package dispatch runs handlers: each table gets its own set of lanes
// (goroutines), a change goes to the lane picked by its key so the changes of
// one row are handled in stream order, and a failed handler is retried with
// exponential backoff and finally dead-lettered. A change is resolved (its
// position may be confirmed) only after its handler succeeded or it was
// dead-lettered.
//
// A fast handler whose lane is idle runs on the sender's goroutine instead:
// handing one change to a parked goroutine and back costs more CPU than a
// no-op handler, and live streams of small transactions do exactly that for
// every change. A change whose handler fails there moves to its lane for
// the retries, so a failing handler never holds up the other lanes.
package dispatch

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgcdc/pgcdc/internal/backoff"
	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/errs"
)

// Handler handles one change. A returned error (or a panic) is retried.
type Handler func(ctx context.Context, c *change.Change) error

// RetryPolicy says how often and how fast a failed handler is retried.
type RetryPolicy struct {
	MaxRetries int           // retries after the first attempt; 0 means none
	MinBackoff time.Duration // wait before the first retry
	MaxBackoff time.Duration // cap of the doubling wait
}

// Backoff returns the wait before retry number n (1-based).
func (p RetryPolicy) Backoff(n int) time.Duration {
	d := p.MinBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	if p.MaxBackoff > 0 && d > p.MaxBackoff {
		d = p.MaxBackoff
	}
	return d
}

// Route is what handles one table.
type Route struct {
	Name    string // the route as the user wrote it
	Handler Handler
	Lanes   int // concurrent handler goroutines; < 1 means 1
	Retry   RetryPolicy
	// Truncate makes TRUNCATE of the table an event for this route.
	Truncate bool
	// Tx marks a table whose changes are grouped per transaction and handed
	// to the transaction route (TxKey) at commit; Handler is unused.
	Tx bool
}

// TxKey is the dispatcher key of the transaction route.
const TxKey = "\x00.tx"

// Table is one routed table: where its changes come from and what handles
// them.
type Table struct {
	Schema, Table string
	Route         Route
	// Columns, when set, lists the only columns the route's events carry;
	// a capture engine that can have the server leave the others out does.
	// (The handler adapter filters them in any case.)
	Columns []string
	// Exclude lists columns the route's events never carry (see Columns).
	Exclude []string
	// NeedOld: the route needs the full old row of UPDATEs (REPLICA
	// IDENTITY FULL in the logical mode).
	NeedOld bool
	// Snapshot: read the table's existing rows when the route is first
	// served (see logical.SnapshotRequest).
	Snapshot bool
}

// DeadLetter stores a change whose handler kept failing.
type DeadLetter interface {
	Store(ctx context.Context, route string, c *change.Change, attempts int, cause error) error
}

// HandlerError is the error of a handler for one change.
type HandlerError struct {
	Route   string
	EventID string
	Err     error
}

func (e *HandlerError) Error() string {
	return fmt.Sprintf("pgcdc: handler for route %q failed on event %s: %v", e.Route, e.EventID, e.Err)
}

func (e *HandlerError) Unwrap() error { return e.Err }

// PanicError is what a panicking handler returns.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("handler panicked: %v", e.Value) }

// Config configures a Dispatcher.
type Config struct {
	DeadLetter DeadLetter   // where exhausted changes go; nil means retry for ever (capped backoff)
	Logger     *slog.Logger // never nil
	QueueSize  int          // buffered changes per lane; < 1 means 4096
	// MaxQueuedBytes bounds the memory of all queued changes (Send waits
	// when it is reached); < 1 means 64 MiB.
	MaxQueuedBytes int64
	// OnRetry, if set, is called before each retry's backoff (on the lane).
	OnRetry func(route string, c *change.Change, attempt int, err error, wait time.Duration)
}

// Dispatcher owns the lanes of one source.
type Dispatcher struct {
	cfg      Config
	tables   map[string]*table // key: schema + "." + table
	stopping atomic.Bool
	// waits ends when Stop is called or the handlers' context ends:
	// backoffs are abandoned then.
	waits     context.Context
	stopWaits context.CancelFunc
	wg        sync.WaitGroup
	started   bool
	ctx       context.Context // handlers' context (of Start)
	keep      keeper

	queued atomic.Int64  // bytes reserved by queued changes
	space  chan struct{} // signalled when queued bytes are released
}

type table struct {
	route Route
	// lanes are made on first use (see lane), so a route with many lanes
	// and few keys costs only what it uses.
	lanes  []atomic.Pointer[lane]
	laneMu sync.Mutex // serialises making lanes
	// cost is a moving average of the handler's run time in nanoseconds;
	// only handlers cheaper than directMax run on the sender's goroutine.
	cost atomic.Int64
	// timed counts the runs timed so far. A handler runs on the sender's
	// goroutine only once provenRuns runs on its lanes showed it fast: a
	// slow first call must not hold up the stream.
	timed atomic.Int64
	// direct counts the runs on the sender's goroutine (used by Send only).
	direct uint64
}

// provenRuns is how many timed runs a handler needs before it may run on
// the sender's goroutine.
const provenRuns = 4

// directMax is the average run time below which a handler runs on the
// sender's goroutine when its lane is idle. A slower handler would hold up
// the stream (and the other lanes) for longer than a hand-off costs.
const directMax = 50 * time.Microsecond

func (t *table) observe(d time.Duration) {
	if t.timed.Add(1) == 1 {
		t.cost.Store(int64(d))
		return
	}
	old := t.cost.Load()
	t.cost.Store(old + (int64(d)-old)/8)
}

// fast reports whether the handler has shown itself cheap enough to run on
// the sender's goroutine.
func (t *table) fast() bool {
	return t.timed.Load() >= provenRuns && time.Duration(t.cost.Load()) < directMax
}

// lane is one handler goroutine's queue.
type lane struct {
	ch chan item
	// n counts the lane's changes queued or being handled; the sender runs
	// a change itself only while n is 0, so a lane's changes keep their
	// order.
	n atomic.Int64
}

// item is a change queued on a lane, with the attempts made before.
type item struct {
	c     *change.Change
	tried int   // failed attempts already made (on the sender's goroutine)
	err   error // the last attempt's error
}

// New returns a dispatcher; add routes, then Start it.
func New(cfg Config) *Dispatcher {
	if cfg.QueueSize < 1 {
		cfg.QueueSize = 4096
	}
	if cfg.MaxQueuedBytes < 1 {
		cfg.MaxQueuedBytes = 64 << 20
	}
	return &Dispatcher{cfg: cfg, tables: map[string]*table{}, space: make(chan struct{}, 1)}
}

// Add registers the route of a table. It must be called before Start.
func (d *Dispatcher) Add(schema, tableName string, r Route) {
	if r.Lanes < 1 {
		r.Lanes = 1
	}
	d.tables[schema+"."+tableName] = &table{route: r, lanes: make([]atomic.Pointer[lane], r.Lanes)}
}

// IsTx reports whether the change's table is grouped per transaction.
func (d *Dispatcher) IsTx(c *change.Change) bool {
	key := c.RouteKey
	if key == "" {
		key = c.Schema + "." + c.Table
	}
	t, ok := d.tables[key]
	return ok && t.route.Tx
}

// HandlesKey reports whether a route is registered under key
// ("schema.table"); with truncate, whether it also wants TRUNCATE events.
func (d *Dispatcher) HandlesKey(key string, truncate bool) bool {
	t, ok := d.tables[key]
	return ok && (!truncate || t.route.Truncate)
}

// route returns the table and lane of a change, or nil when no route
// handles its table.
func (d *Dispatcher) route(c *change.Change) (*table, *lane) {
	key := c.RouteKey
	if key == "" {
		key = c.Schema + "." + c.Table
	}
	t, ok := d.tables[key]
	if !ok {
		return nil, nil
	}
	return t, d.lane(t, int(c.PartKey%uint64(len(t.lanes))))
}

// lane returns lane i of t, making it (and starting its goroutine) on
// first use. A lane's queue holds QueueSize changes while a table has at
// most 16 lanes; with more, 16×QueueSize shared among them (at least 256
// each): many lanes do not multiply the memory a table's queues take.
func (d *Dispatcher) lane(t *table, i int) *lane {
	if l := t.lanes[i].Load(); l != nil {
		return l
	}
	t.laneMu.Lock()
	defer t.laneMu.Unlock()
	if l := t.lanes[i].Load(); l != nil {
		return l
	}
	size := d.cfg.QueueSize
	if n := len(t.lanes); n > 16 {
		size = max(256, 16*d.cfg.QueueSize/n)
	}
	l := &lane{ch: make(chan item, size)}
	t.lanes[i].Store(l)
	if !t.route.Tx {
		d.wg.Add(1)
		go d.run(d.ctx, t, l)
	}
	return l
}

// Send hands a change to its handler: on the caller's goroutine when the
// handler is fast and its lane idle, else queued on its lane. A lane whose
// handler is slow (or retrying) does not hold the others up: changes queue
// per lane, and Send only waits when the lane is full or all queues
// together hold MaxQueuedBytes. While it waits it calls idle every second;
// while it runs a handler longer than a second, another goroutine calls
// idle every second (the stream answers the server meanwhile), so idle
// must not assume the caller's goroutine. Once ctx has ended nothing is
// handed on: Send returns ctx's error and the change stays unresolved (it
// is delivered again later). It reports false when no route handles the
// change's table. Send must not be called concurrently.
func (d *Dispatcher) Send(ctx context.Context, c *change.Change, idle func() error) (bool, error) {
	t, l := d.route(c)
	if l == nil {
		return false, nil
	}
	if err := ctx.Err(); err != nil {
		return true, err // the sender is stopping: the change stays unresolved
	}
	if !t.route.Tx && t.fast() && l.n.CompareAndSwap(0, 1) {
		return true, d.direct(t, l, c, idle)
	}
	return true, d.enqueue(ctx, l, item{c: c}, idle)
}

// direct runs the handler of a change whose lane is idle (l.n was moved
// from 0 to 1 by the caller) on the caller's goroutine. A failed change
// moves to its lane, which retries it.
func (d *Dispatcher) direct(t *table, l *lane, c *change.Change, idle func() error) error {
	// Every 8th run is timed (the first one too): reading the clock twice
	// per change would cost a tenth of a fast handler's path.
	timed := t.direct%8 == 0
	t.direct++
	var start time.Time
	if timed {
		start = time.Now()
	}
	d.keep.begin(idle)
	err := Call(d.ctx, t.route.Handler, c)
	if timed {
		t.observe(time.Since(start))
	}
	kerr := d.keep.end()
	if err == nil {
		closeTx(c)
		if c.Pos != nil {
			c.Pos.Done()
		}
		l.n.Add(-1)
		return kerr
	}
	if d.ctx.Err() != nil || d.stopping.Load() {
		closeTx(c) // unresolved: delivered again later
		l.n.Add(-1)
		return kerr
	}
	// The lane is empty (n was 0) and stays reserved (n is 1): queue the
	// change as the lane's next, whatever the memory budget says.
	c.Reserved = queuedSize(c)
	d.queued.Add(c.Reserved)
	l.ch <- item{c: c, tried: 1, err: err}
	return kerr
}

// enqueue queues it on lane l, waiting for room.
func (d *Dispatcher) enqueue(ctx context.Context, l *lane, it item, idle func() error) error {
	c := it.c
	size := queuedSize(c)
	var tick *time.Ticker
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	for {
		// The first change always passes, however big, so one huge row
		// cannot wedge the stream.
		if used := d.queued.Load(); used == 0 || used+size <= d.cfg.MaxQueuedBytes {
			d.queued.Add(size)
			c.Reserved = size
			l.n.Add(1)
			select {
			case l.ch <- it:
				return nil
			default:
			}
			l.n.Add(-1)
			d.release(c)
		}
		if tick == nil {
			tick = time.NewTicker(time.Second)
		}
		select {
		case <-d.space:
		case <-tick.C:
			if err := idle(); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// queuedSize is the share of the memory budget a queued change takes.
func queuedSize(c *change.Change) int64 { return int64(len(c.Message)) + 256 }

// release gives back the budget a change held.
func (d *Dispatcher) release(c *change.Change) {
	if c.Reserved == 0 {
		return
	}
	d.queued.Add(-c.Reserved)
	c.Reserved = 0
	select {
	case d.space <- struct{}{}:
	default:
	}
}

// Start readies the dispatcher; lane goroutines start on first use.
// Handlers run with ctx; cancel it to abort them.
func (d *Dispatcher) Start(ctx context.Context) {
	d.started = true
	d.ctx = ctx
	d.waits, d.stopWaits = context.WithCancel(ctx)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.keep.run(d.waits.Done())
	}()
}

// Stop makes every lane finish the change it is handling and then return,
// leaving queued changes unresolved (they are delivered again later). It
// waits for the lanes or for ctx.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.Halt()
	done := make(chan struct{})
	go func() {
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Halt is Stop without the wait: from now on no change is handed to a
// handler that is not already running one. It may be called more than once.
func (d *Dispatcher) Halt() {
	if d.stopping.CompareAndSwap(false, true) {
		if d.stopWaits != nil {
			d.stopWaits()
		}
		for _, t := range d.tables {
			t.laneMu.Lock()
			for i := range t.lanes {
				l := t.lanes[i].Load()
				if l == nil { // never used: a closed lane stops late senders
					l = &lane{ch: make(chan item)}
					t.lanes[i].Store(l)
				}
				close(l.ch)
			}
			t.laneMu.Unlock()
		}
	}
}

func (d *Dispatcher) run(ctx context.Context, t *table, l *lane) {
	defer d.wg.Done()
	for it := range l.ch {
		c := it.c
		d.release(c)
		if d.stopping.Load() || ctx.Err() != nil {
			closeTx(c)
			l.n.Add(-1)
			continue // drain without handling; the stream resends these
		}
		resolved := d.handle(ctx, t, c, it.tried, it.err)
		closeTx(c)
		if resolved && c.Pos != nil {
			c.Pos.Done()
		}
		l.n.Add(-1)
	}
}

// handle runs the handler with retries and dead-lettering, after tried
// failed attempts (the last failing with err). It reports whether the
// change was resolved.
func (d *Dispatcher) handle(ctx context.Context, t *table, c *change.Change, tried int, err error) bool {
	r := t.route
	attempts := tried
	for {
		if attempts > 0 {
			if ctx.Err() != nil {
				return false
			}
			d.cfg.Logger.Warn("pgcdc: handler failed", "route", r.Name, "event_id", c.EventID,
				"attempt", attempts, "error", err)
			if (attempts > r.Retry.MaxRetries || errs.IsPermanent(err)) && d.cfg.DeadLetter != nil {
				break
			}
			if d.cfg.OnRetry != nil {
				d.cfg.OnRetry(r.Name, c, attempts, err, r.Retry.Backoff(attempts))
			}
			if !d.wait(r.Retry.Backoff(attempts)) {
				return false
			}
		}
		attempts++
		start := time.Now()
		err = Call(ctx, r.Handler, c)
		t.observe(time.Since(start))
		if err == nil {
			return true
		}
	}
	herr := &HandlerError{Route: r.Name, EventID: c.EventID, Err: err}
	for n := 1; ; n++ {
		derr := d.cfg.DeadLetter.Store(ctx, r.Name, c, attempts, herr)
		if derr == nil {
			d.cfg.Logger.Error("pgcdc: event dead-lettered", "route", r.Name, "event_id", c.EventID,
				"attempts", attempts, "error", err)
			return true
		}
		d.cfg.Logger.Error("pgcdc: cannot store dead letter; retrying", "route", r.Name,
			"event_id", c.EventID, "error", derr)
		if !d.wait(r.Retry.Backoff(n)) {
			return false
		}
	}
}

// wait sleeps for dur (at least a millisecond) unless the dispatcher stops
// or the handlers' context ends first.
func (d *Dispatcher) wait(dur time.Duration) bool {
	return backoff.Sleep(d.waits, max(dur, time.Millisecond))
}

// Call runs h, turning a panic into a *PanicError.
func Call(ctx context.Context, h Handler, c *change.Change) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return h(ctx, c)
}

func closeTx(c *change.Change) {
	if c.Tx != nil {
		_ = c.Tx.Close()
	}
}

// keeper calls the sender's idle function every second while a handler runs
// on the sender's goroutine for longer than a second, so the stream keeps
// answering the server during a slow handler.
type keeper struct {
	mu      sync.Mutex
	runs    uint64 // direct handler runs begun
	running bool   // run number runs is in progress
	idle    func() error
	err     error // first error of idle during the current run
}

func (k *keeper) begin(idle func() error) {
	k.mu.Lock()
	k.runs++
	k.running, k.idle = true, idle
	k.mu.Unlock()
}

// end returns the error idle reported during the run, if any. Once it
// returns, idle is not called any more.
func (k *keeper) end() error {
	k.mu.Lock()
	err := k.err
	k.running, k.idle, k.err = false, nil, nil
	k.mu.Unlock()
	return err
}

// run calls idle at every tick that finds the run seen at the tick before
// still going: one that has lasted at least a second.
func (k *keeper) run(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var seen uint64 // the run in progress at the last tick; 0 if none
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		k.mu.Lock()
		if k.running && k.runs == seen && k.idle != nil && k.err == nil {
			k.err = k.idle()
		}
		seen = 0
		if k.running {
			seen = k.runs
		}
		k.mu.Unlock()
	}
}
