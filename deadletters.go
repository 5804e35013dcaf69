package pgcdc

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// RedeliverDeadLetters hands the dead-lettered events of a source (of this
// worker type) back to the handlers now registered for their tables, oldest
// first, at most limit of them (0 means all). An event whose handler
// succeeds is removed from the dead-letter table; one that fails again stays
// there with the new error. It returns how many were delivered. Handlers run
// once each, without retries, on the caller's goroutine; it can run while
// the worker serves.
func (w *Worker) RedeliverDeadLetters(ctx context.Context, sourceName string, limit int) (int, error) {
	if w.opt.deadLetterOff {
		return 0, fmt.Errorf("%w: dead letters are disabled (DisableDeadLetter)", ErrConfig)
	}
	w.mu.Lock()
	plan, err := w.plan()
	w.mu.Unlock()
	if err != nil {
		return 0, err
	}
	var src *source
	for i := range w.opt.sources {
		if w.opt.sources[i].name == sourceName {
			src = &w.opt.sources[i]
		}
	}
	if src == nil {
		return 0, fmt.Errorf("%w: source %q was not added", ErrConfig, sourceName)
	}
	handlers := map[string]dispatch.Handler{}
	for _, cfg := range plan {
		if cfg.Name != sourceName {
			continue
		}
		for _, t := range cfg.Tables {
			h := t.Route.Handler
			if t.Route.Tx && cfg.TxRoute != nil {
				h = redeliverTx(cfg.TxRoute.Handler) // a one-event transaction
			}
			handlers[t.Schema+"."+t.Table] = h
		}
	}
	pcfg, err := pgxpool.ParseConfig(src.dsn)
	if err != nil {
		return 0, fmt.Errorf("%w: source %q: the DSN cannot be parsed", ErrConfig, sourceName)
	}
	for _, fn := range w.opt.dbOptions {
		fn(&pcfg.ConnConfig.Config)
	}
	pcfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	store, err := w.openDeadLetter(ctx, pool)
	if err != nil {
		return 0, err
	}
	return store.Redeliver(ctx, sourceName, limit, func(ctx context.Context, c *change.Change) error {
		h, ok := handlers[c.Schema+"."+c.Table]
		if !ok {
			return fmt.Errorf("no handler is registered for table %s.%s", c.Schema, c.Table)
		}
		return dispatch.Call(ctx, h, c)
	})
}

// redeliverTx hands one dead-lettered event of a grouped table to the
// transaction handler, as a transaction of that one event.
func redeliverTx(h dispatch.Handler) dispatch.Handler {
	return func(ctx context.Context, c *change.Change) error {
		b := txbuf.New(0, "")
		defer b.Close()
		if err := b.Add(c.Message); err != nil {
			return err
		}
		tc := *c
		tc.Action, tc.Tx = change.Transaction, b
		return h(ctx, &tc)
	}
}
