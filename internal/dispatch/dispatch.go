// Package dispatch runs handlers: each table gets its own set of lanes
// (goroutines), a change goes to the lane picked by its key so the changes of
// one row are handled in stream order, and a failed handler is retried with
// exponential backoff and finally dead-lettered. A change is resolved (its
// position may be confirmed) only after its handler succeeded or it was
// dead-lettered.
package dispatch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
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
}

// Dispatcher owns the lanes of one source.
type Dispatcher struct {
	cfg      Config
	tables   map[string]*table // key: schema + "." + table
	stopping atomic.Bool
	stopped  chan struct{} // closed by Stop: abandon backoffs
	wg       sync.WaitGroup
	started  bool

	queued atomic.Int64  // bytes reserved by queued changes
	space  chan struct{} // signalled when queued bytes are released
}

type table struct {
	route Route
	lanes []chan *change.Change
}

// New returns a dispatcher; add routes, then Start it.
func New(cfg Config) *Dispatcher {
	if cfg.QueueSize < 1 {
		cfg.QueueSize = 4096
	}
	if cfg.MaxQueuedBytes < 1 {
		cfg.MaxQueuedBytes = 64 << 20
	}
	return &Dispatcher{cfg: cfg, tables: map[string]*table{}, stopped: make(chan struct{}), space: make(chan struct{}, 1)}
}

// Add registers the route of a table. It must be called before Start.
func (d *Dispatcher) Add(schema, tableName string, r Route) {
	if r.Lanes < 1 {
		r.Lanes = 1
	}
	t := &table{route: r, lanes: make([]chan *change.Change, r.Lanes)}
	for i := range t.lanes {
		t.lanes[i] = make(chan *change.Change, d.cfg.QueueSize)
	}
	d.tables[schema+"."+tableName] = t
}

// Handles reports whether a route is registered for the table.
func (d *Dispatcher) Handles(schema, tableName string) bool {
	_, ok := d.tables[schema+"."+tableName]
	return ok
}

// HandlesTruncate reports whether the table's route wants TRUNCATE events.
func (d *Dispatcher) HandlesTruncate(schema, tableName string) bool {
	return d.HandlesKey(schema+"."+tableName, true)
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

// Lane returns the channel the change must be sent to, or false when no
// route handles its table (the caller resolves such a change at once).
func (d *Dispatcher) Lane(c *change.Change) (chan<- *change.Change, bool) {
	key := c.RouteKey
	if key == "" {
		key = c.Schema + "." + c.Table
	}
	t, ok := d.tables[key]
	if !ok {
		return nil, false
	}
	return t.lanes[c.PartKey%uint64(len(t.lanes))], true
}

// Send queues a change on its lane. A lane whose handler is slow (or
// retrying) does not hold the others up: changes queue per lane, and Send
// only waits when the lane is full or all queues together hold
// MaxQueuedBytes. While it waits it calls idle every second (the stream
// answers the server meanwhile). It reports false when no route handles
// the change's table.
func (d *Dispatcher) Send(ctx context.Context, c *change.Change, idle func() error) (bool, error) {
	lane, ok := d.Lane(c)
	if !ok {
		return false, nil
	}
	size := int64(len(c.Message)) + 256
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
			select {
			case lane <- c:
				return true, nil
			default:
			}
			d.release(c)
		}
		if tick == nil {
			tick = time.NewTicker(time.Second)
		}
		select {
		case <-d.space:
		case <-tick.C:
			if err := idle(); err != nil {
				return true, err
			}
		case <-ctx.Done():
			return true, ctx.Err()
		}
	}
}

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

// Start launches the lane goroutines. Handlers run with ctx; cancel it to
// abort them.
func (d *Dispatcher) Start(ctx context.Context) {
	d.started = true
	for _, t := range d.tables {
		if t.route.Tx {
			continue // grouped: handled through the transaction route
		}
		for _, lane := range t.lanes {
			d.wg.Add(1)
			go d.run(ctx, t.route, lane)
		}
	}
}

// Stop makes every lane finish the change it is handling and then return,
// leaving queued changes unresolved (they are delivered again later). It
// waits for the lanes or for ctx.
func (d *Dispatcher) Stop(ctx context.Context) error {
	if d.stopping.CompareAndSwap(false, true) {
		close(d.stopped)
		for _, t := range d.tables {
			for _, lane := range t.lanes {
				close(lane)
			}
		}
	}
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

func (d *Dispatcher) run(ctx context.Context, r Route, lane <-chan *change.Change) {
	defer d.wg.Done()
	for c := range lane {
		d.release(c)
		if d.stopping.Load() || ctx.Err() != nil {
			closeTx(c)
			continue // drain without handling; the stream resends these
		}
		resolved := d.handle(ctx, r, c)
		closeTx(c)
		if resolved && c.Pos != nil {
			c.Pos.Done()
		}
	}
}

// handle runs the handler with retries and dead-lettering. It reports
// whether the change was resolved.
func (d *Dispatcher) handle(ctx context.Context, r Route, c *change.Change) bool {
	var err error
	attempts := 0
	for {
		attempts++
		err = Call(ctx, r.Handler, c)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		d.cfg.Logger.Warn("pgcdc: handler failed", "route", r.Name, "event_id", c.EventID,
			"attempt", attempts, "error", err)
		if attempts > r.Retry.MaxRetries && d.cfg.DeadLetter != nil {
			break
		}
		if !d.wait(ctx, r.Retry.Backoff(attempts)) {
			return false
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
		if !d.wait(ctx, r.Retry.Backoff(n)) {
			return false
		}
	}
}

// wait sleeps for dur unless the dispatcher stops or ctx ends first.
func (d *Dispatcher) wait(ctx context.Context, dur time.Duration) bool {
	if dur <= 0 {
		dur = time.Millisecond
	}
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-d.stopped:
		return false
	}
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

// IsPanic reports whether err comes from a panicking handler.
func IsPanic(err error) bool {
	var p *PanicError
	return errors.As(err, &p)
}

func closeTx(c *change.Change) {
	if c.Tx != nil {
		_ = c.Tx.Close()
	}
}
