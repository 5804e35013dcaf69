package faulttest

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestIdleTablesSlotLag: the captured table stays idle while a lot of WAL is
// written to an uncaptured table of the same database and to another
// database. The slot's lag, pg_current_wal_lsn() - confirmed_flush_lsn,
// sampled every 25 ms, must stay under 64 MB (CI: 128 MB of WAL written;
// full: 1 GB), and the lag the API reports (Worker.Lag) likewise (it is
// logged next to the server's figure). Afterwards the worker still delivers a change of the idle table.
func TestIdleTablesSlotLag(t *testing.T) {
	sz := suiteSizes()
	dsn := pgtest.NewDatabase(t)
	otherDSN := pgtest.NewDatabase(t)
	execSQL(t, dsn, `CREATE TABLE idle (id bigint PRIMARY KEY); CREATE TABLE busy (id bigserial PRIMARY KEY, pad text)`)
	execSQL(t, otherDSN, `CREATE TABLE busy (id bigserial PRIMARY KEY, pad text)`)
	src := newPool(t, dsn)
	const wt = "ft_idle"
	slot := slotName(wt)

	logger, _ := bufLogger(t)
	rec := newMemRecorder()
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType(wt), pgcdc.SetLogger(logger),
		pgcdc.SetMinReconnectInterval(50*time.Millisecond), pgcdc.SetMaxReconnectInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("idle", rec.handle)
	sv := serve(t, w)
	waitSlotActive(t, src, slot, true)
	startLSN := mustLSN(t, currentLSN(t, src))

	// Writers: about 1 MB of WAL per transaction, half in each database.
	var written atomic.Int64 // WAL bytes since start, as last sampled
	stop := make(chan struct{})
	writer := func(dsn string) *async {
		return goAsync(func() error {
			ctx := context.Background()
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				return err
			}
			defer conn.Close(ctx)
			for i := 1; ; i++ {
				select {
				case <-stop:
					return nil
				default:
				}
				if _, err := conn.Exec(ctx, `INSERT INTO busy (pad) SELECT repeat(md5(g::text), 30) FROM generate_series(1, 1000) g`); err != nil {
					return err
				}
				if i%64 == 0 {
					if _, err := conn.Exec(ctx, `TRUNCATE busy`); err != nil {
						return err
					}
				}
			}
		})
	}
	w1, w2 := writer(dsn), writer(otherDSN)

	// Sample the lag until the WAL target is written.
	var maxLag, maxBacklog, maxTrail, maxAPILag int64
	var samples int
	began := time.Now()
	for written.Load() < sz.walBytes {
		if err, done := w1.result(); done {
			t.Fatalf("writer: %v", err)
		}
		if err, done := w2.result(); done {
			t.Fatalf("writer (other database): %v", err)
		}
		ctx, cancel := ctxT(30 * time.Second)
		var cur string
		// lag: what the slot pins. backlog: WAL the walsender has not
		// decoded and sent yet, which no client can confirm.
		var lag, backlog int64
		err := src.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint,
			coalesce((SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn)::bigint FROM pg_stat_replication r WHERE r.pid = s.active_pid), 0)
			FROM pg_replication_slots s WHERE slot_name = $1`, slot).Scan(&cur, &lag, &backlog)
		cancel()
		if err != nil {
			t.Fatalf("sampling the lag: %v", err)
		}
		written.Store(int64(mustLSN(t, cur) - startLSN))
		maxLag = max(maxLag, lag)
		maxBacklog = max(maxBacklog, backlog)
		maxTrail = max(maxTrail, lag-backlog)
		maxAPILag = max(maxAPILag, w.Lag(""))
		samples++
		time.Sleep(25 * time.Millisecond) // the sampling period
	}
	close(stop)
	for _, a := range []*async{w1, w2} {
		if err := a.wait(time.Minute); err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	elapsed := time.Since(began)
	t.Logf("wrote %d MB of WAL elsewhere in %s; %d samples; max slot lag %.1f MB (pg_replication_slots), %.1f MB (Worker.Lag); walsender backlog up to %.1f MB; confirmed position behind the sent one by up to %.1f MB",
		written.Load()>>20, elapsed.Round(time.Millisecond), samples, float64(maxLag)/(1<<20), float64(maxAPILag)/(1<<20),
		float64(maxBacklog)/(1<<20), float64(maxTrail)/(1<<20))
	// What pgcdc answers for is how far its confirmed position trails what
	// the server sent; when WAL comes faster than the walsender decodes it,
	// the server's own backlog adds to the slot's lag whatever the client.
	if maxTrail >= sz.lagLimit {
		t.Errorf("WAL PINNED: the confirmed position trailed the server's sent position by %.1f MB while only uncaptured tables were written; want < %d MB", float64(maxTrail)/(1<<20), sz.lagLimit>>20)
	}
	if maxAPILag >= sz.lagLimit+maxBacklog {
		t.Errorf("Worker.Lag reported up to %.1f MB; want < %d MB plus the walsender's backlog (%.1f MB)", float64(maxAPILag)/(1<<20), sz.lagLimit>>20, float64(maxBacklog)/(1<<20))
	}
	if maxAPILag <= 0 && maxLag >= 1<<20 {
		// Worker.Lag measures against the last server position the stream
		// reported (keepalives carry the walsender's sent position), so it
		// does not see WAL the walsender has not decoded yet.
		t.Logf("NOTE: Worker.Lag stayed 0 while pg_replication_slots showed up to %.1f MB of lag", float64(maxLag)/(1<<20))
	}
	// Once the writes stop, the slot catches up with the end of WAL.
	waitSlotConfirmed(t, src, slot, currentLSN(t, src), time.Minute)
	// Worker.Lag is sampled every second: give it a few samples.
	if pollUntil(10*time.Second, 50*time.Millisecond, func(context.Context) (bool, error) {
		lag := w.Lag("")
		return lag >= 0 && lag < 1<<20, nil
	}) != nil {
		t.Errorf("Worker.Lag = %d after catching up; want 0 <= lag < 1 MB", w.Lag(""))
	}

	// The worker still streams the idle table.
	execSQL(t, dsn, `INSERT INTO idle VALUES (1)`)
	if !rec.wait(time.Minute, func() bool { return rec.distinctRows() == 1 }) {
		t.Error("the change of the idle table was not delivered")
	}
	sv.stop(t)
	delivered, dups, _ := rec.tally([]int64{1})
	figures(t, "idle_lag", 1, delivered, dups, 0)
	t.Logf("FIGURES scenario=idle_lag wal_written_mb=%d max_lag_mb=%.1f max_api_lag_mb=%.1f max_backlog_mb=%.1f max_trail_mb=%.1f", written.Load()>>20,
		float64(maxLag)/(1<<20), float64(maxAPILag)/(1<<20), float64(maxBacklog)/(1<<20), float64(maxTrail)/(1<<20))
}
