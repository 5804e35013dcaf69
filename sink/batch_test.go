package sink_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink"
)

// recordingSink records each delivery and refuses messages whose EventID
// is "bad" (permanently, with the whole delivery).
type recordingSink struct {
	mu    sync.Mutex
	calls [][]string
}

func (r *recordingSink) Deliver(_ context.Context, msgs []sink.Message) error {
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.EventID)
	}
	r.mu.Lock()
	r.calls = append(r.calls, ids)
	r.mu.Unlock()
	for _, m := range msgs {
		if m.EventID == "bad" {
			return sink.Permanent(errors.New("refused"))
		}
	}
	return nil
}

func (r *recordingSink) Close(context.Context) error { return nil }

func TestBatcherGroupsConcurrentDeliveries(t *testing.T) {
	rec := &recordingSink{}
	b := sink.NewBatcher(rec, 4, time.Hour) // only full batches are sent
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if err := b.Deliver(context.Background(), []sink.Message{{EventID: fmt.Sprint(i)}}); err != nil {
				t.Errorf("Deliver: %v", err)
			}
		})
	}
	wg.Wait()
	if len(rec.calls) != 2 || len(rec.calls[0]) != 4 || len(rec.calls[1]) != 4 {
		t.Fatalf("deliveries = %v, want 2 batches of 4", rec.calls)
	}
}

func TestBatcherLingerAndPermanentSplit(t *testing.T) {
	rec := &recordingSink{}
	b := sink.NewBatcher(rec, 100, 20*time.Millisecond)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i, id := range []string{"a", "bad", "c"} {
		wg.Go(func() { errs[i] = b.Deliver(context.Background(), []sink.Message{{EventID: id}}) })
	}
	wg.Wait()
	if errs[0] != nil || errs[2] != nil || !sink.IsPermanent(errs[1]) {
		t.Fatalf("errors = %v, want only the bad message refused permanently", errs)
	}
	if len(rec.calls) != 4 || len(rec.calls[0]) != 3 {
		t.Fatalf("deliveries = %v, want the batch of 3, then each message alone", rec.calls)
	}
	if err := b.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := b.Deliver(context.Background(), []sink.Message{{EventID: "late"}}); !errors.Is(err, sink.ErrClosed) {
		t.Fatalf("Deliver after Close = %v", err)
	}
}
