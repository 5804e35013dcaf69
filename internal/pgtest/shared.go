package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Kill sends SIGKILL to the postmaster (a crash of the whole server) and
// waits for it to be gone. Start brings the cluster back with crash recovery.
func (c *Cluster) Kill(ctx context.Context) error {
	if !c.Owned() {
		return fmt.Errorf("pgtest: cannot kill an external server")
	}
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return fmt.Errorf("pgtest: read postmaster.pid: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return fmt.Errorf("pgtest: parse postmaster.pid: %w", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("pgtest: kill %d: %w", pid, err)
	}
	for syscall.Kill(pid, 0) == nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The children notice the postmaster's death and exit; a new postmaster
	// refuses to start while they still hold shared memory, so Start retries.
	return nil
}

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared returns the cluster shared by the tests of this test binary: the
// server named by PGCDC_TEST_DSN, or a throwaway cluster started on first use
// and removed by Main. It fails the test when neither is available.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	shared.once.Do(func() {
		if dsn := os.Getenv(EnvDSN); dsn != "" {
			shared.c = &Cluster{external: dsn}
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.c, shared.err = Start(ctx, Options{})
	})
	if shared.err != nil {
		tb.Fatalf("pgtest: cannot start PostgreSQL: %v", shared.err)
	}
	return shared.c
}

// Main runs the tests and then removes the shared cluster, if one was
// started. Use it from TestMain: func TestMain(m *testing.M) { pgtest.Main(m) }.
func Main(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		shared.c.Close()
	}
	os.Exit(code)
}

// NewDatabase creates a fresh database on the shared cluster for one test,
// drops it when the test ends, and returns its DSN.
func NewDatabase(tb testing.TB) string {
	tb.Helper()
	c := Shared(tb)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name, err := c.CreateDatabase(ctx, tb.Name())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.DropDatabase(ctx, name); err != nil {
			tb.Logf("pgtest: drop database %s: %v", name, err)
		}
	})
	return c.DSN(name)
}

// Exec runs SQL statements (simple protocol, may hold several statements) on
// dsn and fails the test on error.
func Exec(tb testing.TB, dsn string, sql string, args ...any) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if len(args) == 0 {
		if _, err := conn.PgConn().Exec(ctx, sql).ReadAll(); err != nil {
			tb.Fatalf("pgtest: exec %q: %v", sql, err)
		}
		return
	}
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		tb.Fatalf("pgtest: exec %q: %v", sql, err)
	}
}

// QueryRow runs a one-row query on dsn, scanning into dest, and fails the
// test on error.
func QueryRow(tb testing.TB, dsn string, sql string, dest ...any) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		tb.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if err := conn.QueryRow(ctx, sql).Scan(dest...); err != nil {
		tb.Fatalf("pgtest: %q: %v", sql, err)
	}
}
