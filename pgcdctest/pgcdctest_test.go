package pgcdctest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/pgcdctest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// lockedBuffer is a bytes.Buffer safe for a Recorder and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.b.String(), "\n"), "\n")
}

// record captures the events of writes to a real server with Recorder, in
// both capture modes.
func record(t *testing.T, mode pgcdc.CaptureMode, writes string, n int) []string {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE orders (id int PRIMARY KEY, name text, total numeric, tags text[], meta jsonb);
		ALTER TABLE orders REPLICA IDENTITY FULL`)
	var buf lockedBuffer
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetCaptureMode(mode))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("orders", pgcdctest.Recorder(&buf))
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(ctx) }()
	defer func() { cancel(); <-errc }()
	ready := `SELECT coalesce((SELECT active FROM pg_replication_slots WHERE slot_name = 'pgcdc_postgres_listener_default' AND database = current_database()), false)`
	if mode == pgcdc.CaptureTrigger {
		ready = `SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'orders'::regclass)`
	}
	waitTrue(t, dsn, ready)
	pgtest.Exec(t, dsn, writes)
	deadline := time.Now().Add(time.Minute)
	for len(buf.lines()) < n || buf.lines()[0] == "" {
		if time.Now().After(deadline) {
			t.Fatalf("recorded %d events, want %d", len(buf.lines()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return buf.lines()
}

func waitTrue(t *testing.T, dsn, sql string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out := queryOne(t, dsn, sql)
		if out == "true" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", sql)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func queryOne(t *testing.T, dsn, sql string) string {
	t.Helper()
	var out bool
	pgtest.QueryRow(t, dsn, sql, &out)
	return fmt.Sprint(out)
}

// The events the kit builds are byte for byte those pgcdc delivers.
func TestEventsMatchARealServer(t *testing.T) {
	for _, mode := range []pgcdc.CaptureMode{pgcdc.CaptureLogical, pgcdc.CaptureTrigger} {
		t.Run(string(mode), func(t *testing.T) {
			lines := record(t, mode, `INSERT INTO orders VALUES (1, 'Ann <&>', 12.50, '{a,b}', '{"k": [1, "x"]}');
				UPDATE orders SET total = 13 WHERE id = 1;
				DELETE FROM orders WHERE id = 1`, 3)
			row1 := pgcdctest.R("id", 1, "name", "Ann <&>", "total", json.RawMessage("12.50"), "tags", []string{"a", "b"}, "meta", json.RawMessage(`{"k": [1, "x"]}`))
			row2 := pgcdctest.R("id", 1, "name", "Ann <&>", "total", 13, "tags", []string{"a", "b"}, "meta", json.RawMessage(`{"k": [1, "x"]}`))
			want := []pgcdctest.Event{pgcdctest.Insert("orders", row1), pgcdctest.Update("orders", row1, row2), pgcdctest.Delete("orders", row2)}
			for i, line := range lines {
				var got pgcdc.EventPayload
				if err := json.Unmarshal([]byte(line), &got); err != nil {
					t.Fatal(err)
				}
				ev := want[i]
				ev.EventID, ev.LSN, ev.XID, ev.CommitTime = got.EventID, got.LSN, got.XID, got.CommitTime
				b, err := ev.JSON()
				if err != nil {
					t.Fatal(err)
				}
				if string(b) != line {
					t.Errorf("event %d:\nkit    %s\nserver %s", i, b, line)
				}
			}
		})
	}
}

// A recorded stream replays into a worker's handlers with its routing,
// per-key order and retries; a poison event is reported, not fatal.
func TestRecordAndReplay(t *testing.T) {
	lines := record(t, pgcdc.CaptureLogical, `INSERT INTO orders SELECT i, 'n' || i FROM generate_series(1, 20) i;
		UPDATE orders SET name = 'again' WHERE id <= 5;
		DELETE FROM orders WHERE id = 7`, 26)
	file := strings.Join(lines, "\n") + "\n"

	w, err := pgcdctest.NewWorker(pgcdc.SetMaxRetries(2))
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	failedOnce := map[string]bool{}
	w.Handle("orders", func(ec *pgcdc.EventContext) error {
		ev := ec.Event()
		var row struct{ ID int }
		if err := ev.Data.DecodeNew(&row); err != nil || row.ID == 0 {
			_ = ev.Data.DecodeOld(&row)
		}
		if row.ID == 3 && !failedOnce[ec.Key()] { // fails once: retried
			failedOnce[ec.Key()] = true
			return errors.New("flaky")
		}
		if row.ID == 7 && ev.Action == pgcdc.ActionDelete {
			panic("poison")
		}
		seen = append(seen, fmt.Sprintf("%d:%s", row.ID, ev.Action))
		return nil
	})
	res, err := pgcdctest.Replay(context.Background(), w, strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	var he *pgcdc.HandlerError
	var pe *pgcdc.PanicError
	if res.Delivered != 25 || len(res.Failed) != 1 || !errors.As(res.Failed[0], &he) || !errors.As(res.Failed[0], &pe) {
		t.Fatalf("result %+v", res)
	}
	if i, j := indexOf(seen, "3:INSERT"), indexOf(seen, "3:UPDATE"); i < 0 || j < i {
		t.Fatalf("order of row 3: %v", seen)
	}

	// The same file replays the same way: deterministic.
	seen2 := seen
	seen, failedOnce = nil, map[string]bool{}
	if _, err := pgcdctest.Replay(context.Background(), w, strings.NewReader(file)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(seen, ",") != strings.Join(seen2, ",") {
		t.Fatalf("second replay differs:\n%v\n%v", seen, seen2)
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func TestBadInput(t *testing.T) {
	if _, err := pgcdctest.Insert("t", pgcdctest.R("id")).JSON(); err == nil {
		t.Error("a column without a value was accepted")
	}
	w, err := pgcdctest.NewWorker()
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("t", func(*pgcdc.EventContext) error { return nil })
	if _, err := pgcdctest.Replay(context.Background(), w, strings.NewReader("not json\n")); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad line: %v", err)
	}
	res, err := pgcdctest.Replay(context.Background(), w, strings.NewReader(`{"event_id":"x","table":"other","action":"INSERT","data":{"old":null,"new":{}}}`+"\n"))
	if err != nil || res.Unrouted != 1 {
		t.Errorf("unrouted: %+v, %v", res, err)
	}
}
