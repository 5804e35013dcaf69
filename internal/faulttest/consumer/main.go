// Command consumer is the pgcdc consumer the fault tests of package faulttest
// run as a separate process (so it can be killed with SIGKILL). It streams one
// table through the public pgcdc API and records every event durably before
// its handler returns: one INSERT per delivery into the table "seen" of
// another database (not unique, so redeliveries are counted). With
// -record-rows it records the row's JSON too (data.new; NULL for a DELETE),
// so a test can rebuild the table from the events; with -snapshot the route
// reads the table's existing rows first (pgcdc.WithSnapshot(SnapshotInitial)).
// With -count it instead increments a counter row of the captured database
// per event, through the transactional inbox (-count inbox: pgcdc.HandleInTx)
// or with a plain handler (-count plain), for the exactly-once scenario.
//
// SIGTERM or SIGINT shut it down gracefully (Worker.Shutdown). It exits with
// status 0 after a graceful stop and 1 when Serve returned an error, which it
// prints on stderr as "SERVE-ERROR: ...".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc"
)

func main() {
	var (
		dsn        = flag.String("dsn", "", "DSN of the captured database")
		recordDSN  = flag.String("record-dsn", "", "DSN of the database holding the seen table")
		table      = flag.String("table", "rows", "route (table) to handle")
		workerType = flag.String("worker-type", "", "pgcdc worker type (slot and publication name)")
		run        = flag.Int("run", 0, "run number recorded with each event")
		instance   = flag.String("instance", "", "instance name recorded with each event")
		goroutines = flag.Int("goroutines", 8, "SetMaxGoroutines")
		minRecon   = flag.Duration("min-reconnect", 50*time.Millisecond, "SetMinReconnectInterval")
		maxRecon   = flag.Duration("max-reconnect", time.Second, "SetMaxReconnectInterval")
		jitter     = flag.Duration("jitter", 0, "random handler delay in [0, jitter) before recording, so handlers finish out of order")
		minRetry   = flag.Duration("min-retry", 10*time.Millisecond, "SetRetryBackoff minimum (maximum: 1s)")
		failRate   = flag.Float64("fail-rate", 0, "probability that a handler call fails (before recording), to exercise retries")
		locker     = flag.String("locker", "", `"advisory": elect the streaming instance with pgcdc.NewAdvisoryLocker on -dsn (default: the slot alone)`)
		lockEvery  = flag.Duration("lock-interval", 200*time.Millisecond, "advisory locker retry and check interval")
		snapshot   = flag.Bool("snapshot", false, "route with pgcdc.WithSnapshot(pgcdc.SnapshotInitial): read the table's rows first")
		recordRows = flag.Bool("record-rows", false, "record each event's row JSON (data.new) in seen.data")
		verbose    = flag.Bool("v", false, "debug logging")
		countMode  = flag.String("count", "", `instead of recording each event: "inbox" increments a counter row per event with HandleInTx (exactly once), "plain" does the same write with Handle (at least once)`)
		countTable = flag.String("count-table", "counts", "table (k int PRIMARY KEY, n bigint) of the captured database the -count handler increments (row k = id % 16)")
		batch      = flag.Int("batch", 0, "-count inbox: WithInTxBatch(batch, 0) (group commit) when above 1")
		prune      = flag.Duration("prune", 0, "-count inbox: WithInboxPruneInterval (0: the default)")
	)
	flag.Parse()

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})).
		With("instance", *instance, "run", *run, "pid", os.Getpid())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if *countMode != "" {
		*recordDSN = *dsn // the counters live in the captured database
	}
	pcfg, err := pgxpool.ParseConfig(*recordDSN)
	if err != nil {
		fail(log, fmt.Errorf("record DSN: %w", err))
	}
	pcfg.MaxConns = int32(*goroutines) + 2
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		fail(log, fmt.Errorf("record pool: %w", err))
	}
	defer pool.Close()

	opts := []pgcdc.OptionFunc{
		pgcdc.SetPostgresDSN(*dsn),
		pgcdc.SetMaxGoroutines(*goroutines),
		pgcdc.SetMinReconnectInterval(*minRecon),
		pgcdc.SetMaxReconnectInterval(*maxRecon),
		pgcdc.SetLogger(log),
		pgcdc.SetRetryBackoff(*minRetry, max(*minRetry, time.Second)),
		// A failed record must be retried, never dead-lettered: the test
		// counts what was recorded.
		pgcdc.DisableDeadLetter(),
	}
	switch *locker {
	case "":
	case "advisory":
		opts = append(opts, pgcdc.SetLocker(pgcdc.NewAdvisoryLocker(*dsn, *lockEvery)))
	default:
		fail(log, fmt.Errorf("unknown -locker %q", *locker))
	}
	if *workerType != "" {
		opts = append(opts, pgcdc.SetWorkerType(*workerType))
	}
	w, err := pgcdc.NewWorker(opts...)
	if err != nil {
		fail(log, err)
	}
	var hopts []pgcdc.HandlerOption
	if *snapshot {
		hopts = append(hopts, pgcdc.WithSnapshot(pgcdc.SnapshotInitial))
	}
	if *countMode != "" {
		if err := handleCount(w, pool, *countMode, *table, *countTable, *batch, *prune, *failRate); err != nil {
			fail(log, err)
		}
	} else {
		handleRecord(w, pool, recordOptions{table: *table, jitter: *jitter, failRate: *failRate, run: *run, instance: *instance, rows: *recordRows}, hopts...)
	}

	errc := make(chan error, 1)
	go func() { errc <- w.Serve(context.Background()) }()
	select {
	case err := <-errc:
		fail(log, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Shutdown(sctx); err != nil {
		fail(log, fmt.Errorf("shutdown: %w", err))
	}
	if err := <-errc; err != nil && !errors.Is(err, context.Canceled) {
		fail(log, err)
	}
	log.Info("consumer: stopped")
}

// rowID reads the "id" of an event's row (the old row of a DELETE).
func rowID(ec *pgcdc.EventContext) (int64, error) {
	ev := ec.Event()
	if ev == nil {
		return 0, fmt.Errorf("event %s is not valid JSON", ec.Key())
	}
	var row struct {
		ID *int64 `json:"id"`
	}
	data := ev.Data.New
	if ev.Action == pgcdc.ActionDelete {
		data = ev.Data.Old
	}
	if err := (pgcdc.EventPayloadData{New: data}).DecodeNew(&row); err != nil || row.ID == nil {
		return 0, fmt.Errorf("event %s has no id: %v", ec.Key(), err)
	}
	return *row.ID, nil
}

// handleCount registers a handler that increments counter row id % 16 of
// countTable per event: through the inbox (exactly once) or directly (at
// least once).
func handleCount(w *pgcdc.Worker, pool *pgxpool.Pool, mode, table, countTable string, batch int, prune time.Duration, failRate float64) error {
	upd := `UPDATE ` + pgx.Identifier{countTable}.Sanitize() + ` SET n = n + 1 WHERE k = $1`
	switch mode {
	case "inbox":
		opts := []pgcdc.HandlerOption{pgcdc.WithTargetPool(pool)}
		if batch > 1 {
			opts = append(opts, pgcdc.WithInTxBatch(batch, 0))
		}
		if prune > 0 {
			opts = append(opts, pgcdc.WithInboxPruneInterval(prune))
		}
		w.HandleInTx(table, func(ec *pgcdc.EventContext, tx pgx.Tx) error {
			id, err := rowID(ec)
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ec.Context(), upd, id%16); err != nil {
				return err
			}
			if failRate > 0 && rand.Float64() < failRate {
				return fmt.Errorf("injected failure after the write, for event %s", ec.Key())
			}
			return nil
		}, opts...)
	case "plain":
		w.Handle(table, func(ec *pgcdc.EventContext) error {
			id, err := rowID(ec)
			if err != nil {
				return err
			}
			_, err = pool.Exec(ec.Context(), upd, id%16)
			return err
		})
	default:
		return fmt.Errorf("unknown -count %q", mode)
	}
	return nil
}

// handleRecord registers the handler that records each delivery in the
// "seen" table.
// recordOptions say how handleRecord records events.
type recordOptions struct {
	table    string
	jitter   time.Duration
	failRate float64
	run      int
	instance string
	rows     bool // record each event's row JSON in seen.data
}

func handleRecord(w *pgcdc.Worker, pool *pgxpool.Pool, o recordOptions, hopts ...pgcdc.HandlerOption) {
	w.Handle(o.table, func(ec *pgcdc.EventContext) error {
		ev := ec.Event()
		if ev == nil {
			return fmt.Errorf("event %s is not valid JSON", ec.Key())
		}
		var row struct {
			ID *int64 `json:"id"`
		}
		data := ev.Data.New
		if ev.Action == pgcdc.ActionDelete {
			data = ev.Data.Old
		}
		if err := (pgcdc.EventPayloadData{New: data}).DecodeNew(&row); err != nil || row.ID == nil {
			return fmt.Errorf("event %s has no id: %v", ec.Key(), err)
		}
		if o.jitter > 0 {
			time.Sleep(rand.N(o.jitter))
		}
		if o.failRate > 0 && rand.Float64() < o.failRate {
			return fmt.Errorf("injected failure for event %s", ec.Key())
		}
		var rowJSON *string
		if o.rows && ev.Action != pgcdc.ActionDelete {
			s := string(ev.Data.New)
			rowJSON = &s
		}
		_, err := pool.Exec(ec.Context(), `INSERT INTO seen (event_id, tbl, action, row_id, lsn, run, inst, data)
			VALUES ($1, $2, $3, $4, $5::text::pg_lsn, $6, $7, $8)`,
			ev.EventID, ev.Table, ev.Action, *row.ID, ev.LSN, o.run, o.instance, rowJSON)
		return err
	}, hopts...)
}

func fail(log *slog.Logger, err error) {
	if err == nil {
		err = errors.New("serve returned nil before any shutdown")
	}
	log.Error("consumer: fatal", "error", err)
	fmt.Fprintf(os.Stderr, "SERVE-ERROR: %v\n", err)
	os.Exit(1)
}
