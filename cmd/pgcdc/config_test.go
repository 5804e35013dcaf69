package main

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink"
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

// fakeBrokerConfig stands for a broker sink's Config (yaml tags, Validate).
type fakeBrokerConfig struct {
	Addr  string        `yaml:"addr"`
	Topic string        `yaml:"topic"`
	Wait  time.Duration `yaml:"wait"`
}

func (c *fakeBrokerConfig) Validate() error {
	if c.Addr == "" {
		return errors.New("addr: missing: the broker's address")
	}
	return nil
}

type fakeBroker struct{ cfg fakeBrokerConfig }

func (f *fakeBroker) Deliver(context.Context, []sink.Message) error { return nil }
func (f *fakeBroker) Close(context.Context) error                   { return nil }

// TestRegistryPlugsInABrokerSink: a sink package with a Config struct and
// New(ctx, cfg) plugs in with one typed(...) line; its keys are decoded
// strictly and its Validate runs at validate time.
func TestRegistryPlugsInABrokerSink(t *testing.T) {
	reg := sinkTypes()
	reg["fake"] = typed(func(ctx context.Context, c fakeBrokerConfig, _ sinkEnv) (*fakeBroker, error) {
		return &fakeBroker{cfg: c}, nil
	})
	getenv := func(string) (string, bool) { return "", false }
	base := "sources: {m: {dsn: 'postgres://a@b/c'}}\nroutes: [{tables: [t], sinks: [q]}]\nsinks:\n  q: "
	cfg, err := ParseConfig("x", []byte(base+"{type: fake, addr: 'n:4222', topic: t, wait: 2s, batch_size: 5}\n"), reg, getenv)
	if err != nil {
		t.Fatal(err)
	}
	s, err := reg["fake"].open(context.Background(), cfg.Sinks["q"].Settings, sinkEnv{})
	if err != nil {
		t.Fatal(err)
	}
	if fb := s.(*fakeBroker); fb.cfg.Addr != "n:4222" || fb.cfg.Topic != "t" || fb.cfg.Wait != 2*time.Second || cfg.Sinks["q"].BatchSize != 5 {
		t.Errorf("decoded %+v", fb.cfg)
	}
	_, err = ParseConfig("x", []byte(base+"{type: fake, topik: t}\n"), reg, getenv)
	for _, want := range []string{"sinks.q.topik (line 4): unknown key (known keys here: addr, topic, wait)", "sinks.q.addr (line 4): missing: the broker's address"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want %q", err, want)
		}
	}
}

// The broker sinks are in the registry: their settings decode strictly and
// validate without connecting.
func TestBrokerSinkTypes(t *testing.T) {
	getenv := func(string) (string, bool) { return "", false }
	ok := `sources: {m: {dsn: 'postgres://a@b/c'}}
routes: [{tables: [t], sinks: [n, k, r, a]}]
sinks:
  n: {type: nats, url: 'nats://127.0.0.1:4222'}
  k: {type: kafka, brokers: ['127.0.0.1:9092'], topic: 'pgcdc.{table}'}
  r: {type: redis, url: 'redis://127.0.0.1:6379/0'}
  a: {type: rabbitmq, url: 'amqp://guest:guest@127.0.0.1:5672/', exchange: pgcdc}
`
	if _, err := ParseConfig("x", []byte(ok), sinkTypes(), getenv); err != nil {
		t.Fatalf("broker sinks refused: %v", err)
	}
	bad := strings.Replace(ok, "brokers: ['127.0.0.1:9092']", "brokers: [nohost]", 1)
	bad = strings.Replace(bad, "url: 'redis://127.0.0.1:6379/0'", "urll: x", 1)
	_, err := ParseConfig("x", []byte(bad), sinkTypes(), getenv)
	for _, want := range []string{"sinks.k (line 5)", `"nohost" is not host:port`, "sinks.r.urll"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v, want it to name %q", err, want)
		}
	}
}
