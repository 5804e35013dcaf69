// Package backoff is the reconnect wait of the capture engines: it starts at
// Min, doubles after each consecutive failure up to Max, and starts again at
// Min after Reset (a session that worked).
package backoff

import (
	"context"
	"time"
)

// Backoff hands out the waits between attempts. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Reset makes the next wait Min again.
func (b *Backoff) Reset() { b.cur = 0 }

// Next returns the wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(b.cur*2, b.Max)
	}
	return b.cur
}

// Sleep waits for d unless ctx ends first; it reports whether it waited
// the whole time.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
