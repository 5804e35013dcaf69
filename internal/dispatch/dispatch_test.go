package dispatch

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
)

type counter struct{ n atomic.Int32 }

func (c *counter) Done() { c.n.Add(1) }

type memDL struct {
	mu   sync.Mutex
	errs []error
}

func (m *memDL) Store(_ context.Context, _ string, _ *change.Change, _ int, err error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.errs = append(m.errs, err)
	return nil
}

func TestPerKeyOrderAcrossLanes(t *testing.T) {
	var mu sync.Mutex
	last := map[uint64]int{}
	var bad atomic.Bool
	res := &counter{}
	d := New(Config{Logger: slog.New(slog.DiscardHandler)})
	d.Add("public", "t", Route{Name: "t", Lanes: 8, Handler: func(_ context.Context, c *change.Change) error {
		mu.Lock()
		defer mu.Unlock()
		seq := int(c.XID)
		if last[c.PartKey] > seq {
			bad.Store(true)
		}
		last[c.PartKey] = seq
		return nil
	}})
	d.Start(context.Background())
	const n = 5000
	for i := 1; i <= n; i++ {
		c := &change.Change{Schema: "public", Table: "t", PartKey: uint64(i % 37), XID: uint32(i), Pos: res}
		lane, ok := d.Lane(c)
		if !ok {
			t.Fatal("no lane")
		}
		lane <- c
	}
	deadline := time.Now().Add(30 * time.Second)
	for res.n.Load() < n && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if res.n.Load() != n || bad.Load() {
		t.Fatalf("resolved %d/%d, out of order: %v", res.n.Load(), n, bad.Load())
	}
}

func TestRetryThenDeadLetterAndPanic(t *testing.T) {
	dl := &memDL{}
	res := &counter{}
	var calls atomic.Int32
	d := New(Config{Logger: slog.New(slog.DiscardHandler), DeadLetter: dl})
	d.Add("public", "t", Route{Name: "t", Retry: RetryPolicy{MaxRetries: 2, MinBackoff: time.Microsecond, MaxBackoff: time.Millisecond},
		Handler: func(_ context.Context, c *change.Change) error {
			calls.Add(1)
			if c.XID == 1 {
				panic("bad")
			}
			return errors.New("nope")
		}})
	d.Start(context.Background())
	for _, x := range []uint32{1, 2} {
		c := &change.Change{Schema: "public", Table: "t", XID: x, Pos: res, EventID: "e"}
		lane, _ := d.Lane(c)
		lane <- c
	}
	deadline := time.Now().Add(10 * time.Second)
	for res.n.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	_ = d.Stop(context.Background())
	if calls.Load() != 6 || res.n.Load() != 2 || len(dl.errs) != 2 {
		t.Fatalf("calls=%d resolved=%d dead=%d; want 6, 2, 2", calls.Load(), res.n.Load(), len(dl.errs))
	}
	var he *HandlerError
	if !errors.As(dl.errs[0], &he) || !IsPanic(dl.errs[0]) {
		t.Fatalf("first dead letter error %v: want a HandlerError wrapping a PanicError", dl.errs[0])
	}
}

func TestBackoffDoublesAndCaps(t *testing.T) {
	p := RetryPolicy{MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	want := []time.Duration{100e6, 200e6, 400e6, 800e6, 1e9, 1e9}
	for i, w := range want {
		if got := p.Backoff(i + 1); got != w {
			t.Errorf("Backoff(%d) = %s, want %s", i+1, got, w)
		}
	}
}
