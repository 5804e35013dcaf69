package proof

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

const redisAddr = "127.0.0.1:6379"

// TestRedisLockerOneActive runs two instances of the service with pgcdc's
// worker and candi's Redis locker (SetLocker(candiutils.NewRedisLocker)):
// one streams, the other stands by; after a kill -9 of the active one the
// standby takes over and nothing is lost.
func TestRedisLockerOneActive(t *testing.T) {
	rc, err := redis.Dial("tcp", redisAddr)
	if err != nil {
		t.Fatalf("Redis must run on %s for this test: %v", redisAddr, err)
	}
	defer rc.Close()

	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, schema)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(u.Path, "/")
	t.Cleanup(func() {
		keys, _ := redis.Strings(rc.Do("KEYS", "proofsvc:pgcdc-postgres-worker-lock:*"+dbName+"*"))
		for _, k := range keys {
			_, _ = rc.Do("DEL", k)
		}
	})
	out := filepath.Join(t.TempDir(), "locker.jsonl")
	procs := map[string]*proc{
		"a": start(t, "pgcdc", dsn, out, "a", redisAddr),
		"b": start(t, "pgcdc", dsn, out, "b", redisAddr),
	}
	ping(t, dsn, "customers", out)
	ping(t, dsn, "orders", out)

	const n = 300
	if err := <-writeRows(dsn, 1, n); err != nil {
		t.Fatal(err)
	}
	evs := waitFor(t, out, 2*time.Minute, "the first rows", func(evs []event) bool { return distinct(real(evs, "orders"), n) == n })
	by := map[string]int{}
	for _, e := range evs {
		by[e.Instance]++
	}
	if len(by) != 1 {
		t.Fatalf("events by instance: %v; want one active instance", by)
	}
	var active, standby string
	for k := range by {
		active = k
	}
	standby = map[string]string{"a": "b", "b": "a"}[active]
	keys, err := redis.Strings(rc.Do("KEYS", "proofsvc:pgcdc-postgres-worker-lock:*"+dbName+"*"))
	if err != nil || len(keys) != 2 { // the lock and its heartbeat
		t.Errorf("Redis lock keys: %v, %v; want the lock and its heartbeat", keys, err)
	}

	// The standby waited on the lock, not on the slot: it never tried to
	// stream (PostgreSQL would have answered "replication slot ... is active").
	if b, err := os.ReadFile(procs[standby].log); err != nil || strings.Contains(string(b), "is active for PID") {
		t.Errorf("standby %s tried to read the slot while %s held the lock (%v):\n%s", standby, active, err, b)
	}

	procs[active].kill()
	killed := time.Now()
	ping(t, dsn, "orders", out) // returns once the standby streams
	takeover := time.Since(killed)
	if err := <-writeRows(dsn, n+1, 2*n); err != nil {
		t.Fatal(err)
	}
	evs = waitFor(t, out, 2*time.Minute, "every row after the takeover", func(evs []event) bool { return distinct(real(evs, "orders"), 2*n) == 2*n })
	got := real(evs, "orders")
	for _, e := range got {
		if e.id > n && e.Instance != standby {
			t.Errorf("row %d handled by %s after it was killed", e.id, e.Instance)
		}
	}
	t.Logf("FIGURE redis locker: 2 instances, %s active (%d events before the kill, none from %s); kill -9 of %s: %s took over within %s, %d rows written, %d delivered, %d duplicates",
		active, by[active], standby, active, standby, takeover.Round(100*time.Millisecond), 2*n, distinct(got, 2*n), len(got)-distinct(got, 2*n))
}
