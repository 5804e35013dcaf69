package pgcdc_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// A writer's context reaches every event of its transaction (also a large
// one that arrives streamed), and only those.
func TestWriterContext(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, pad text)`)
	rec := newRecorder()
	smallMem := pgcdc.SetDBOption(func(c *pgconn.Config) { c.RuntimeParams["logical_decoding_work_mem"] = "64kB" })
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), smallMem)
	w.Handle("t", rec.handle)
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	write := func(values map[string]any, sql string) {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if values != nil {
			if err := pgcdc.SetTxContext(ctx, tx, values); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write(map[string]any{"actor": "u42", "request_id": "r-1"}, `INSERT INTO t VALUES (1), (2)`)
	write(nil, `INSERT INTO t VALUES (3)`)
	write(map[string]any{"actor": "batch"}, `INSERT INTO t SELECT i, repeat('x', 200) FROM generate_series(10, 2009) i`) // streamed
	evs := rec.waitCount(t, 2003)
	for i, ev := range evs {
		want := ""
		switch {
		case i < 2:
			want = `{"actor":"u42","request_id":"r-1"}`
		case i >= 3:
			want = `{"actor":"batch"}`
		}
		if string(ev.Context) != want {
			t.Fatalf("event %d context %s, want %q", i, ev.Context, want)
		}
	}
	rec.mu.Lock()
	h := rec.header[0]["context"]
	rec.mu.Unlock()
	if !strings.Contains(h, `"u42"`) {
		t.Fatalf("Header()[context] = %q", h)
	}
}

// BenchmarkWriterContext measures single-row write transactions with and
// without a writer context, while a worker captures them:
//
//	go test -run '^$' -bench WriterContext -benchtime 3000x .
func BenchmarkWriterContext(b *testing.B) {
	dsn := pgtest.NewDatabase(b)
	pgtest.Exec(b, dsn, `CREATE TABLE bt (id bigserial PRIMARY KEY, v int)`)
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn))
	if err != nil {
		b.Fatal(err)
	}
	w.Handle("bt", func(*pgcdc.EventContext) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	defer func() { cancel(); <-errc }()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	values := map[string]any{"actor": "u42", "request_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}
	for _, withContext := range []bool{false, true} {
		name := "plain"
		if withContext {
			name = "context"
		}
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				tx, err := conn.Begin(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if withContext {
					if err := pgcdc.SetTxContext(ctx, tx, values); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := tx.Exec(ctx, `INSERT INTO bt (v) VALUES (1)`); err != nil {
					b.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// Trigger mode: the context reaches the events of its transaction.
func TestWriterContextTriggerMode(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id int PRIMARY KEY)`)
	rec := newRecorder()
	w := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(pgcdc.CaptureTrigger))
	w.Handle("t", rec.handle)
	serve(t, w)
	modes[1].ready(t, dsn, defaultSlot, 1)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := pgcdc.SetTxContext(ctx, tx, map[string]any{"actor": "u7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	exec(t, dsn, `INSERT INTO t VALUES (2)`)
	evs := rec.waitCount(t, 2)
	if string(evs[0].Context) != `{"actor":"u7"}` || evs[1].Context != nil {
		t.Fatalf("contexts %s / %s", evs[0].Context, evs[1].Context)
	}
}
