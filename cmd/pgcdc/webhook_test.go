package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink/webhook"
)

// flakyTarget is a webhook endpoint that misbehaves on purpose: by row id,
// the first attempt of an event fails with 500, times out, or answers 429
// with Retry-After; a row noted "bad" is always refused with 400.
type flakyTarget struct {
	mu       sync.Mutex
	attempts map[string]int       // event_id → requests
	accepted []event              // 2xx answers, in order
	tooMany  map[string]time.Time // event_id → when 429 was answered
	waited   map[string]time.Duration
	badSigs  int
	secret   string
}

func (f *flakyTarget) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if err := webhook.Verify(f.secret, r.Header.Get(webhook.HeaderSignature), body, 5*time.Minute, time.Now()); err != nil {
		f.mu.Lock()
		f.badSigs++
		f.mu.Unlock()
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	var e struct {
		event
		Data struct {
			New struct {
				ID   int    `json:"id"`
				V    int    `json:"v"`
				Note string `json:"note"`
			} `json:"new"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &e); err != nil || r.Header.Get(webhook.HeaderEventID) != e.EventID {
		http.Error(w, "not one event", http.StatusUnprocessableEntity)
		return
	}
	f.mu.Lock()
	f.attempts[e.EventID]++
	n := f.attempts[e.EventID]
	if at, ok := f.tooMany[e.EventID]; ok && n == 2 {
		f.waited[e.EventID] = time.Since(at)
	}
	f.mu.Unlock()
	id := e.Data.New.ID
	switch {
	case e.Data.New.Note == "bad":
		http.Error(w, "rejected: bad row", http.StatusBadRequest)
		return
	case n == 1 && id%4 == 1:
		http.Error(w, "temporarily broken", http.StatusInternalServerError)
		return
	case n == 1 && id%4 == 2:
		select { // longer than the sink's timeout
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
		return
	case n == 1 && id%4 == 3:
		f.mu.Lock()
		f.tooMany[e.EventID] = time.Now()
		f.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "slow down", http.StatusTooManyRequests)
		return
	}
	var full event
	_ = json.Unmarshal(body, &full)
	f.mu.Lock()
	f.accepted = append(f.accepted, full)
	f.mu.Unlock()
	w.WriteHeader(http.StatusNoContent)
}

// TestWebhookFaultsMetricsAndStatus: a webhook target that fails, times
// out, asks to slow down and refuses one event: nothing is lost, each row's
// changes arrive in commit order, the refused event is dead-lettered, and
// /metrics, /readyz, /status and pgcdc status --json agree with it.
func TestWebhookFaultsMetricsAndStatus(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, v int, note text);
		CREATE TABLE audit (id int PRIMARY KEY)`)
	target := &flakyTarget{attempts: map[string]int{}, tooMany: map[string]time.Time{}, waited: map[string]time.Duration{}, secret: "s3cret"}
	srv := httptest.NewServer(target)
	defer srv.Close()
	addr := freeAddr(t)
	cfg := writeConfig(t, `
sources:
  main:
    dsn: "${TEST_DSN}"
    max_goroutines: 4
    retries: {max: 3, min_backoff: 10ms, max_backoff: 50ms}
routes:
  - tables: [items]
    sinks: [hook]
  - tables: [audit]
    sinks: [out]
    actions: [DELETE]
sinks:
  hook:
    type: webhook
    url: ${HOOK_URL}
    secret: ${HOOK_SECRET}
    timeout: 500ms
    max_attempts: 3
    min_backoff: 10ms
  out: {type: stdout}
http:
  listen: `+addr+`
log: {format: json}
`)
	env := []string{"TEST_DSN=" + dsn, "HOOK_URL=" + srv.URL + "/hook?token=abc", "HOOK_SECRET=s3cret"}
	p := start(t, env, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)

	const keys, updates = 12, 3
	var sql strings.Builder
	for k := 1; k <= keys; k++ {
		fmt.Fprintf(&sql, "INSERT INTO items VALUES (%d, 0, 'ok');\n", k)
	}
	for v := 1; v <= updates; v++ {
		for k := 1; k <= keys; k++ {
			fmt.Fprintf(&sql, "UPDATE items SET v = %d WHERE id = %d;\n", v, k)
		}
	}
	sql.WriteString("INSERT INTO items VALUES (99, 0, 'bad');\nINSERT INTO audit SELECT generate_series(1, 5);\n")
	pgtest.Exec(t, dsn, sql.String())

	const want = keys * (1 + updates)
	waitFor(t, 2*time.Minute, "every event accepted and the bad one dead-lettered", func() bool {
		target.mu.Lock()
		n := len(target.accepted)
		target.mu.Unlock()
		return n >= want && queryInt(t, dsn, `SELECT count(*) FROM pgcdc.dead_letters`) == 1
	})

	target.mu.Lock()
	perKey := map[int][]int{}
	seen := map[string]bool{}
	for _, e := range target.accepted {
		id, v := int(e.Data.New["id"].(float64)), int(e.Data.New["v"].(float64))
		perKey[id] = append(perKey[id], v)
		seen[e.EventID] = true
	}
	for k := 1; k <= keys; k++ {
		vs := perKey[k]
		if len(vs) < 1+updates || vs[0] != 0 {
			t.Errorf("row %d: accepted versions %v, want 0..%d", k, vs, updates)
		}
		for i := 1; i < len(vs); i++ {
			if vs[i] < vs[i-1] {
				t.Errorf("row %d: changes out of order: %v", k, vs)
				break
			}
		}
	}
	if len(seen) != want {
		t.Errorf("%d distinct events accepted, want %d", len(seen), want)
	}
	if target.badSigs != 0 {
		t.Errorf("%d requests had a bad signature", target.badSigs)
	}
	if len(target.waited) == 0 {
		t.Error("no event was retried after a 429")
	}
	for id, d := range target.waited {
		if d < 900*time.Millisecond {
			t.Errorf("event %s was retried %s after 429 with Retry-After: 1", id, d)
		}
	}
	target.mu.Unlock()

	dl := queryInt(t, dsn, `SELECT count(*) FROM pgcdc.dead_letters WHERE payload->'data'->'new'->>'id' = '99'
		AND error LIKE '%400 Bad Request%' AND error LIKE '%rejected: bad row%' AND attempts = 1`)
	if dl != 1 {
		t.Errorf("the event refused with 400 is not dead-lettered at once with the status and body")
	}
	var dlErr string
	func() {
		conn, err := pgxConnect(dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(t.Context())
		_ = conn.QueryRow(t.Context(), `SELECT error FROM pgcdc.dead_letters`).Scan(&dlErr)
	}()
	if strings.Contains(dlErr, "token=abc") {
		t.Errorf("the dead letter's error quotes the URL's query: %s", dlErr)
	}

	// /metrics agrees with what was written.
	waitFor(t, 30*time.Second, "filtered audit inserts counted", func() bool {
		return metricValue(t, addr, "pgcdc_events_total", map[string]string{"table": "audit", "outcome": "filtered"}) == 5
	})
	checks := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"pgcdc_events_total", map[string]string{"source": "main", "table": "items", "action": "INSERT", "outcome": "delivered"}, keys},
		{"pgcdc_events_total", map[string]string{"source": "main", "table": "items", "action": "UPDATE", "outcome": "delivered"}, keys * updates},
		{"pgcdc_events_total", map[string]string{"source": "main", "table": "items", "action": "INSERT", "outcome": "dead_lettered"}, 1},
		{"pgcdc_dead_letters_total", map[string]string{"source": "main", "table": "items"}, 1},
		{"pgcdc_source_up", map[string]string{"source": "main"}, 1},
	}
	for _, c := range checks {
		if got := metricValue(t, addr, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if metricValue(t, addr, "pgcdc_replication_lag_bytes", map[string]string{"source": "main"}) < 0 {
		t.Error("no pgcdc_replication_lag_bytes")
	}
	if metricValue(t, addr, "pgcdc_delivery_duration_seconds_count", map[string]string{"source": "main", "table": "items"}) != want {
		t.Error("pgcdc_delivery_duration_seconds does not count every delivered event")
	}

	if code, body := httpGet(t, "http://"+addr+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d %s", code, body)
	}
	if code, body := httpGet(t, "http://"+addr+"/readyz"); code != 200 || !strings.Contains(body, `"ready":true`) {
		t.Errorf("/readyz = %d %s", code, body)
	}
	code, body := httpGet(t, "http://"+addr+"/status")
	var live statusDoc
	if err := json.Unmarshal([]byte(body), &live); code != 200 || err != nil {
		t.Fatalf("/status = %d %s (%v)", code, body, err)
	}
	stdout, stderr, rc := runCmd(t, "", env, "status", "-c", cfg, "--json")
	var cli statusDoc
	if err := json.Unmarshal([]byte(stdout), &cli); rc != 0 || err != nil {
		t.Fatalf("pgcdc status --json: exit %d, %v\n%s\n%s", rc, err, stdout, stderr)
	}
	for _, doc := range []statusDoc{live, cli} {
		if doc.Daemon != "running" || len(doc.Sources) != 1 {
			t.Fatalf("status = %+v", doc)
		}
		s := doc.Sources[0]
		if s.Name != "main" || s.State != "streaming" || s.Engine != "logical" || s.Slot != slotMain || s.ConfirmedLSN == "" ||
			s.EventsHandled != want+5 || s.DeadLetters != 1 || s.DeadLettersWaiting != 1 || s.WALStatus == "" || !s.SlotActive {
			t.Errorf("status source = %+v", s)
		}
	}
	table, _, rc := runCmd(t, "", env, "status", "-c", cfg)
	if rc != 0 || !strings.Contains(table, "daemon: running") || !strings.Contains(table, slotMain) {
		t.Errorf("pgcdc status:\n%s", table)
	}

	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	for _, l := range lines(p.stderr.String()) {
		if !strings.HasPrefix(l, "{") {
			t.Errorf("log line is not JSON: %s", l)
		}
		if strings.Contains(l, "s3cret") || strings.Contains(l, "token=abc") {
			t.Errorf("log line holds a secret: %s", l)
		}
	}
	if out := p.stdout.String(); out != "" {
		t.Errorf("the audit route keeps only DELETE, but stdout has %q", out)
	}

	// Offline: pgcdc status reads the database.
	stdout, _, rc = runCmd(t, "", env, "status", "-c", cfg, "--json")
	var off statusDoc
	if err := json.Unmarshal([]byte(stdout), &off); rc != 0 || err != nil || off.Daemon != "not reachable" ||
		off.Sources[0].ConfirmedLSN == "" || off.Sources[0].DeadLettersWaiting != 1 || off.Sources[0].SlotActive {
		t.Errorf("offline status: exit %d, %v: %s", rc, err, stdout)
	}
}

// metricValue scrapes /metrics and returns the value of the series of name
// whose labels include labels (-1 when there is none).
func metricValue(t *testing.T, addr, name string, labels map[string]string) float64 {
	t.Helper()
	code, body := httpGet(t, "http://"+addr+"/metrics")
	if code != 200 {
		t.Fatalf("/metrics = %d", code)
	}
	family := name
	suffix := ""
	for _, s := range []string{"_count", "_sum"} {
		if strings.HasSuffix(name, s) && !strings.HasPrefix(name, "pgcdc_events") {
			family, suffix = strings.TrimSuffix(name, s), s
		}
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	mf, ok := families[family]
	if !ok {
		return -1
	}
next:
	for _, m := range mf.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		switch {
		case suffix == "_count":
			return float64(m.GetHistogram().GetSampleCount())
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

// TestTriggerCaptureBatchedWebhook: the trigger engine through the daemon,
// with a batching webhook: every row arrives, in JSON arrays, and the
// status shows the engine and an empty backlog.
func TestTriggerCaptureBatchedWebhook(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY)`)
	var mu sync.Mutex
	ids := map[float64]bool{}
	arrays := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var evs []event
		if err := json.Unmarshal(body, &evs); err != nil {
			var e event
			if err := json.Unmarshal(body, &e); err != nil {
				http.Error(w, "bad body", http.StatusBadRequest)
				return
			}
			evs = []event{e}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(evs) > 1 {
			arrays++
		}
		for _, e := range evs {
			ids[e.Data.New["id"].(float64)] = true
		}
	}))
	defer srv.Close()
	addr := freeAddr(t)
	cfg := writeConfig(t, `
sources:
  main: {dsn: "${TEST_DSN}", capture: trigger, max_goroutines: 8}
routes:
  - {tables: [items], sinks: [hook]}
sinks:
  hook: {type: webhook, url: "`+srv.URL+`", batch_size: 10, batch_linger: 20ms}
http: {listen: "`+addr+`"}
`)
	env := []string{"TEST_DSN=" + dsn}
	p := start(t, env, "run", "-c", cfg)
	waitFor(t, time.Minute, "ready", func() bool {
		code, _ := httpGetMaybe("http://" + addr + "/readyz")
		return code == 200
	})
	pgtest.Exec(t, dsn, `INSERT INTO items SELECT generate_series(1, 200)`)
	waitFor(t, time.Minute, "200 rows delivered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(ids) == 200
	})
	mu.Lock()
	if arrays == 0 {
		t.Error("no request carried a batch")
	}
	mu.Unlock()
	waitFor(t, 30*time.Second, "an empty backlog", func() bool {
		_, body := httpGet(t, "http://"+addr+"/status")
		var doc statusDoc
		return json.Unmarshal([]byte(body), &doc) == nil && len(doc.Sources) == 1 && doc.Sources[0].Engine == "trigger" &&
			doc.Sources[0].Backlog == 0 && doc.Sources[0].EventsHandled >= 200 && doc.Sources[0].TriggerSchema == "pgcdc"
	})
	if code := p.stop(t); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// httpGetMaybe is httpGet that reports a connection error as status 0.
func httpGetMaybe(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
