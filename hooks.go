package pgcdc

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/logical"
	"github.com/pgcdc/pgcdc/internal/observe"
)

// SetHooks registers hooks: values that implement one or more of the Hook*
// interfaces (HookEventHandled, HookRetry, HookDeadLettered,
// HookPositionConfirmed, HookSourceState, HookLagSampled). Each hook is
// called for every report of its kind, in the order given; the option may
// be given more than once. A value that implements none of them is a
// configuration error. Without hooks nothing is reported and nothing is
// measured for them.
//
// The contract: hooks are called synchronously, on the goroutine that
// reports, and must return quickly without blocking. HookEventHandled and
// HookRetry run on the delivery path (after the handler returned, before the
// event counts as resolved): a hook that blocks holds up that handler's lane
// as a slow handler would, and a handler that runs on the stream's goroutine
// (see SetMaxGoroutines) holds up the whole source. HookPositionConfirmed,
// HookSourceState and HookLagSampled run on the source's own goroutines; a
// slow one delays the replies PostgreSQL waits for. Hooks must be safe for
// concurrent use (handlers of different lanes and sources report at the same
// time), must not panic (a panic in HookEventHandled counts as the handler's
// failure and the event is delivered again) and must not call Shutdown. Hand
// anything slow (network I/O, disk) to another goroutine, or count in
// atomics and read them elsewhere, as a Prometheus collector does.
func SetHooks(hooks ...any) OptionFunc {
	return func(o *option) { o.hooks.add(hooks) }
}

// Outcome is how an event was resolved.
type Outcome string

// Outcomes of an event.
const (
	// OutcomeDelivered: the handler returned nil.
	OutcomeDelivered Outcome = "delivered"
	// OutcomeDeadLettered: the handler kept failing (or failed with a
	// Permanent error) and the event was stored in the dead-letter table.
	OutcomeDeadLettered Outcome = "dead_lettered"
	// OutcomeFiltered: the handler returned nil after calling
	// EventContext.Filtered: it chose not to act on the event.
	OutcomeFiltered Outcome = "filtered"
)

// EventInfo identifies the event a hook reports on. It holds no row values.
type EventInfo struct {
	Source     string // source name ("" for the default source)
	Route      string // the route as registered
	Schema     string
	Table      string
	Action     string // ActionInsert, ActionUpdate, ActionDelete, ActionTruncate
	EventID    string
	LSN        string // commit LSN of the transaction ("" in trigger mode)
	CommitTime time.Time
}

func eventInfo(route string, c *change.Change) EventInfo {
	info := EventInfo{Source: c.Source, Route: route, Schema: c.Schema, Table: c.Table,
		Action: c.Action, EventID: c.EventID, CommitTime: c.CommitTime}
	if c.LSN != 0 {
		info.LSN = lsnString(c.LSN)
	}
	return info
}

// HandledEvent reports an event that was resolved: delivered, filtered or
// dead-lettered.
type HandledEvent struct {
	EventInfo
	Outcome Outcome
	// Duration is the run time of the handler call that delivered the
	// event (the last attempt); 0 for dead-lettered events.
	Duration time.Duration
	// Err is the handler's last error of a dead-lettered event; nil
	// otherwise.
	Err error
}

// HookEventHandled is called once per resolved event (and once more for
// each redelivery of the same event). Failed attempts are reported to
// HookRetry; whole transactions of HandleTx are not reported.
type HookEventHandled interface {
	OnEventHandled(HandledEvent)
}

// RetryEvent reports a failed handler call that is about to be retried.
type RetryEvent struct {
	EventInfo
	Attempt int           // the failed attempt (1 for the first call)
	Wait    time.Duration // backoff before the next attempt
	Err     error         // the handler's error
}

// HookRetry is called after a handler failed, before the backoff of its
// retry.
type HookRetry interface {
	OnRetry(RetryEvent)
}

// DeadLetterEvent reports an event stored in the dead-letter table.
type DeadLetterEvent struct {
	EventInfo
	Attempts int   // handler calls made
	Err      error // the handler's last error
}

// HookDeadLettered is called once an event was stored in the dead-letter
// table (the stream then moves on).
type HookDeadLettered interface {
	OnDeadLettered(DeadLetterEvent)
}

// PositionEvent reports a position confirmed to PostgreSQL (logical
// engine): every change below LSN was handled or dead-lettered.
type PositionEvent struct {
	Source string
	LSN    string // "16/B374D848"
	// CommitTime is the commit time of the last transaction at or below
	// LSN (zero when the position moved past changes of unrouted tables
	// only).
	CommitTime time.Time
}

// HookPositionConfirmed is called when the logical engine confirms a new
// position to the server (at most about ten times a second per source). The
// trigger engine has no position: it deletes delivered rows instead.
type HookPositionConfirmed interface {
	OnPositionConfirmed(PositionEvent)
}

// SourceState is what a source is doing.
type SourceState string

// Source states.
const (
	StateConnecting SourceState = "connecting"  // connecting, checking, setting up
	StateStreaming  SourceState = "streaming"   // capturing (logical: reading the slot; trigger: consuming)
	StateStandby    SourceState = "standby"     // another instance reads the slot; this one waits to take over
	StateBackingOff SourceState = "backing_off" // a connection failed; waiting before the next attempt
	StateStopped    SourceState = "stopped"     // not running (before Serve, after it, or after a fatal error)
)

// SourceStateEvent reports a source's change of state.
type SourceStateEvent struct {
	Source string
	Engine string // "logical", "trigger", or "auto" before auto chose
	State  SourceState
	// Err is what caused the state: the connection error before
	// StateBackingOff, the fatal error (or context error) before
	// StateStopped; nil otherwise.
	Err error
}

// HookSourceState is called when a source changes state.
type HookSourceState interface {
	OnSourceState(SourceStateEvent)
}

// LagEvent reports a sample of a source's replication lag.
type LagEvent struct {
	Source string
	Bytes  int64 // WAL the server holds for the slot beyond the confirmed position
}

// HookLagSampled is called with each lag sample of a logical source (every
// second while it streams).
type HookLagSampled interface {
	OnLagSampled(LagEvent)
}

// Filtered marks the event as deliberately not acted on: if the handler
// then returns nil, hooks report it with OutcomeFiltered instead of
// OutcomeDelivered. It changes nothing else.
func (e *EventContext) Filtered() { e.filtered = true }

// hookSet holds the registered hooks, by kind.
type hookSet struct {
	handled   []HookEventHandled
	retry     []HookRetry
	dead      []HookDeadLettered
	confirmed []HookPositionConfirmed
	state     []HookSourceState
	lag       []HookLagSampled
	bad       []error
}

func (h *hookSet) add(hooks []any) {
	for i, x := range hooks {
		n := 0
		if v, ok := x.(HookEventHandled); ok {
			h.handled, n = append(h.handled, v), n+1
		}
		if v, ok := x.(HookRetry); ok {
			h.retry, n = append(h.retry, v), n+1
		}
		if v, ok := x.(HookDeadLettered); ok {
			h.dead, n = append(h.dead, v), n+1
		}
		if v, ok := x.(HookPositionConfirmed); ok {
			h.confirmed, n = append(h.confirmed, v), n+1
		}
		if v, ok := x.(HookSourceState); ok {
			h.state, n = append(h.state, v), n+1
		}
		if v, ok := x.(HookLagSampled); ok {
			h.lag, n = append(h.lag, v), n+1
		}
		if n == 0 {
			h.bad = append(h.bad, fmt.Errorf("%w: SetHooks: argument %d (%T) implements none of the Hook interfaces", ErrConfig, i+1, x))
		}
	}
}

// observers creates the observation point of every source.
func (w *Worker) observers() map[string]*observe.Source {
	h := &w.opt.hooks
	fn := &observe.Funcs{}
	if len(h.state) > 0 {
		fn.State = func(source string, st observe.State, err error) {
			ev := SourceStateEvent{Source: source, Engine: w.engineOf(source), State: SourceState(st), Err: err}
			for _, x := range h.state {
				x.OnSourceState(ev)
			}
		}
	}
	if len(h.confirmed) > 0 {
		fn.Confirmed = func(source string, lsn uint64, t time.Time) {
			ev := PositionEvent{Source: source, LSN: lsnString(lsn), CommitTime: t}
			for _, x := range h.confirmed {
				x.OnPositionConfirmed(ev)
			}
		}
	}
	if len(h.lag) > 0 {
		fn.Lag = func(source string, bytes int64) {
			for _, x := range h.lag {
				x.OnLagSampled(LagEvent{Source: source, Bytes: bytes})
			}
		}
	}
	if len(h.retry) > 0 {
		fn.Retry = func(route string, c *change.Change, attempt int, err error, wait time.Duration) {
			ev := RetryEvent{EventInfo: eventInfo(route, c), Attempt: attempt, Wait: wait, Err: err}
			for _, x := range h.retry {
				x.OnRetry(ev)
			}
		}
	}
	out := make(map[string]*observe.Source, len(w.opt.sources))
	for _, s := range w.opt.sources {
		out[s.name] = observe.New(s.name, fn)
	}
	return out
}

// observed connects a source's configuration to its observer: the engine
// reports to it, and dead letters are counted on their way to the store.
func (w *Worker) observed(cfg logical.Config) logical.Config {
	obs := w.obs[cfg.Name]
	cfg.Observe = obs
	if newDL := cfg.NewDeadLetter; newDL != nil {
		h := &w.opt.hooks
		cfg.NewDeadLetter = func(ctx context.Context, pool *pgxpool.Pool) (dispatch.DeadLetter, error) {
			dl, err := newDL(ctx, pool)
			if err != nil {
				return nil, err
			}
			return observedDeadLetter{DeadLetter: dl, obs: obs, hooks: h}, nil
		}
	}
	return cfg
}

// observedDeadLetter reports every event it stored.
type observedDeadLetter struct {
	dispatch.DeadLetter
	obs   *observe.Source
	hooks *hookSet
}

func (d observedDeadLetter) Store(ctx context.Context, route string, c *change.Change, attempts int, cause error) error {
	if err := d.DeadLetter.Store(ctx, route, c, attempts, cause); err != nil {
		return err
	}
	if d.obs != nil {
		d.obs.DeadLetters.Add(1)
	}
	if len(d.hooks.dead) == 0 && len(d.hooks.handled) == 0 {
		return nil
	}
	var herr *dispatch.HandlerError
	if errors.As(cause, &herr) {
		cause = herr.Err
	}
	info := eventInfo(route, c)
	for _, x := range d.hooks.dead {
		x.OnDeadLettered(DeadLetterEvent{EventInfo: info, Attempts: attempts, Err: cause})
	}
	for _, x := range d.hooks.handled {
		x.OnEventHandled(HandledEvent{EventInfo: info, Outcome: OutcomeDeadLettered, Err: cause})
	}
	return nil
}

// handled reports a handler call that returned (err nil: the event is
// delivered or filtered; failed calls are reported as retries or dead
// letters). start is zero unless HookEventHandled hooks are set.
func (h *hookSet) eventHandled(obs *observe.Source, ec *EventContext, start time.Time, err error) {
	if err != nil {
		return
	}
	if obs != nil {
		obs.Handled.Add(1)
	}
	if len(h.handled) == 0 {
		return
	}
	outcome := OutcomeDelivered
	if ec.filtered {
		outcome = OutcomeFiltered
	}
	ev := HandledEvent{EventInfo: eventInfo(ec.route, ec.c), Outcome: outcome, Duration: time.Since(start)}
	for _, x := range h.handled {
		x.OnEventHandled(ev)
	}
}
