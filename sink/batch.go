package sink

import (
	"context"
	"sync"
	"time"
)

// Batcher groups the messages of concurrent Deliver calls into fewer,
// larger deliveries to the sink it wraps: a batch is sent when it holds
// Size messages or when the first of them has waited Linger, and each call
// returns once the batch holding its messages was delivered.
//
// Per-key order holds as long as the caller, like a pgcdc worker, waits for
// a key's message to be delivered before it hands over the next message of
// that key (one batch never holds two messages of one key then).
//
// When the wrapped sink refuses a batch of several messages with a
// permanent error, each message of it is delivered again on its own, so
// only the messages refused on their own get the permanent error (and are
// dead-lettered); the others are delivered.
type Batcher struct {
	s      Sink
	size   int
	linger time.Duration

	mu      sync.Mutex
	pending *batch
	closed  bool
}

// batch is the messages waiting for one delivery, and its result.
type batch struct {
	msgs  []Message
	from  []int // index of the first message of each call
	errs  []error
	done  chan struct{}
	timer *time.Timer
}

// NewBatcher wraps s. size < 2 means no batching (each call is delivered
// on its own); linger <= 0 means 5 ms.
func NewBatcher(s Sink, size int, linger time.Duration) *Batcher {
	if linger <= 0 {
		linger = 5 * time.Millisecond
	}
	return &Batcher{s: s, size: size, linger: linger}
}

// Deliver adds msgs to the pending batch and waits for its delivery. If
// ctx ends first it returns ctx's error (the messages may still be
// delivered with their batch: at least once).
func (b *Batcher) Deliver(ctx context.Context, msgs []Message) error {
	if b.size < 2 {
		return b.s.Deliver(ctx, msgs)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	bt := b.pending
	if bt == nil {
		bt = &batch{done: make(chan struct{})}
		b.pending = bt
		bt.timer = time.AfterFunc(b.linger, func() { b.flush(bt) })
	}
	call := len(bt.from)
	bt.from = append(bt.from, len(bt.msgs))
	bt.msgs = append(bt.msgs, msgs...)
	full := len(bt.msgs) >= b.size
	if full {
		b.pending = nil
	}
	b.mu.Unlock()
	if full {
		bt.timer.Stop()
		go b.send(bt)
	}
	select {
	case <-bt.done:
		return bt.errs[call]
	case <-ctx.Done():
		return ctx.Err()
	}
}

// flush sends bt when its linger ended, unless it was sent already.
func (b *Batcher) flush(bt *batch) {
	b.mu.Lock()
	if b.pending != bt {
		b.mu.Unlock()
		return
	}
	b.pending = nil
	b.mu.Unlock()
	b.send(bt)
}

// send delivers a batch and records each call's result. The batch is not
// tied to one caller's context: it is delivered for all of them.
func (b *Batcher) send(bt *batch) {
	ctx := context.Background()
	bt.errs = make([]error, len(bt.from))
	err := b.s.Deliver(ctx, bt.msgs)
	if err != nil && IsPermanent(err) && len(bt.from) > 1 {
		for i, from := range bt.from {
			to := len(bt.msgs)
			if i+1 < len(bt.from) {
				to = bt.from[i+1]
			}
			bt.errs[i] = b.s.Deliver(ctx, bt.msgs[from:to])
		}
	} else {
		for i := range bt.errs {
			bt.errs[i] = err
		}
	}
	close(bt.done)
}

// Close delivers the pending batch, then closes the wrapped sink.
func (b *Batcher) Close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	bt := b.pending
	b.pending = nil
	b.mu.Unlock()
	if bt != nil {
		bt.timer.Stop()
		b.send(bt)
	}
	return b.s.Close(ctx)
}
