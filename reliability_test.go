package pgcdc_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestSlotDroppedWhileStoppedIsReported(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	start := func(opts ...pgcdc.OptionFunc) (*running, *recorder) {
		rec := newRecorder()
		w := newWorker(t, append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN(dsn)}, opts...)...)
		w.Handle("t", rec.handle)
		return serve(t, w), rec
	}
	r, _ := start()
	waitStreaming(t, dsn, defaultSlot)
	r.stop(t)
	exec(t, dsn, `SELECT pg_drop_replication_slot('`+defaultSlot+`')`)
	exec(t, dsn, `INSERT INTO t VALUES (1)`) // never captured: the gap

	w := newWorker(t, pgcdc.SetPostgresDSN(dsn))
	w.Handle("t", func(*pgcdc.EventContext) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := w.Serve(ctx)
	if !errors.Is(err, pgcdc.ErrSlotLost) || !strings.Contains(err.Error(), "SetRecreateLostSlot") {
		t.Fatalf("Serve = %v; want ErrSlotLost saying how to accept the gap", err)
	}

	// Opting in creates a new slot and streams from now.
	_, rec := start(pgcdc.SetRecreateLostSlot(true))
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO t VALUES (2)`)
	evs := rec.waitCount(t, 1)
	if string(evs[0].Data.New) != `{"id":2}` {
		t.Fatalf("first event after re-creation = %s", evs[0].Data.New)
	}
}

func TestAdvisoryLockerStandbyTakesOver(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	rec := newRecorder()
	mk := func() *pgcdc.Worker {
		w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetLocker(pgcdc.NewAdvisoryLocker(dsn, 50*time.Millisecond)))
		w.Handle("t", rec.handle)
		return w
	}
	w1 := mk()
	r1 := serve(t, w1)
	waitStreaming(t, dsn, defaultSlot)
	w2 := mk()
	serve(t, w2) // stands by on the lock
	exec(t, dsn, `INSERT INTO t VALUES (1)`)
	rec.waitCount(t, 1)
	waiting := queryStrings(t, dsn, `SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'pgcdc-lock'`)
	if waiting[0] == "0" {
		t.Fatal("no lock connection")
	}
	r1.stop(t) // the standby takes over
	exec(t, dsn, `INSERT INTO t VALUES (2)`)
	evs := rec.waitCount(t, 2)
	if string(evs[len(evs)-1].Data.New) != `{"id":2}` {
		t.Fatalf("last event = %s", evs[len(evs)-1].Data.New)
	}
}

func TestRedeliverDeadLetters(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	var fail atomic.Bool
	fail.Store(true)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxRetries(0))
	w.Handle("t", func(ec *pgcdc.EventContext) error {
		if fail.Load() {
			return errors.New("downstream down")
		}
		return rec.handle(ec)
	})
	r := serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	exec(t, dsn, `INSERT INTO t VALUES (1), (2)`)
	lsn := queryStrings(t, dsn, `SELECT pg_current_wal_lsn()::text`)[0]
	waitSlotConfirmed(t, dsn, defaultSlot, lsn)
	r.stop(t)
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pgcdc.dead_letters`)[0]; n != "2" {
		t.Fatalf("%s dead letters, want 2", n)
	}
	fail.Store(false)
	n, err := w.RedeliverDeadLetters(context.Background(), "", 0)
	if err != nil || n != 2 {
		t.Fatalf("RedeliverDeadLetters = %d, %v; want 2", n, err)
	}
	evs := rec.snapshot()
	if len(evs) != 2 || string(evs[0].Data.New) != `{"id":1}` || !hex32.MatchString(evs[0].EventID) {
		t.Fatalf("redelivered = %+v", evs)
	}
	if n := queryStrings(t, dsn, `SELECT count(*)::text FROM pgcdc.dead_letters`)[0]; n != "0" {
		t.Fatalf("%s dead letters left, want 0", n)
	}
}

func TestNoGoroutineOutlivesServe(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	before := runtime.NumGoroutine()
	for _, graceful := range []bool{true, false} {
		rec := newRecorder()
		w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetMaxGoroutines(8),
			pgcdc.SetLocker(pgcdc.NewAdvisoryLocker(dsn, 0)))
		w.Handle("t", rec.handle)
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- w.Serve(ctx) }()
		waitStreaming(t, dsn, defaultSlot)
		exec(t, dsn, `INSERT INTO t VALUES (1)`)
		rec.waitCount(t, 1)
		exec(t, dsn, `DELETE FROM t`)
		if graceful {
			if err := w.Shutdown(context.Background()); err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatalf("Serve after Shutdown = %v", err)
			}
		} else {
			cancel()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Fatalf("Serve after cancel = %v", err)
			}
		}
		cancel()
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // goroutines finish exiting after Serve returned
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after Serve returned, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}
