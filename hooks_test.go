package pgcdc_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// hookRecorder implements every hook and keeps what it was told.
type hookRecorder struct {
	mu        sync.Mutex
	handled   []pgcdc.HandledEvent
	retries   []pgcdc.RetryEvent
	dead      []pgcdc.DeadLetterEvent
	positions []pgcdc.PositionEvent
	states    []pgcdc.SourceStateEvent
	lags      []pgcdc.LagEvent
	changed   chan struct{}
}

func newHookRecorder() *hookRecorder { return &hookRecorder{changed: make(chan struct{})} }

func (h *hookRecorder) note(f func()) {
	h.mu.Lock()
	f()
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

func (h *hookRecorder) OnEventHandled(e pgcdc.HandledEvent) {
	h.note(func() { h.handled = append(h.handled, e) })
}
func (h *hookRecorder) OnRetry(e pgcdc.RetryEvent) {
	h.note(func() { h.retries = append(h.retries, e) })
}
func (h *hookRecorder) OnDeadLettered(e pgcdc.DeadLetterEvent) {
	h.note(func() { h.dead = append(h.dead, e) })
}
func (h *hookRecorder) OnPositionConfirmed(e pgcdc.PositionEvent) {
	h.note(func() { h.positions = append(h.positions, e) })
}
func (h *hookRecorder) OnSourceState(e pgcdc.SourceStateEvent) {
	h.note(func() { h.states = append(h.states, e) })
}
func (h *hookRecorder) OnLagSampled(e pgcdc.LagEvent) { h.note(func() { h.lags = append(h.lags, e) }) }

// waitFor waits until ok holds (called under the lock).
func (h *hookRecorder) waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		done, ch := ok(), h.changed
		h.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestHooksAndStatus(t *testing.T) { forEachMode(t, testHooksAndStatus) }

func testHooksAndStatus(t *testing.T, m mode) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE jobs (id int PRIMARY KEY, note text)`)
	hk := newHookRecorder()
	w := m.newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxRetries(2),
		pgcdc.SetRetryBackoff(time.Millisecond, 2*time.Millisecond), pgcdc.SetHooks(hk))

	before := w.Status(context.Background())
	if len(before) != 1 || before[0].State != pgcdc.StateStopped || before[0].EventsHandled != 0 || before[0].Engine != m.name {
		t.Fatalf("status before Serve = %+v", before)
	}

	failures := map[int]int{}
	var fmu sync.Mutex
	w.Handle("jobs", func(ec *pgcdc.EventContext) error {
		var row struct {
			ID   int
			Note string
		}
		_ = ec.Event().Data.DecodeNew(&row)
		switch row.Note {
		case "skip":
			ec.Filtered()
		case "flaky": // fails once, then succeeds
			fmu.Lock()
			defer fmu.Unlock()
			failures[row.ID]++
			if failures[row.ID] == 1 {
				return errors.New("transient")
			}
		case "poison":
			return pgcdc.Permanent(errors.New("cannot process"))
		}
		return nil
	})
	r := serve(t, w)
	m.ready(t, dsn, defaultSlot, 1)
	hk.waitFor(t, "state streaming", func() bool {
		return len(hk.states) > 0 && hk.states[len(hk.states)-1].State == pgcdc.StateStreaming
	})

	exec(t, dsn, `INSERT INTO jobs VALUES (1, 'ok'), (2, 'skip'), (3, 'flaky'), (4, 'poison')`)
	hk.waitFor(t, "4 resolved events", func() bool { return len(hk.handled) >= 4 })
	m.settled(t, dsn, defaultSlot)

	hk.mu.Lock()
	byID := map[string]pgcdc.HandledEvent{}
	for _, e := range hk.handled {
		byID[e.EventID] = e
		if e.Source != "" || e.Schema != "public" || e.Table != "jobs" || e.Action != pgcdc.ActionInsert || e.Route != "jobs" {
			t.Errorf("handled event has wrong identity: %+v", e)
		}
		if e.Outcome != pgcdc.OutcomeDeadLettered && e.Duration <= 0 {
			t.Errorf("handled event without a duration: %+v", e)
		}
	}
	counts := map[pgcdc.Outcome]int{}
	for _, e := range byID {
		counts[e.Outcome]++
	}
	if len(hk.handled) != 4 || counts[pgcdc.OutcomeDelivered] != 2 || counts[pgcdc.OutcomeFiltered] != 1 || counts[pgcdc.OutcomeDeadLettered] != 1 {
		t.Errorf("outcomes = %v over %d reports, want 2 delivered, 1 filtered, 1 dead_lettered", counts, len(hk.handled))
	}
	if len(hk.retries) != 1 || hk.retries[0].Attempt != 1 || hk.retries[0].Err == nil || hk.retries[0].Err.Error() != "transient" {
		t.Errorf("retries = %+v, want one of attempt 1 with error transient", hk.retries)
	}
	if len(hk.dead) != 1 || hk.dead[0].Attempts != 1 || !strings.Contains(hk.dead[0].Err.Error(), "cannot process") {
		t.Errorf("dead letters = %+v, want one after 1 attempt with its error", hk.dead)
	}
	if m.name == "logical" {
		if len(hk.positions) == 0 {
			t.Error("no position confirmed was reported")
		} else if p := hk.positions[len(hk.positions)-1]; p.LSN == "" || p.CommitTime.IsZero() {
			t.Errorf("last position = %+v, want an LSN and a commit time", p)
		}
	}
	hk.mu.Unlock()

	if m.name == "logical" {
		hk.waitFor(t, "a lag sample", func() bool { return len(hk.lags) > 0 })
	}
	st := w.Status(context.Background())
	if len(st) != 1 {
		t.Fatalf("status = %+v", st)
	}
	s := st[0]
	if s.State != pgcdc.StateStreaming || s.Engine != m.name || s.EventsHandled != 3 || s.DeadLetters != 1 || s.LagSeconds != 0 {
		t.Errorf("status = %+v, want streaming, 3 handled, 1 dead letter, lag 0 s", s)
	}
	switch m.name {
	case "logical":
		if s.Slot != defaultSlot || s.ConfirmedLSN == "" || s.ConfirmedCommitTime.IsZero() || s.LagBytes < 0 || s.Backlog != -1 {
			t.Errorf("logical status = %+v", s)
		}
	case "trigger":
		if s.TriggerSchema != "pgcdc" || s.Backlog != 0 || s.LagBytes != -1 || s.Slot != "" {
			t.Errorf("trigger status = %+v", s)
		}
	}
	if lag := w.Lag(""); m.name == "logical" && lag < 0 {
		t.Errorf("Lag = %d", lag)
	}

	r.stop(t)
	hk.mu.Lock()
	defer hk.mu.Unlock()
	var seq []string
	for _, e := range hk.states {
		seq = append(seq, string(e.State))
		if e.Engine != m.name {
			t.Errorf("state event engine = %q, want %q", e.Engine, m.name)
		}
	}
	if got := strings.Join(seq, ","); got != "connecting,streaming,stopped" {
		t.Errorf("states = %s, want connecting,streaming,stopped", got)
	}
	if st := w.Status(context.Background()); st[0].State != pgcdc.StateStopped {
		t.Errorf("state after Shutdown = %s", st[0].State)
	}
}

func TestHookStatesOnConnectionFailure(t *testing.T) {
	hk := newHookRecorder()
	// Nothing listens on port 1: the source backs off and reports why.
	w := newWorker(t, pgcdc.SetPostgresDSN("postgres://nobody@127.0.0.1:1/none?connect_timeout=2"), pgcdc.SetHooks(hk))
	w.Handle("t", func(*pgcdc.EventContext) error { return nil })
	r := serve(t, w)
	hk.waitFor(t, "backing off", func() bool {
		for _, e := range hk.states {
			if e.State == pgcdc.StateBackingOff && e.Err != nil {
				return true
			}
		}
		return false
	})
	st := w.Status(context.Background())[0]
	if st.LastError == "" || st.LastErrorTime.IsZero() {
		t.Errorf("status after a failed connection = %+v, want the error", st)
	}
	r.stop(t)
}

func TestSetHooksRejectsNonHooks(t *testing.T) {
	_, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://x@localhost/db"), pgcdc.SetHooks(42))
	if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "argument 1 (int) implements none") {
		t.Fatalf("err = %v", err)
	}
}
