package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

const slotMain = "pgcdc_postgres_listener_main"

// waitSlotActive waits until a process reads the slot.
func waitSlotActive(t *testing.T, dsn, slot string) {
	t.Helper()
	waitFor(t, time.Minute, "slot "+slot+" active", func() bool {
		return queryInt(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 AND active`, slot) == 1
	})
}

// libraryEvents runs the library in-process on the same changes (its own
// slot) and returns a function giving the events seen so far.
func libraryEvents(t *testing.T, dsn string, tables ...string) func() [][]byte {
	t.Helper()
	var mu sync.Mutex
	var got [][]byte
	w, err := pgcdc.NewWorker(pgcdc.AddPostgresDSN("main", dsn), pgcdc.SetWorkerType("oracle"),
		pgcdc.SetMinReconnectInterval(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		w.Handle(pgcdc.CreateHandlerRoute("main", tb), func(ec *pgcdc.EventContext) error {
			mu.Lock()
			got = append(got, append([]byte(nil), ec.Message()...))
			mu.Unlock()
			return nil
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		_ = w.Shutdown(sctx)
		cancel()
		<-errc
	})
	waitSlotActive(t, dsn, "pgcdc_oracle_main")
	return func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

func compact(t *testing.T, b []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestRunStdoutAndFileEqualLibraryEvents: the lines of the stdout and file
// sinks are the library's events, in order, for the routed table only.
func TestRunStdoutAndFileEqualLibraryEvents(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE orders (id int PRIMARY KEY, status text, doc json, tags text[]);
		ALTER TABLE orders REPLICA IDENTITY FULL;
		CREATE TABLE other (id int PRIMARY KEY)`)
	lib := libraryEvents(t, dsn, "orders")
	out := filepath.Join(t.TempDir(), "events.jsonl")
	cfg := writeConfig(t, `
sources:
  main: {dsn: "${TEST_DSN}"}
routes:
  - tables: [orders]
    sinks: [out, file]
sinks:
  out: {type: stdout}
  file: {type: file, path: `+out+`}
`)
	p := start(t, []string{"TEST_DSN=" + dsn}, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)

	pgtest.Exec(t, dsn, `INSERT INTO orders VALUES (1, 'new', '{"a":
  1}', '{x,"y z"}'), (2, 'new', null, '{}');
		INSERT INTO other VALUES (1);
		UPDATE orders SET status = 'paid' WHERE id = 1;
		DELETE FROM orders WHERE id = 2;`)
	const want = 4
	waitFor(t, time.Minute, "4 lines on stdout and in the file", func() bool {
		return len(lines(p.stdout.String())) >= want && len(fileLines(t, out)) >= want && len(lib()) >= want
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("pgcdc run exited %d after SIGTERM; stderr:\n%s", code, p.stderr.String())
	}
	var libLines []string
	for _, m := range lib() {
		libLines = append(libLines, compact(t, m))
	}
	stdout, file := lines(p.stdout.String()), fileLines(t, out)
	if !slices.Equal(stdout, libLines) {
		t.Errorf("stdout lines differ from the library's events:\n got %q\nwant %q", stdout, libLines)
	}
	if !slices.Equal(file, libLines) {
		t.Errorf("file lines differ from the library's events:\n got %q\nwant %q", file, libLines)
	}
	for _, l := range stdout {
		if e := parseEvent(t, l); e.Table != "orders" {
			t.Errorf("event of an unrouted table: %s", l)
		}
	}
	// Everything delivered was confirmed before the exit: a restart
	// delivers nothing again.
	p2 := start(t, []string{"TEST_DSN=" + dsn}, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)
	pgtest.Exec(t, dsn, `INSERT INTO orders VALUES (3, 'later', null, null)`)
	waitFor(t, time.Minute, "the next event", func() bool { return len(lines(p2.stdout.String())) >= 1 })
	if code := p2.stop(t); code != 0 {
		t.Fatalf("second run exited %d", code)
	}
	if l := lines(p2.stdout.String()); len(l) != 1 || parseEvent(t, l[0]).Data.New["id"] != float64(3) {
		t.Errorf("after a clean restart, stdout = %q, want only the insert of id 3", l)
	}
}

// TestSIGTERMUnderLoadThenRestart: a daemon stopped with SIGTERM while rows
// are written, then started again, delivers every row.
func TestSIGTERMUnderLoadThenRestart(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, n int)`)
	out := filepath.Join(t.TempDir(), "events.jsonl")
	cfg := writeConfig(t, `
sources:
  main:
    dsn: "${TEST_DSN}"
    max_goroutines: 4
routes:
  - {tables: ["public.*"], sinks: [file]}
sinks:
  file: {type: file, path: `+out+`, fsync: always}
shutdown_grace: 20s
`)
	env := []string{"TEST_DSN=" + dsn}
	p := start(t, env, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)

	const rows = 600
	writerDone := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			writerDone <- err
			return
		}
		defer conn.Close(ctx)
		for i := 1; i <= rows; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO items VALUES ($1, $1)`, i); err != nil {
				writerDone <- err
				return
			}
		}
		writerDone <- nil
	}()
	waitFor(t, time.Minute, "100 delivered events", func() bool { return len(fileLines(t, out)) >= 100 })
	if code := p.stop(t); code != 0 {
		t.Fatalf("pgcdc run exited %d after SIGTERM under load; stderr:\n%s", code, p.stderr.String())
	}
	firstRun := len(fileLines(t, out))
	p2 := start(t, env, "run", "-c", cfg)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	ids := map[float64]bool{}
	waitFor(t, 2*time.Minute, fmt.Sprintf("all %d rows in the file", rows), func() bool {
		clear(ids)
		for _, l := range fileLines(t, out) {
			e := parseEvent(t, l)
			ids[e.Data.New["id"].(float64)] = true
		}
		return len(ids) == rows
	})
	if code := p2.stop(t); code != 0 {
		t.Fatalf("second run exited %d", code)
	}
	all := fileLines(t, out)
	t.Logf("first run wrote %d lines before SIGTERM; %d lines in all for %d rows (%d duplicates)", firstRun, len(all), rows, len(all)-rows)
	if !strings.Contains(p.stderr.String(), "stopping") {
		t.Errorf("no stop log line on stderr: %s", p.stderr.String())
	}
}

// TestStandbyInstanceIsReady: a second daemon on the same configuration
// stands by (ready, not up) while the first streams, and takes over when
// the first stops, delivering what was written meanwhile.
func TestStandbyInstanceIsReady(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	out := filepath.Join(t.TempDir(), "events.jsonl")
	config := func(addr string) string {
		return writeConfig(t, `
sources:
  main: {dsn: "${TEST_DSN}", reconnect: {min: 100ms, max: 200ms}}
routes: [{tables: [items], sinks: [f]}]
sinks: {f: {type: file, path: `+out+`}}
http: {listen: "`+addr+`"}
`)
	}
	env := []string{"TEST_DSN=" + dsn}
	a1, a2 := freeAddr(t), freeAddr(t)
	p1 := start(t, env, "run", "-c", config(a1))
	waitSlotActive(t, dsn, slotMain)
	p2 := start(t, env, "run", "-c", config(a2))
	waitFor(t, time.Minute, "the second instance's http endpoint", func() bool {
		code, _ := httpGetMaybe("http://" + a2 + "/healthz")
		return code == 200
	})
	waitFor(t, time.Minute, "the second instance standing by", func() bool {
		return metricValue(t, a2, "pgcdc_source_standby", map[string]string{"source": "main"}) == 1
	})
	// It stays ready while it retries to take over.
	for range 10 {
		if code, body := httpGet(t, "http://"+a2+"/readyz"); code != 200 || !strings.Contains(body, `"main":"standby"`) {
			t.Fatalf("standby /readyz = %d %s", code, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if up := metricValue(t, a2, "pgcdc_source_up", map[string]string{"source": "main"}); up != 0 {
		t.Errorf("standby pgcdc_source_up = %v", up)
	}
	if code := p1.stop(t); code != 0 {
		t.Fatalf("first instance exited %d", code)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1)`)
	waitFor(t, time.Minute, "the standby to take over and deliver", func() bool { return len(fileLines(t, out)) == 1 })
	if up := metricValue(t, a2, "pgcdc_source_up", map[string]string{"source": "main"}); up != 1 {
		t.Errorf("after take-over pgcdc_source_up = %v", up)
	}
	if code := p2.stop(t); code != 0 {
		t.Fatalf("second instance exited %d", code)
	}
}

// TestShutdownGrace: a delivery still running when shutdown_grace ends is
// cancelled, run exits 1 saying so, and the next start delivers the event
// again with the same event_id.
func TestShutdownGrace(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	var mu sync.Mutex
	var ids []string
	hold := make(chan struct{})
	var holding sync.Once
	got := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		first := false
		holding.Do(func() { first = true })
		got <- struct{}{}
		if first {
			select { // the first delivery hangs until the test ends
			case <-hold:
			case <-r.Context().Done():
			}
			return
		}
		mu.Lock()
		ids = append(ids, r.Header.Get("Pgcdc-Event-Id"))
		mu.Unlock()
	}))
	defer srv.Close()
	defer close(hold)
	cfg := writeConfig(t, `
sources: {main: {dsn: "${TEST_DSN}"}}
routes: [{tables: [items], sinks: [hook]}]
sinks: {hook: {type: webhook, url: "`+srv.URL+`", timeout: 1m}}
shutdown_grace: 1s
`)
	env := []string{"TEST_DSN=" + dsn}
	p := start(t, env, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1)`)
	select {
	case <-got:
	case <-time.After(time.Minute):
		t.Fatal("no delivery")
	}
	began := time.Now()
	code := p.stop(t)
	if code != 1 || !strings.Contains(p.stderr.String(), "the grace period (1s) ended before the in-flight deliveries") {
		t.Fatalf("exit %d after the grace period; stderr:\n%s", code, p.stderr.String())
	}
	if d := time.Since(began); d > 15*time.Second {
		t.Errorf("stopping took %s with a 1s grace period", d)
	}
	p2 := start(t, env, "run", "-c", cfg)
	waitFor(t, time.Minute, "the event delivered again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == 1
	})
	if code := p2.stop(t); code != 0 {
		t.Fatalf("second run exited %d", code)
	}
}

// TestStopWhileDatabaseDown: SIGTERM while the source cannot connect
// stops at once with exit 0.
func TestStopWhileDatabaseDown(t *testing.T) {
	cfg := writeConfig(t, `
sources: {main: {dsn: "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"}}
routes: [{tables: ["app.*"], sinks: [o]}]
sinks: {o: {type: stdout}}
`)
	p := start(t, nil, "run", "-c", cfg)
	waitFor(t, 30*time.Second, "a retry logged", func() bool { return strings.Contains(p.stderr.String(), "retrying") })
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, p.stderr.String())
	}
}
