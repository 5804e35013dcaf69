package checkpoint

import (
	"context"
	"testing"
)

func TestConfirmsOnlyContiguousResolvedPrefix(t *testing.T) {
	tr := New(10)
	a, b, c := tr.Open(), tr.Open(), tr.Open()
	a.Add(2)
	b.Add(1)
	c.Add(1)
	a.Seal(100)
	b.Seal(200)
	c.Seal(300)
	c.Done() // later transaction done first: nothing may be confirmed
	b.Done()
	if got := tr.Confirmed(); got != 10 {
		t.Fatalf("confirmed %d before the first transaction resolved; want 10", got)
	}
	a.Done()
	if got := tr.Confirmed(); got != 10 {
		t.Fatalf("confirmed %d with one change of the first transaction pending", got)
	}
	a.Done()
	if got := tr.Confirmed(); got != 300 {
		t.Fatalf("confirmed %d; want 300 once everything resolved", got)
	}
	if err := tr.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestIdleOnlyWhenNothingOpen(t *testing.T) {
	tr := New(0)
	x := tr.Open()
	if tr.Idle(500) {
		t.Fatal("Idle moved the position while a transaction is open")
	}
	x.Seal(50) // empty transaction (all its changes unrouted)
	if tr.Confirmed() != 50 {
		t.Fatalf("confirmed %d; want 50", tr.Confirmed())
	}
	if !tr.Idle(500) || tr.Confirmed() != 500 {
		t.Fatalf("Idle did not move the position: %d", tr.Confirmed())
	}
	if tr.Idle(400) {
		t.Fatal("Idle moved the position backwards")
	}
}

func TestUnsealedTransactionBlocks(t *testing.T) {
	tr := New(0)
	x := tr.Open()
	x.Add(1)
	x.Done()
	if tr.Confirmed() != 0 || tr.Len() != 1 {
		t.Fatal("an unsealed transaction was confirmed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := tr.Wait(ctx); err == nil {
		t.Fatal("Wait returned nil with an open transaction")
	}
}
