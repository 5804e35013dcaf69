package trigger

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// envHelperDSN makes TestKill9Helper run a consumer (in a child process).
const envHelperDSN = "PGCDC_TRIGGER_HELPER_DSN"

// TestKill9Helper is the consumer process that TestKill9 kills. It records
// every event it handles in the table seen and runs until killed.
func TestKill9Helper(t *testing.T) {
	dsn := os.Getenv(envHelperDSN)
	if dsn == "" {
		t.Skip("helper process for TestKill9")
	}
	p := pool(t, dsn)
	h := func(ctx context.Context, c *change.Change) error {
		if _, err := p.Exec(ctx, `INSERT INTO seen VALUES ($1, $2)`, c.EventID, string(c.Message)); err != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond)
		return nil
	}
	cfg := config(dsn, route("public", "items", 4, h))
	cfg.ClaimTimeout = 2 * time.Second
	cfg.BatchSize = 50
	_ = New(cfg).Run(context.Background(), nil)
}

// TestKill9: the consumer process is killed with SIGKILL in the middle of
// its work. A new consumer delivers every event the dead one did not
// finish, once its claims expired, with the same event ids.
func TestKill9(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE seen (event_id text, message text)`)
	const rows = 1000
	rec := newRecorder()
	cfg := config(dsn, route("public", "items", 4, rec.handle))
	cfg.ClaimTimeout = 2 * time.Second
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, fmt.Sprintf(`INSERT INTO items SELECT generate_series(1, %d)`, rows))

	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9Helper$")
	cmd.Env = append(os.Environ(), envHelperDSN+"="+dsn)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var exited atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() { _ = cmd.Wait(); exited.Store(true) })
	defer func() { _ = cmd.Process.Kill(); wg.Wait() }()
	conn := connect(t, dsn)
	waitUntil(t, time.Minute, "the helper's first 200 events", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM seen`) >= 200
	})
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	claimed := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events WHERE claimed_by IS NOT NULL`)
	before := map[string]string{} // message -> event_id, as the dead consumer handled them
	res, err := conn.Query(context.Background(), `SELECT event_id, message FROM seen`)
	if err != nil {
		t.Fatal(err)
	}
	for res.Next() {
		var id, msg string
		if err := res.Scan(&id, &msg); err != nil {
			t.Fatal(err)
		}
		before[msg] = id
	}
	if res.Err() != nil {
		t.Fatal(res.Err())
	}
	left := queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`)
	t.Logf("killed after %d events handled; %d events left, %d of them claimed by the dead process", len(before), left, claimed)

	start(t, cfg)
	// Wait for an empty event table rather than for left events: the dead
	// process's server session can still commit a delete it had sent, so
	// left may count rows that are gone by now (handled before the kill).
	waitUntil(t, time.Minute, "an empty event table", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`) == 0
	})
	evs := rec.snapshot()
	rec.mu.Lock()
	raws := append([][]byte(nil), rec.raw[:len(evs)]...)
	rec.mu.Unlock()
	all := map[string]bool{}
	dups := 0
	for i, e := range evs {
		all[e.EventID] = true
		if id, ok := before[string(raws[i])]; ok {
			dups++
			if id != e.EventID {
				t.Errorf("redelivered event has id %s, was %s", e.EventID, id)
			}
		}
	}
	for _, id := range before {
		all[id] = true
	}
	if len(all) != rows {
		t.Errorf("%d distinct events delivered in all, want %d", len(all), rows)
	}
	waitUntil(t, 30*time.Second, "an empty event table", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`) == 0
	})
	t.Logf("after restart: %d events delivered, %d of them redeliveries of events the dead process had handled", len(evs), dups)
}

// TestHeartbeatKeepsClaim: a handler that runs longer than ClaimTimeout
// keeps its claim (the heartbeat renews it), so a second instance does not
// handle the same event meanwhile.
func TestHeartbeatKeepsClaim(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	var calls atomic.Int64
	h := func(ctx context.Context, c *change.Change) error {
		calls.Add(1)
		time.Sleep(1500 * time.Millisecond) // five claim timeouts
		return nil
	}
	cfg := config(dsn, route("public", "items", 1, h))
	cfg.ClaimTimeout = 300 * time.Millisecond
	if err := Install(context.Background(), pool(t, dsn), "", cfg.Tables); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1)`)
	start(t, cfg)
	start(t, cfg)
	conn := connect(t, dsn)
	waitUntil(t, 30*time.Second, "the event handled and deleted", func() bool {
		return queryInt(t, conn, `SELECT count(*) FROM pgcdc.events`) == 0
	})
	if n := calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}
