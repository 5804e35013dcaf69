package pgcdc_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
)

// A projection kept exactly once: each order's total is added to its
// customer's row in the same transaction as the order event's inbox
// record, so a redelivered event is not added again.
func ExampleWorker_HandleInTx() {
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://app@db:5432/shop"), pgcdc.SetMaxGoroutines(8))
	if err != nil {
		log.Fatal(err)
	}
	w.HandleInTx("orders", func(ec *pgcdc.EventContext, tx pgx.Tx) error {
		var o struct {
			Customer int64   `json:"customer_id"`
			Total    float64 `json:"total"`
		}
		if err := ec.Event().Data.DecodeNew(&o); err != nil {
			return pgcdc.Permanent(err)
		}
		_, err := tx.Exec(ec.Context(), `UPDATE customer_totals SET total = total + $2 WHERE id = $1`, o.Customer, o.Total)
		return err
	}, pgcdc.WithInTxBatch(8, 0))
	_ = w.Serve(context.Background())
}
