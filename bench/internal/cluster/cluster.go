// Package cluster boots one throwaway PostgreSQL cluster for the benchmark:
// initdb into a temporary directory, a free loopback port, the settings the
// caller gives, and pg_ctl start/stop. When the process runs as root the
// server programs run as the "postgres" OS user (PostgreSQL refuses root).
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cluster is a running throwaway server.
type Cluster struct {
	BinDir  string
	Root    string // temp directory, removed by Close
	DataDir string
	Port    int
	cred    *syscall.Credential
}

// FindBinDir returns the directory holding initdb, pg_ctl and postgres:
// explicit, then $PGCDC_PG_BIN, then /usr/lib/postgresql/<want>/bin, then
// the newest /usr/lib/postgresql/*/bin, then `pg_config --bindir`.
func FindBinDir(explicit string, want int) (string, error) {
	var cands []string
	if explicit != "" {
		cands = append(cands, explicit)
	}
	if env := os.Getenv("PGCDC_PG_BIN"); env != "" {
		cands = append(cands, env)
	}
	if want > 0 {
		cands = append(cands, fmt.Sprintf("/usr/lib/postgresql/%d/bin", want))
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return ver(dirs[i]) > ver(dirs[j]) })
	cands = append(cands, dirs...)
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		cands = append(cands, strings.TrimSpace(string(out)))
	}
	for _, d := range cands {
		ok := true
		for _, p := range []string{"initdb", "pg_ctl", "postgres", "pgbench", "pg_recvlogical"} {
			if st, err := os.Stat(filepath.Join(d, p)); err != nil || st.IsDir() {
				ok = false
				break
			}
		}
		if ok {
			return d, nil
		}
	}
	return "", errors.New("cluster: no PostgreSQL binaries (initdb, pg_ctl, postgres, pgbench, pg_recvlogical) found: install postgresql-15 or set PGCDC_PG_BIN")
}

func ver(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

// Start runs initdb, appends settings to postgresql.conf and starts the
// server on 127.0.0.1 and a free port.
func Start(ctx context.Context, binDir string, settings map[string]string) (*Cluster, error) {
	c := &Cluster{BinDir: binDir}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("cluster: running as root needs a 'postgres' OS user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	var err error
	if c.Root, err = os.MkdirTemp("", "pgcdc-bench-"); err != nil {
		return nil, err
	}
	c.DataDir = filepath.Join(c.Root, "data")
	if c.cred != nil {
		if err := os.Chown(c.Root, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.run(ctx, "initdb", "-D", c.DataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync"); err != nil {
		c.Close()
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Close()
		return nil, err
	}
	c.Port = l.Addr().(*net.TCPAddr).Port
	l.Close()
	all := map[string]string{
		"listen_addresses":        "'127.0.0.1'",
		"port":                    strconv.Itoa(c.Port),
		"unix_socket_directories": "''",
		"timezone":                "'UTC'",
		"log_min_messages":        "warning",
	}
	for k, v := range settings {
		all[k] = v
	}
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("\n# pgcdc bench\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, all[k])
	}
	f, err := os.OpenFile(filepath.Join(c.DataDir, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = f.WriteString(b.String())
	f.Close()
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "120", "-l", filepath.Join(c.Root, "server.log"), "start"); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// DSN returns a URL for database db as the superuser postgres.
func (c *Cluster) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port, db)
}

// Bin returns the path of a PostgreSQL program.
func (c *Cluster) Bin(prog string) string { return filepath.Join(c.BinDir, prog) }

// Log returns the server log.
func (c *Cluster) Log() string {
	b, _ := os.ReadFile(filepath.Join(c.Root, "server.log"))
	return string(b)
}

// Close stops the server (fast) and removes its files. Safe to call twice.
func (c *Cluster) Close() {
	if c.Root == "" {
		return
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		if err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "60", "-m", "fast", "stop"); err != nil {
			_ = c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "30", "-m", "immediate", "stop")
		}
		cancel()
	}
	_ = os.RemoveAll(c.Root)
	c.Root = ""
}

func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	cmd := exec.CommandContext(ctx, c.Bin(prog), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cluster: %s %s: %w\n%s", prog, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
