// Command sinkbench measures how fast each broker sink drains a backlog,
// next to the library's no-op handler in the same run, on one throwaway
// PostgreSQL cluster:
//
//	go run ./internal/sinkbench -rows 200000
//
// Every variant has its own replication slot, created before the backlog
// is written, so each one drains the same changes. Sinks run through a
// sink.Batcher. CPU and peak RSS are this process's (the worker and the
// sink clients, and for Kafka the in-process kfake broker too); the
// brokers' and PostgreSQL's own CPU are not counted.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/amqpsink"
	"github.com/pgcdc/pgcdc/sink/kafkasink"
	"github.com/pgcdc/pgcdc/sink/natssink"
	"github.com/pgcdc/pgcdc/sink/redissink"
)

type variant struct {
	key, label string
	// open returns the handler, the route's goroutines and a clean-up.
	open func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error)
}

func main() {
	rows := flag.Int("rows", 200_000, "changes in the backlog")
	only := flag.String("only", "", "comma-separated variants to run (noop,redis,nats,nats1,amqp,kafka)")
	liveFor := flag.Duration("live", 10*time.Second, "length of the live phase (8 single-row writers); 0 skips it")
	flag.IntVar(&batchGoroutines, "goroutines", batchGoroutines, "handler goroutines in front of a Batcher")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	if err := run(*rows, *only, *liveFor); err != nil {
		log.Print(err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// batchGoroutines is the route's goroutines in front of a Batcher: the
// events in flight at once.
var batchGoroutines = 256

func noop(context.Context) (pgcdc.HandlerFunc, int, func(), error) {
	return func(*pgcdc.EventContext) error { return nil }, 1, func() {}, nil
}

// batched wraps a sink in a Batcher (default options) with
// batchGoroutines handler goroutines.
func batched(s sink.Sink, cleanup func()) (pgcdc.HandlerFunc, int, func(), error) {
	b := sink.NewBatcher(s, 64, 0)
	return sink.Handler(b), batchGoroutines, func() {
		ctx := context.Background()
		_ = b.Close(ctx) // closes s too
		cleanup()
	}, nil
}

func variants() []variant {
	return []variant{
		{"noop", "no-op handler (library default, 1 goroutine)", noop},
		{"redis", "Redis Streams, Batcher", func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error) {
			s, err := redissink.New(ctx, redissink.Config{Stream: "pgcdc-bench:{table}"})
			if err != nil {
				return nil, 0, nil, err
			}
			return batched(s, func() {
				c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
				c.Del(context.Background(), "pgcdc-bench:t_bench")
				c.Close()
			})
		}},
		{"nats", "NATS JetStream, Batcher", natsVariant(true)},
		{"nats1", "NATS JetStream, sink.Handler (one event per Deliver, 256 goroutines)", natsVariant(false)},
		{"amqp", "RabbitMQ, Batcher", func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error) {
			conn, err := amqp.Dial(amqpsink.DefaultURL)
			if err != nil {
				return nil, 0, nil, err
			}
			ch, err := conn.Channel()
			if err == nil {
				err = ch.ExchangeDeclare("pgcdc.bench", "topic", true, false, false, false, nil)
			}
			if err == nil {
				_, err = ch.QueueDeclare("pgcdc.bench", true, false, false, false, nil)
			}
			if err == nil {
				err = ch.QueueBind("pgcdc.bench", "#", "pgcdc.bench", false, nil)
			}
			if err != nil {
				conn.Close()
				return nil, 0, nil, err
			}
			s, err := amqpsink.New(ctx, amqpsink.Config{Exchange: "pgcdc.bench"})
			if err != nil {
				conn.Close()
				return nil, 0, nil, err
			}
			return batched(s, func() {
				_, _ = ch.QueueDelete("pgcdc.bench", false, false, false)
				conn.Close()
			})
		}},
		{"kafka", "Kafka (in-process kfake broker, 8 partitions), Batcher", func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error) {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(8), kfake.AllowAutoTopicCreation())
			if err != nil {
				return nil, 0, nil, err
			}
			s, err := kafkasink.New(ctx, kafkasink.Config{Brokers: c.ListenAddrs(), AutoCreateTopics: true})
			if err != nil {
				c.Close()
				return nil, 0, nil, err
			}
			return batched(s, c.Close)
		}},
	}
}

func natsVariant(batch bool) func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error) {
	return func(ctx context.Context) (pgcdc.HandlerFunc, int, func(), error) {
		name := "PGCDC_BENCH"
		s, err := natssink.New(ctx, natssink.Config{Stream: natssink.StreamConfig{Name: name, Create: true, Subjects: []string{"pgcdc.bench.>"}}})
		if err != nil {
			return nil, 0, nil, err
		}
		cleanup := func() {
			nc, err := nats.Connect(natssink.DefaultURL)
			if err != nil {
				return
			}
			defer nc.Close()
			if js, err := jetstream.New(nc); err == nil {
				_ = js.DeleteStream(context.Background(), name)
			}
		}
		if batch {
			return batched(s, cleanup)
		}
		return sink.Handler(s), 256, func() { _ = s.Close(context.Background()); cleanup() }, nil
	}
}

type result struct {
	v        variant
	perSec   float64
	cpuPerEv time.Duration
	peakRSS  int64
	err      error
}

func run(rows int, only string, liveFor time.Duration) error {
	ctx := context.Background()
	vs := variants()
	if only != "" {
		var keep []variant
		for _, v := range vs {
			if strings.Contains(","+only+",", ","+v.key+",") {
				keep = append(keep, v)
			}
		}
		vs = keep
	}
	cl, err := pgtest.Start(ctx, pgtest.Options{Settings: map[string]string{"max_wal_size": "4GB", "synchronous_commit": "off"}})
	if err != nil {
		return err
	}
	defer cl.Close()
	db, err := cl.CreateDatabase(ctx, "sinkbench")
	if err != nil {
		return err
	}
	dsn := cl.DSN(db)
	if err := exec(ctx, dsn, `CREATE TABLE t_bench (id bigint PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return err
	}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	newWorker := func(key string) (*pgcdc.Worker, error) {
		return pgcdc.NewWorker(pgcdc.AddPostgresDSN("bench", dsn), pgcdc.SetWorkerType(key), pgcdc.SetLogger(quiet),
			pgcdc.SetCaptureMode(pgcdc.CaptureLogical))
	}
	// One slot per variant, before the backlog.
	for _, v := range vs {
		w, err := newWorker(v.key)
		if err != nil {
			return err
		}
		w.Handle(pgcdc.CreateHandlerRoute("bench", "t_bench"), func(*pgcdc.EventContext) error { return nil })
		errc := make(chan error, 1)
		go func() { errc <- w.Serve(ctx) }()
		slot := w.Sources()[0].Slot
		if err := waitTrue(ctx, dsn, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, slot); err != nil {
			return err
		}
		if err := w.Shutdown(ctx); err != nil {
			return err
		}
		<-errc
	}
	fmt.Fprintf(os.Stderr, "writing a backlog of %d changes...\n", rows)
	for i := 0; i < rows; i += 1000 {
		if err := exec(ctx, dsn, fmt.Sprintf(`INSERT INTO t_bench (id, payload) SELECT g, repeat('x', 100) FROM generate_series(%d, %d) g`, i+1, min(rows, i+1000))); err != nil {
			return err
		}
	}
	var results []result
	for _, v := range vs {
		fmt.Fprintf(os.Stderr, "draining: %s\n", v.label)
		r := result{v: v}
		r.perSec, r.cpuPerEv, r.peakRSS, r.err = drain(ctx, v, rows, newWorker)
		results = append(results, r)
		if r.err != nil {
			fmt.Fprintf(os.Stderr, "  %s: %v\n", v.key, r.err)
		} else {
			fmt.Fprintf(os.Stderr, "  %.0f events/s\n", r.perSec)
		}
		w, _ := newWorker(v.key)
		_ = exec(ctx, dsn, fmt.Sprintf(`SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '%s'`, w.Sources()[0].Slot))
	}
	if liveFor > 0 {
		if err := exec(ctx, dsn, `CREATE TABLE t_live (id bigserial PRIMARY KEY, payload text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`); err != nil {
			return err
		}
	}
	var lives []liveResult
	for _, v := range vs {
		if liveFor <= 0 {
			break
		}
		fmt.Fprintf(os.Stderr, "live, 8 writers for %s: %s\n", liveFor, v.label)
		r := live(ctx, v, dsn, liveFor, newWorker)
		r.v = v
		lives = append(lives, r)
		if r.err != nil {
			fmt.Fprintf(os.Stderr, "  %s: %v\n", v.key, r.err)
		} else {
			fmt.Fprintf(os.Stderr, "  %.0f rows/s written and delivered\n", r.perSec)
		}
	}
	var base float64
	for _, r := range results {
		if r.v.key == "noop" && r.err == nil {
			base = r.perSec
		}
	}
	fmt.Printf("Backlog drain of %d changes (one row per change, ~150 B event JSON); %s; load %s\n\n", rows, time.Now().UTC().Format("2006-01-02 15:04 UTC"), loadavg())
	fmt.Println("| variant | events/s | ÷ no-op | CPU µs/event (this process) | peak RSS MB |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, r := range results {
		if r.err != nil {
			fmt.Printf("| %s | failed: %v | | | |\n", r.v.label, r.err)
			continue
		}
		ratio := "–"
		if base > 0 {
			ratio = fmt.Sprintf("%.2f", r.perSec/base)
		}
		fmt.Printf("| %s | %.0f | %s | %.1f | %d |\n", r.v.label, r.perSec, ratio, float64(r.cpuPerEv.Nanoseconds())/1000, r.peakRSS>>20)
	}
	if len(lives) == 0 {
		return nil
	}
	var lbase float64
	for _, r := range lives {
		if r.v.key == "noop" && r.err == nil {
			lbase = r.perSec
		}
	}
	fmt.Printf("\nLive: 8 writers, one single-row INSERT per transaction, for %s; rows/s = rows written ÷ time until the last one was delivered\n\n", liveFor)
	fmt.Println("| variant | rows/s | ÷ no-op |")
	fmt.Println("|---|---:|---:|")
	for _, r := range lives {
		if r.err != nil {
			fmt.Printf("| %s | failed: %v | |\n", r.v.label, r.err)
			continue
		}
		ratio := "–"
		if lbase > 0 {
			ratio = fmt.Sprintf("%.2f", r.perSec/lbase)
		}
		fmt.Printf("| %s | %.0f | %s |\n", r.v.label, r.perSec, ratio)
	}
	return nil
}

type liveResult struct {
	v      variant
	perSec float64
	err    error
}

// live runs 8 writers for d while the variant's worker delivers, and
// measures the rows written and delivered per second.
func live(ctx context.Context, v variant, dsn string, d time.Duration, newWorker func(string) (*pgcdc.Worker, error)) liveResult {
	h, gor, cleanup, err := v.open(ctx)
	if err != nil {
		return liveResult{err: err}
	}
	defer cleanup()
	w, err := newWorker(v.key + "_live")
	if err != nil {
		return liveResult{err: err}
	}
	var delivered atomic.Int64
	w.Handle(pgcdc.CreateHandlerRoute("bench", "t_live"), func(ec *pgcdc.EventContext) error {
		if err := h(ec); err != nil {
			return err
		}
		delivered.Add(1)
		return nil
	}, pgcdc.WithMaxGoroutines(gor))
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	slot := w.Sources()[0].Slot
	defer func() {
		_ = w.Shutdown(ctx)
		<-errc
		_ = exec(ctx, dsn, `SELECT pg_drop_replication_slot($1)`, slot)
	}()
	if err := waitTrue(ctx, dsn, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, slot); err != nil {
		return liveResult{err: err}
	}
	var written atomic.Int64
	start := time.Now()
	stop := start.Add(d)
	werr := make(chan error, 8)
	for range 8 {
		go func() {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				werr <- err
				return
			}
			defer conn.Close(ctx)
			for time.Now().Before(stop) {
				if _, err := conn.Exec(ctx, `INSERT INTO t_live (payload) VALUES (repeat('x', 100))`); err != nil {
					werr <- err
					return
				}
				written.Add(1)
			}
			werr <- nil
		}()
	}
	for range 8 {
		if err := <-werr; err != nil {
			return liveResult{err: err}
		}
	}
	n := written.Load()
	for deadline := time.Now().Add(5 * time.Minute); delivered.Load() < n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			return liveResult{err: fmt.Errorf("%d of %d rows delivered", delivered.Load(), n)}
		}
	}
	return liveResult{perSec: float64(n) / time.Since(start).Seconds()}
}

func drain(ctx context.Context, v variant, rows int, newWorker func(string) (*pgcdc.Worker, error)) (float64, time.Duration, int64, error) {
	h, gor, cleanup, err := v.open(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	defer cleanup()
	w, err := newWorker(v.key)
	if err != nil {
		return 0, 0, 0, err
	}
	var n atomic.Int64
	done := make(chan struct{})
	w.Handle(pgcdc.CreateHandlerRoute("bench", "t_bench"), func(ec *pgcdc.EventContext) error {
		if err := h(ec); err != nil {
			return err
		}
		if n.Add(1) == int64(rows) {
			close(done)
		}
		return nil
	}, pgcdc.WithMaxGoroutines(gor))
	debug.FreeOSMemory() // what earlier variants left behind
	resetPeakRSS()
	cpu0 := cpuTime()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	select {
	case <-done:
	case err := <-errc:
		return 0, 0, 0, fmt.Errorf("worker stopped: %v", err)
	case <-time.After(30 * time.Minute):
		return 0, 0, 0, fmt.Errorf("drain timed out at %d of %d", n.Load(), rows)
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	peak := peakRSS()
	_ = w.Shutdown(ctx)
	<-errc
	return float64(rows) / elapsed.Seconds(), cpu / time.Duration(rows), peak, nil
}

func exec(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

func waitTrue(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var ok bool
		if err := conn.QueryRow(ctx, sql, args...).Scan(&ok); err != nil {
			return err
		}
		if ok {
			return nil
		}
	}
	return fmt.Errorf("timed out waiting for %s", sql)
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// resetPeakRSS resets VmHWM (Linux: clear_refs 5).
func resetPeakRSS() { _ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:3], " ")
}
