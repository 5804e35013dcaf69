// Package checkpoint tracks which positions of a change stream may be
// confirmed: a transaction's end position is confirmed only when every change
// of it, and of every transaction before it, has been resolved (handled or
// dead-lettered). It never confirms past an unresolved change.
package checkpoint

import (
	"context"
	"sync"
)

// Tracker keeps the open transactions of one stream in stream order. It is
// safe for concurrent use: the stream goroutine opens and seals
// transactions, handler goroutines resolve their changes.
type Tracker struct {
	mu        sync.Mutex
	queue     []*Txn // open or unresolved transactions, oldest first
	confirmed uint64
	idle      chan struct{} // closed when queue becomes empty; nil while empty
}

// New returns a tracker whose confirmed position starts at start.
func New(start uint64) *Tracker {
	return &Tracker{confirmed: start}
}

// Txn is one transaction of the stream.
type Txn struct {
	t       *Tracker
	end     uint64
	pending int
	sealed  bool
}

// Open starts tracking a new transaction, after all earlier ones.
func (t *Tracker) Open() *Txn {
	t.mu.Lock()
	defer t.mu.Unlock()
	x := &Txn{t: t}
	t.queue = append(t.queue, x)
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	return x
}

// Add counts n more changes of the transaction that must be resolved.
func (x *Txn) Add(n int) {
	x.t.mu.Lock()
	x.pending += n
	x.t.mu.Unlock()
}

// Seal records that the transaction is complete and ends at end: once its
// changes are resolved, end may be confirmed.
func (x *Txn) Seal(end uint64) {
	x.t.mu.Lock()
	x.end = end
	x.sealed = true
	x.t.advance()
	x.t.mu.Unlock()
}

// Done resolves one change of the transaction.
func (x *Txn) Done() {
	x.t.mu.Lock()
	x.pending--
	if x.pending == 0 {
		x.t.advance()
	}
	x.t.mu.Unlock()
}

// advance pops resolved transactions from the head. Callers hold mu.
func (t *Tracker) advance() {
	n := 0
	for _, x := range t.queue {
		if !x.sealed || x.pending > 0 {
			break
		}
		if x.end > t.confirmed {
			t.confirmed = x.end
		}
		n++
	}
	if n == 0 {
		return
	}
	clear(t.queue[:n])
	t.queue = t.queue[n:]
	if len(t.queue) == 0 {
		t.queue = t.queue[:0:0]
		if t.idle != nil {
			close(t.idle)
			t.idle = nil
		}
	}
}

// Drained reports whether every change before now is resolved: x is the
// oldest unresolved transaction and has no change pending.
func (t *Tracker) Drained(x *Txn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue) > 0 && t.queue[0] == x && x.pending == 0
}

// Confirmed is the highest position below which every change is resolved.
func (t *Tracker) Confirmed() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.confirmed
}

// Idle moves the confirmed position to pos when no transaction is open or
// unresolved: the stream has told us that nothing up to pos concerns us (a
// keepalive). It reports whether the position moved.
func (t *Tracker) Idle(pos uint64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.queue) > 0 || pos <= t.confirmed {
		return false
	}
	t.confirmed = pos
	return true
}

// Len reports the number of transactions not yet fully resolved.
func (t *Tracker) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.queue)
}

// Wait blocks until every tracked transaction is resolved or ctx is done.
func (t *Tracker) Wait(ctx context.Context) error {
	t.mu.Lock()
	ch := t.idle
	t.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
