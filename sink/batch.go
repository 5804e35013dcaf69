package sink

import (
	"context"
	"sync"

	"github.com/pgcdc/pgcdc"
)

// BatchOptions configure a Batcher. The zero value is usable.
type BatchOptions struct {
	// MaxBatch is the most events one Deliver carries (default 256).
	MaxBatch int
	// Flights is the number of Deliver calls in flight at once (default
	// 16).
	Flights int
}

// Batcher turns a Sink into a handler that delivers the events of the
// worker's concurrent handler calls together: each call hands its event
// over and waits, and one Deliver carries every event waiting at that
// moment (up to MaxBatch). Give the route many goroutines
// (pgcdc.WithMaxGoroutines, e.g. 256) so many events wait together; the
// worker still never runs two events of one row at once, so per-row
// order holds.
//
// Each handler call returns once its event is durable, with Deliver's
// error if it failed. When a batch fails with a permanent error, its
// events are delivered again one by one, so only the ones that cannot be
// delivered are dead-lettered.
type Batcher struct {
	s    Sink
	max  int
	in   chan batchReq
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

type batchReq struct {
	ctx  context.Context
	msg  Message
	done chan error
}

// NewBatcher starts the goroutines that deliver to s; Close stops them.
func NewBatcher(s Sink, opts BatchOptions) *Batcher {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	if opts.Flights <= 0 {
		opts.Flights = 16
	}
	b := &Batcher{s: s, max: opts.MaxBatch, in: make(chan batchReq), quit: make(chan struct{})}
	for range opts.Flights {
		b.wg.Add(1)
		go b.run()
	}
	return b
}

var donePool = sync.Pool{New: func() any { return make(chan error, 1) }}

// Handler returns the handler delivering through the Batcher.
func (b *Batcher) Handler() pgcdc.HandlerFunc {
	return func(ec *pgcdc.EventContext) error {
		ctx := ec.Context()
		done := donePool.Get().(chan error)
		select {
		case b.in <- batchReq{ctx: ctx, msg: FromEvent(ec), done: done}:
		case <-b.quit:
			donePool.Put(done)
			return ErrClosed
		case <-ctx.Done():
			donePool.Put(done)
			return ctx.Err()
		}
		// The message refers to the event's memory: wait for the answer
		// even if ctx ends (the sink's own timeout bounds Deliver).
		err := <-done
		donePool.Put(done)
		return err
	}
}

func (b *Batcher) run() {
	defer b.wg.Done()
	reqs := make([]batchReq, 0, b.max)
	msgs := make([]Message, 0, b.max)
	for {
		reqs, msgs = reqs[:0], msgs[:0]
		select {
		case r := <-b.in:
			reqs = append(reqs, r)
		case <-b.quit:
			return
		}
	gather:
		for len(reqs) < b.max {
			select {
			case r := <-b.in:
				reqs = append(reqs, r)
			default:
				break gather
			}
		}
		for _, r := range reqs {
			msgs = append(msgs, r.msg)
		}
		err := b.s.Deliver(batchContext(reqs), msgs)
		if err != nil && len(reqs) > 1 && IsPermanent(err) {
			for i, r := range reqs {
				r.done <- b.s.Deliver(r.ctx, msgs[i:i+1])
			}
			continue
		}
		for _, r := range reqs {
			r.done <- err
		}
	}
}

// batchContext is a context done when every request's context is done:
// the batch is abandoned only when all its callers gave up.
func batchContext(reqs []batchReq) context.Context {
	ctx := reqs[0].ctx
	for _, r := range reqs[1:] {
		if r.ctx != ctx {
			return context.WithoutCancel(ctx)
		}
	}
	return ctx
}

// Close stops the Batcher once the deliveries in flight are answered (or
// ctx ends). Handler calls after Close return ErrClosed. It does not close
// the Sink.
func (b *Batcher) Close(ctx context.Context) error {
	b.once.Do(func() { close(b.quit) })
	done := make(chan struct{})
	go func() { b.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
