package faulttest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// badRun is what a worker said about a bad input: Serve's error (if it
// returned), the errors given to the connection callback, and its logs.
type badRun struct {
	returned bool
	err      error
	cbErrs   []string
	logs     string
}

// text is every message the user could see.
func (b badRun) text() string {
	s := b.logs + "\n" + strings.Join(b.cbErrs, "\n")
	if b.err != nil {
		s += "\n" + b.err.Error()
	}
	return s
}

// first is the first error reported: Serve's or the callback's.
func (b badRun) first() string {
	if b.err != nil {
		return b.err.Error()
	}
	if len(b.cbErrs) > 0 {
		return b.cbErrs[0]
	}
	return ""
}

// runBad serves a worker for route on dsn until Serve returns or the
// connection callback reports an error (or timeout), then shuts it down.
func runBad(t *testing.T, dsn, route string, timeout time.Duration, opts ...pgcdc.OptionFunc) badRun {
	t.Helper()
	logs := &syncBuffer{}
	var mu sync.Mutex
	var cb []string
	opts = append([]pgcdc.OptionFunc{pgcdc.SetPostgresDSN(dsn), pgcdc.SetDebugMode(true),
		pgcdc.SetLogger(slogDebug(logs)),
		pgcdc.SetMinReconnectInterval(100 * time.Millisecond), pgcdc.SetMaxReconnectInterval(time.Second),
		pgcdc.SetOnErrorConnectionCallback(func(err error) {
			mu.Lock()
			cb = append(cb, err.Error())
			mu.Unlock()
		})}, opts...)
	w, err := pgcdc.NewWorker(opts...)
	if err != nil {
		return badRun{returned: true, err: err}
	}
	w.Handle(route, func(*pgcdc.EventContext) error { return nil })
	errc := make(chan error, 1)
	go func() { errc <- w.Serve(context.Background()) }()
	var b badRun
	_ = pollUntil(timeout, 10*time.Millisecond, func(context.Context) (bool, error) {
		select {
		case b.err = <-errc:
			b.returned = true
			return true, nil
		default:
		}
		mu.Lock()
		defer mu.Unlock()
		return len(cb) > 0, nil
	})
	ctx, cancel := ctxT(30 * time.Second)
	defer cancel()
	_ = w.Shutdown(ctx)
	if !b.returned {
		select {
		case <-errc:
		case <-time.After(30 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	}
	mu.Lock()
	b.cbErrs = append([]string(nil), cb...)
	mu.Unlock()
	b.logs = logs.String()
	t.Logf("Serve returned: %v (%v); first callback error: %q", b.returned, b.err, strings.Join(b.cbErrs[:min(1, len(b.cbErrs))], ""))
	return b
}

// noSecret fails if secret appears in any message.
func noSecret(t *testing.T, secret string, texts ...string) {
	t.Helper()
	for _, s := range texts {
		if i := strings.Index(s, secret); i >= 0 {
			t.Errorf("PASSWORD LEAKED: %q appears in: ...%s...", secret, s[max(0, i-200):min(len(s), i+len(secret)+50)])
		}
	}
}

// hbaCluster starts a cluster whose non-superuser roles must authenticate
// with SCRAM passwords (pgtest's clusters trust everyone; pg_hba.conf is
// rewritten in the data directory and reloaded).
func hbaCluster(t *testing.T) *pgtest.Cluster {
	t.Helper()
	c := ownCluster(t, nil)
	hba := filepath.Join(c.DataDir(), "pg_hba.conf")
	conf := "host all postgres 127.0.0.1/32 trust\n" +
		"host replication postgres 127.0.0.1/32 trust\n" +
		"host all all 127.0.0.1/32 scram-sha-256\n" +
		"host replication all 127.0.0.1/32 scram-sha-256\n"
	if err := os.WriteFile(hba, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	execSQL(t, c.DSN("postgres"), `SELECT pg_reload_conf()`)
	return c
}

func withUser(t *testing.T, dsn, user, password string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, password)
	return u.String()
}

// TestBadInput: each bad input gives a clear error (and no panic), and a
// password given in the DSN never appears in a log line or an error.
func TestBadInput(t *testing.T) {
	const secret = "pw-S3cr3t-XyZZy-7781"

	t.Run("unreachable_host", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close() // a closed port: connection refused
		dsn := fmt.Sprintf("postgres://app:%s@127.0.0.1:%d/shop?sslmode=disable&connect_timeout=5", secret, port)
		b := runBad(t, dsn, "orders", 20*time.Second)
		msg := b.first()
		if msg == "" {
			t.Fatal("no error reported within 20s for an unreachable host")
		}
		if !strings.Contains(msg, fmt.Sprint(port)) || !strings.Contains(strings.ToLower(msg), "refused") {
			t.Errorf("the error does not name the address and the cause: %q", msg)
		}
		noSecret(t, secret, b.text())
	})

	t.Run("unparsable_dsn", func(t *testing.T) {
		_, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN("postgres://app:" + secret + "@db.example:notaport/shop"))
		if !errors.Is(err, pgcdc.ErrConfig) {
			t.Fatalf("NewWorker = %v; want ErrConfig", err)
		}
		t.Logf("NewWorker: %v", err)
		noSecret(t, secret, err.Error())
	})

	t.Run("passwords", func(t *testing.T) {
		c := hbaCluster(t)
		db := createDatabase(t, c, "pw")
		execSQL(t, db, `CREATE ROLE app LOGIN REPLICATION PASSWORD '`+secret+`';
			CREATE TABLE orders (id bigint PRIMARY KEY);
			ALTER TABLE orders OWNER TO app;
			GRANT CREATE ON DATABASE `+pgx.Identifier{strings.TrimPrefix(mustURL(t, db).Path, "/")}.Sanitize()+` TO app;
			GRANT CREATE ON SCHEMA public TO app;`)

		t.Run("wrong_password", func(t *testing.T) {
			b := runBad(t, withUser(t, db, "app", "not-"+secret), "orders", 20*time.Second)
			msg := b.first()
			if !strings.Contains(msg, "password authentication failed") {
				t.Errorf("error %q does not say the password was refused", msg)
			}
			if !b.returned || !errors.Is(b.err, pgcdc.ErrConfig) {
				t.Errorf("a refused password must stop Serve with ErrConfig; returned=%v err=%v", b.returned, b.err)
			}
			noSecret(t, "not-"+secret, b.text())
			noSecret(t, secret, b.text())
		})
		t.Run("right_password_never_printed", func(t *testing.T) {
			dsn := withUser(t, db, "app", secret)
			logs := &syncBuffer{}
			var cbErrs syncBuffer
			rec := newMemRecorder()
			w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetDebugMode(true), pgcdc.SetLogger(slogDebug(logs)),
				pgcdc.SetWorkerType("ft_pw"), pgcdc.SetMaxRetries(1), pgcdc.SetRetryBackoff(time.Millisecond, time.Millisecond),
				pgcdc.SetOnErrorConnectionCallback(func(err error) { fmt.Fprintln(&cbErrs, err) }))
			if err != nil {
				t.Fatal(err)
			}
			w.Handle("orders", func(ec *pgcdc.EventContext) error {
				if ec.Event().Action == pgcdc.ActionInsert {
					var row struct{ ID int64 }
					_ = ec.Event().Data.DecodeNew(&row)
					if row.ID == 2 {
						return errors.New("handler refuses row 2") // exercises the dead-letter path
					}
				}
				return rec.handle(ec)
			})
			sv := serve(t, w)
			waitSlotActive(t, newPool(t, db), "pgcdc_ft_pw_default", true)
			execSQL(t, db, `INSERT INTO orders VALUES (1), (2), (3)`)
			if !rec.wait(time.Minute, func() bool { return rec.distinctRows() == 2 }) {
				t.Fatalf("rows not delivered with a password DSN\n%s", logs.String())
			}
			// A cut of the worker's connections makes it reconnect (and log).
			execSQL(t, c.DSN("postgres"), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'`)
			execSQL(t, db, `INSERT INTO orders VALUES (4)`)
			if !rec.wait(time.Minute, func() bool { return rec.distinctRows() == 3 }) {
				t.Fatalf("rows not delivered after a reconnect\n%s", logs.String())
			}
			sv.stop(t)
			n, rerr := w.RedeliverDeadLetters(context.Background(), "", 0)
			t.Logf("RedeliverDeadLetters: %d, %v", n, rerr)
			msgs := logs.String() + cbErrs.String()
			if rerr != nil {
				msgs += rerr.Error()
			}
			noSecret(t, secret, msgs, fmt.Sprint(w.Sources()))
			if !strings.Contains(logs.String(), "pgcdc") {
				t.Errorf("no log captured")
			}
		})
		t.Run("missing_replication_privilege", func(t *testing.T) {
			execSQL(t, db, `CREATE ROLE norepl LOGIN PASSWORD '`+secret+`'; GRANT SELECT ON orders TO norepl;`)
			b := runBad(t, withUser(t, db, "norepl", secret), "orders", 20*time.Second)
			if !b.returned || !errors.Is(b.err, pgcdc.ErrPrivilege) || !strings.Contains(b.err.Error(), "REPLICATION") {
				t.Errorf("Serve = %v (returned %v); want ErrPrivilege saying to grant REPLICATION", b.err, b.returned)
			}
			noSecret(t, secret, b.text())
		})
	})

	t.Run("wal_level_replica", func(t *testing.T) {
		c := ownCluster(t, map[string]string{"wal_level": "replica"})
		db := createDatabase(t, c, "replica")
		execSQL(t, db, `CREATE TABLE orders (id bigint PRIMARY KEY)`)
		b := runBad(t, db, "orders", 20*time.Second)
		if !b.returned || !errors.Is(b.err, pgcdc.ErrWALLevel) || !strings.Contains(b.err.Error(), "wal_level") {
			t.Errorf("Serve = %v (returned %v); want ErrWALLevel saying how to set wal_level", b.err, b.returned)
		}
	})

	t.Run("missing_table_and_no_primary_key", func(t *testing.T) {
		dsn := pgtest.NewDatabase(t)
		execSQL(t, dsn, `CREATE TABLE nopk (a int, b text)`)
		b := runBad(t, dsn, "nosuch", 20*time.Second)
		if !b.returned || !errors.Is(b.err, pgcdc.ErrTableNotFound) || !strings.Contains(b.err.Error(), "nosuch") {
			t.Errorf("route to a missing table: Serve = %v (returned %v); want ErrTableNotFound naming it", b.err, b.returned)
		}
		b = runBad(t, dsn, "nopk", 20*time.Second)
		if !b.returned || !errors.Is(b.err, pgcdc.ErrNoReplicaIdentity) || !strings.Contains(b.err.Error(), "nopk") {
			t.Errorf("table without a primary key: Serve = %v (returned %v); want ErrNoReplicaIdentity naming it", b.err, b.returned)
		}
		b = runBad(t, dsn, `"quoted".nosuch`, 20*time.Second)
		if !b.returned || !errors.Is(b.err, pgcdc.ErrTableNotFound) {
			t.Errorf("route with SQL quotes: Serve = %v (returned %v); want ErrTableNotFound", b.err, b.returned)
		}
	})

	t.Run("odd_identifiers", func(t *testing.T) { testOddIdentifiers(t) })
}

func mustURL(t *testing.T, dsn string) *url.URL {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// testOddIdentifiers captures a table whose schema, name and columns hold
// quotes, spaces, unicode and ";--", with an odd worker type (slot and
// publication names) and an odd dead-letter table.
func testOddIdentifiers(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	const schema, table = `we"ird sch;--`, `Tä b"le'; DROP TABLE x;--`
	const dlSchema, dlTable = `dl "sch"`, `dead ;-- 'letters'`
	qs, qt := pgx.Identifier{schema}.Sanitize(), pgx.Identifier{schema, table}.Sanitize()
	execSQL(t, dsn, `CREATE SCHEMA `+qs+`;
		CREATE TABLE `+qt+` ("Id" bigint PRIMARY KEY, "sp ace" text, "quo""te" text, "ünï" int, ";--" text);
		CREATE TABLE x (id int);`)
	logger, _ := bufLogger(t)
	var mu sync.Mutex
	var got []*pgcdc.EventPayload
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(dsn), pgcdc.SetLogger(logger), pgcdc.SetWorkerType(`odd "type"; --`),
		pgcdc.SetDeadLetterTable(dlSchema+"."+dlTable), pgcdc.SetMaxRetries(0),
		pgcdc.SetMinReconnectInterval(50*time.Millisecond), pgcdc.SetMaxReconnectInterval(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle(schema+"."+table, func(ec *pgcdc.EventContext) error {
		ev := ec.Event()
		var row map[string]any
		_ = ev.Data.DecodeNew(&row)
		if row["Id"] == float64(13) {
			return errors.New("unlucky; -- row")
		}
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
		return nil
	})
	sv := serve(t, w)
	src := newPool(t, dsn)
	slot := w.Sources()[0].Slot
	t.Logf("slot and publication: %q", slot)
	waitSlotActive(t, src, slot, true)
	execSQL(t, dsn, `INSERT INTO `+qt+` VALUES (1, 'a b', 'q"q', 7, '--'), (13, NULL, NULL, NULL, NULL);
		UPDATE `+qt+` SET "sp ace" = 'changed; --' WHERE "Id" = 1;
		DELETE FROM `+qt+` WHERE "Id" = 1;`)
	waitUntil(t, time.Minute, 10*time.Millisecond, "3 events", func(context.Context) (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return len(got) >= 3, nil
	})
	want := []struct{ action, new string }{
		{"INSERT", `{"Id":1,"sp ace":"a b","quo\"te":"q\"q","ünï":7,";--":"--"}`},
		{"UPDATE", `{"Id":1,"sp ace":"changed; --","quo\"te":"q\"q","ünï":7,";--":"--"}`},
		{"DELETE", `null`},
	}
	mu.Lock()
	for i, wt := range want {
		ev := got[i]
		if ev.Schema != schema || ev.Table != table || ev.Action != wt.action || string(ev.Data.New) != wt.new {
			t.Errorf("event %d: %s %q.%q new=%s; want %s %q.%q new=%s", i, ev.Action, ev.Schema, ev.Table, ev.Data.New, wt.action, schema, table, wt.new)
		}
	}
	mu.Unlock()
	var dlErr string
	waitUntil(t, time.Minute, 20*time.Millisecond, "the dead letter in the odd table", func(ctx context.Context) (bool, error) {
		err := src.QueryRow(ctx, `SELECT error FROM `+pgx.Identifier{dlSchema, dlTable}.Sanitize()+` WHERE (payload->'data'->'new'->>'Id')::int = 13`).Scan(&dlErr)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, nil
		}
		return err == nil, err
	})
	if !strings.Contains(dlErr, "unlucky; -- row") {
		t.Errorf("dead letter error = %q", dlErr)
	}
	if n := queryInt(t, src, `SELECT count(*) FROM x`); n != 0 {
		t.Errorf("table x changed")
	}
	sv.stop(t)
}
