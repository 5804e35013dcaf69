package pgcdc_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/pgcdc/pgcdc"
)

func TestNewWorkerValidation(t *testing.T) {
	cases := []struct {
		name string
		opts []pgcdc.OptionFunc
		want []string // substrings of the error; nil means no error
	}{
		{"ok", []pgcdc.OptionFunc{pgcdc.SetPostgresDSN("postgres://u@localhost/db")}, nil},
		{"no source", nil, []string{"no source"}},
		{"duplicate source", []pgcdc.OptionFunc{pgcdc.AddPostgresDSN("a", "postgres://x/db"), pgcdc.AddPostgresDSN("a", "postgres://y/db")}, []string{`source "a" is given more than once`}},
		{"empty dsn", []pgcdc.OptionFunc{pgcdc.SetPostgresDSN("")}, []string{"empty DSN"}},
		{"bad dsn hides password", []pgcdc.OptionFunc{pgcdc.SetPostgresDSN("postgres://u:s3cret@host:notaport/db")}, []string{"cannot be parsed"}},
		{"intervals", []pgcdc.OptionFunc{pgcdc.SetPostgresDSN("postgres://x/db"), pgcdc.SetMinReconnectInterval(10e9), pgcdc.SetMaxReconnectInterval(1e9)}, []string{"above SetMaxReconnectInterval"}},
		{"all at once", []pgcdc.OptionFunc{pgcdc.SetMaxGoroutines(-3), pgcdc.SetMaxRetries(-1), pgcdc.SetRetryBackoff(2e9, 1e9)},
			[]string{"no source", "SetMaxGoroutines(-3)", "SetMaxRetries(-1)", "SetRetryBackoff"}},
		{"nil option ignored", []pgcdc.OptionFunc{nil, pgcdc.SetPostgresDSN("postgres://x/db")}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, err := pgcdc.NewWorker(c.opts...)
			if c.want == nil {
				if err != nil || w == nil {
					t.Fatalf("NewWorker = %v, %v; want a worker", w, err)
				}
				return
			}
			if err == nil || !errors.Is(err, pgcdc.ErrConfig) {
				t.Fatalf("NewWorker error = %v; want ErrConfig", err)
			}
			for _, s := range c.want {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
			if strings.Contains(err.Error(), "s3cret") {
				t.Errorf("error shows the password: %q", err)
			}
		})
	}
}

func TestRouteErrorsBeforeAnyIO(t *testing.T) {
	// The DSN points nowhere: route errors must come before any connection.
	w, err := pgcdc.NewWorker(pgcdc.AddPostgresDSN("a", "postgres://u@127.0.0.1:1/db"), pgcdc.AddPostgresDSN("b", "postgres://u@127.0.0.1:1/db"))
	if err != nil {
		t.Fatal(err)
	}
	nop := func(*pgcdc.EventContext) error { return nil }
	w.Handle("orders", nop)                                  // ambiguous: two sources
	w.Handle(pgcdc.CreateHandlerRoute("zzz", "orders"), nop) // unknown source
	w.Handle(pgcdc.CreateHandlerRoute("a", "t"), nil)        // nil handler
	w.Handle(pgcdc.CreateHandlerRoute("a", "x"), nop)
	w.Handle(pgcdc.CreateHandlerRoute("a", "public.x"), nop) // duplicate table
	w.Handle(pgcdc.CreateHandlerRoute("a", ".x"), nop)       // empty schema
	err = w.Serve(t.Context())
	if !errors.Is(err, pgcdc.ErrConfig) {
		t.Fatalf("Serve = %v; want ErrConfig", err)
	}
	for _, s := range []string{`route "orders" names no source`, `source "zzz" was not added`, "nil handler", `already has a handler`, "empty schema"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q lacks %q", err, s)
		}
	}
}

func TestParseHandlerRoute(t *testing.T) {
	for _, c := range []struct{ route, src, table string }{
		{"orders", "", "orders"},
		{"Shop.we\"ird", "", "Shop.we\"ird"},
		{pgcdc.CreateHandlerRoute("s1", "a.b"), "s1", "a.b"},
		{pgcdc.CreateHandlerRoute("", "t"), "", "t"},
		{"{not json", "", "{not json"},
	} {
		src, table := pgcdc.ParseHandlerRoute(c.route)
		if src != c.src || table != c.table {
			t.Errorf("ParseHandlerRoute(%q) = %q, %q; want %q, %q", c.route, src, table, c.src, c.table)
		}
	}
}

func TestSlotNames(t *testing.T) {
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://x/db"), pgcdc.AddPostgresDSN("Billing DB", "postgres://x/db"), pgcdc.SetWorkerType("orders_svc"))
	if err != nil {
		t.Fatal(err)
	}
	got := w.Sources()
	if got[0].Slot != "pgcdc_orders_svc_default" || !strings.HasPrefix(got[1].Slot, "pgcdc_orders_svc_billing_db_") {
		t.Fatalf("slots = %+v", got)
	}
	// Worker types that normalise alike never share a slot.
	seen := map[string]string{}
	for _, wt := range []string{"Billing-Sync", "billing_sync", "billing-sync", "BILLING_SYNC", "billing.sync"} {
		w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://x/db"), pgcdc.SetWorkerType(wt))
		if err != nil {
			t.Fatal(err)
		}
		slot := w.Sources()[0].Slot
		if prev, dup := seen[slot]; dup {
			t.Fatalf("worker types %q and %q share slot %q", prev, wt, slot)
		}
		if len(slot) > 63 {
			t.Fatalf("slot %q is longer than 63 bytes", slot)
		}
		seen[slot] = wt
	}
}

func TestOptionLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []pgcdc.OptionFunc
		want string
	}{
		{"dead letter table without name", []pgcdc.OptionFunc{pgcdc.SetDeadLetterTable("audit.")}, "SetDeadLetterTable"},
		{"absurd goroutines", []pgcdc.OptionFunc{pgcdc.SetMaxGoroutines(100000)}, "SetMaxGoroutines(100000)"},
	} {
		_, err := pgcdc.NewWorker(append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN("postgres://x/db")}, tc.opts...)...)
		if !errors.Is(err, pgcdc.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrConfig naming %s", tc.name, err, tc.want)
		}
	}
	if _, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://x/db"), pgcdc.SetMaxGoroutines(0)); err != nil {
		t.Errorf("SetMaxGoroutines(0) (the default): %v", err)
	}
}

func TestCreateTableRoute(t *testing.T) {
	r := pgcdc.CreateTableRoute("", "my.schema", "t")
	src, table := pgcdc.ParseHandlerRoute(r)
	if src != "" || table != "my.schema.t" {
		t.Fatalf("ParseHandlerRoute(%s) = %q, %q", r, src, table)
	}
}
