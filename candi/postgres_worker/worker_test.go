package postgresworker

import (
	"bytes"
	"context"
	"errors"
	"log"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golangid/candi/candishared"
	candipw "github.com/golangid/candi/codebase/app/postgres_worker"
	"github.com/golangid/candi/codebase/factory"
	"github.com/golangid/candi/codebase/factory/types"
	"github.com/jackc/pgx/v5"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

var md5Hex = regexp.MustCompile(`^[0-9a-f]{32}$`)

// waitStreaming waits until every source of w streams (its slot is active).
func waitStreaming(t *testing.T, w factory.AppServerFactory, dsns map[string]string) {
	t.Helper()
	p := w.(*postgresWorker)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, src := range p.worker.Sources() {
		conn, err := pgx.Connect(ctx, dsns[src.Name])
		if err != nil {
			t.Fatal(err)
		}
		for {
			var active bool
			err := conn.QueryRow(ctx, `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = $1), false)`, src.Slot).Scan(&active)
			if err != nil {
				t.Fatalf("source %q: %v", src.Name, err)
			}
			if active {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("source %q: slot %s never became active", src.Name, src.Slot)
			case <-time.After(20 * time.Millisecond):
			}
		}
		conn.Close(ctx)
	}
}

func TestEventsFlow(t *testing.T) {
	dsn, dsn2 := pgtest.NewDatabase(t), pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(12,2), note text, big bigint);
		ALTER TABLE orders REPLICA IDENTITY FULL;
		CREATE TABLE customers (id int PRIMARY KEY, name text);`)
	pgtest.Exec(t, dsn2, `CREATE TABLE invoices (id int PRIMARY KEY, amount int)`)

	orders, customers, invoices := newRecorder(), newRecorder(), newRecorder()
	mod := &testModule{wt: types.PostgresListener, mount: func(g *types.WorkerHandlerGroup) {
		g.Add("orders", orders.handler)
		g.Add("customers", customers.handler, types.WorkerHandlerOptionDisableTrace())
		g.Add(CreateHandlerRoute("billing", "invoices"), invoices.handler)
	}}
	w := NewWorker(&testService{mods: []factory.ModuleFactory{mod}},
		SetPostgresDSN(dsn), AddPostgresDSN("billing", dsn2), SetDebugMode(false))
	if w.Name() != "postgres_listener" {
		t.Errorf("Name() = %q", w.Name())
	}
	serve(t, w)
	waitStreaming(t, w, map[string]string{"": dsn, "billing": dsn2})

	pgtest.Exec(t, dsn, `INSERT INTO orders VALUES (1, 12.50, '<b>&', 9007199254740993);
		UPDATE orders SET total = 13 WHERE id = 1;
		DELETE FROM orders WHERE id = 1;
		INSERT INTO customers VALUES (7, 'Ann');`)
	pgtest.Exec(t, dsn2, `INSERT INTO invoices VALUES (3, 40)`)

	got := orders.waitN(t, 3, time.Minute)
	for i, want := range []string{ActionInsert, ActionUpdate, ActionDelete} {
		e := got[i]
		if e.Payload.Action != want || e.Payload.Table != "orders" {
			t.Errorf("event %d: %s %s, want %s orders", i, e.Payload.Action, e.Payload.Table, want)
		}
		if e.Key != e.Payload.EventID || !md5Hex.MatchString(e.Key) {
			t.Errorf("event %d: Key %q, event_id %q: want the same 32-hex md5", i, e.Key, e.Payload.EventID)
		}
		if e.Route != "orders" || e.WorkerType != "postgres_listener" || !e.HasCtx {
			t.Errorf("event %d: route %q worker type %q context %v", i, e.Route, e.WorkerType, e.HasCtx)
		}
		if v, ok := e.Header["source_name"]; !ok || v != "" {
			t.Errorf("event %d: header %v, want source_name \"\"", i, e.Header)
		}
		if !bytes.HasPrefix(e.Message, []byte(`{"event_id":"`+e.Key+`","table":"orders","action":"`+want+`","data":{"old_id":"","new_id":"",`)) {
			t.Errorf("event %d: message not in candi's shape: %s", i, e.Message)
		}
	}
	if m := string(got[0].Message); !strings.Contains(m, `"old":null,"new":{"id":1,"total":12.50,"note":"<b>&","big":9007199254740993}`) {
		t.Errorf("INSERT message: %s", m)
	}
	if m := string(got[1].Message); !strings.Contains(m, `"old":{"id":1,"total":12.50,"note":"<b>&","big":9007199254740993},"new":{"id":1,"total":13.00,`) {
		t.Errorf("UPDATE message: %s", m)
	}
	if got[0].Payload.Data.Old != nil || got[2].Payload.Data.New != nil || got[2].Payload.Data.Old == nil {
		t.Errorf("old/new: insert old %v, delete old %v new %v", got[0].Payload.Data.Old, got[2].Payload.Data.Old, got[2].Payload.Data.New)
	}

	c := customers.waitN(t, 1, time.Minute)[0]
	if c.Route != "customers" || c.Payload.Action != ActionInsert {
		t.Errorf("customers: %+v", c)
	}
	inv := invoices.waitN(t, 1, time.Minute)[0]
	if inv.Route != "invoices" || inv.Header["source_name"] != "billing" || inv.Payload.Table != "invoices" {
		t.Errorf("invoices: route %q header %v table %q", inv.Route, inv.Header, inv.Payload.Table)
	}

	// Tracing like candi's worker: one root span per event named
	// PostgresEventListener, tagged table_name and action (and source_name
	// for a named source); none for a route with DisableTrace.
	// A span finishes just after its handler returned: wait for them.
	var orderSpans, customerSpans, invoiceSpans int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		orderSpans, customerSpans, invoiceSpans = 0, 0, 0
		for _, s := range spans.finished() {
			switch s.Tags["table_name"] {
			case "orders":
				orderSpans++
			case "customers":
				customerSpans++
			case "invoices":
				invoiceSpans++
			}
		}
		if orderSpans >= 3 && invoiceSpans >= 1 || time.Now().After(deadline) {
			break
		}
	}
	orderSpans, customerSpans, invoiceSpans = 0, 0, 0
	for _, s := range spans.finished() {
		if s.Name != "PostgresEventListener" {
			continue
		}
		switch s.Tags["table_name"] {
		case "orders":
			orderSpans++
			if s.Tags["action"] == nil || s.Logs["dsn"] == nil || s.Logs["payload"] == nil {
				t.Errorf("orders span: tags %v logs %v", s.Tags, s.Logs)
			}
			if _, ok := s.Tags["source_name"]; ok {
				t.Errorf("orders span has a source_name tag: %v", s.Tags)
			}
		case "customers":
			customerSpans++
		case "invoices":
			invoiceSpans++
			if s.Tags["source_name"] != "billing" {
				t.Errorf("invoices span: tags %v", s.Tags)
			}
		}
	}
	if orderSpans != 3 || customerSpans != 0 || invoiceSpans != 1 {
		t.Errorf("spans: orders %d (want 3), customers %d (want 0, DisableTrace), invoices %d (want 1)", orderSpans, customerSpans, invoiceSpans)
	}
}

func TestHandlerErrors(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE c (id int PRIMARY KEY)`)

	var aCalls, bCalls, cCalls, after atomic.Int32
	bDone := make(chan struct{})
	cDone := make(chan struct{})
	mod := &testModule{wt: types.PostgresListener, mount: func(g *types.WorkerHandlerGroup) {
		// a: always fails; auto-ack (candi's default) means: retried, then
		// dead-lettered, and the stream goes on.
		g.Add("a", func(*candishared.EventContext) error { aCalls.Add(1); return errors.New("a is broken") })
		// b: auto-ack off: retried past the retry limit until it succeeds.
		g.Add("b", func(*candishared.EventContext) error {
			if bCalls.Add(1) < 4 {
				return errors.New("not yet")
			}
			close(bDone)
			return nil
		}, types.WorkerHandlerOptionAutoACK(false))
		// c: panics once; the after-handler runs on every attempt.
		g.Add("c", func(*candishared.EventContext) error {
			if cCalls.Add(1) == 1 {
				panic("boom")
			}
			return nil
		}, types.WorkerHandlerOptionAddHandlers(func(*candishared.EventContext) error {
			if after.Add(1) == 1 {
				close(cDone)
			}
			return nil
		}))
	}}
	w := NewWorker(&testService{mods: []factory.ModuleFactory{mod}}, SetPostgresDSN(dsn), SetDebugMode(false),
		SetMaxRetries(1), SetRetryBackoff(5*time.Millisecond, 10*time.Millisecond))
	serve(t, w)
	waitStreaming(t, w, map[string]string{"": dsn})
	pgtest.Exec(t, dsn, `INSERT INTO a VALUES (1); INSERT INTO b VALUES (1); INSERT INTO c VALUES (1)`)

	for _, ch := range []chan struct{}{bDone, cDone} {
		select {
		case <-ch:
		case <-time.After(time.Minute):
			t.Fatalf("handlers not done: b %d calls, c %d calls", bCalls.Load(), cCalls.Load())
		}
	}
	if n := bCalls.Load(); n != 4 {
		t.Errorf("b (auto-ack off, 1 retry allowed) called %d times, want 4", n)
	}
	// a's event reaches the dead-letter table after 2 attempts.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pgcdc.dead_letters WHERE error LIKE '%a is broken%'`).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a's event never dead-lettered (calls %d, last err %v)", aCalls.Load(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if n := aCalls.Load(); n != 2 {
		t.Errorf("a called %d times, want 2 (1 retry)", n)
	}
	var panicSpan bool
	for _, s := range spans.finished() {
		if s.Tags["table_name"] == "c" && s.Tags["panic"] == true && s.Err != nil {
			panicSpan = true
		}
	}
	if !panicSpan {
		t.Error("no span tagged panic for c's first attempt")
	}
}

func TestConfigErrorPanicsInServe(t *testing.T) {
	mod := &testModule{wt: types.PostgresListener, mount: func(g *types.WorkerHandlerGroup) {
		g.Add(CreateHandlerRoute("nosuch", "t"), func(*candishared.EventContext) error { return nil })
		g.Add("twice", func(*candishared.EventContext) error { return nil })
		g.Add("twice", func(*candishared.EventContext) error { return nil })
	}}
	w := NewWorker(&testService{mods: []factory.ModuleFactory{mod}}, SetPostgresDSN("postgres://u@127.0.0.1:1/db"), SetDebugMode(false))
	var p any
	func() {
		defer func() { p = recover() }()
		w.Serve()
	}()
	err, ok := p.(error)
	if !ok || !strings.Contains(err.Error(), "source name 'nosuch' unregistered") || !strings.Contains(err.Error(), "table 'twice' is mounted twice") {
		t.Fatalf("Serve panicked with %v, want the unregistered source and double mount errors", p)
	}
}

func TestCandiTriggersWarnedAndDropped(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE orders (id int PRIMARY KEY); CREATE TABLE "Odd ""name" (id int PRIMARY KEY)`)
	mount := func(g *types.WorkerHandlerGroup) {
		g.Add("orders", func(*candishared.EventContext) error { return nil })
	}
	svc := &testService{mods: []factory.ModuleFactory{&testModule{wt: types.PostgresListener, mount: mount}}}
	// candi's own worker installs its function and trigger.
	cw := candipw.NewWorker(svc, candipw.SetPostgresDSN(dsn), candipw.SetDebugMode(false))
	cw.Shutdown(context.Background())
	pgtest.Exec(t, dsn, `CREATE TRIGGER "Odd ""name_notify_event" AFTER INSERT ON "Odd ""name" FOR EACH ROW EXECUTE PROCEDURE notify_event()`)

	ctx := context.Background()
	found, err := FindCandiTriggers(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	wantSQL := `DROP TRIGGER IF EXISTS "Odd ""name_notify_event" ON "public"."Odd ""name";
DROP TRIGGER IF EXISTS "orders_notify_event" ON "public"."orders";
DROP FUNCTION IF EXISTS "public"."notify_event"();
`
	if found.DropSQL() != wantSQL {
		t.Fatalf("DropSQL:\n%s\nwant:\n%s", found.DropSQL(), wantSQL)
	}

	// Our worker warns at start, with that SQL.
	var buf syncBuffer
	orig := log.Writer()
	log.SetOutput(&buf)
	defer log.SetOutput(orig)
	w := NewWorker(svc, SetPostgresDSN(dsn), SetDebugMode(false))
	serve(t, w)
	waitStreaming(t, w, map[string]string{"": dsn})
	out := buf.String()
	if !strings.Contains(out, "candi's notify_event() function and 2 trigger(s) are still installed") || !strings.Contains(out, wantSQL) {
		t.Errorf("no warning with the SQL in the log:\n%s", out)
	}

	dropped, err := DropCandiTriggers(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped.Triggers) != 2 || dropped.Function == "" {
		t.Errorf("dropped %+v", dropped)
	}
	if again, err := FindCandiTriggers(ctx, dsn); err != nil || again.Found() {
		t.Errorf("after drop: %+v, %v", again, err)
	}
	// Writers no longer notify: the table takes writes without the function.
	pgtest.Exec(t, dsn, `INSERT INTO orders VALUES (1); INSERT INTO "Odd ""name" VALUES (1)`)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
