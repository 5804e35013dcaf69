package redissink_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/redissink"
	"github.com/pgcdc/pgcdc/sink/sinktest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const addr = "127.0.0.1:6379"

// admin is a plain client the tests read and clean up with. The broker
// must be up: a test fails, never skips, when it is not.
func admin(t *testing.T) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		t.Fatalf("Redis at %s is not reachable (.ci/run starts it): %v", addr, err)
	}
	return c
}

func streamKey(table string) string { return "pgcdc:sinktest:public:" + table }

func read(c *redis.Client) func(t *testing.T, table string) []sinktest.Received {
	return func(t *testing.T, table string) []sinktest.Received {
		t.Helper()
		key := streamKey(table)
		entries, err := c.XRange(context.Background(), key, "-", "+").Result()
		if err != nil {
			t.Fatalf("XRANGE %s: %v", key, err)
		}
		out := make([]sinktest.Received, len(entries))
		for i, e := range entries {
			id, _ := e.Values["event_id"].(string)
			p, _ := e.Values["payload"].(string)
			out[i] = sinktest.Received{EventID: id, Payload: []byte(p)}
		}
		return out
	}
}

// prepare removes the table's stream when the test ends.
func prepare(c *redis.Client) func(t *testing.T, table string) {
	return func(t *testing.T, table string) {
		t.Cleanup(func() { c.Del(context.Background(), streamKey(table)) })
	}
}

func TestConformance(t *testing.T) {
	c := admin(t)
	sinktest.Run(t, sinktest.Harness{
		Addr:    addr,
		Prepare: prepare(c),
		New: func(ctx context.Context, t *testing.T, addr string) (sink.Sink, error) {
			return redissink.New(ctx, redissink.Config{URL: "redis://" + addr, Timeout: 5 * time.Second})
		},
		Read: read(c),
		Permanent: func(t *testing.T, table string) []sink.Message {
			// A string where the stream should be: XADD fails with WRONGTYPE.
			key := streamKey(table)
			if err := c.Set(context.Background(), key, "not a stream", 0).Err(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Del(context.Background(), key) })
			return sinktest.Messages(table, 3, 1)
		},
		BadConfigs: []sinktest.BadConfig{
			{Name: "url", Want: "url", New: func(ctx context.Context) (sink.Sink, error) {
				return redissink.New(ctx, redissink.Config{URL: "http://" + addr})
			}},
			{Name: "stream", Want: "stream", New: func(ctx context.Context) (sink.Sink, error) {
				return redissink.New(ctx, redissink.Config{Stream: "cdc:{tabel}"})
			}},
			{Name: "max_len", Want: "max_len", New: func(ctx context.Context) (sink.Sink, error) {
				return redissink.New(ctx, redissink.Config{MaxLen: -1})
			}},
			{Name: "tls", Want: "tls", New: func(ctx context.Context) (sink.Sink, error) {
				return redissink.New(ctx, redissink.Config{TLS: sink.TLSConfig{CertFile: "/nonexistent.pem"}})
			}},
			{Name: "password", Want: "WRONGPASS", New: func(ctx context.Context) (sink.Sink, error) {
				return redissink.New(ctx, redissink.Config{URL: "redis://" + addr, Username: "nobody", Password: "wrong"})
			}},
		},
	})
}

func TestEndToEnd(t *testing.T) {
	c := admin(t)
	ctx := context.Background()
	s, err := redissink.New(ctx, redissink.Config{URL: "redis://" + addr})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Prepare: prepare(c), Read: read(c)})
}

// The fields, the default stream name and MAXLEN.
func TestFieldsAndMaxLen(t *testing.T) {
	c := admin(t)
	ctx := context.Background()
	s, err := redissink.New(ctx, redissink.Config{URL: "redis://" + addr, Stream: "pgcdc-test:{source}:{table}", MaxLen: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	msgs := sinktest.Messages("maxlen", 1000, 3)
	for i := range msgs {
		msgs[i].Source = ""
	}
	key := "pgcdc-test:default:maxlen"
	c.Del(ctx, key)
	t.Cleanup(func() { c.Del(ctx, key) })
	for i := 0; i < len(msgs); i += 100 {
		if err := s.Deliver(ctx, msgs[i:i+100]); err != nil {
			t.Fatal(err)
		}
	}
	n, err := c.XLen(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 || n >= 1000 {
		t.Errorf("XLEN = %d; want about 100 (MAXLEN ~ 100)", n)
	}
	last, err := c.XRevRangeN(ctx, key, "+", "-", 1).Result()
	if err != nil || len(last) != 1 {
		t.Fatalf("XREVRANGE: %v %v", last, err)
	}
	v := last[0].Values
	if v["event_id"] != msgs[999].EventID || v["action"] != "INSERT" || v["payload"] != string(msgs[999].Payload) {
		t.Errorf("last entry %v; want event_id %s, action INSERT, payload %s", v, msgs[999].EventID, msgs[999].Payload)
	}
}

// The same through a sink.Batcher: events delivered in batches.
func TestEndToEndBatched(t *testing.T) {
	c := admin(t)
	ctx := context.Background()
	s, err := redissink.New(ctx, redissink.Config{URL: "redis://" + addr})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	b := sink.NewBatcher(s, 64, 0)
	defer b.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Handler: sink.Handler(b), MaxGoroutines: 64, Prepare: prepare(c), Read: read(c)})
}

// Validate reports every bad setting at once, without connecting; good
// settings pass without a server.
func TestValidate(t *testing.T) {
	err := redissink.Config{Stream: "x:{tabel}", MaxLen: -1}.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad settings")
	}
	for _, want := range []string{"stream", "max_len"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to name %q", err, want)
		}
	}
	good := redissink.Config{URL: "redis://nowhere.invalid:6379"}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate of good settings: %v", err)
	}
}
