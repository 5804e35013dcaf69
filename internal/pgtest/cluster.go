// Package pgtest runs throwaway PostgreSQL clusters for tests, benchmarks and
// the demo: initdb into a temporary directory, a free loopback port and
// wal_level=logical, started from the machine's PostgreSQL binaries (as the
// postgres OS user when the process runs as root). When PGCDC_TEST_DSN is set,
// Shared uses that server instead and starts nothing.
//
// A Cluster started here can be stopped, started and killed, which is what the
// fault tests need.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names the environment variable that points the tests at an existing
// server (which must run with wal_level=logical) instead of a throwaway one.
const EnvDSN = "PGCDC_TEST_DSN"

// EnvBinDir names the environment variable that selects the directory holding
// initdb, pg_ctl and postgres.
const EnvBinDir = "PGCDC_PG_BIN"

// ErrNoBinaries is returned when no PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("pgtest: no PostgreSQL server binaries found (need initdb, pg_ctl and postgres): install the PostgreSQL server package (Debian: apt-get install postgresql) or set " + EnvBinDir + " to the directory that holds them")

// Options configure a throwaway cluster. The zero value is usable.
type Options struct {
	// BinDir holds initdb, pg_ctl and postgres. Empty means: $PGCDC_PG_BIN,
	// then `pg_config --bindir`, then the newest /usr/lib/postgresql/*/bin,
	// then $PATH.
	BinDir string
	// Settings are extra postgresql.conf lines (name -> value), applied after
	// the defaults; "wal_level" can be overridden to test refusal.
	Settings map[string]string
}

// Cluster is a running PostgreSQL server. Methods are safe for use by one
// goroutine at a time.
type Cluster struct {
	binDir   string
	dataDir  string
	root     string // temp directory removed by Close
	port     int
	cred     *syscall.Credential
	external string // DSN of a server we do not own
}

// Start creates and starts a new throwaway cluster. Close removes it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := findBinDir(opts.BinDir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{binDir: bin}
	if os.Geteuid() == 0 {
		cred, err := postgresCredential()
		if err != nil {
			return nil, err
		}
		c.cred = cred
	}
	c.root, err = os.MkdirTemp("", "pgcdc-pg-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: temp dir: %w", err)
	}
	c.dataDir = filepath.Join(c.root, "data")
	if c.cred != nil {
		if err := os.Chown(c.root, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			c.Close()
			return nil, fmt.Errorf("pgtest: chown %s: %w", c.root, err)
		}
	}
	if err := c.run(ctx, "initdb", "-D", c.dataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		c.Close()
		return nil, err
	}
	if c.port, err = freePort(); err != nil {
		c.Close()
		return nil, err
	}
	settings := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(c.port),
		"unix_socket_directories": "''",
		"wal_level":               "logical",
		"max_replication_slots":   "32",
		"max_wal_senders":         "32",
		"max_connections":         "200",
		"fsync":                   "off",
		"synchronous_commit":      "off",
		"full_page_writes":        "off",
		"shared_buffers":          "128MB",
		"wal_sender_timeout":      "60s",
		"log_min_messages":        "warning",
		"timezone":                "'UTC'",
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	if err := c.appendConf(settings); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) appendConf(settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# pgtest\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, settings[k])
	}
	f, err := os.OpenFile(filepath.Join(c.dataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer f.Close()
	_, err = f.WriteString(b.String())
	return err
}

// Owned reports whether this process started the server (and so may stop,
// start and kill it).
func (c *Cluster) Owned() bool { return c.external == "" }

// Port is the TCP port the server listens on (127.0.0.1).
func (c *Cluster) Port() int {
	if c.external != "" {
		u, err := pgx.ParseConfig(c.external)
		if err == nil {
			return int(u.Port)
		}
	}
	return c.port
}

// DataDir is the cluster's data directory ("" for an external server).
func (c *Cluster) DataDir() string { return c.dataDir }

// BinDir is the directory of the PostgreSQL binaries in use.
func (c *Cluster) BinDir() string { return c.binDir }

// DSN returns a connection string for database db as the superuser.
func (c *Cluster) DSN(db string) string {
	if c.external != "" {
		return replaceDatabase(c.external, db)
	}
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, url.PathEscape(db))
}

// Start starts a stopped cluster and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	if !c.Owned() {
		return errors.New("pgtest: cannot start an external server")
	}
	var err error
	for attempt := 0; attempt < 50; attempt++ {
		err = c.run(ctx, "pg_ctl", "-D", c.dataDir, "-w", "-t", "60", "-l", filepath.Join(c.root, "server.log"), "start")
		// After Kill, the old backends may still hold shared memory for a
		// moment; the postmaster then refuses to start.
		if err == nil || !strings.Contains(err.Error(), "shared memory block") {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return err
}

// Stop stops the cluster with the given pg_ctl mode: "smart", "fast" or
// "immediate" (a crash-like stop; the next Start runs recovery).
func (c *Cluster) Stop(ctx context.Context, mode string) error {
	if !c.Owned() {
		return errors.New("pgtest: cannot stop an external server")
	}
	return c.run(ctx, "pg_ctl", "-D", c.dataDir, "-w", "-t", "60", "-m", mode, "stop")
}

// Restart stops the cluster with mode and starts it again.
func (c *Cluster) Restart(ctx context.Context, mode string) error {
	if err := c.Stop(ctx, mode); err != nil {
		return err
	}
	return c.Start(ctx)
}

// Close stops an owned cluster (immediately) and removes its files. It is
// safe to call more than once.
func (c *Cluster) Close() {
	if c.Owned() && c.dataDir != "" {
		if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			_ = c.Stop(ctx, "immediate")
			cancel()
		}
	}
	if c.root != "" {
		_ = os.RemoveAll(c.root)
		c.root = ""
	}
}

// Log returns the server log written so far (empty for an external server).
func (c *Cluster) Log() string {
	if c.root == "" {
		return ""
	}
	b, _ := os.ReadFile(filepath.Join(c.root, "server.log"))
	return string(b)
}

// CreateDatabase creates a fresh database with a unique name based on prefix
// and returns its name.
func (c *Cluster) CreateDatabase(ctx context.Context, prefix string) (string, error) {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("%s_%d_%d", sanitize(prefix), os.Getpid(), dbSeq.add())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return name, nil
}

// DropDatabase drops database name, first dropping its replication slots and
// ending its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	// A terminated walsender keeps its slot active until it has exited:
	// retry until the slots are gone, so none outlives its database.
	for {
		_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = $1 AND active_pid IS NOT NULL`, name)
		_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = $1 AND NOT active`, name)
		var left int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = $1`, name).Scan(&left); err != nil {
			return fmt.Errorf("pgtest: reading slots: %w", err)
		}
		if left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: %d replication slots of %s still in use: %w", left, name, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

type seq struct {
	mu sync.Mutex
	n  int
}

func (s *seq) add() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	return s.n
}

var dbSeq seq

func sanitize(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') || r == '_' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 40 {
		out = out[:40]
	}
	if out == "" {
		out = "db"
	}
	return out
}

func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, prog), args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if prog == "pg_ctl" {
			if log := c.Log(); log != "" {
				msg += "\nserver log:\n" + tail(log, 2000)
			}
		}
		return fmt.Errorf("pgtest: %s %s: %w\n%s", prog, strings.Join(args, " "), err, msg)
	}
	return nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func postgresCredential() (*syscall.Credential, error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root needs a 'postgres' OS user to own the cluster (PostgreSQL refuses to run as root): %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func findBinDir(explicit string) (string, error) {
	var candidates []string
	if explicit != "" {
		candidates = append(candidates, explicit)
	}
	if env := os.Getenv(EnvBinDir); env != "" {
		candidates = append(candidates, env)
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(dirs) > 0 {
		sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
		candidates = append(candidates, dirs...)
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		candidates = append(candidates, filepath.Dir(p))
	}
	for _, dir := range candidates {
		if hasServer(dir) {
			return dir, nil
		}
	}
	return "", ErrNoBinaries
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func hasServer(dir string) bool {
	for _, p := range []string{"initdb", "pg_ctl", "postgres"} {
		if st, err := os.Stat(filepath.Join(dir, p)); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

func replaceDatabase(dsn, db string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err == nil {
			u.Path = "/" + db
			return u.String()
		}
	}
	return dsn + " dbname='" + strings.ReplaceAll(strings.ReplaceAll(db, `\`, `\\`), `'`, `\'`) + "'"
}
