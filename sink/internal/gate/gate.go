// Package gate lets a sink's Close wait for the Deliver calls in flight and
// turn away the ones that come after.
package gate

import (
	"context"
	"sync"

	"github.com/pgcdc/pgcdc/sink"
)

// Gate counts calls in flight. The zero value is open.
type Gate struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   chan struct{} // closed when n drops to 0 after Close began
}

// Enter admits a call, or returns sink.ErrClosed once Close began. Every
// successful Enter must be paired with Leave.
func (g *Gate) Enter() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return sink.ErrClosed
	}
	g.n++
	return nil
}

// Leave ends a call admitted by Enter.
func (g *Gate) Leave() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.n--
	if g.n == 0 && g.idle != nil {
		close(g.idle)
		g.idle = nil
	}
}

// Close turns new calls away and waits until the calls in flight left, or
// ctx ended (then it returns ctx.Err()). It reports whether this was the
// first Close.
func (g *Gate) Close(ctx context.Context) (first bool, err error) {
	g.mu.Lock()
	first = !g.closed
	g.closed = true
	if g.n == 0 {
		g.mu.Unlock()
		return first, nil
	}
	if g.idle == nil {
		g.idle = make(chan struct{})
	}
	idle := g.idle
	g.mu.Unlock()
	select {
	case <-idle:
		return first, nil
	case <-ctx.Done():
		return first, ctx.Err()
	}
}
