package faulttest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// slotWorker builds an in-process worker for table "t" of dsn.
func slotWorker(t *testing.T, dsn, workerType string, handler pgcdc.HandlerFunc, opts ...pgcdc.OptionFunc) *pgcdc.Worker {
	t.Helper()
	logger, _ := bufLogger(t)
	opts = append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType(workerType), pgcdc.SetLogger(logger),
		pgcdc.SetMinReconnectInterval(200 * time.Millisecond), pgcdc.SetMaxReconnectInterval(time.Second)}, opts...)
	w, err := pgcdc.NewWorker(opts...)
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("t", handler)
	return w
}

// expectSlotLost waits for Serve to return and checks that the error is
// ErrSlotLost and that no new slot was created.
func expectSlotLost(t *testing.T, sv *serving, p *pgxpool.Pool, slot string, timeout time.Duration) {
	t.Helper()
	if !sv.wait(timeout) {
		st, _ := readSlotNow(p, slot)
		t.Fatalf("SILENT GAP: Serve still running %s after the slot was lost (slot now: exists=%v active=%v): pgcdc must stop with ErrSlotLost, not carry on past a gap", timeout, st.exists, st.active)
	}
	if !errors.Is(sv.err, pgcdc.ErrSlotLost) {
		t.Fatalf("Serve = %v; want errors.Is(err, pgcdc.ErrSlotLost)", sv.err)
	}
	t.Logf("Serve returned: %v", sv.err)
	if st, err := readSlotNow(p, slot); err != nil || (st.exists && st.walStatus != "lost") {
		t.Errorf("a slot %s exists after ErrSlotLost (%+v, %v): it must not be re-created without opting in", slot, st, err)
	}
}

// dropSlot ends the walsender using the slot and drops it, retrying while
// the worker reconnects and takes the slot again.
func dropSlot(t *testing.T, p *pgxpool.Pool, slot string) {
	t.Helper()
	waitUntil(t, time.Minute, 5*time.Millisecond, "the slot dropped", func(ctx context.Context) (bool, error) {
		if _, err := p.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, slot); err != nil {
			return false, err
		}
		if _, err := p.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, slot); err != nil {
			return false, err // still active: try again
		}
		return true, nil
	})
}

// TestSlotDroppedWhileStreaming terminates the walsender of a streaming
// worker and drops its slot: the worker must stop with ErrSlotLost.
func TestSlotDroppedWhileStreaming(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	execSQL(t, dsn, `CREATE TABLE t (id bigint PRIMARY KEY)`)
	p := newPool(t, dsn)
	const wt = "ft_drop_streaming"
	rec := newMemRecorder()
	sv := serve(t, slotWorker(t, dsn, wt, rec.handle))
	waitSlotActive(t, p, slotName(wt), true)
	execSQL(t, dsn, `INSERT INTO t SELECT generate_series(1, 100)`)
	rec.wait(time.Minute, func() bool { return rec.distinctRows() == 100 })
	dropSlot(t, p, slotName(wt))
	execSQL(t, dsn, `INSERT INTO t SELECT generate_series(101, 200)`) // the gap
	expectSlotLost(t, sv, p, slotName(wt), 30*time.Second)
}

// TestSlotDroppedWhileStopped drops the slot while no worker runs (after a
// graceful stop, and after kill -9 of a consumer process): the next worker
// must stop with ErrSlotLost instead of creating a new slot from now; with
// SetRecreateLostSlot(true) it creates one and streams.
func TestSlotDroppedWhileStopped(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		execSQL(t, dsn, `CREATE TABLE t (id bigint PRIMARY KEY)`)
		p := newPool(t, dsn)
		const wt = "ft_drop_stopped"
		rec := newMemRecorder()
		sv := serve(t, slotWorker(t, dsn, wt, rec.handle))
		waitSlotActive(t, p, slotName(wt), true)
		execSQL(t, dsn, `INSERT INTO t VALUES (1)`)
		rec.wait(time.Minute, func() bool { return rec.distinctRows() == 1 })
		sv.stop(t)
		dropSlot(t, p, slotName(wt))
		execSQL(t, dsn, `INSERT INTO t VALUES (2)`) // the gap

		sv2 := serve(t, slotWorker(t, dsn, wt, rec.handle))
		expectSlotLost(t, sv2, p, slotName(wt), 30*time.Second)
		if !strings.Contains(sv2.err.Error(), "SetRecreateLostSlot") {
			t.Errorf("the error does not say how to accept the gap: %v", sv2.err)
		}

		// Opting in: a new slot, streaming from now.
		sv3 := serve(t, slotWorker(t, dsn, wt, rec.handle, pgcdc.SetRecreateLostSlot(true)))
		waitSlotActive(t, p, slotName(wt), true)
		execSQL(t, dsn, `INSERT INTO t VALUES (3)`)
		if !rec.wait(time.Minute, func() bool { return rec.distinctRows() == 2 }) {
			t.Error("with SetRecreateLostSlot(true), the row written after re-creation was not delivered")
		}
		sv3.stop(t)
	})
	t.Run("kill9", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		recDSN := newRecordDB(t)
		execSQL(t, dsn, `CREATE TABLE t (id bigint PRIMARY KEY)`)
		p, rec := newPool(t, dsn), newPool(t, recDSN)
		bin := buildConsumer(t)
		const wt = "ft_drop_killed"
		args := []string{"-dsn", dsn, "-record-dsn", recDSN, "-table", "t", "-worker-type", wt, "-instance", "x"}
		c1 := startConsumer(t, bin, "first", args...)
		waitSlotActive(t, p, slotName(wt), true)
		execSQL(t, dsn, `INSERT INTO t VALUES (1)`)
		waitUntil(t, time.Minute, 10*time.Millisecond, "the first row recorded", func(ctx context.Context) (bool, error) {
			var n int64
			err := rec.QueryRow(ctx, `SELECT count(*) FROM seen`).Scan(&n)
			return n > 0, err
		})
		c1.kill()
		dropSlot(t, p, slotName(wt))
		execSQL(t, dsn, `INSERT INTO t VALUES (2)`) // the gap
		c2 := startConsumer(t, bin, "second", args...)
		select {
		case <-c2.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("SILENT GAP: the consumer started after the slot was dropped is still running after 30s")
		}
		out := c2.tail(4000)
		if !strings.Contains(out, "SERVE-ERROR") || !strings.Contains(out, pgcdc.ErrSlotLost.Error()) {
			t.Fatalf("the consumer exited (%v) without reporting ErrSlotLost:\n%s", c2.err, out)
		}
		if st, _ := readSlotNow(p, slotName(wt)); st.exists {
			t.Errorf("a new slot was created")
		}
	})
}

// TestSlotWALLost: with max_slot_wal_keep_size, the server invalidates a
// slot that falls too far behind (wal_status 'lost'). Both when the worker
// was stopped and when it was streaming but stalled by a blocked handler,
// the worker must stop with ErrSlotLost.
func TestSlotWALLost(t *testing.T) {
	c := ownCluster(t, map[string]string{
		"max_slot_wal_keep_size": "'32MB'", "wal_keep_size": "0", "max_wal_size": "'64MB'", "min_wal_size": "'32MB'",
	})
	dsn := createDatabase(t, c, "wal_lost")
	execSQL(t, dsn, `CREATE TABLE t (id bigint PRIMARY KEY); CREATE TABLE filler (pad text)`)
	p := newPool(t, dsn)

	// burn writes WAL and checkpoints until the slot is lost.
	burn := func(slot string) {
		t.Helper()
		waitUntil(t, 3*time.Minute, 0, fmt.Sprintf("slot %s lost", slot), func(ctx context.Context) (bool, error) {
			if _, err := p.Exec(ctx, `INSERT INTO filler SELECT repeat(md5(g::text), 30) FROM generate_series(1, 16000) g`); err != nil {
				return false, err
			}
			if _, err := p.Exec(ctx, `TRUNCATE filler`); err != nil {
				return false, err
			}
			if _, err := p.Exec(ctx, `SELECT pg_switch_wal()`); err != nil {
				return false, err
			}
			if _, err := p.Exec(ctx, `CHECKPOINT`); err != nil {
				return false, err
			}
			st, err := readSlot(ctx, p, slot)
			return st.walStatus == "lost", err
		})
		t.Logf("slot %s has wal_status 'lost'", slot)
	}

	t.Run("stopped", func(t *testing.T) {
		const wt = "ft_wal_lost_stopped"
		rec := newMemRecorder()
		sv := serve(t, slotWorker(t, dsn, wt, rec.handle))
		waitSlotActive(t, p, slotName(wt), true)
		sv.stop(t)
		execSQL(t, dsn, `INSERT INTO t VALUES (1)`) // lost with the WAL
		burn(slotName(wt))
		sv2 := serve(t, slotWorker(t, dsn, wt, rec.handle))
		expectSlotLost(t, sv2, p, slotName(wt), 30*time.Second)

		// SetRecreateLostSlot(true) is documented to cover a slot that
		// "lost its WAL" too: the worker replaces the slot and streams.
		sv3 := serve(t, slotWorker(t, dsn, wt, rec.handle, pgcdc.SetRecreateLostSlot(true)))
		waitSlotActive(t, p, slotName(wt), true) // the new slot
		execSQL(t, dsn, `INSERT INTO t VALUES (3)`)
		ok := pollUntil(20*time.Second, 10*time.Millisecond, func(context.Context) (bool, error) {
			return rec.distinctRows() > 0 || sv3.wait(0), nil
		}) == nil && rec.distinctRows() > 0
		if sv3.wait(0) {
			t.Errorf("with SetRecreateLostSlot(true), Serve still returned %v for a slot with wal_status 'lost'", sv3.err)
		} else if !ok {
			t.Errorf("with SetRecreateLostSlot(true), nothing was delivered after the slot with wal_status 'lost'")
		}
		_, _ = p.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slotName(wt))
	})
	t.Run("stalled", func(t *testing.T) {
		const wt = "ft_wal_lost_stalled"
		release := make(chan struct{})
		sv := serve(t, slotWorker(t, dsn, wt, func(ec *pgcdc.EventContext) error {
			select { // a handler stuck on a slow downstream
			case <-release:
			case <-ec.Context().Done():
			}
			return nil
		}))
		waitSlotActive(t, p, slotName(wt), true)
		execSQL(t, dsn, `INSERT INTO t VALUES (2)`)
		burn(slotName(wt))
		close(release)
		expectSlotLost(t, sv, p, slotName(wt), 30*time.Second)
	})
}
