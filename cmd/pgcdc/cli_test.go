package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestValidateExample: the example in the repository is valid.
func TestValidateExample(t *testing.T) {
	stdout, stderr, code := runCmd(t, "", nil, "validate", "-c", filepath.Join("..", "..", "pgcdc.example.yaml"))
	if code != 0 || !strings.Contains(stdout, "valid") {
		t.Fatalf("validate pgcdc.example.yaml: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestValidateReadmeExample: the configuration in the README's "Run as a
// service" section is valid.
func TestValidateReadmeExample(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, _ := strings.Cut(string(readme), "## Run as a service")
	_, block, ok := strings.Cut(section, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml block in the README's 'Run as a service' section")
	}
	cfg := writeConfig(t, block)
	env := []string{"PG_DSN=postgres://u@h/db", "WEBHOOK_SECRET=s"}
	if stdout, stderr, code := runCmd(t, "", env, "validate", "-c", cfg); code != 0 || !strings.Contains(stdout, "valid") {
		t.Fatalf("validate the README's example: exit %d\n%s%s", code, stdout, stderr)
	}
}

// TestValidateReportsEveryProblem: a bad file gets one line per problem,
// each with its path, and exit status 1.
func TestValidateReportsEveryProblem(t *testing.T) {
	cfg := writeConfig(t, `
sources:
  billing:
    dsn: ${NOPE_DSN}
    capture: magic
    max_goroutine: 3
    retries: {max: -1, min_backoff: fast}
  other: {dsn: "postgres://x@localhost/db"}
routes:
  - tables: ["a.b.c", orders]
    sinks: [nowhere, hook]
    actions: [UPSERT]
sinks:
  hook: {type: webhook, url: "ftp://x", timeout: 5, retries: 3}
  f: {type: file}
  q: {type: carrier-pigeon}
http: {listen: nope}
log: {format: xml, level: loud}
shutdown_grace: soon
extra: 1
`)
	_, stderr, code := runCmd(t, "", nil, "validate", "-c", cfg)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	want := []string{
		"sources.billing.dsn (line 4): environment variable NOPE_DSN is not set",
		"sources.billing.capture: \"magic\": want logical, trigger or auto",
		"sources.billing.max_goroutine (line 6): unknown key (known keys here: capture, dead_letters, dsn, max_goroutines,",
		"sources.billing.retries.max: -1: must not be negative",
		"sources.billing.retries.min_backoff (line 7): \"fast\" is not a duration",
		"routes[0].source: missing: there are several sources (billing, other)",
		"sources.billing: no route uses this source",
		"sources.other: no route uses this source",
		"routes[0].tables[0]: \"a.b.c\": want \"table\", \"schema.table\" or \"schema.*\"",
		"routes[0].sinks[0]: \"nowhere\" is not a sink of this file (sinks: hook, f, q)",
		"routes[0].actions[0]: \"UPSERT\": want one of INSERT, UPDATE, DELETE, TRUNCATE",
		"sinks.hook.url (line 14): want an http:// or https:// URL with a host",
		"sinks.hook.timeout (line 14): \"5\" is not a duration",
		"sinks.hook.retries (line 14): unknown key",
		"sinks.f.path (line 15): missing: the file the events are appended to",
		"sinks.q.type (line 16): unknown sink type \"carrier-pigeon\" (known: file, kafka, nats, rabbitmq, redis, stdout, webhook)",
		"http.listen: \"nope\": want host:port",
		"log.format: \"xml\": want text or json",
		"log.level: \"loud\": want debug, info, warn or error",
		"shutdown_grace (line 19): \"soon\" is not a duration",
		"extra (line 20): unknown key",
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr lacks %q", w)
		}
	}
	if n := strings.Count(stderr, "\n  "); n != len(want) {
		t.Errorf("%d problems reported, want %d:\n%s", n, len(want), stderr)
	}

	for _, c := range []struct{ name, text, want string }{
		{"empty", "", "the file is empty"},
		{"not yaml", "sources: [", "not valid YAML"},
		{"no sections", "http: {listen: 127.0.0.1:1}\n", "sources: no source"},
		{"env default", "sources: {m: {dsn: '${UNSET_X:-postgres://a@b/c}'}}\nroutes: [{tables: t, sinks: [o]}]\nsinks: {o: {type: stdout}}\nlog:\n  level: ${LVL:-warn}\n", ""},
	} {
		cfg := writeConfig(t, c.text)
		_, stderr, code := runCmd(t, "", nil, "validate", "-c", cfg)
		if c.want == "" {
			if code != 0 {
				t.Errorf("%s: exit %d: %s", c.name, code, stderr)
			}
			continue
		}
		if code != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%s: exit %d, stderr %q, want %q", c.name, code, stderr, c.want)
		}
	}
	if _, stderr, code := runCmd(t, "", nil, "validate"); code != 1 || !strings.Contains(stderr, "give -c FILE") {
		t.Errorf("validate without -c: exit %d, %s", code, stderr)
	}
	if _, stderr, code := runCmd(t, "", nil, "run", "-c", filepath.Join(t.TempDir(), "missing.yaml")); code != 1 || !strings.Contains(stderr, "no such file") {
		t.Errorf("run with a missing file: exit %d, %s", code, stderr)
	}
}

// TestDaemonCommandLine: help, version, unknown commands of the built binary.
func TestDaemonCommandLine(t *testing.T) {
	for _, cmd := range []string{"run", "validate", "check", "status", "dead-letters", "teardown", "demo"} {
		_, stderr, code := runCmd(t, "", nil, cmd, "--help")
		if code != 0 || !strings.Contains(stderr, "Usage: pgcdc "+cmd) {
			t.Errorf("%s --help: exit %d\n%s", cmd, code, stderr)
		}
		stdout, stderr, code := runCmd(t, "", nil, "help", cmd)
		if code != 0 || !strings.Contains(stdout, "Usage: pgcdc "+cmd) || stderr != "" {
			t.Errorf("help %s: exit %d\n%s", cmd, code, stderr)
		}
	}
	if stdout, _, code := runCmd(t, "", nil, "--help"); code != 0 || !strings.Contains(stdout, "dead-letters") {
		t.Errorf("--help: exit %d\n%s", code, stdout)
	}
	if stdout, _, code := runCmd(t, "", nil, "version"); code != 0 || !strings.HasPrefix(stdout, "pgcdc ") {
		t.Errorf("version: exit %d %q", code, stdout)
	}
	if _, stderr, code := runCmd(t, "", nil, "frobnicate"); code != 2 || !strings.Contains(stderr, `unknown command "frobnicate"`) {
		t.Errorf("unknown command: exit %d %q", code, stderr)
	}
	if _, stderr, code := runCmd(t, "", nil, "validate", "-c", "x", "stray"); code != 2 || !strings.Contains(stderr, `unexpected argument "stray"`) {
		t.Errorf("stray argument: exit %d %q", code, stderr)
	}
	if _, stderr, code := runCmd(t, "", nil, "dead-letters", "eat"); code != 2 || !strings.Contains(stderr, "list|redeliver|purge") {
		t.Errorf("dead-letters eat: exit %d %q", code, stderr)
	}
}

// TestCheckDeadLettersTeardown: check passes on a ready database and names
// the fix of what is missing; dead letters are listed, redelivered and
// purged; teardown removes the slot and publication.
func TestCheckDeadLettersTeardown(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, note text); CREATE TABLE nokey (v int)`)
	var refuse atomic.Bool
	refuse.Store(true)
	var got atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refuse.Load() {
			http.Error(w, "no thanks", http.StatusUnprocessableEntity)
			return
		}
		got.Add(1)
	}))
	defer srv.Close()
	out := filepath.Join(t.TempDir(), "events.jsonl")
	text := `
sources:
  main: {dsn: "${TEST_DSN}"}
routes:
  - {tables: [items], sinks: [hook, file]}
sinks:
  hook: {type: webhook, url: "${HOOK_URL}"}
  file: {type: file, path: ` + out + `}
`
	cfg := writeConfig(t, text)
	env := []string{"TEST_DSN=" + dsn, "HOOK_URL=" + srv.URL}

	stdout, stderr, code := runCmd(t, "", env, "check", "-c", cfg)
	if code != 0 || !strings.Contains(stdout, "✓ wal_level = logical") || !strings.Contains(stdout, "✓ table public.items: replica identity default") ||
		!strings.Contains(stdout, "all checks passed") || strings.Contains(stdout, "✗") {
		t.Errorf("check on a ready database: exit %d\n%s%s", code, stdout, stderr)
	}
	bad := writeConfig(t, strings.Replace(text, "[items]", "[items, nokey, missing, \"empty.*\"]", 1)+"  down: {type: webhook, url: \"http://127.0.0.1:1/\"}\n")
	stdout, stderr, code = runCmd(t, "", env, "check", "-c", bad)
	for _, w := range []string{
		"✗ table public.nokey has no replica identity", `fix: ALTER TABLE "public"."nokey" ADD PRIMARY KEY (...); or ALTER TABLE "public"."nokey" REPLICA IDENTITY FULL;`,
		"✗ table public.missing does not exist",
		`✗ routes[0].tables[3] "empty.*" matches no table`,
		"sink down (webhook):\n  ✗ cannot reach 127.0.0.1:1",
	} {
		if !strings.Contains(stdout, w) {
			t.Errorf("check output lacks %q:\n%s", w, stdout)
		}
	}
	if code != 1 || !strings.Contains(stderr, "pgcdc check: 4 check(s) failed") {
		t.Errorf("check with problems: exit %d, want 1; stderr %s", code, stderr)
	}

	trig := writeConfig(t, strings.Replace(text, `{dsn: "${TEST_DSN}"}`, `{dsn: "${TEST_DSN}", capture: trigger}`, 1))
	stdout, _, code = runCmd(t, "", env, "check", "-c", trig)
	if code != 0 || !strings.Contains(stdout, "✓ table public.items: triggers can be created") ||
		!strings.Contains(stdout, "✓ trigger schema pgcdc exists or can be created") || strings.Contains(stdout, "wal_level") {
		t.Errorf("check in trigger mode: exit %d\n%s", code, stdout)
	}

	// The webhook refuses (422): both events are dead-lettered.
	p := start(t, env, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1, 'a'); INSERT INTO items VALUES (2, 'b');`)
	waitFor(t, time.Minute, "2 dead letters", func() bool {
		return queryInt(t, dsn, `SELECT (to_regclass('pgcdc.dead_letters') IS NOT NULL)::int`) == 1 &&
			queryInt(t, dsn, `SELECT count(*) FROM pgcdc.dead_letters`) == 2
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("run exited %d", code)
	}
	stdout, _, code = runCmd(t, "", env, "dead-letters", "list", "-c", cfg)
	if code != 0 || !strings.Contains(stdout, "422 Unprocessable Entity") || !strings.Contains(stdout, "2 dead letter(s)") {
		t.Errorf("dead-letters list: exit %d\n%s", code, stdout)
	}
	stdout, _, _ = runCmd(t, "", env, "dead-letters", "list", "-c", cfg, "--table", "other")
	if !strings.Contains(stdout, "0 dead letter(s)") {
		t.Errorf("dead-letters list --table other:\n%s", stdout)
	}
	// Still refused: the letters stay, with one more attempt.
	stdout, _, code = runCmd(t, "", env, "dead-letters", "redeliver", "-c", cfg, "--limit", "1")
	if code != 1 || !strings.Contains(stdout, "0 dead letter(s) delivered and removed, 1 failed again") {
		t.Errorf("redeliver while refused: exit %d\n%s", code, stdout)
	}
	refuse.Store(false)
	stdout, _, code = runCmd(t, "", env, "dead-letters", "redeliver", "-c", cfg, "--table", "items")
	if code != 0 || !strings.Contains(stdout, "2 dead letter(s) delivered and removed, 0 failed again") || got.Load() != 2 {
		t.Errorf("redeliver: exit %d, %d requests\n%s", code, got.Load(), stdout)
	}
	if n := queryInt(t, dsn, `SELECT count(*) FROM pgcdc.dead_letters`); n != 0 {
		t.Errorf("%d dead letters left after redelivery", n)
	}
	pgtest.Exec(t, dsn, `INSERT INTO pgcdc.dead_letters (worker_type, source, route, event_id, schema_name, table_name, action, payload, error, attempts)
		VALUES ('postgres_listener', 'main', 'r', 'x', 'public', 'items', 'INSERT', '{}', 'e', 1)`)
	if _, _, code := runCmd(t, "n\n", env, "dead-letters", "purge", "-c", cfg); code != 1 || queryInt(t, dsn, `SELECT count(*) FROM pgcdc.dead_letters`) != 1 {
		t.Errorf("purge answered no: exit %d", code)
	}
	if stdout, _, code := runCmd(t, "", env, "dead-letters", "purge", "-c", cfg, "--yes"); code != 0 || !strings.Contains(stdout, "1 dead letter(s) deleted") {
		t.Errorf("purge --yes: exit %d\n%s", code, stdout)
	}

	// Teardown.
	if _, _, code := runCmd(t, "no\n", env, "teardown", "-c", cfg); code != 1 || queryInt(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slotMain) != 1 {
		t.Errorf("teardown answered no: exit %d", code)
	}
	stdout, stderr, code = runCmd(t, "y\n", env, "teardown", "-c", cfg)
	if code != 0 || !strings.Contains(stdout, "source main: removed") {
		t.Errorf("teardown: exit %d\n%s%s", code, stdout, stderr)
	}
	if n := queryInt(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slotMain) +
		queryInt(t, dsn, `SELECT count(*) FROM pg_publication WHERE pubname = $1`, slotMain); n != 0 {
		t.Errorf("slot or publication left after teardown")
	}
	if _, err := os.Stat(out); err != nil {
		t.Errorf("file sink: %v", err)
	}
}

// TestRunFatalErrors: errors that retrying cannot fix end pgcdc run with
// exit status 1 and the error on stderr.
func TestRunFatalErrors(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	for _, c := range []struct{ name, text, want string }{
		{"missing table", `
sources: {main: {dsn: "${TEST_DSN}"}}
routes: [{tables: [nope], sinks: [o]}]
sinks: {o: {type: stdout}}
`, `"public"."nope" does not exist`},
		{"pattern matches nothing", `
sources: {main: {dsn: "${TEST_DSN}"}}
routes: [{tables: ["nothing_here.*"], sinks: [o]}]
sinks: {o: {type: stdout}}
`, `source "main": the routes match no table`},
		{"one source fatal while another waits for its database", `
sources:
  main: {dsn: "${TEST_DSN}"}
  down: {dsn: "postgres://nobody@127.0.0.1:1/none?connect_timeout=1"}
routes:
  - {source: main, tables: [nope], sinks: [o]}
  - {source: down, tables: ["app.*"], sinks: [o]}
sinks: {o: {type: stdout}}
`, `"public"."nope" does not exist`},
		{"bad file sink", `
sources: {main: {dsn: "${TEST_DSN}"}}
routes: [{tables: [items], sinks: [f]}]
sinks: {f: {type: file, path: /nonexistent-dir/x.jsonl}}
`, `sink "f": file sink: open /nonexistent-dir/x.jsonl: no such file or directory`},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeConfig(t, c.text)
			p := start(t, []string{"TEST_DSN=" + dsn}, "run", "-c", cfg)
			if code := p.wait(t, time.Minute); code != 1 || !strings.Contains(p.stderr.String(), c.want) {
				t.Errorf("exit %d, stderr lacks %q:\n%s", code, c.want, p.stderr.String())
			}
		})
	}
}
