package backoff

import (
	"context"
	"testing"
	"testing/synctest"
	"time"
)

func TestDoublesCapsAndResets(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	var got []time.Duration
	for range 6 {
		got = append(got, b.Next())
	}
	b.Reset()
	got = append(got, b.Next())
	want := []time.Duration{100e6, 200e6, 400e6, 800e6, 1e9, 1e9, 100e6}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("waits %v, want %v", got, want)
		}
	}
}

// Sleep waits the whole duration, or returns false as soon as ctx ends
// (fake time: testing/synctest).
func TestSleep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		if !Sleep(context.Background(), 3*time.Second) || time.Since(start) != 3*time.Second {
			t.Fatalf("Sleep returned after %s", time.Since(start))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		start = time.Now()
		if Sleep(ctx, time.Hour) || time.Since(start) != time.Second {
			t.Fatalf("Sleep with a context ending after 1s returned after %s", time.Since(start))
		}
	})
}
