package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// consumer is a running `bench consume` subprocess.
type consumer struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	lines   chan Stats
	started time.Time
	exited  chan struct{}
	waitErr error
	log     *os.File
}

func startConsumer(logPath string, args ...string) (*consumer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "\n=== %s consume %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command(exe, append([]string{"consume"}, args...)...)
	cmd.Stderr = lf
	cmd.Stdout = lf
	cmd.Env = append(os.Environ(), "BENCH_PROTO_FD=3")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	stdout, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, err
	}
	cmd.ExtraFiles = []*os.File{pw}
	c := &consumer{cmd: cmd, stdin: stdin, lines: make(chan Stats, 16), exited: make(chan struct{}), log: lf}
	c.started = time.Now()
	if err := cmd.Start(); err != nil {
		lf.Close()
		stdout.Close()
		pw.Close()
		return nil, err
	}
	pw.Close() // the child holds its copy; EOF when it exits
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<16), 1<<20)
		for sc.Scan() {
			var s Stats
			if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
				fmt.Fprintf(lf, "bench: unparsable consumer line: %s\n", sc.Text())
				continue
			}
			c.lines <- s
		}
		stdout.Close()
		c.waitErr = cmd.Wait()
		lf.Close()
		close(c.lines)
		close(c.exited)
	}()
	return c, nil
}

// next waits for the next line of type typ (other lines are skipped).
func (c *consumer) next(typ string, timeout time.Duration) (Stats, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case s, ok := <-c.lines:
			if !ok {
				return Stats{}, fmt.Errorf("consumer exited (%v) before %q", c.waitErr, typ)
			}
			if s.Type == typ {
				return s, nil
			}
			if s.Type == "done" && typ != "done" {
				return s, fmt.Errorf("consumer stopped before %q: %s", typ, s.Err)
			}
		case <-t.C:
			return Stats{}, fmt.Errorf("timeout (%s) waiting for consumer %q", timeout, typ)
		}
	}
}

func (c *consumer) send(cmd string) error {
	_, err := io.WriteString(c.stdin, cmd+"\n")
	return err
}

func (c *consumer) stats() (Stats, error) {
	if err := c.send("stats"); err != nil {
		return Stats{}, err
	}
	return c.next("stats", 30*time.Second)
}

func (c *consumer) reset() error {
	if err := c.send("reset"); err != nil {
		return err
	}
	_, err := c.next("stats", 30*time.Second)
	return err
}

// stop asks the consumer to shut down and returns its final stats.
func (c *consumer) stop() (Stats, error) {
	_ = c.send("stop")
	s, err := c.next("done", 90*time.Second)
	c.wait(30 * time.Second)
	return s, err
}

func (c *consumer) wait(d time.Duration) {
	select {
	case <-c.exited:
	case <-time.After(d):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

func (c *consumer) kill() {
	select {
	case <-c.exited:
	default:
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

func (c *consumer) signal(sig syscall.Signal) error { return c.cmd.Process.Signal(sig) }

// ---- database helpers ----

type db struct {
	conn *pgx.Conn
	dsn  string
}

func openDB(ctx context.Context, dsn string) (*db, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	return &db{conn: conn, dsn: dsn}, nil
}

func (d *db) exec(ctx context.Context, sql string, args ...any) error {
	_, err := d.conn.Exec(ctx, sql, args...)
	if err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func (d *db) int(ctx context.Context, sql string, args ...any) (int64, error) {
	var v int64
	err := d.conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

func (d *db) str(ctx context.Context, sql string, args ...any) (string, error) {
	var v string
	err := d.conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 80 {
		s = s[:80]
	}
	return s
}

// dropSlots drops every replication slot (terminating active ones) and
// every publication whose name starts with pgcdc_ (the ones pgcdc created).
func (d *db) dropSlots(ctx context.Context) error {
	for range 50 {
		n, err := d.int(ctx, `SELECT count(*) FROM (SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL) x`)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := d.exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots`); err != nil {
		return err
	}
	rows, err := d.conn.Query(ctx, `SELECT pubname FROM pg_publication WHERE pubname LIKE 'pgcdc\_%'`)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := d.exec(ctx, `DROP PUBLICATION `+pgx.Identifier{n}.Sanitize()); err != nil {
			return err
		}
	}
	return nil
}

func (d *db) waitSlotActive(ctx context.Context, slot string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		var state string
		err := d.conn.QueryRow(ctx, `SELECT r.state FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1`, slot).Scan(&state)
		if err == nil && (state == "catchup" || state == "streaming") {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("slot %s not active after %s", slot, timeout)
}

// ---- external programs ----

var (
	reTPS   = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	reTxns  = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	reLatAv = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
)

type pgbenchResult struct {
	TPS    float64
	Txns   int64
	LatAvg float64
	Out    string
}

func runPgbench(ctx context.Context, e *env, script string, args ...string) (pgbenchResult, error) {
	all := append([]string{"-n", "-h", "127.0.0.1", "-p", strconv.Itoa(e.cl.Port), "-U", "postgres",
		"-M", "prepared", "-f", script}, args...)
	all = append(all, e.dbname)
	cmd := exec.CommandContext(ctx, e.cl.Bin("pgbench"), all...)
	outb, err := cmd.CombinedOutput()
	out := string(outb)
	fmt.Fprintf(e.log, "\n=== pgbench %s\n%s\n", strings.Join(all, " "), out)
	var r pgbenchResult
	r.Out = out
	if err != nil {
		return r, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	m := reTPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("pgbench: no tps in output\n%s", out)
	}
	r.TPS, _ = strconv.ParseFloat(m[1], 64)
	if m := reTxns.FindStringSubmatch(out); m != nil {
		r.Txns, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLatAv.FindStringSubmatch(out); m != nil {
		r.LatAvg, _ = strconv.ParseFloat(m[1], 64)
	}
	return r, nil
}

// recvlogical starts pg_recvlogical on slot; extra args are appended.
func startRecvlogical(e *env, slot, pub string, extra ...string) (*exec.Cmd, error) {
	args := append([]string{"-d", e.dsn, "--slot", slot, "--start",
		"-o", "proto_version=1", "-o", "publication_names=" + pub, "-f", "/dev/null"}, extra...)
	cmd := exec.Command(e.cl.Bin("pg_recvlogical"), args...)
	cmd.Stdout = e.log
	cmd.Stderr = e.log
	fmt.Fprintf(e.log, "\n=== pg_recvlogical %s\n", strings.Join(args, " "))
	return cmd, cmd.Start()
}
