package faulttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestSnapshotCommitVisibility: a transaction becomes visible to other
// sessions after its commit record is in the WAL (PostgreSQL writes the
// record, flushes it, then marks the transaction ended in the proc array).
// A change whose commit record precedes a chunk's low watermark can
// therefore be invisible to the chunk's read: the stream delivers the
// change before the low watermark, outside the chunk's window, and the
// chunk's READ of the older row after it.
//
// The window is microseconds on a plain server; a synchronous standby with
// synchronous_commit = remote_apply widens it to the standby's replay
// delay (the commit waits for the standby after its record is flushed and
// before it becomes visible), which this test pauses. The stream must not
// deliver the chunk's stale row after the change.
//
// The watermarks alone do not close this window (the snapshot delivered
// the stale row after the change): each chunk's read now waits for the
// transactions in progress after its low watermark to end first.
func TestSnapshotCommitVisibility(t *testing.T) {
	c := ownCluster(t, map[string]string{"synchronous_standby_names": "'*'"})
	dsn := createDatabase(t, c, "vis")
	execSQL(t, dsn, `CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t SELECT i, 0 FROM generate_series(1, 10) i`)
	standby := startStandby(t, c)
	src := newPool(t, dsn)
	waitUntil(t, time.Minute, 20*time.Millisecond, "the standby streams as synchronous", func(ctx context.Context) (bool, error) {
		var n int64
		err := src.QueryRow(ctx, `SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'`).Scan(&n)
		return n > 0, err
	})

	var mu sync.Mutex
	mirror := map[int]string{}
	var order []string
	logs := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- worker log ----\n%s", logs.String())
		}
	})
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("ft_vis"), pgcdc.SetLogger(slogDebug(logs)))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("t", func(ec *pgcdc.EventContext) error {
		ev := ec.Event()
		row := ev.Data.New
		if ev.Action == pgcdc.ActionDelete {
			row = ev.Data.Old
		}
		var k struct{ ID int }
		if err := json.Unmarshal(row, &k); err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		if ev.Action == pgcdc.ActionDelete {
			delete(mirror, k.ID)
		} else {
			mirror[k.ID] = string(ev.Data.New)
		}
		order = append(order, ev.Action+" "+string(row))
		return nil
	})
	s := serve(t, w)
	waitSlotActive(t, src, slotName("ft_vis"), true)
	mirrorOf := func(id int) string {
		mu.Lock()
		defer mu.Unlock()
		return mirror[id]
	}

	// A commit waiting for the paused standby: in the WAL, not visible.
	sb, err := pgx.Connect(context.Background(), standby)
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close(context.Background())
	if _, err := sb.Exec(context.Background(), `SELECT pg_wal_replay_pause()`); err != nil {
		t.Fatal(err)
	}
	writer := goAsync(func() error {
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(context.Background(), `SET synchronous_commit = remote_apply; UPDATE t SET v = 1 WHERE id = 5`)
		return err
	})
	waitUntil(t, time.Minute, 10*time.Millisecond, "the update delivered", func(context.Context) (bool, error) {
		return mirrorOf(5) == `{"id":5,"v":1}`, nil
	})
	var visible int
	if err := src.QueryRow(context.Background(), `SELECT v FROM t WHERE id = 5`).Scan(&visible); err != nil {
		t.Fatal(err)
	}
	if visible != 0 {
		t.Fatalf("the update waiting for the paused standby is visible (v = %d): the test cannot build the race", visible)
	}
	t.Log("update delivered; other sessions still see v = 0")

	ctx, cancel := ctxT(time.Minute)
	defer cancel()
	backfill := goAsync(func() error { return w.Backfill(ctx, "t") })
	// The chunk's read must wait for the committed-but-invisible update to
	// become visible (it stays so while the standby is paused): a backfill
	// that finishes meanwhile read the row's older version.
	if err := backfill.wait(time.Second); err == nil || !strings.Contains(err.Error(), "still running") {
		t.Fatalf("the backfill ended (%v) while a transaction committed before its low watermark was still invisible", err)
	}
	if _, err := sb.Exec(context.Background(), `SELECT pg_wal_replay_resume()`); err != nil {
		t.Fatal(err)
	}
	if err := backfill.wait(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := writer.wait(time.Minute); err != nil {
		t.Fatal(err)
	}
	s.stop(t)
	mu.Lock()
	defer mu.Unlock()
	if got := mirror[5]; got != `{"id":5,"v":1}` {
		t.Errorf("STALE READ: the table holds {\"id\":5,\"v\":1}, the events applied in handler order give %s; events: %v", got, order)
	}
}

// startStandby starts a streaming standby of c (pg_basebackup -R) and
// returns its DSN; it is stopped at cleanup.
func startStandby(t *testing.T, c *pgtest.Cluster) string {
	t.Helper()
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	root, err := os.MkdirTemp("", "pgcdc-standby-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if cred != nil {
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
	}
	run := func(prog string, args ...string) {
		t.Helper()
		ctx, cancel := ctxT(2 * time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(c.BinDir(), prog), args...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr, cmd.Dir = &out, &out, root
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		if err := cmd.Run(); err != nil {
			log, _ := os.ReadFile(filepath.Join(root, "log"))
			t.Fatalf("%s %v: %v\n%s\n%s", prog, args, err, out.String(), log)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	data := filepath.Join(root, "data")
	run("pg_basebackup", "-D", data, "-R", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port()), "-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync")
	conf := fmt.Sprintf("\nport = %d\nhot_standby = on\nsynchronous_standby_names = ''\n", port)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.auto.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run("pg_ctl", "-D", data, "-l", filepath.Join(root, "log"), "-w", "start")
	t.Cleanup(func() { run("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop") })
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
}
