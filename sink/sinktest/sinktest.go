// Package sinktest is the conformance suite every pgcdc sink passes, in
// the manner of testing/slogtest: a sink plugs into it with a Harness (how
// to open it, how to read back what reached the broker) and gets its
// at-least-once tests.
//
// The suite checks that
//   - N events over K row keys all arrive, each key's events in order;
//   - with the broker unreachable for a few seconds mid-stream, Deliver
//     fails with retryable errors, and retries lose nothing;
//   - a delivery that cannot succeed fails with a sink.IsPermanent error,
//     and the sink keeps working;
//   - after Close mid-stream, a new sink delivers the rest and nothing
//     confirmed is missing;
//   - bad settings and an unreachable broker make New fail with a clear
//     error.
//
// The broker is made unreachable through a TCP proxy (Proxy) in front of
// it, so the machine's shared servers are never stopped.
package sinktest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink"
)

// Harness plugs a sink into the suite.
type Harness struct {
	// Addr is the broker's TCP address. The suite dials it through a
	// Proxy and gives New the proxy's address.
	Addr string
	// New opens a sink that reaches the broker at addr. The suite closes
	// it. New must fail when nothing answers at addr.
	New func(ctx context.Context, t *testing.T, addr string) (sink.Sink, error)
	// Prepare, if set, readies the broker for events of table before any
	// is delivered (a queue bound to its routing key, a topic, ...) and
	// registers the clean-up with t.Cleanup.
	Prepare func(t *testing.T, table string)
	// Read returns everything that reached the broker for table so far,
	// each row key's messages in the broker's order. Messages carry
	// Schema "public" and Source "sinktest".
	Read func(t *testing.T, table string) []Received
	// Permanent prepares the broker so that delivering the returned
	// messages of table cannot succeed, however often it is tried (an
	// unroutable message, a record over the size limit, a key of the
	// wrong type). Deliver must report a sink.IsPermanent error.
	Permanent func(t *testing.T, table string) []sink.Message
	// BadConfigs are settings New must refuse.
	BadConfigs []BadConfig
}

// Received is one message read back from the broker.
type Received struct {
	EventID string
	Payload []byte
}

// BadConfig is a setting the sink must refuse.
type BadConfig struct {
	// Name labels the subtest.
	Name string
	// New opens the sink with the bad setting.
	New func(ctx context.Context) (sink.Sink, error)
	// Want is a text the error must contain (the setting's name, say).
	Want string
}

// Run runs the suite as subtests of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Addr == "" || h.New == nil || h.Read == nil || h.Permanent == nil {
		t.Fatal("sinktest: Harness needs Addr, New, Read and Permanent")
	}
	s := &suite{h: h}
	t.Run("OrderPerKey", s.orderPerKey)
	t.Run("Outage", s.outage)
	t.Run("Permanent", s.permanent)
	t.Run("ShutdownMidStream", s.shutdown)
	t.Run("Unreachable", s.unreachable)
	t.Run("BadConfig", s.badConfig)
}

type suite struct{ h Harness }

var tableSeq atomic.Int64

// table returns a table name unique to this test run.
func table(t *testing.T) string {
	name := strings.ToLower(t.Name())
	name = name[strings.LastIndexByte(name, '/')+1:]
	return fmt.Sprintf("st_%s_%d_%d", name, time.Now().UnixNano()%1_000_000_000, tableSeq.Add(1))
}

// Messages returns n messages of table spread over k row keys (message i
// has key i%k); the payload is a JSON object holding key and seq (i).
func Messages(table string, n, k int) []sink.Message {
	msgs := make([]sink.Message, n)
	for i := range msgs {
		key := i % k
		id := fmt.Sprintf("%s-%d", table, i)
		msgs[i] = sink.Message{
			EventID: id,
			Source:  "sinktest",
			Schema:  "public",
			Table:   table,
			Action:  "INSERT",
			LSN:     fmt.Sprintf("0/%X", 0x1000+i),
			RowKey:  uint64(key)*0x9E3779B97F4A7C15 + 1,
			Payload: fmt.Appendf(nil, `{"event_id":%q,"key":%d,"seq":%d,"table":%q}`, id, key, i, table),
		}
	}
	return msgs
}

func (s *suite) open(ctx context.Context, t *testing.T, addr string) sink.Sink {
	t.Helper()
	sk, err := s.h.New(ctx, t, addr)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return sk
}

func closeSink(t *testing.T, sk sink.Sink) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := sk.Close(ctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// groups splits msgs by key into g groups (key%g), each in order: a group
// is what one worker goroutine would deliver.
func groups(msgs []sink.Message, g int) [][]sink.Message {
	out := make([][]sink.Message, g)
	for _, m := range msgs {
		var p struct{ Key int }
		_ = json.Unmarshal(m.Payload, &p)
		out[p.Key%g] = append(out[p.Key%g], m)
	}
	return out
}

// batchSizes cycles through single events and batches of several sizes.
var batchSizes = []int{1, 7, 1, 50, 3, 128, 1, 20}

// check waits until every one of want reached the broker, then checks the
// payloads and the per-key order (of first arrivals; a redelivery may
// repeat messages). It returns the number of duplicates.
func (s *suite) check(t *testing.T, tbl string, want []sink.Message) int {
	t.Helper()
	byID := make(map[string]sink.Message, len(want))
	for _, m := range want {
		byID[m.EventID] = m
	}
	deadline := time.Now().Add(60 * time.Second)
	var got []Received
	for {
		got = s.h.Read(t, tbl)
		seen := map[string]bool{}
		for _, r := range got {
			if _, ok := byID[r.EventID]; ok {
				seen[r.EventID] = true
			}
		}
		if len(seen) >= len(want) {
			break
		}
		if time.Now().After(deadline) {
			var missing []string
			for _, m := range want {
				if !seen[m.EventID] {
					missing = append(missing, m.EventID)
				}
			}
			t.Fatalf("%d of %d events never reached the broker (first missing: %v)", len(missing), len(want), missing[:min(5, len(missing))])
		}
		time.Sleep(50 * time.Millisecond) // polling the broker: there is nothing to wait on
	}
	first := map[string]bool{}
	last := map[int]int{}
	dups := 0
	for _, r := range got {
		m, ok := byID[r.EventID]
		if !ok {
			t.Errorf("unexpected message %q on the broker: %s", r.EventID, r.Payload)
			continue
		}
		if string(r.Payload) != string(m.Payload) {
			t.Errorf("event %s: payload %s, want %s", r.EventID, r.Payload, m.Payload)
		}
		if first[r.EventID] {
			dups++
			continue
		}
		first[r.EventID] = true
		var p struct{ Key, Seq int }
		if err := json.Unmarshal(m.Payload, &p); err != nil {
			t.Fatal(err)
		}
		if prev, ok := last[p.Key]; ok && p.Seq < prev {
			t.Errorf("key %d: seq %d arrived after seq %d", p.Key, p.Seq, prev)
		}
		last[p.Key] = p.Seq
	}
	return dups
}

func (s *suite) orderPerKey(t *testing.T) {
	const n, k, g = 3000, 16, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sk := s.open(ctx, t, s.h.Addr)
	defer closeSink(t, sk)
	tbl := table(t)
	if s.h.Prepare != nil {
		s.h.Prepare(t, tbl)
	}
	msgs := Messages(tbl, n, k)
	var wg sync.WaitGroup
	errc := make(chan error, g)
	for gi, grp := range groups(msgs, g) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, b := 0, gi; i < len(grp); b++ {
				end := min(len(grp), i+batchSizes[b%len(batchSizes)])
				if err := sk.Deliver(ctx, grp[i:end]); err != nil {
					errc <- fmt.Errorf("deliver of %d messages: %w", end-i, err)
					return
				}
				i = end
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if dups := s.check(t, tbl, msgs); dups != 0 {
		t.Errorf("%d duplicates without any fault", dups)
	}
}

// deliverRetrying delivers grp like a worker would: each batch until it
// succeeds, every attempt bounded by a timeout, failures recorded.
func deliverRetrying(ctx context.Context, sk sink.Sink, grp []sink.Message, sent *atomic.Int64, onErr func(error) bool) error {
	for i, b := 0, 0; i < len(grp); b++ {
		end := min(len(grp), i+batchSizes[b%len(batchSizes)])
		for {
			actx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := sk.Deliver(actx, grp[i:end])
			cancel()
			if err == nil {
				break
			}
			if !onErr(err) {
				return err
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("gave up retrying: %w (last error: %v)", ctx.Err(), err)
			case <-time.After(100 * time.Millisecond): // retry backoff
			}
		}
		sent.Add(int64(end - i))
		i = end
	}
	return nil
}

func (s *suite) outage(t *testing.T) {
	const n, k, g = 1500, 8, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := NewProxy(t, s.h.Addr)
	sk := s.open(ctx, t, p.Addr())
	defer closeSink(t, sk)
	tbl := table(t)
	if s.h.Prepare != nil {
		s.h.Prepare(t, tbl)
	}
	msgs := Messages(tbl, n, k)

	var (
		mu      sync.Mutex
		errs    []error
		cutOnce sync.Once
		cutDone = make(chan struct{})
		sent    atomic.Int64
	)
	onErr := func(err error) bool {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		return !sink.IsPermanent(err)
	}
	var wg sync.WaitGroup
	errc := make(chan error, g)
	for _, grp := range groups(msgs, g) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Deliver the first third, then wait for the outage to
			// start, so it happens mid-stream whatever the speed.
			third := len(grp) / 3
			if err := deliverRetrying(ctx, sk, grp[:third], &sent, onErr); err != nil {
				errc <- err
				return
			}
			cutOnce.Do(func() {
				p.Cut()
				t.Logf("broker cut off after %d events", sent.Load())
				go func() {
					defer close(cutDone)
					// Unreachable for 3 s.
					select {
					case <-time.After(3 * time.Second):
					case <-ctx.Done():
					}
					p.Restore()
					t.Logf("broker reachable again")
				}()
			})
			if err := deliverRetrying(ctx, sk, grp[third:], &sent, onErr); err != nil {
				errc <- err
			}
		}()
	}
	wg.Wait()
	<-cutDone
	close(errc)
	for err := range errc {
		t.Fatalf("delivery failed for good: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) == 0 {
		t.Fatal("no Deliver failed while the broker was unreachable: the sink does not wait for the broker's acknowledgement")
	}
	for _, err := range errs {
		if sink.IsPermanent(err) {
			t.Errorf("an outage gave a permanent error: %v", err)
		}
		if err.Error() == "" {
			t.Errorf("empty error message")
		}
	}
	t.Logf("%d failed attempts during the outage, e.g.: %v", len(errs), errs[0])
	dups := s.check(t, tbl, msgs)
	t.Logf("all %d events arrived, %d duplicates", n, dups)
}

func (s *suite) permanent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sk := s.open(ctx, t, s.h.Addr)
	defer closeSink(t, sk)
	bad := s.h.Permanent(t, table(t))
	err := sk.Deliver(ctx, bad)
	if err == nil {
		t.Fatal("Deliver succeeded; want a permanent error")
	}
	if !sink.IsPermanent(err) {
		t.Fatalf("Deliver: %v; want an error marked permanent (sink.Permanent)", err)
	}
	t.Logf("permanent error: %v", err)

	// The sink still delivers afterwards.
	tbl := table(t)
	if s.h.Prepare != nil {
		s.h.Prepare(t, tbl)
	}
	good := Messages(tbl, 10, 2)
	if err := sk.Deliver(ctx, good); err != nil {
		t.Fatalf("Deliver after a permanent error: %v", err)
	}
	s.check(t, tbl, good)
}

func (s *suite) shutdown(t *testing.T) {
	const n, k, g = 2000, 8, 4
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sk := s.open(ctx, t, s.h.Addr)
	tbl := table(t)
	if s.h.Prepare != nil {
		s.h.Prepare(t, tbl)
	}
	msgs := Messages(tbl, n, k)
	grps := groups(msgs, g)
	next := make([]int, g) // first unconfirmed index of each group
	var (
		sent      atomic.Int64
		closeOnce sync.Once
		closed    = make(chan error, 1)
		wg        sync.WaitGroup
	)
	for gi, grp := range grps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := 0; next[gi] < len(grp); b++ {
				if sent.Load() >= n/3 {
					closeOnce.Do(func() {
						go func() {
							cctx, c := context.WithTimeout(ctx, 20*time.Second)
							defer c()
							closed <- sk.Close(cctx)
						}()
					})
				}
				end := min(len(grp), next[gi]+batchSizes[b%len(batchSizes)])
				if err := sk.Deliver(ctx, grp[next[gi]:end]); err != nil {
					if sink.IsPermanent(err) {
						t.Errorf("Deliver during Close gave a permanent error: %v", err)
					}
					return
				}
				sent.Add(int64(end - next[gi]))
				next[gi] = end
			}
		}()
	}
	wg.Wait()
	closeOnce.Do(func() { closed <- sk.Close(ctx) })
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := sk.Deliver(ctx, msgs[:1]); !errors.Is(err, sink.ErrClosed) {
		t.Errorf("Deliver after Close: %v, want sink.ErrClosed", err)
	}
	t.Logf("%d of %d events confirmed before Close", sent.Load(), n)

	sk2 := s.open(ctx, t, s.h.Addr)
	defer closeSink(t, sk2)
	for gi, grp := range grps {
		if err := sk2.Deliver(ctx, grp[next[gi]:]); err != nil {
			t.Fatalf("new sink: Deliver: %v", err)
		}
	}
	dups := s.check(t, tbl, msgs)
	t.Logf("all %d events arrived after the restart, %d duplicates", n, dups)
}

func (s *suite) unreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	sk, err := s.h.New(ctx, t, addr)
	if err == nil {
		closeSink(t, sk)
		t.Fatalf("New with no broker at %s succeeded", addr)
	}
	if ctx.Err() != nil {
		t.Fatalf("New took %s: it should give up before its context ends", time.Since(start))
	}
	_, port, _ := net.SplitHostPort(addr)
	if !strings.Contains(err.Error(), port) {
		t.Errorf("New: %v; the error should name the address %s", err, addr)
	}
	t.Logf("New: %v (after %s)", err, time.Since(start).Round(time.Millisecond))
}

func (s *suite) badConfig(t *testing.T) {
	if len(s.h.BadConfigs) == 0 {
		t.Fatal("Harness.BadConfigs is empty: give at least one setting New must refuse")
	}
	for _, bc := range s.h.BadConfigs {
		t.Run(bc.Name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			sk, err := bc.New(ctx)
			if err == nil {
				closeSink(t, sk)
				t.Fatalf("New succeeded; want an error containing %q", bc.Want)
			}
			if !strings.Contains(err.Error(), bc.Want) {
				t.Errorf("New: %v; want an error containing %q", err, bc.Want)
			}
			t.Logf("New: %v", err)
		})
	}
}
