package natssink_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/natssink"
	"github.com/pgcdc/pgcdc/sink/sinktest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	addr   = "127.0.0.1:4222"
	stream = "PGCDC_SINKTEST"
)

// streamCfg is the test stream, created by the sink itself.
var streamCfg = natssink.StreamConfig{Name: stream, Create: true, Subjects: []string{"pgcdc.sinktest.>"}, MaxAge: time.Hour}

// admin connects a plain client to read and clean up with. The server must
// be up: a test fails, never skips, when it is not.
func admin(t *testing.T) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect("nats://"+addr, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("NATS at %s is not reachable (.ci/run starts it): %v", addr, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func subjects(table string) string { return "pgcdc.sinktest.public." + table + ".>" }

// prepare purges the table's subjects when the test ends.
func prepare(js jetstream.JetStream) func(t *testing.T, table string) {
	return func(t *testing.T, table string) {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if st, err := js.Stream(ctx, stream); err == nil {
				_ = st.Purge(ctx, jetstream.WithPurgeSubject(subjects(table)))
			}
		})
	}
}

// read returns every message of the table in stream order.
func read(js jetstream.JetStream) func(t *testing.T, table string) []sinktest.Received {
	return func(t *testing.T, table string) []sinktest.Received {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cons, err := js.CreateConsumer(ctx, stream, jetstream.ConsumerConfig{
			FilterSubject:     subjects(table),
			AckPolicy:         jetstream.AckNonePolicy,
			InactiveThreshold: time.Minute,
		})
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		if err != nil {
			t.Fatalf("create consumer: %v", err)
		}
		defer js.DeleteConsumer(context.Background(), stream, cons.CachedInfo().Name)
		left := int(cons.CachedInfo().NumPending)
		var out []sinktest.Received
		for left > 0 {
			batch, err := cons.Fetch(min(left, 1000), jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatalf("fetch: %v", err)
			}
			n := 0
			for m := range batch.Messages() {
				out = append(out, sinktest.Received{EventID: m.Headers().Get(jetstream.MsgIDHeader), Payload: m.Data()})
				n++
			}
			if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
				t.Fatalf("fetch: %v", err)
			}
			if n == 0 {
				t.Fatalf("fetch: %d messages pending but none came", left)
			}
			left -= n
		}
		return out
	}
}

func newSink(ctx context.Context, addr string) (*natssink.Sink, error) {
	return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Stream: streamCfg, Timeout: 5 * time.Second, DialTimeout: 2 * time.Second})
}

func TestConformance(t *testing.T) {
	js := admin(t)
	sinktest.Run(t, sinktest.Harness{
		Addr:    addr,
		Prepare: prepare(js),
		New: func(ctx context.Context, t *testing.T, addr string) (sink.Sink, error) {
			return newSink(ctx, addr)
		},
		Read: read(js),
		Permanent: func(t *testing.T, table string) []sink.Message {
			// Over the server's max_payload: no retry can send it.
			msgs := sinktest.Messages(table, 1, 1)
			msgs[0].Payload = []byte(`{"big":"` + strings.Repeat("x", 8<<20) + `"}`)
			return msgs
		},
		BadConfigs: []sinktest.BadConfig{
			{Name: "subject", Want: "subject", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Subject: "cdc.{table}.>"})
			}},
			{Name: "placeholder", Want: "unknown placeholder {tbl}", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Subject: "cdc.{tbl}"})
			}},
			{Name: "auth", Want: "at most one", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Token: "t", Username: "u"})
			}},
			{Name: "missing stream", Want: "stream.create", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Stream: natssink.StreamConfig{Name: "PGCDC_NO_SUCH_STREAM"}})
			}},
			{Name: "storage", Want: "stream.storage", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Stream: natssink.StreamConfig{Name: "X", Storage: "disk"}})
			}},
			{Name: "stream subjects", Want: "stream.subjects", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://" + addr, Subject: "{source}.{table}", Stream: natssink.StreamConfig{Name: "X", Create: true}})
			}},
			{Name: "url", Want: "nats://127.0.0.1:1", New: func(ctx context.Context) (sink.Sink, error) {
				return natssink.New(ctx, natssink.Config{URL: "nats://127.0.0.1:1", DialTimeout: time.Second})
			}},
		},
	})
}

func TestEndToEnd(t *testing.T) {
	js := admin(t)
	ctx := context.Background()
	s, err := newSink(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Prepare: prepare(js), Read: read(js), Dedup: true})
}

// A redelivered batch is dropped by the duplicate window; headers and the
// default subject are as documented.
func TestRedeliveryDedupAndHeaders(t *testing.T) {
	js := admin(t)
	ctx := context.Background()
	s, err := newSink(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	tbl := "dedup_" + time.Now().Format("150405.000000")
	tbl = strings.ReplaceAll(tbl, ".", "")
	prepare(js)(t, tbl)
	msgs := sinktest.Messages(tbl, 200, 5)
	for range 3 {
		if err := s.Deliver(ctx, msgs); err != nil {
			t.Fatal(err)
		}
	}
	got := read(js)(t, tbl)
	if len(got) != len(msgs) {
		t.Fatalf("%d messages in the stream after delivering %d three times; want %d", len(got), len(msgs), len(msgs))
	}
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subjects(tbl)}})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := "pgcdc.sinktest.public." + tbl + ".INSERT"
	h := m.Headers()
	if m.Subject() != want || h.Get(jetstream.MsgIDHeader) != msgs[0].EventID || h.Get(natssink.HeaderAction) != "INSERT" ||
		h.Get(natssink.HeaderSource) != "sinktest" || h.Get(natssink.HeaderLSN) != msgs[0].LSN {
		t.Errorf("first message: subject %s, headers %v; want subject %s, Nats-Msg-Id %s, action, source, lsn", m.Subject(), h, want, msgs[0].EventID)
	}
}

// The same through a sink.Batcher: events delivered in batches.
func TestEndToEndBatched(t *testing.T) {
	js := admin(t)
	ctx := context.Background()
	s, err := newSink(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	b := sink.NewBatcher(s, 64, 0)
	defer b.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Handler: sink.Handler(b), MaxGoroutines: 64, Prepare: prepare(js), Read: read(js), Dedup: true})
}

// Validate reports every bad setting at once, without connecting; good
// settings pass without a server.
func TestValidate(t *testing.T) {
	err := natssink.Config{Subject: "a.>", Token: "t", Username: "u"}.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad settings")
	}
	for _, want := range []string{"subject", "at most one"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to name %q", err, want)
		}
	}
	good := natssink.Config{URL: "nats://nowhere.invalid:4222", Stream: natssink.StreamConfig{Name: "S", Create: true}}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate of good settings: %v", err)
	}
}
