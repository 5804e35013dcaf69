package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// demoConfig holds the demo's flags.
type demoConfig struct {
	rate     int
	duration time.Duration
	n        int
}

// Bounds of -rate: one change per tick of a ticker, so rates far above a
// few thousand per second only measure the ticker.
const maxDemoRate = 10000

func newDemoFlags(cfg *demoConfig, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pgcdc demo", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.IntVar(&cfg.rate, "rate", 2, "changes written per second (1 to 10000)")
	fs.DurationVar(&cfg.duration, "duration", 0, "stop by itself after this long, e.g. 30s (0: run until Ctrl-C)")
	fs.IntVar(&cfg.n, "n", 0, "stop after this many events were printed (0: no limit)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: pgcdc demo [flags]

Boots a throwaway PostgreSQL from this machine's server binaries, creates the
table orders, writes a mix of INSERT, UPDATE and DELETE into it, and prints
every change event pgcdc delivers as one JSON line on stdout. Logs go to
stderr. Stops on Ctrl-C (or SIGTERM), after -duration or after -n events, and
removes the temporary cluster.

Flags:
`)
		fs.PrintDefaults()
	}
	return fs
}

// Reasons the demo stops, recorded as the cause of its run context.
var (
	errEnoughEvents   = errors.New("printed the requested number of events")
	errDurationPassed = errors.New("the requested duration passed")
)

// demoTable is the table the demo writes and watches.
const demoTable = "orders"

const demoSchema = `
CREATE TABLE orders (
	id        bigserial PRIMARY KEY,
	customer  text NOT NULL,
	total     numeric(10,2) NOT NULL,
	status    text NOT NULL,
	tags      text[] NOT NULL DEFAULT '{}',
	placed_at timestamptz NOT NULL DEFAULT now()
);
-- Updates and deletes then carry the whole previous row as data.old.
ALTER TABLE orders REPLICA IDENTITY FULL;
`

// runDemo is "pgcdc demo": see newDemoFlags for what it does. Events go to
// stdout, one JSON line each; logs and the final summary go to stderr. It
// returns nil when stopped by ctx being cancelled (Ctrl-C), by -duration
// or by -n, and the error otherwise.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg demoConfig
	fs := newDemoFlags(&cfg, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	err := cfg.check()
	if err == nil && fs.NArg() > 0 {
		err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		fs.Usage()
		return usageError{err}
	}

	// The worker and this function log from several goroutines; stderr may
	// be any writer (a buffer in tests), so serialise it.
	stderr = &syncWriter{w: stderr}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	began := time.Now()

	log.Info("pgcdc demo: starting a throwaway PostgreSQL")
	cluster, err := pgtest.Start(ctx, pgtest.Options{})
	if err != nil {
		if ctx.Err() != nil {
			return stoppedDuringSetup(ctx)
		}
		if errors.Is(err, pgtest.ErrNoBinaries) {
			return fmt.Errorf("cannot run the demo: %w", err)
		}
		return fmt.Errorf("starting PostgreSQL: %w", err)
	}
	defer cluster.Close()
	dsn := cluster.DSN("postgres")
	log.Info("pgcdc demo: PostgreSQL ready", "bin_dir", cluster.BinDir(), "port", cluster.Port(), "data_dir", cluster.DataDir())

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		if ctx.Err() != nil {
			return stoppedDuringSetup(ctx)
		}
		return fmt.Errorf("connecting to the demo database: %w", err)
	}
	// Registered after cluster.Close, so it runs before it.
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, demoSchema); err != nil {
		if ctx.Err() != nil {
			return stoppedDuringSetup(ctx)
		}
		return fmt.Errorf("creating table %s: %w", demoTable, err)
	}

	// runCtx ends the run: Ctrl-C (ctx), -duration, -n, or a failure of the
	// worker or the writer. Its cause says which.
	runCtx, stopRun := context.WithCancelCause(ctx)
	defer stopRun(nil)
	if cfg.duration > 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithTimeoutCause(runCtx, cfg.duration, errDurationPassed)
		defer cancel()
	}

	printer := newEventPrinter(stdout, cfg.n, func() { stopRun(errEnoughEvents) })
	// Everything runs on this machine, so a connection failure before the
	// stream is up is a bug to report, not a network blip to wait out.
	var streaming atomic.Bool
	onConnError := func(err error) {
		if !streaming.Load() {
			stopRun(fmt.Errorf("the worker could not start streaming: %w", err))
		}
	}
	w, err := pgcdc.NewWorker(
		pgcdc.SetPostgresDSN(dsn),
		pgcdc.SetWorkerType("demo"),
		pgcdc.SetLogger(log),
		pgcdc.SetOnErrorConnectionCallback(onConnError),
	)
	if err != nil {
		return fmt.Errorf("creating the worker: %w", err)
	}
	w.Handle(demoTable, printer.handle)
	slot := w.Sources()[0].Slot

	// Serve does not get runCtx: cancelling Serve's context would cancel
	// the handlers in flight, while Shutdown below lets them finish and
	// confirms the position reached.
	serveCtx, cancelServe := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelServe()
	serveDone := make(chan error, 1)
	go func() {
		err := w.Serve(serveCtx)
		serveDone <- err
		stopRun(fmt.Errorf("the worker stopped: %w", err))
	}()

	wr := newOrderWriter(conn)
	writerDone := make(chan error, 1)
	ready, slotErr := waitForSlot(runCtx, conn, slot)
	switch {
	case slotErr != nil:
		stopRun(slotErr)
		writerDone <- nil
	case !ready:
		writerDone <- nil
	default:
		streaming.Store(true)
		log.Info("pgcdc demo: streaming; writing changes into table "+demoTable+" (Ctrl-C to stop)", "rate_per_second", cfg.rate, "slot", slot)
		go func() {
			err := wr.run(runCtx, cfg.rate)
			if err != nil {
				stopRun(err)
			}
			writerDone <- err
		}()
	}

	<-runCtx.Done()
	writerErr := <-writerDone
	cause := context.Cause(runCtx)
	log.Info("pgcdc demo: stopping", "reason", cause)
	if errors.Is(cause, errDurationPassed) || ctx.Err() != nil {
		// Let the worker print the last changes written before it stops
		// reading, so the summary adds up.
		printer.waitFor(wr.inserts+wr.updates+wr.deletes, 2*time.Second)
	}
	shutCtx, cancelShut := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	shutErr := w.Shutdown(shutCtx)
	cancelShut()
	serveErr := <-serveDone

	fmt.Fprintf(stderr, "pgcdc demo: %d events printed (changes written: %d INSERT, %d UPDATE, %d DELETE) in %s\n",
		printer.printed(), wr.inserts, wr.updates, wr.deletes, time.Since(began).Round(100*time.Millisecond))

	switch {
	case serveErr != nil:
		return fmt.Errorf("the worker stopped: %w", serveErr)
	case slotErr != nil:
		return slotErr
	case writerErr != nil:
		return writerErr
	case shutErr != nil:
		return fmt.Errorf("shutting the worker down: %w", shutErr)
	case errors.Is(cause, errEnoughEvents), errors.Is(cause, errDurationPassed):
		return nil
	case errors.Is(ctx.Err(), context.Canceled):
		return nil // Ctrl-C: a normal end
	case errors.Is(cause, context.DeadlineExceeded):
		return fmt.Errorf("stopped early: %w", cause)
	default:
		return cause
	}
}

// stoppedDuringSetup is runDemo's result when ctx ended before the stream
// was set up: nil after Ctrl-C, an error when a deadline passed.
func stoppedDuringSetup(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return nil
	}
	return fmt.Errorf("stopped while setting up: %w", context.Cause(ctx))
}

func (c demoConfig) check() error {
	var problems []string
	if c.rate < 1 || c.rate > maxDemoRate {
		problems = append(problems, fmt.Sprintf("-rate %d: must be between 1 and %d", c.rate, maxDemoRate))
	}
	if c.duration < 0 {
		problems = append(problems, fmt.Sprintf("-duration %s: must not be negative", c.duration))
	}
	if c.n < 0 {
		problems = append(problems, fmt.Sprintf("-n %d: must not be negative", c.n))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// waitForSlot waits until the worker has created its replication slot and
// the slot has reached a consistent point: every transaction that commits
// after that is delivered, so the writer starts only then. It returns false
// when ctx ends first.
func waitForSlot(ctx context.Context, conn *pgx.Conn, slot string) (bool, error) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var ready bool
		err := conn.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND confirmed_flush_lsn IS NOT NULL)`,
			slot).Scan(&ready)
		switch {
		case ctx.Err() != nil:
			return false, nil
		case err != nil:
			return false, fmt.Errorf("waiting for replication slot %s: %w", slot, err)
		case ready:
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, nil
		case <-tick.C:
		}
	}
}

// eventPrinter is the demo's handler: it prints each event's JSON as one
// line, at most limit of them (0: no limit), and calls enough after the
// last one.
type eventPrinter struct {
	w      io.Writer
	limit  int
	enough func()

	mu       sync.Mutex
	count    int
	progress chan struct{} // gets a value (if empty) after each print
}

func newEventPrinter(w io.Writer, limit int, enough func()) *eventPrinter {
	return &eventPrinter{w: w, limit: limit, enough: enough, progress: make(chan struct{}, 1)}
}

func (p *eventPrinter) handle(ec *pgcdc.EventContext) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.limit > 0 && p.count >= p.limit {
		return nil // past -n: the demo is stopping
	}
	msg := ec.Message()
	line := make([]byte, 0, len(msg)+1)
	line = append(append(line, msg...), '\n')
	if _, err := p.w.Write(line); err != nil {
		return fmt.Errorf("printing event %s: %w", ec.Key(), err)
	}
	p.count++
	if p.limit > 0 && p.count == p.limit {
		p.enough()
	}
	select {
	case p.progress <- struct{}{}:
	default:
	}
	return nil
}

// waitFor waits until n events were printed, or for at most timeout.
func (p *eventPrinter) waitFor(n int, timeout time.Duration) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for p.printed() < n {
		select {
		case <-p.progress:
		case <-t.C:
			return
		}
	}
}

func (p *eventPrinter) printed() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.count
}

// orderWriter plays a small shop: orders are placed, move through their
// statuses (their total changing on the way) and some are removed. Its
// fields are used by one goroutine at a time.
type orderWriter struct {
	conn *pgx.Conn
	live []liveOrder // orders written and not deleted

	statuses, customers, tags, ops []string

	inserts, updates, deletes int
}

type liveOrder struct {
	id    int64
	stage int // index in statuses
}

func newOrderWriter(conn *pgx.Conn) *orderWriter {
	return &orderWriter{
		conn:      conn,
		statuses:  strings.Fields(orderStatuses),
		customers: strings.Fields(customerNames),
		tags:      strings.Fields(orderTagNames),
		ops:       strings.Fields(opCycle),
	}
}

// The values the writer picks from (space-separated).
const (
	orderStatuses = "pending paid shipped delivered"
	customerNames = "alice bob carol dave erin frank grace heidi"
	orderTagNames = "gift express fragile bulk priority"
)

// opCycle is the order of the writer's operations (space-separated); the
// first six changes hold each action at least once.
const opCycle = "INSERT INSERT UPDATE INSERT UPDATE DELETE"

// maxLiveOrders bounds the table: inserts turn into deletes above it.
const maxLiveOrders = 50

// run writes rate changes per second, each in its own transaction, until
// ctx ends (which is not an error).
func (wr *orderWriter) run(ctx context.Context, rate int) error {
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; ; i++ {
		if err := wr.step(ctx, wr.ops[i%len(wr.ops)]); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("writing demo rows: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (wr *orderWriter) step(ctx context.Context, op string) error {
	updatable := -1
	if op == pgcdc.ActionUpdate {
		// Pick an order that has a next status.
		for _, i := range rand.Perm(len(wr.live)) {
			if wr.live[i].stage < len(wr.statuses)-1 {
				updatable = i
				break
			}
		}
		if updatable < 0 {
			op = pgcdc.ActionInsert
		}
	}
	if op == pgcdc.ActionDelete && len(wr.live) == 0 {
		op = pgcdc.ActionInsert
	}
	if op == pgcdc.ActionInsert && len(wr.live) >= maxLiveOrders {
		op = pgcdc.ActionDelete
	}

	switch op {
	case pgcdc.ActionInsert:
		var tags []string
		for _, t := range wr.tags {
			if rand.IntN(3) == 0 {
				tags = append(tags, t)
			}
		}
		if tags == nil {
			tags = []string{} // NOT NULL column: an empty array, not NULL
		}
		cents := 500 + rand.Int64N(50000)
		var id int64
		err := wr.conn.QueryRow(ctx,
			`INSERT INTO orders (customer, total, status, tags) VALUES ($1, $2::bigint / 100.0, $3, $4) RETURNING id`,
			wr.customers[rand.IntN(len(wr.customers))], cents, wr.statuses[0], tags).Scan(&id)
		if err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		wr.live = append(wr.live, liveOrder{id: id})
		wr.inserts++
	case pgcdc.ActionUpdate:
		o := &wr.live[updatable]
		o.stage++
		// Shipping costs something, and paid orders sometimes get a discount.
		delta := int64(0)
		switch wr.statuses[o.stage] {
		case "paid":
			delta = -rand.Int64N(300)
		case "shipped":
			delta = 499
		}
		_, err := wr.conn.Exec(ctx,
			`UPDATE orders SET status = $2, total = GREATEST(total + $3::bigint / 100.0, 0) WHERE id = $1`,
			o.id, wr.statuses[o.stage], delta)
		if err != nil {
			return fmt.Errorf("update of order %d: %w", o.id, err)
		}
		wr.updates++
	case pgcdc.ActionDelete:
		i := rand.IntN(len(wr.live))
		if _, err := wr.conn.Exec(ctx, `DELETE FROM orders WHERE id = $1`, wr.live[i].id); err != nil {
			return fmt.Errorf("delete of order %d: %w", wr.live[i].id, err)
		}
		wr.live = append(wr.live[:i], wr.live[i+1:]...)
		wr.deletes++
	}
	return nil
}

// syncWriter serialises the writes of several goroutines to one writer.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}
