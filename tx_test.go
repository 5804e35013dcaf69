package pgcdc_test

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestTransactionHandlerGetsWholeTransactions(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE lines (id int PRIMARY KEY, order_id int); CREATE TABLE solo (id int PRIMARY KEY)`)
	type txSeen struct {
		id, lsn string
		events  []string
	}
	var mu sync.Mutex
	var txs []txSeen
	var failOnce atomic.Bool
	failOnce.Store(true)
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetTxBufferBytes(512), // spill after a few events
		pgcdc.SetRetryBackoff(time.Millisecond, 10*time.Millisecond))
	w.HandleTx(func(tx *pgcdc.TxContext) error {
		var evs []string
		err := tx.Each(func(ec *pgcdc.EventContext) error {
			ev := ec.Event()
			evs = append(evs, ev.Table+":"+ev.Action+":"+string(ev.Data.New))
			return nil
		})
		if err != nil {
			return err
		}
		if len(evs) != tx.Len() {
			return fmt.Errorf("Each gave %d events, Len says %d", len(evs), tx.Len())
		}
		if tx.Len() == 200 && failOnce.CompareAndSwap(true, false) {
			return errors.New("fail the big transaction once") // retried whole
		}
		mu.Lock()
		txs = append(txs, txSeen{tx.ID(), tx.LSN(), evs})
		mu.Unlock()
		return nil
	}, "orders", "lines")
	solo := newRecorder()
	w.Handle("solo", solo.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `BEGIN; INSERT INTO orders VALUES (1); INSERT INTO solo VALUES (1); INSERT INTO lines VALUES (10, 1), (11, 1); COMMIT;`)
	exec(t, dsn, `INSERT INTO orders SELECT g FROM generate_series(100, 199) g`)
	exec(t, dsn, `INSERT INTO lines SELECT g, g FROM generate_series(100, 199) g`)
	exec(t, dsn, `BEGIN; INSERT INTO lines SELECT g, 7 FROM generate_series(1000, 1099) g; INSERT INTO orders SELECT g FROM generate_series(1000, 1099) g; COMMIT;`)
	solo.waitCount(t, 1)
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		n := len(txs)
		mu.Unlock()
		if n >= 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(txs) != 4 {
		t.Fatalf("%d transactions handled, want 4 (one multi-table, two autocommit INSERT…SELECT, one of 200 rows)", len(txs))
	}
	if got := strings.Join(txs[0].events, " "); got != `orders:INSERT:{"id":1} lines:INSERT:{"id":10,"order_id":1} lines:INSERT:{"id":11,"order_id":1}` {
		t.Errorf("first transaction = %s", got)
	}
	if len(txs[1].events) != 100 || len(txs[2].events) != 100 || len(txs[3].events) != 200 {
		t.Errorf("transaction sizes %d, %d, %d; want 100, 100, 200", len(txs[1].events), len(txs[2].events), len(txs[3].events))
	}
	if !strings.HasPrefix(txs[3].events[0], "lines:") || !strings.HasPrefix(txs[3].events[199], "orders:") {
		t.Errorf("the big transaction is not in commit order: %s … %s", txs[3].events[0], txs[3].events[199])
	}
	ids := map[string]bool{}
	for _, tx := range txs {
		if !hex32.MatchString(tx.id) || ids[tx.id] {
			t.Errorf("transaction id %q is not a fresh md5", tx.id)
		}
		ids[tx.id] = true
	}
}

func TestTransactionHandlerNeedsLogicalMode(t *testing.T) {
	w := newWorker(t, pgcdc.SetPostgresDSN("postgres://u@127.0.0.1:1/db"), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger))
	w.HandleTx(func(*pgcdc.TxContext) error { return nil }, "orders")
	if err := w.Serve(t.Context()); !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), "CaptureLogical") {
		t.Fatalf("Serve = %v", err)
	}
}
