// Package proof runs a small candi service (internal/proofsvc) twice against
// a throwaway PostgreSQL: with candi v1.17.16's postgres_worker (candimain)
// and with pgcdc's drop-in (pgcdcmain), two programs whose sources differ in
// one import line. Lines starting with "FIGURE" in the test log are the
// figures quoted in docs/candi.md.
package proof

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcdc/pgcdc/candi/internal/proofsvc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

var bins = map[string]string{} // "candi" / "pgcdc" -> built program

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "candiproof")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for name, pkg := range map[string]string{"candi": "./candimain", "pgcdc": "./pgcdcmain"} {
		out := filepath.Join(dir, name)
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n", pkg, err)
			os.Exit(1)
		}
		bins[name] = out
	}
	defer os.RemoveAll(dir)
	pgtest.Main(m)
}

// TestOneImportApart: the two programs are the same source but for the
// import of the worker package.
func TestOneImportApart(t *testing.T) {
	a, err := os.ReadFile("candimain/main.go")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("pgcdcmain/main.go")
	if err != nil {
		t.Fatal(err)
	}
	la, lb := strings.Split(string(a), "\n"), strings.Split(string(b), "\n")
	if len(la) != len(lb) {
		t.Fatalf("%d lines vs %d", len(la), len(lb))
	}
	var diff []string
	for i := range la {
		if la[i] != lb[i] {
			diff = append(diff, la[i]+" -> "+lb[i])
		}
	}
	want := []string{"\tpostgresworker \"github.com/golangid/candi/codebase/app/postgres_worker\" -> \tpostgresworker \"github.com/pgcdc/pgcdc/candi/postgres_worker\""}
	if !reflect.DeepEqual(diff, want) {
		t.Fatalf("the programs differ in:\n%s", strings.Join(diff, "\n"))
	}
}

// proc is one running instance of the service.
type proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func start(t *testing.T, variant, dsn, out, instance, redis string) *proc {
	t.Helper()
	logf, err := os.Create(filepath.Join(t.TempDir(), variant+"-"+instance+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bins[variant])
	cmd.Env = append(os.Environ(), "SQL_DB_WRITE_DSN="+dsn, "PROOF_OUT="+out, "PROOF_INSTANCE="+instance, "PROOF_REDIS="+redis)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: logf.Name(), done: make(chan struct{})}
	go func() { _ = cmd.Wait(); logf.Close(); close(p.done) }()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			t.Logf("%s %s log (tail):\n%s", variant, instance, b)
		}
	})
	return p
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop ends the instance with SIGTERM (candi's app shuts down gracefully).
func (p *proc) stop(t *testing.T) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		t.Errorf("instance did not stop within 40s of SIGTERM")
		p.kill()
	}
}

// event is one recorded handler call, decoded.
type event struct {
	proofsvc.Line
	raw     map[string]json.RawMessage
	payload struct {
		EventID string                     `json:"event_id"`
		Table   string                     `json:"table"`
		Action  string                     `json:"action"`
		Data    map[string]json.RawMessage `json:"data"`
	}
	old, new map[string]any
	id       int64 // new.id, else old.id
}

func readEvents(t *testing.T, path string) []event {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		t.Fatal(err)
	}
	var out []event
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e.Line); err != nil {
			continue // a line cut by kill -9
		}
		if err := json.Unmarshal(e.Message, &e.raw); err != nil {
			t.Fatalf("message is not an object: %s", e.Message)
		}
		if err := json.Unmarshal(e.Message, &e.payload); err != nil {
			t.Fatalf("message: %v: %s", err, e.Message)
		}
		e.old, e.new = decodeRow(t, e.payload.Data["old"]), decodeRow(t, e.payload.Data["new"])
		for _, r := range []map[string]any{e.new, e.old} {
			if r != nil {
				if n, ok := r["id"].(json.Number); ok {
					e.id, _ = n.Int64()
					break
				}
			}
		}
		out = append(out, e)
	}
	return out
}

func decodeRow(t *testing.T, raw json.RawMessage) map[string]any {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var m map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&m); err != nil {
		t.Fatalf("row: %v: %s", err, raw)
	}
	return m
}

// real drops the readiness pings (negative ids) and keeps one handler's events.
func real(evs []event, handler string) []event {
	var out []event
	for _, e := range evs {
		if e.Handler == handler && e.id >= 0 {
			out = append(out, e)
		}
	}
	return out
}

// waitFor polls the events file until cond holds.
func waitFor(t *testing.T, path string, timeout time.Duration, what string, cond func([]event) bool) []event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		evs := readEvents(t, path)
		if cond(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s; %d events recorded", timeout, what, len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var pingSeq struct {
	sync.Mutex
	n int64
}

// ping inserts rows with negative ids into table until one reaches its
// handler: the instance is listening, and (handlers run one at a time per
// table) every change of table committed before it was handled.
func ping(t *testing.T, dsn, table, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for {
		pingSeq.Lock()
		pingSeq.n++
		id := -pingSeq.n
		pingSeq.Unlock()
		if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s (id) VALUES ($1)`, table), id); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(500 * time.Millisecond)
		for time.Now().Before(deadline) {
			for _, e := range readEvents(t, out) {
				if e.Handler == table && e.id == id {
					return
				}
			}
			if ctx.Err() != nil {
				t.Fatalf("no ping reached the %s handler", table)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

const schema = `
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, active boolean, score double precision);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int, total numeric(12,2), status text, tags text[],
	meta jsonb, big bigint, placed_at timestamptz, note text);
ALTER TABLE customers REPLICA IDENTITY FULL;
ALTER TABLE orders REPLICA IDENTITY FULL;`

// workload: one transaction per entry.
var workload = []string{
	`INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', true, 4.5), (2, 'Bob', NULL, false, -1.25), (3, 'Çelik "C"', 'c@example.com', true, 0)`,
	`INSERT INTO orders VALUES (10, 1, 12.50, 'new', '{a,b}', '{"k":[1,2],"n":{"x":null}}', 42, '2026-11-30 10:00:00.123456+00', '<b>&</b>')`,
	`INSERT INTO orders VALUES (11, 2, 0.10, 'new', '{}', '{}', 9007199254740993, '2026-11-30 11:00:00+00', NULL)`,
	`INSERT INTO orders VALUES (12, 3, 99.99, 'new', NULL, NULL, -7, NULL, 'multi'); INSERT INTO orders VALUES (13, 3, 1.00, 'new', '{x}', '[]', 0, '2026-11-30 12:00:00+00', 'multi 2')`,
	`UPDATE orders SET status = 'paid', total = 13.00 WHERE id = 10`,
	`UPDATE customers SET email = 'bob@example.com' WHERE id = 2`,
	`UPDATE customers SET name = 'Ann B.' WHERE id = 1`,
	`DELETE FROM orders WHERE id = 12`,
	`DELETE FROM customers WHERE id = 3`,
	`INSERT INTO orders VALUES (14, 1, 5.00, 'new', '{}', '{}', 1, '2026-11-30 13:00:00+00', repeat('x', 10000))`,
}

const wantOrders, wantCustomers = 7, 6

func runWorkload(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, sql := range workload {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, stmt := range strings.Split(sql, "; ") {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				t.Fatalf("%s: %v", stmt, err)
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// runVariant runs the service with one worker over the workload and returns
// what each handler got.
func runVariant(t *testing.T, variant string) (orders, customers []event) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, schema)
	out := filepath.Join(t.TempDir(), variant+".jsonl")
	p := start(t, variant, dsn, out, "a", "")
	ping(t, dsn, "customers", out)
	ping(t, dsn, "orders", out)
	runWorkload(t, dsn)
	evs := waitFor(t, out, 2*time.Minute, "every event", func(evs []event) bool {
		return len(real(evs, "orders")) >= wantOrders && len(real(evs, "customers")) >= wantCustomers
	})
	p.stop(t)
	return real(evs, "orders"), real(evs, "customers")
}

var hex32 = regexp.MustCompile(`^[0-9a-f]{32}$`)

func TestSameEventsAsCandi(t *testing.T) {
	co, cc := runVariant(t, "candi")
	po, pc := runVariant(t, "pgcdc")
	if len(co) != wantOrders || len(cc) != wantCustomers || len(po) != wantOrders || len(pc) != wantCustomers {
		t.Fatalf("events: candi orders %d customers %d, pgcdc orders %d customers %d; want %d and %d",
			len(co), len(cc), len(po), len(pc), wantOrders, wantCustomers)
	}
	var diffs []string
	compared := 0
	for _, h := range []struct {
		name        string
		candi, ours []event
	}{{"orders", co, po}, {"customers", cc, pc}} {
		for i := range h.candi {
			c, o := h.candi[i], h.ours[i]
			where := fmt.Sprintf("%s #%d (%s id %d)", h.name, i, o.payload.Action, o.id)
			// What the handler sees around the message.
			if c.Route != h.name || o.Route != h.name || c.WorkerType != "postgres_listener" || o.WorkerType != c.WorkerType {
				t.Errorf("%s: route %q/%q worker type %q/%q", where, c.Route, o.Route, c.WorkerType, o.WorkerType)
			}
			for _, e := range []event{c, o} {
				if e.Key != e.payload.EventID || !hex32.MatchString(e.Key) {
					t.Errorf("%s: key %q event_id %q", where, e.Key, e.payload.EventID)
				}
			}
			if o.Header["source_name"] != "" || c.Header["source_name"] != "" {
				t.Errorf("%s: source_name %q / %q", where, c.Header["source_name"], o.Header["source_name"])
			}
			if c.payload.Table != o.payload.Table || c.payload.Action != o.payload.Action {
				t.Errorf("%s: candi %s %s, pgcdc %s %s", where, c.payload.Table, c.payload.Action, o.payload.Table, o.payload.Action)
				continue
			}
			// candi's shape: event_id, table, action, data{old_id,new_id,old,new}.
			for _, k := range []string{"event_id", "table", "action", "data"} {
				if _, ok := o.raw[k]; !ok {
					t.Errorf("%s: pgcdc message lacks %q", where, k)
				}
			}
			for _, k := range []string{"old_id", "new_id", "old", "new"} {
				if _, ok := o.payload.Data[k]; !ok {
					t.Errorf("%s: pgcdc data lacks %q", where, k)
				}
			}
			if _, long := c.payload.Data["is_too_long_payload"]; long {
				// candi cut the row (> 7500 bytes) and re-read it by id.
				note, _ := o.new["note"].(string)
				diffs = append(diffs, fmt.Sprintf("%s: candi sent is_too_long_payload (new_id %s) and re-read the row itself; pgcdc sent the whole row (note of %d bytes)",
					where, c.payload.Data["new_id"], len(note)))
				cn := string(c.payload.Data["new"])
				cn = strings.ReplaceAll(cn, strings.Repeat("x", 10000), "<10000 x>")
				t.Logf("FIGURE bytes: candi's re-read large row: new = %s", cn)
				if len(note) != 10000 {
					t.Errorf("%s: pgcdc note is %d bytes, want 10000", where, len(note))
				}
				continue
			}
			compared++
			diffs = append(diffs, compareRows(where+" old", c.old, o.old)...)
			diffs = append(diffs, compareRows(where+" new", c.new, o.new)...)
		}
	}
	// Byte-level differences a handler reading Message() as text can see:
	// candi's json.Marshal escapes <, > and & and sorts the columns by name;
	// pgcdc keeps PostgreSQL's text and the table's column order.
	cm, om := string(co[0].payload.Data["new"]), string(po[0].payload.Data["new"])
	if !strings.Contains(cm, `"note":"\u003cb\u003e\u0026\u003c/b\u003e"`) || !strings.Contains(om, `"note":"<b>&</b>"`) {
		t.Errorf("note: candi %s, pgcdc %s", cm, om)
	}
	if !strings.HasPrefix(cm, `{"big":42,"customer_id":1,`) || !strings.HasPrefix(om, `{"id":10,"customer_id":1,"total":12.50,`) {
		t.Errorf("column order: candi %s, pgcdc %s", cm, om)
	}
	t.Logf("FIGURE bytes: candi new = %s", cm)
	t.Logf("FIGURE bytes: pgcdc new = %s", om)

	// The only differences allowed: candi's lossy rendering of bigint
	// 9007199254740993 (through float64) and its cut of the large row.
	want := map[string]bool{
		"orders #1 (INSERT id 11) new.big: candi 9007199254740992, pgcdc 9007199254740993": true,
	}
	var unexpected []string
	for _, d := range diffs {
		t.Logf("FIGURE difference: %s", d)
		if !want[d] && !strings.Contains(d, "is_too_long_payload") {
			unexpected = append(unexpected, d)
		}
	}
	if len(unexpected) > 0 {
		t.Errorf("unexpected differences:\n%s", strings.Join(unexpected, "\n"))
	}
	if len(diffs) != 2 {
		t.Errorf("%d differences, want 2 (big, large row)", len(diffs))
	}
	t.Logf("FIGURE comparison: %d events per worker (%d orders, %d customers), same table/action/order; %d compared value by value (every column of old and new); differences: %d",
		wantOrders+wantCustomers, wantOrders, wantCustomers, compared, len(diffs))
}

// compareRows compares two rows column by column: numbers by value (candi
// prints 12.5 for 12.50), timestamps by instant, the rest exactly.
func compareRows(where string, c, o map[string]any) []string {
	if (c == nil) != (o == nil) {
		return []string{fmt.Sprintf("%s: candi %v, pgcdc %v", where, c, o)}
	}
	keys := map[string]bool{}
	for k := range c {
		keys[k] = true
	}
	for k := range o {
		keys[k] = true
	}
	var sorted []string
	for k := range keys {
		sorted = append(sorted, k)
	}
	sort.Strings(sorted)
	var out []string
	for _, k := range sorted {
		if !sameValue(c[k], o[k]) {
			out = append(out, fmt.Sprintf("%s.%s: candi %v, pgcdc %v", where, k, c[k], o[k]))
		}
	}
	return out
}

func sameValue(a, b any) bool {
	switch x := a.(type) {
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		rx, ok1 := new(big.Rat).SetString(string(x))
		ry, ok2 := new(big.Rat).SetString(string(y))
		return ok1 && ok2 && rx.Cmp(ry) == 0
	case string:
		y, ok := b.(string)
		if !ok {
			return false
		}
		if x == y {
			return true
		}
		tx, e1 := time.Parse(time.RFC3339Nano, x)
		ty, e2 := time.Parse(time.RFC3339Nano, y)
		return e1 == nil && e2 == nil && tx.Equal(ty)
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k := range x {
			if !sameValue(x[k], y[k]) {
				return false
			}
		}
		return true
	case []any:
		y, ok := b.([]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for i := range x {
			if !sameValue(x[i], y[i]) {
				return false
			}
		}
		return true
	default:
		return reflect.DeepEqual(a, b)
	}
}
