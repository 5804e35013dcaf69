package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestTracingSpans: with tracing on, each delivery is one span exported
// over OTLP/HTTP to the endpoint of OTEL_EXPORTER_OTLP_ENDPOINT.
func TestTracingSpans(t *testing.T) {
	dsn := newDB(t)
	pgtest.Exec(t, dsn, `CREATE TABLE items (id int PRIMARY KEY, v int)`)
	var mu sync.Mutex
	spans := map[string]map[string]string{} // event_id → attributes
	names := map[string]int{}
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if r.URL.Path != "/v1/traces" || proto.Unmarshal(body, &req) != nil {
			http.Error(w, "bad export", http.StatusBadRequest)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					names[s.GetName()]++
					attrs := map[string]string{}
					for _, kv := range s.GetAttributes() {
						attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
					}
					spans[attrs["pgcdc.event_id"]] = attrs
				}
			}
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		_, _ = w.Write(b)
	}))
	defer collector.Close()
	cfg := writeConfig(t, `
sources: {main: {dsn: "${TEST_DSN}"}}
routes: [{tables: [items], sinks: [out], actions: [INSERT]}]
sinks: {out: {type: stdout}}
tracing: {enabled: true}
`)
	p := start(t, []string{"TEST_DSN=" + dsn, "OTEL_EXPORTER_OTLP_ENDPOINT=" + collector.URL}, "run", "-c", cfg)
	waitSlotActive(t, dsn, slotMain)
	pgtest.Exec(t, dsn, `INSERT INTO items VALUES (1, 0), (2, 0), (3, 0); UPDATE items SET v = 1 WHERE id = 1`)
	waitFor(t, time.Minute, "3 lines", func() bool { return len(lines(p.stdout.String())) == 3 })
	if code := p.stop(t); code != 0 { // flushes the spans
		t.Fatalf("exit %d", code)
	}
	mu.Lock()
	defer mu.Unlock()
	if names["pgcdc.deliver"] != 4 {
		t.Fatalf("spans = %v, want 4 pgcdc.deliver", names)
	}
	filtered := 0
	for _, a := range spans {
		if a["pgcdc.outcome"] == "filtered" {
			filtered++
		}
	}
	for _, l := range lines(p.stdout.String()) {
		e := parseEvent(t, l)
		a := spans[e.EventID]
		if a["pgcdc.outcome"] != "delivered" || a["pgcdc.source"] != "main" || a["pgcdc.table"] != "items" || a["pgcdc.action"] != "INSERT" {
			t.Errorf("span of %s = %v", e.EventID, a)
		}
	}
	if filtered != 1 {
		t.Errorf("%d filtered spans, want 1", filtered)
	}
}
