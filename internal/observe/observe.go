// Package observe is where the capture engines and the dispatcher report
// what they do (a source's state, the positions confirmed, lag samples,
// retries) without knowing who listens. The root package turns these
// reports into the user's hooks and into Worker.Status.
//
// Every method is safe on a nil *Source (it does nothing), so engines built
// without an observer (tests, tools) need no checks.
package observe

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
)

// State is what a source is doing.
type State string

// Source states.
const (
	Connecting State = "connecting"  // connecting, checking, setting up
	Streaming  State = "streaming"   // reading changes
	Standby    State = "standby"     // another instance reads the slot; waiting to take over
	BackingOff State = "backing_off" // a connection failed; waiting before the next attempt
	Stopped    State = "stopped"     // Run returned (with the error that stopped it, if any)
)

// Funcs are the callbacks a Source reports to; each may be nil.
type Funcs struct {
	State     func(source string, st State, err error)
	Confirmed func(source string, lsn uint64, commitTime time.Time)
	Lag       func(source string, bytes int64)
	Retry     func(route string, c *change.Change, attempt int, err error, wait time.Duration)
}

// maxMarks bounds the commit times kept for transactions not yet confirmed;
// past it, later transactions are not marked (their confirmation reports the
// commit time of the last marked one before them: lag is overestimated, never
// underestimated).
const maxMarks = 1 << 16

type mark struct {
	end  uint64
	time time.Time
}

// Source collects the reports of one source.
type Source struct {
	name string
	fn   *Funcs

	// Handled and DeadLetters count the events resolved by a handler and
	// by the dead-letter store (updated by the root package).
	Handled, DeadLetters atomic.Int64

	lag atomic.Int64

	mu            sync.Mutex
	state         State
	err           error // last error reported (kept after recovery)
	errAt         time.Time
	confirmed     uint64
	confirmedTime time.Time
	marks         []mark // committed, not yet confirmed transactions, oldest first
}

// New returns the observer of source name reporting to fn (which may be nil).
func New(name string, fn *Funcs) *Source {
	s := &Source{name: name, fn: fn, state: Stopped}
	s.lag.Store(-1)
	return s
}

// SetState records the source's state; err is the error that caused it
// (nil for none).
func (s *Source) SetState(st State, err error) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if st == Connecting && s.state == Standby {
		// A standby source tries to take over at every reconnect
		// interval: it stays a standby until it streams (or fails).
		st = Standby
	}
	changed := s.state != st || err != nil
	s.state = st
	if err != nil {
		s.err, s.errAt = err, time.Now()
	}
	if st == Connecting {
		s.marks = nil // a new session: unconfirmed transactions are sent again
	}
	s.mu.Unlock()
	if changed && s.fn != nil && s.fn.State != nil {
		s.fn.State(s.name, st, err)
	}
}

// Committed records that the transaction ending at end, committed at t,
// was received (its changes are on their way to the handlers).
func (s *Source) Committed(end uint64, t time.Time) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if len(s.marks) < maxMarks && end > s.confirmed {
		s.marks = append(s.marks, mark{end, t})
	}
	s.mu.Unlock()
}

// Confirmed records that the position lsn was confirmed to the server.
func (s *Source) Confirmed(lsn uint64) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if lsn <= s.confirmed {
		s.mu.Unlock()
		return
	}
	s.confirmed = lsn
	n := 0
	for n < len(s.marks) && s.marks[n].end <= lsn {
		s.confirmedTime = s.marks[n].time
		n++
	}
	s.marks = s.marks[n:]
	t := s.confirmedTime
	s.mu.Unlock()
	if s.fn != nil && s.fn.Confirmed != nil {
		s.fn.Confirmed(s.name, lsn, t)
	}
}

// Lag records a sample of the WAL bytes the server holds for the source.
func (s *Source) Lag(bytes int64) {
	if s == nil {
		return
	}
	s.lag.Store(bytes)
	if s.fn != nil && s.fn.Lag != nil {
		s.fn.Lag(s.name, bytes)
	}
}

// Retry reports that the handler of route failed attempt on c and will run
// again after wait.
func (s *Source) Retry(route string, c *change.Change, attempt int, err error, wait time.Duration) {
	if s == nil || s.fn == nil || s.fn.Retry == nil {
		return
	}
	s.fn.Retry(route, c, attempt, err, wait)
}

// Snapshot is the state of a source at one moment.
type Snapshot struct {
	State         State
	Err           error
	ErrAt         time.Time
	Confirmed     uint64    // last position confirmed to the server (0: none yet)
	ConfirmedTime time.Time // commit time of the last confirmed transaction
	LagBytes      int64     // -1: not sampled
	// LagSeconds is how long ago the oldest transaction received and not
	// yet confirmed committed; 0 when every transaction received is
	// confirmed. (Under steady load this is now minus the commit time of
	// the last confirmed transaction; unlike that figure it does not jump
	// when the first change after an idle spell arrives.)
	LagSeconds  float64
	Handled     int64
	DeadLetters int64
}

// Snapshot returns the source's state at now.
func (s *Source) Snapshot(now time.Time) Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{
		State: s.state, Err: s.err, ErrAt: s.errAt, Confirmed: s.confirmed, ConfirmedTime: s.confirmedTime,
		LagBytes: s.lag.Load(), Handled: s.Handled.Load(), DeadLetters: s.DeadLetters.Load(),
	}
	if len(s.marks) > 0 {
		snap.LagSeconds = max(0, now.Sub(s.marks[0].time).Seconds())
	}
	return snap
}
