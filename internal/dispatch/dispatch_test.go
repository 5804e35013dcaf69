package dispatch

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
)

type counter struct{ n atomic.Int32 }

func noIdle() error { return nil }

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
		if ok, err := d.Send(context.Background(), c, noIdle); !ok || err != nil {
			t.Fatalf("Send: routed %v, %v", ok, err)
		}
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
	// Fake time (testing/synctest): the backoffs and the keeper's
	// one-second tick pass at once.
	synctest.Test(t, func(t *testing.T) {
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
			if _, err := d.Send(context.Background(), c, noIdle); err != nil {
				t.Fatal(err)
			}
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
		if !errors.As(dl.errs[0], &he) || !errors.As(dl.errs[0], new(*PanicError)) {
			t.Fatalf("first dead letter error %v: want a HandlerError wrapping a PanicError", dl.errs[0])
		}
	})
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

func newTestDispatcher(t *testing.T, r Route) *Dispatcher {
	t.Helper()
	d := New(Config{Logger: slog.New(slog.DiscardHandler)})
	d.Add("public", "t", r)
	d.Start(context.Background())
	t.Cleanup(func() { _ = d.Stop(context.Background()) })
	return d
}

func change1(key uint64, res *counter) *change.Change {
	return &change.Change{Schema: "public", Table: "t", PartKey: key, Pos: res, EventID: "e"}
}

// prove sends provenRuns changes, which run on the lanes, and waits until
// they are resolved: the handler is then known to be fast.
func prove(t *testing.T, d *Dispatcher, res *counter) {
	t.Helper()
	for range provenRuns {
		if _, err := d.Send(context.Background(), change1(1, res), noIdle); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return res.n.Load() == provenRuns })
	res.n.Store(0)
}

// A fast handler whose lane is idle runs on the sender's goroutine: the
// change is resolved when Send returns.
func TestFastHandlerRunsOnSender(t *testing.T) {
	res := &counter{}
	d := newTestDispatcher(t, Route{Name: "t", Handler: func(context.Context, *change.Change) error { return nil }})
	prove(t, d, res)
	for i := 1; i <= 100; i++ {
		if _, err := d.Send(context.Background(), change1(1, res), noIdle); err != nil {
			t.Fatal(err)
		}
		if got := res.n.Load(); got != int32(i) {
			t.Fatalf("after Send %d: %d resolved; want the change handled on the sender", i, got)
		}
	}
}

// A handler's first calls run on its lanes: a slow first call of one table
// does not hold up the sender (and so the other tables).
func TestFirstCallsRunOnLanes(t *testing.T) {
	res := &counter{}
	release := make(chan struct{})
	d := New(Config{Logger: slog.New(slog.DiscardHandler)})
	d.Add("public", "a", Route{Name: "a", Handler: func(context.Context, *change.Change) error {
		<-release
		return nil
	}})
	d.Add("public", "b", Route{Name: "b", Handler: func(context.Context, *change.Change) error { return nil }})
	d.Start(context.Background())
	defer func() { _ = d.Stop(context.Background()) }()
	defer close(release)
	done := make(chan error, 1)
	go func() {
		_, err := d.Send(context.Background(), &change.Change{Schema: "public", Table: "a", Pos: res}, noIdle)
		if err == nil {
			_, err = d.Send(context.Background(), &change.Change{Schema: "public", Table: "b", Pos: res}, noIdle)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a blocking first call of table a held up the sender")
	}
	waitFor(t, func() bool { return res.n.Load() == 1 }) // b's change, handled on its lane
}

// A slow handler is not run on the sender: once seen to be slow, Send only
// queues.
func TestSlowHandlerMovesToLanes(t *testing.T) {
	// Fake time (testing/synctest): the backoffs and the keeper's
	// one-second tick pass at once.
	synctest.Test(t, func(t *testing.T) {
		res := &counter{}
		release := make(chan struct{})
		var calls atomic.Int32
		d := newTestDispatcher(t, Route{Name: "t", Handler: func(context.Context, *change.Change) error {
			if calls.Add(1) == 1 {
				time.Sleep(5 * time.Millisecond) // slow: later changes go to the lane
				return nil
			}
			<-release
			return nil
		}})
		defer close(release)
		if _, err := d.Send(context.Background(), change1(1, res), noIdle); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() {
			_, err := d.Send(context.Background(), change1(1, res), noIdle)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Send ran a slow handler on the sender's goroutine")
		}
	})
}

// A change failing on the sender's goroutine moves to its lane for the
// retries; other lanes keep flowing and the lane keeps its order.
func TestFailingDirectHandlerDoesNotBlock(t *testing.T) {
	// Fake time (testing/synctest): the backoffs and the keeper's
	// one-second tick pass at once.
	synctest.Test(t, func(t *testing.T) {
		res := &counter{}
		var mu sync.Mutex
		var order []uint32
		fail := atomic.Bool{}
		fail.Store(true)
		d := newTestDispatcher(t, Route{Name: "t", Lanes: 2,
			Retry: RetryPolicy{MaxRetries: 1000, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond},
			Handler: func(_ context.Context, c *change.Change) error {
				if c.PartKey == 0 && c.XID == 1 && fail.Load() {
					return errors.New("not yet")
				}
				mu.Lock()
				order = append(order, c.XID)
				mu.Unlock()
				return nil
			}})
		send := func(key uint64, xid uint32) {
			c := change1(key, res)
			c.XID = xid
			if _, err := d.Send(context.Background(), c, noIdle); err != nil {
				t.Fatal(err)
			}
		}
		send(0, 1) // fails, moves to lane 0
		send(0, 2) // must wait behind 1
		for i := uint32(10); i < 20; i++ {
			send(1, i) // lane 1 flows
		}
		waitFor(t, func() bool { return res.n.Load() == 10 })
		fail.Store(false)
		waitFor(t, func() bool { return res.n.Load() == 12 })
		mu.Lock()
		defer mu.Unlock()
		i1, i2 := slices.Index(order, 1), slices.Index(order, 2)
		if i1 < 0 || i2 < i1 {
			t.Fatalf("order %v: change 2 overtook change 1 of the same key", order)
		}
	})
}

// While a handler runs long on the sender's goroutine, idle is still
// called (from another goroutine) so the stream answers the server.
func TestIdleCalledDuringLongDirectHandler(t *testing.T) {
	// Fake time (testing/synctest): the backoffs and the keeper's
	// one-second tick pass at once.
	synctest.Test(t, func(t *testing.T) {
		res := &counter{}
		called := make(chan struct{})
		var once sync.Once
		var calls atomic.Int32
		d := newTestDispatcher(t, Route{Name: "t", Handler: func(ctx context.Context, _ *change.Change) error {
			if calls.Add(1) <= provenRuns {
				return nil
			}
			select {
			case <-called:
			case <-time.After(30 * time.Second):
			}
			return nil
		}})
		prove(t, d, res)
		start := time.Now()
		if _, err := d.Send(context.Background(), change1(1, res), func() error {
			once.Do(func() { close(called) })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if res.n.Load() != 1 {
			t.Fatal("the change did not run on the sender")
		}
		if time.Since(start) >= 30*time.Second {
			t.Fatal("idle was not called while the handler ran")
		}
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
