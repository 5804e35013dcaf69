package pgcdc_test

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// BenchmarkInTx drains the same backlog of single-row INSERTs (logical
// engine, 8 handler goroutines) three times, in four rounds whose order
// rotates (the machine's load changes over a run), each handler writing one
// projection row per event (INSERT ... ON CONFLICT DO UPDATE) in the source
// database: a plain handler (one autocommit statement per event), HandleInTx
// (one transaction per event with its inbox record) and HandleInTx with
// WithInTxBatch(16, 0) (group commit). It reports events/s of each and the
// ratios to the plain handler. Every commit is durable (fsync on,
// synchronous_commit on) unless PGCDC_BENCH_FSYNC=off. PGCDC_BENCH_EVENTS
// sets the backlog (default 20000).
//
//	go test -run '^$' -bench InTx -benchtime 1x .
func BenchmarkInTx(b *testing.B) {
	events := 20000
	if v, err := strconv.Atoi(os.Getenv("PGCDC_BENCH_EVENTS")); err == nil && v > 0 {
		events = v
	}
	goroutines := 8
	if v, err := strconv.Atoi(os.Getenv("PGCDC_BENCH_GOROUTINES")); err == nil && v > 0 {
		goroutines = v
	}
	batchWait := time.Duration(0)
	if v, err := time.ParseDuration(os.Getenv("PGCDC_BENCH_BATCH_WAIT")); err == nil {
		batchWait = v
	}
	settings := map[string]string{"fsync": "on", "synchronous_commit": "on"}
	if os.Getenv("PGCDC_BENCH_FSYNC") == "off" {
		settings = map[string]string{"fsync": "off", "synchronous_commit": "on"}
	}
	ctx := context.Background()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		b.Skipf("needs PostgreSQL server binaries: %v", err)
	}
	defer c.Close()
	name, err := c.CreateDatabase(ctx, "bench")
	if err != nil {
		b.Fatal(err)
	}
	dsn := c.DSN(name)
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE src (id bigint PRIMARY KEY, v int);
		CREATE TABLE proj_plain (id bigint PRIMARY KEY, n int NOT NULL);
		CREATE TABLE proj_inbox (id bigint PRIMARY KEY, n int NOT NULL);
		CREATE TABLE proj_batch (id bigint PRIMARY KEY, n int NOT NULL)`); err != nil {
		b.Fatal(err)
	}
	type variant struct {
		name, wt, table string
		register        func(w *pgcdc.Worker, table string, done *atomic.Int64)
	}
	upsert := func(table string) string {
		return `INSERT INTO ` + table + ` (id, n) VALUES ($1, 1) ON CONFLICT (id) DO UPDATE SET n = ` + table + `.n + 1`
	}
	id := func(ec *pgcdc.EventContext) (int64, error) {
		var row struct{ ID int64 }
		err := ec.Event().Data.DecodeNew(&row)
		return row.ID, err
	}
	inTx := func(opts ...pgcdc.HandlerOption) func(w *pgcdc.Worker, table string, done *atomic.Int64) {
		return func(w *pgcdc.Worker, table string, done *atomic.Int64) {
			sql := upsert(table)
			w.HandleInTx("src", func(ec *pgcdc.EventContext, tx pgx.Tx) error {
				i, err := id(ec)
				if err == nil {
					_, err = tx.Exec(ec.Context(), sql, i)
				}
				if err == nil {
					done.Add(1)
				}
				return err
			}, opts...)
		}
	}
	variants := []variant{
		{"plain", "bench_plain", "proj_plain", func(w *pgcdc.Worker, table string, done *atomic.Int64) {
			sql := upsert(table)
			w.Handle("src", func(ec *pgcdc.EventContext) error {
				i, err := id(ec)
				if err == nil {
					_, err = pool.Exec(ec.Context(), sql, i)
				}
				if err == nil {
					done.Add(1)
				}
				return err
			})
		}},
		{"inbox", "bench_inbox", "proj_inbox", inTx()},
		{"inbox_batch16", "bench_batch", "proj_batch", inTx(pgcdc.WithInTxBatch(16, batchWait))},
	}
	run := func(v variant, wantEvents int) time.Duration {
		var done atomic.Int64
		w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType(v.wt), pgcdc.SetMaxGoroutines(goroutines),
			pgcdc.SetLogger(testLoggerB(b)))
		if err != nil {
			b.Fatal(err)
		}
		v.register(w, v.table, &done)
		errc := make(chan error, 1)
		start := time.Now()
		go func() { errc <- w.Serve(ctx) }()
		if wantEvents == 0 { // only create the slot
			deadline := time.Now().Add(time.Minute)
			for {
				var ok bool
				_ = pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active AND confirmed_flush_lsn IS NOT NULL)`, "pgcdc_"+v.wt+"_default").Scan(&ok)
				if ok || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		for done.Load() < int64(wantEvents) {
			select {
			case err := <-errc:
				b.Fatalf("%s: Serve: %v", v.name, err)
			case <-time.After(time.Millisecond):
			}
		}
		took := time.Since(start)
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if err := w.Shutdown(sctx); err != nil {
			b.Fatal(err)
		}
		<-errc
		return took
	}
	for _, v := range variants {
		run(v, 0)
	}
	// Rounds: a backlog of single-row transactions, then each variant
	// drains it, in a rotated order, so a change of the machine's load
	// does not favour one variant.
	const rounds = 4
	chunk := max(events/rounds, 1)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	b.ResetTimer()
	took := map[string]time.Duration{}
	for r := 0; r < rounds; r++ {
		b.StopTimer()
		for i := r*chunk + 1; i <= (r+1)*chunk; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO src VALUES ($1, 0)`, i); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		for i := range variants {
			v := variants[(i+r)%len(variants)]
			took[v.name] += run(v, chunk)
		}
	}
	rates := map[string]float64{}
	for _, v := range variants {
		rates[v.name] = float64(rounds*chunk) / took[v.name].Seconds()
		var n int64
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM `+v.table).Scan(&n); err != nil || n != int64(rounds*chunk) {
			b.Fatalf("%s: %d projection rows, want %d (%v)", v.name, n, rounds*chunk, err)
		}
		b.ReportMetric(rates[v.name], v.name+"_ev/s")
	}
	b.ReportMetric(rates["inbox"]/rates["plain"], "inbox/plain")
	b.ReportMetric(rates["inbox_batch16"]/rates["plain"], "batch/plain")
	b.Logf("%d events, %d goroutines, fsync %s: plain %.0f ev/s, inbox %.0f ev/s (%.2f×), inbox+batch16 %.0f ev/s (%.2f×)",
		events, goroutines, settings["fsync"], rates["plain"], rates["inbox"], rates["inbox"]/rates["plain"],
		rates["inbox_batch16"], rates["inbox_batch16"]/rates["plain"])
}

// testLoggerB is testLogger for benchmarks.
func testLoggerB(*testing.B) *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}
