package observe

import (
	"errors"
	"testing"
	"time"
)

func TestLagSecondsAndConfirmedTime(t *testing.T) {
	var confirmed []uint64
	var times []time.Time
	s := New("src", &Funcs{Confirmed: func(_ string, lsn uint64, ct time.Time) {
		confirmed = append(confirmed, lsn)
		times = append(times, ct)
	}})
	now := time.Now()
	t1, t2 := now.Add(-10*time.Second), now.Add(-4*time.Second)
	s.Committed(100, t1)
	s.Committed(200, t2)
	if got := s.Snapshot(now).LagSeconds; got < 9.9 || got > 10.1 {
		t.Errorf("lag with two waiting transactions = %v, want 10 (the oldest)", got)
	}
	s.Confirmed(150) // past the first only
	snap := s.Snapshot(now)
	if snap.Confirmed != 150 || !snap.ConfirmedTime.Equal(t1) || snap.LagSeconds < 3.9 || snap.LagSeconds > 4.1 {
		t.Errorf("after confirming 150: %+v", snap)
	}
	s.Confirmed(120) // backwards: ignored
	s.Confirmed(200)
	if snap := s.Snapshot(now); snap.LagSeconds != 0 || !snap.ConfirmedTime.Equal(t2) {
		t.Errorf("everything confirmed: %+v", snap)
	}
	if len(confirmed) != 2 || confirmed[1] != 200 || !times[1].Equal(t2) {
		t.Errorf("hook saw %v %v", confirmed, times)
	}
	// A new session forgets what was not confirmed.
	s.Committed(300, now)
	s.SetState(Connecting, nil)
	if snap := s.Snapshot(now); snap.LagSeconds != 0 {
		t.Errorf("after reconnecting: %+v", snap)
	}
}

func TestStateChanges(t *testing.T) {
	var seen []State
	s := New("src", &Funcs{State: func(_ string, st State, _ error) { seen = append(seen, st) }})
	boom := errors.New("boom")
	s.SetState(Connecting, nil)
	s.SetState(BackingOff, boom)
	s.SetState(Connecting, nil)
	s.SetState(Standby, nil)
	s.SetState(Connecting, nil) // a standby retrying stays a standby
	s.SetState(Standby, nil)
	s.SetState(Streaming, nil)
	want := []State{Connecting, BackingOff, Connecting, Standby, Streaming}
	if len(seen) != len(want) {
		t.Fatalf("states = %v, want %v", seen, want)
	}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("states = %v, want %v", seen, want)
		}
	}
	if snap := s.Snapshot(time.Now()); snap.State != Streaming || snap.Err != boom || snap.ErrAt.IsZero() {
		t.Errorf("snapshot = %+v", snap)
	}
	var nilSource *Source // engines without an observer
	nilSource.SetState(Streaming, nil)
	nilSource.Committed(1, time.Now())
	nilSource.Confirmed(1)
	nilSource.Lag(1)
	nilSource.Retry("r", nil, 1, boom, 0)
}
