package pgcdc_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/pgcdc/pgcdc"
)

// A worker with one handler, stopped gracefully on Ctrl-C.
func ExampleNewWorker() {
	w, err := pgcdc.NewWorker(
		pgcdc.SetPostgresDSN("postgres://app@localhost:5432/shop"),
		pgcdc.SetMaxGoroutines(8),
	)
	if err != nil {
		log.Fatal(err)
	}
	w.Handle("orders", func(ec *pgcdc.EventContext) error {
		ev := ec.Event()
		var order struct {
			ID    int64  `json:"id"`
			State string `json:"state"`
		}
		if err := ev.Data.DecodeNew(&order); err != nil {
			return err
		}
		fmt.Println(ev.Action, order.ID, order.State)
		return nil // acknowledge; an error is retried, then dead-lettered
	})

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = w.Shutdown(sctx) // finish in-flight handlers, confirm the position
	}()
	if err := w.Serve(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

type ordersModule struct{}

func (ordersModule) MountHandlers(g *pgcdc.HandlerGroup) {
	g.Add("orders", func(ec *pgcdc.EventContext) error { return nil })
	g.Add("billing.invoices", func(ec *pgcdc.EventContext) error { return nil }, pgcdc.WithMaxGoroutines(4))
}

// Modules mount their routes, candi style.
func ExampleWorker_Mount() {
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://app@localhost:5432/shop"))
	if err != nil {
		log.Fatal(err)
	}
	w.Mount(ordersModule{})
}

// Routes of named sources.
func ExampleCreateHandlerRoute() {
	route := pgcdc.CreateHandlerRoute("billing-db", "public.invoices")
	fmt.Println(route)
	fmt.Println(pgcdc.ParseHandlerRoute(route))
	fmt.Println(pgcdc.ParseHandlerRoute("sales.orders"))
	// Output:
	// {"sourceName":"billing-db","tableName":"public.invoices"}
	// billing-db public.invoices
	//  sales.orders
}

// NewWorker reports every configuration problem at once, without I/O.
func ExampleNewWorker_validation() {
	_, err := pgcdc.NewWorker(pgcdc.SetMaxGoroutines(-1), pgcdc.SetMaxRetries(-2))
	fmt.Println(errors.Is(err, pgcdc.ErrConfig))
	fmt.Println(err)
	// Output:
	// true
	// pgcdc: invalid configuration: no source: give SetPostgresDSN or AddPostgresDSN
	// pgcdc: invalid configuration: SetMaxGoroutines(-1): must be from 1 to 1024 (0 means the default, 1)
	// pgcdc: invalid configuration: SetMaxRetries(-2): must not be negative
}
