package trigger

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// benchClusters holds one throwaway cluster (and database) per commit mode,
// started on first use and removed by closeBench.
var benchClusters struct {
	sync.Mutex
	m map[string]benchCluster
}

type benchCluster struct {
	c   *pgtest.Cluster
	dsn string
}

func benchDSN(b *testing.B, commit string) string {
	b.Helper()
	benchClusters.Lock()
	defer benchClusters.Unlock()
	if bc, ok := benchClusters.m[commit]; ok {
		return bc.dsn
	}
	settings := map[string]string{"max_connections": "300"}
	if commit == "sync" { // durable commits: fsync and wait for the WAL flush
		settings["fsync"], settings["synchronous_commit"], settings["full_page_writes"] = "on", "on", "on"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgtest.Start(ctx, pgtest.Options{Settings: settings})
	if err != nil {
		b.Fatal(err)
	}
	name, err := c.CreateDatabase(ctx, "bench")
	if err != nil {
		c.Close()
		b.Fatal(err)
	}
	if benchClusters.m == nil {
		benchClusters.m = map[string]benchCluster{}
	}
	benchClusters.m[commit] = benchCluster{c: c, dsn: c.DSN(name)}
	return c.DSN(name)
}

func closeBench() {
	benchClusters.Lock()
	defer benchClusters.Unlock()
	for _, bc := range benchClusters.m {
		bc.c.Close()
	}
	benchClusters.m = nil
}

func benchExec(b *testing.B, dsn, sql string) { b.Helper(); pgtest.Exec(b, dsn, sql) }

func benchPool(b *testing.B, dsn string) *pgxpool.Pool { return pool(b, dsn) }

// Wake-up modes compared by BenchmarkWakeup.
const (
	modeNone          = "none"           // no capture: the baseline
	modePoll          = "trigger-poll"   // pgcdc's trigger, consumer polls (the default)
	modeTriggerNotify = "trigger-notify" // pgcdc's trigger plus a NOTIFY wake-up per write
	modeNotifyOnly    = "notify-payload" // candi's design: pg_notify(row JSON), no table
)

// setupMode prepares table bench for one mode and starts what consumes it.
// It returns a stop function that waits until every event was consumed and
// reports how many were still pending when the writes ended.
func setupMode(b *testing.B, dsn, mode string) (stop func() int64) {
	b.Helper()
	ctx := context.Background()
	if err := Teardown(ctx, dsn, "", nil); err != nil {
		b.Fatal(err)
	}
	benchExec(b, dsn, `DROP TABLE IF EXISTS bench; DROP FUNCTION IF EXISTS bench_notify() CASCADE;
		CREATE TABLE bench (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int, amount numeric, note text, at timestamptz DEFAULT now())`)
	switch mode {
	case modeNone:
		return func() int64 { return 0 }
	case modeNotifyOnly:
		benchExec(b, dsn, `CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN PERFORM pg_notify('candi', json_build_object('table', TG_TABLE_NAME, 'action', TG_OP, 'data', json_build_object('old', NULL, 'new', row_to_json(NEW)))::text); RETURN NULL; END $$;
			CREATE TRIGGER bench_notify AFTER INSERT OR UPDATE OR DELETE ON bench FOR EACH ROW EXECUTE FUNCTION bench_notify()`)
		return listen(b, dsn, "candi")
	}
	var handled atomic.Int64
	h := func(ctx context.Context, c *change.Change) error { handled.Add(1); return nil }
	cfg := Config{DSN: dsn, Tables: []dispatch.Table{{Schema: "public", Table: "bench", Route: dispatch.Route{Name: "bench", Handler: h, Lanes: 8}}}}
	pool := benchPool(b, dsn)
	if err := Install(ctx, pool, "", cfg.Tables); err != nil {
		b.Fatal(err)
	}
	var stopListen func() int64
	if mode == modeTriggerNotify {
		benchExec(b, dsn, `CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN PERFORM pg_notify('pgcdc_wakeup', ''); RETURN NULL; END $$;
			CREATE TRIGGER pgcdc_wakeup AFTER INSERT OR UPDATE OR DELETE ON bench FOR EACH ROW EXECUTE FUNCTION bench_notify()`)
		stopListen = listen(b, dsn, "pgcdc_wakeup")
	}
	s := New(cfg)
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = s.Run(runCtx, nil); close(done) }()
	return func() int64 {
		pending, err := s.Backlog(ctx)
		if err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Minute)
		for n, _ := s.Backlog(ctx); n > 0 && time.Now().Before(deadline); n, _ = s.Backlog(ctx) {
			time.Sleep(10 * time.Millisecond)
		}
		cancel()
		<-done
		if stopListen != nil {
			stopListen()
		}
		return pending
	}
}

// listen drains the notifications of a channel on its own connection.
func listen(b *testing.B, dsn, channel string) func() int64 {
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), "LISTEN "+channel); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_, _ = conn.WaitForNotification(ctx)
		}
	}()
	return func() int64 {
		cancel()
		<-done
		conn.Close(context.Background())
		return 0
	}
}

// writes runs b.N single-row INSERT transactions from clients connections
// and reports the write rate.
func writes(b *testing.B, dsn string, clients int) {
	conns := make([]*pgx.Conn, clients)
	for i := range conns {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	began := time.Now()
	for _, c := range conns {
		wg.Go(func() {
			for i := next.Add(1); i <= int64(b.N); i = next.Add(1) {
				if _, err := c.Exec(context.Background(), `INSERT INTO bench (account, amount, note) VALUES ($1, $2, $3)`,
					i%1000, fmt.Sprintf("%d.%02d", i%10000, i%100), "payment for order #"+fmt.Sprint(i)); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(began).Seconds(), "tx/s")
}

// BenchmarkWakeup measures the write cost of the wake-up choices: write
// transactions per second (one INSERT each) with no capture, with pgcdc's
// trigger and a polling consumer, with pgcdc's trigger plus a NOTIFY per
// write (the wake-up hint), and with candi's pg_notify(row JSON) trigger,
// at 1, 8 and 32 clients, on a cluster with durable commits (sync) and one
// with fsync and synchronous_commit off (async). The consumer runs during
// the writes; "pending" is the backlog left when the writes ended.
//
//	go test -run '^$' -bench Wakeup -benchtime 10000x -count 3 ./internal/trigger/
//
// The figures are in the package documentation ("Wake-up").
func BenchmarkWakeup(b *testing.B) {
	defer closeBench()
	for _, commit := range []string{"sync", "async"} {
		for _, mode := range []string{modeNone, modePoll, modeTriggerNotify, modeNotifyOnly} {
			for _, clients := range []int{1, 8, 32} {
				b.Run(fmt.Sprintf("commit=%s/mode=%s/clients=%d", commit, mode, clients), func(b *testing.B) {
					dsn := benchDSN(b, commit)
					stop := setupMode(b, dsn, mode)
					writes(b, dsn, clients)
					b.ReportMetric(float64(stop()), "pending")
				})
			}
		}
	}
}

// BenchmarkPollLatency measures, for several poll intervals, the latency
// from a commit to its handler at a light load (one write every 5 ms) and
// the cost of one idle claim (the query an idle consumer runs every
// interval).
//
//	go test -run '^$' -bench PollLatency -benchtime 400x ./internal/trigger/
func BenchmarkPollLatency(b *testing.B) {
	defer closeBench()
	for _, interval := range []time.Duration{5 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond} {
		b.Run("interval="+interval.String(), func(b *testing.B) {
			dsn := benchDSN(b, "async")
			if err := Teardown(context.Background(), dsn, "", nil); err != nil {
				b.Fatal(err)
			}
			benchExec(b, dsn, `DROP TABLE IF EXISTS bench; DROP FUNCTION IF EXISTS bench_notify() CASCADE; CREATE TABLE bench (id bigint PRIMARY KEY)`)
			var mu sync.Mutex
			committed := map[int64]time.Time{}
			var lat []time.Duration
			h := func(ctx context.Context, c *change.Change) error {
				now := time.Now()
				var p payload
				var row struct{ ID int64 }
				if err := jsonUnmarshal(c.Message, &p); err != nil {
					return err
				}
				if err := jsonUnmarshal(p.Data.New, &row); err != nil {
					return err
				}
				mu.Lock()
				if t, ok := committed[row.ID]; ok {
					lat = append(lat, now.Sub(t))
				}
				mu.Unlock()
				return nil
			}
			cfg := Config{DSN: dsn, PollInterval: interval, Tables: []dispatch.Table{{Schema: "public", Table: "bench", Route: dispatch.Route{Name: "bench", Handler: h, Lanes: 4}}}}
			if err := Install(context.Background(), benchPool(b, dsn), "", cfg.Tables); err != nil {
				b.Fatal(err)
			}
			s := New(cfg)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { _ = s.Run(ctx, nil); close(done) }()
			defer func() { cancel(); <-done }()
			conn, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close(context.Background())
			b.ResetTimer()
			for i := range int64(b.N) {
				if _, err := conn.Exec(context.Background(), `INSERT INTO bench VALUES ($1)`, i); err != nil {
					b.Fatal(err)
				}
				mu.Lock()
				committed[i] = time.Now()
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
			}
			for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
				if n, _ := s.Backlog(context.Background()); n == 0 {
					break
				}
			}
			b.StopTimer()
			mu.Lock()
			slices.Sort(lat)
			if len(lat) > 0 {
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
			}
			mu.Unlock()
			b.ReportMetric(idleClaimMicros(b, s, dsn), "idle-claim-µs")
		})
	}
}

// idleClaimMicros times the claim query on an empty event table.
func idleClaimMicros(b *testing.B, s *Source, dsn string) float64 {
	pool := benchPool(b, dsn)
	schemas, names := s.tableArrays()
	sql := s.claimSQL()
	const n = 200
	began := time.Now()
	for range n {
		rows, err := pool.Query(context.Background(), sql, schemas, names, 500, "idle-probe", int64(1000), claimBytes)
		if err != nil {
			b.Fatal(err)
		}
		rows.Close()
	}
	return float64(time.Since(began).Microseconds()) / n
}

// BenchmarkDrain measures how fast one consumer empties a backlog of b.N
// events (no-op handler, 8 lanes): the rate it can keep up with.
//
//	go test -run '^$' -bench Drain -benchtime 100000x ./internal/trigger/
func BenchmarkDrain(b *testing.B) {
	defer closeBench()
	for _, batch := range []int{100, 500, 2000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			dsn := benchDSN(b, "async")
			stop := setupMode(b, dsn, modeNone)
			defer stop()
			var handled atomic.Int64
			h := func(ctx context.Context, c *change.Change) error { handled.Add(1); return nil }
			cfg := Config{DSN: dsn, BatchSize: batch, Tables: []dispatch.Table{{Schema: "public", Table: "bench", Route: dispatch.Route{Name: "bench", Handler: h, Lanes: 8}}}}
			if err := Install(context.Background(), benchPool(b, dsn), "", cfg.Tables); err != nil {
				b.Fatal(err)
			}
			benchExec(b, dsn, fmt.Sprintf(`INSERT INTO bench (account, amount, note) SELECT i %% 1000, i / 100.0, 'payment for order #' || i FROM generate_series(1, %d) i`, b.N))
			benchExec(b, dsn, `VACUUM ANALYZE pgcdc.events`)
			s := New(cfg)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			b.ResetTimer()
			began := time.Now()
			go func() { _ = s.Run(ctx, nil); close(done) }()
			for handled.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			for n, _ := s.Backlog(context.Background()); n > 0; n, _ = s.Backlog(context.Background()) {
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(began).Seconds(), "events/s")
			cancel()
			<-done
		})
	}
}
