package main

import (
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink/webhook"
)

func TestConfigEnvExpansion(t *testing.T) {
	env := map[string]string{"PG_DSN": "postgres://u:p@h/db", "GOR": "4", "SECRET": "a: b # not yaml", "EMPTY": ""}
	getenv := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	cfg, err := ParseConfig("t.yaml", []byte(`
sources:
  main:
    dsn: ${PG_DSN}
    max_goroutines: ${GOR}
    worker_type: ${WT:-w_${NOT_EXPANDED}
routes:
  - {tables: orders, sinks: [hook]}
sinks:
  hook:
    type: webhook
    url: http://x/${EMPTY:-fallback}
    secret: ${SECRET}
    headers: {Price: "$$5", Empty: "[${EMPTY}]"}
    timeout: ${TIMEOUT:-3s}
    batch_size: 4
`), sinkTypes(), getenv)
	if err != nil {
		t.Fatal(err)
	}
	s := cfg.Sources["main"]
	if s.DSN != env["PG_DSN"] || s.MaxGoroutines != 4 || s.Capture != "logical" {
		t.Errorf("source = %+v", s)
	}
	if s.WorkerType != "w_${NOT_EXPANDED" {
		t.Errorf("worker_type = %q", s.WorkerType)
	}
	if r := cfg.Routes[0]; r.Source != "main" || len(r.Tables) != 1 || r.Tables[0] != "orders" {
		t.Errorf("route = %+v", r)
	}
	hook := cfg.Sinks["hook"]
	wc := hook.Settings.(*webhook.Config)
	if wc.URL != "http://x/fallback" || wc.Secret != env["SECRET"] || wc.Headers["Price"] != "$5" || wc.Headers["Empty"] != "[]" ||
		wc.Timeout != 3*time.Second || hook.BatchSize != 4 {
		t.Errorf("webhook = %+v, batch %d", wc, hook.BatchSize)
	}
	if cfg.ShutdownGrace.D() != 30*time.Second || cfg.Log.Format != "text" || cfg.Log.Level != "info" {
		t.Errorf("defaults: %+v", cfg)
	}

	// A quoted reference stays a string: max_goroutines wants a number.
	_, err = ParseConfig("t.yaml", []byte(`
sources: {main: {dsn: "postgres://a@b/c", max_goroutines: "${GOR}"}}
routes: [{tables: [t], sinks: [o]}]
sinks: {o: {type: stdout}}
`), sinkTypes(), getenv)
	if err == nil || !strings.Contains(err.Error(), "sources.main.max_goroutines (line 2): cannot unmarshal !!str `4` into int") {
		t.Errorf("quoted number: %v", err)
	}
}
