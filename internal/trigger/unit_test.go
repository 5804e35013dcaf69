package trigger

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestTriggerNames(t *testing.T) {
	cases := map[string]string{
		"":      "pgcdc_capture",
		"pgcdc": "pgcdc_capture",
		"app":   "pgcdc_capture_app",
		`We"rd`: `pgcdc_capture_We"rd`,
	}
	for schema, want := range cases {
		if got := TriggerName(schema); got != want {
			t.Errorf("TriggerName(%q) = %q, want %q", schema, got, want)
		}
	}
	if got := truncateTriggerName(""); got != "pgcdc_truncate" {
		t.Errorf("truncateTriggerName = %q", got)
	}
	long := strings.Repeat("é", 40) // 80 bytes
	a, b := TriggerName(long), TriggerName(long+"x")
	if len(a) > pgident.MaxLen || !utf8.ValidString(a) || a == b {
		t.Errorf("long names: %q (%d bytes), %q", a, len(a), b)
	}
}

func TestSplitArgsAndQuote(t *testing.T) {
	if got := splitArgs([]byte("id\x00a b\x00")); !slices.Equal(got, []string{"id", "a b"}) {
		t.Errorf("splitArgs = %q", got)
	}
	if got := splitArgs(nil); got != nil {
		t.Errorf("splitArgs(nil) = %q", got)
	}
	if got := splitArgs([]byte("tail")); !slices.Equal(got, []string{"tail"}) {
		t.Errorf("splitArgs without NUL = %q", got)
	}
	for in, want := range map[string]string{`a`: `'a'`, `it's`: `'it''s'`, `a\b`: `E'a\\b'`, `\'`: `E'\\'''`} {
		if got := quoteLiteral(in); got != want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestBadDSNIsFatal(t *testing.T) {
	rec := newRecorder()
	err := New(Config{DSN: "postgres://u:secret@host:notaport/db", Tables: []dispatch.Table{route("public", "t", 1, rec.handle)}}).Run(context.Background(), nil)
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrConfig) || strings.Contains(err.Error(), "secret") {
		t.Errorf("Run with a bad DSN = %v, want a fatal ErrConfig without the password", err)
	}
	err = New(Config{DSN: "postgres://localhost/db"}).Run(context.Background(), nil)
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrConfig) {
		t.Errorf("Run without tables = %v, want a fatal ErrConfig", err)
	}
}

func TestMissingDatabaseIsFatal(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(dsn, "/"+cfg.Database+"?", "/no_such_database_xyz?", 1)
	rec := newRecorder()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = New(config(bad, route("public", "t", 1, rec.handle))).Run(ctx, nil)
	if !errs.IsFatal(err) || !errors.Is(err, errs.ErrConfig) {
		t.Errorf("Run on a missing database = %v, want a fatal ErrConfig", err)
	}
}

// TestConnectionFailuresAreRetried: with no server listening, Run keeps
// retrying with backoff, reports each failure, and returns nil on stop.
func TestConnectionFailuresAreRetried(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	var failures atomic.Int64
	rec := newRecorder()
	cfg := config("postgres://u@"+addr+"/db?sslmode=disable&connect_timeout=2", route("public", "t", 1, rec.handle))
	cfg.OnError = func(error) { failures.Add(1) }
	r := start(t, cfg)
	waitUntil(t, 30*time.Second, "three reported failures", func() bool { return failures.Load() >= 3 })
	if err := r.halt(t); err != nil {
		t.Errorf("Run after stop = %v, want nil", err)
	}
}

// Every SQL template renders with the fields the package gives it.
func TestSQLTemplatesRender(t *testing.T) {
	for name, sql := range map[string]string{
		"function":                        functionSQL("pgcdc", []string{"id"}),
		"function of a partitioned table": functionSQL("pgcdc", []string{"id", routeMarker, "public", "meas"}),
		"table":                           tableSQL("pgcdc"),
		"claim":                           (&Source{cfg: Config{Schema: "pgcdc"}}).claimSQL(),
	} {
		if strings.Contains(sql, "{{") || strings.Contains(sql, "<no value>") || len(sql) < 100 {
			t.Errorf("%s: %q", name, sql)
		}
	}
}
