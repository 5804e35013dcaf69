package pgcdctest_test

import (
	"bytes"
	"context"
	"fmt"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/pgcdctest"
)

// A handler under test gets an event exactly as pgcdc would deliver it.
func ExampleEvent_Context() {
	handler := func(ec *pgcdc.EventContext) error {
		var o struct{ ID int }
		if err := ec.Event().Data.DecodeNew(&o); err != nil {
			return err
		}
		fmt.Println(ec.HandlerRoute(), ec.Event().Action, o.ID)
		return nil
	}

	ev := pgcdctest.Insert("orders", pgcdctest.R("id", 42, "total", 12.5))
	ec, err := ev.Context(context.Background(), "orders")
	if err != nil {
		panic(err)
	}
	if err := handler(ec); err != nil {
		panic(err)
	}
	// Output: orders INSERT 42
}

// Replay hands recorded events (JSON lines, as Recorder writes them) to a
// worker's handlers with its routing and retries, without a database.
func ExampleReplay() {
	w, _ := pgcdctest.NewWorker(pgcdc.SetMaxRetries(1))
	w.Handle("orders", func(ec *pgcdc.EventContext) error {
		fmt.Println("handled", ec.Event().Action)
		return nil
	})
	line, _ := pgcdctest.Delete("orders", pgcdctest.R("id", 7)).JSON()
	res, err := pgcdctest.Replay(context.Background(), w, bytes.NewReader(append(line, '\n')))
	fmt.Println(res.Delivered, err)
	// Output:
	// handled DELETE
	// 1 <nil>
}
