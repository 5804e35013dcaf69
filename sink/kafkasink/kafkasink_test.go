package kafkasink_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/kafkasink"
	"github.com/pgcdc/pgcdc/sink/sinktest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// No Kafka server runs here: the tests run against franz-go's kfake, an
// in-process implementation of the Kafka protocol.
func cluster(t *testing.T, opts ...kfake.Opt) (*kfake.Cluster, *kgo.Client) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	admin, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(admin.Close)
	return c, admin
}

func topic(table string) string { return "pgcdc.sinktest.public." + table }

// prepare creates the table's topic with 4 partitions.
func prepare(admin *kgo.Client) func(t *testing.T, table string) {
	return func(t *testing.T, table string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req := kmsg.NewPtrCreateTopicsRequest()
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic(table), 4, 1
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, admin)
		if err != nil {
			t.Fatalf("create topic: %v", err)
		}
		if code := resp.Topics[0].ErrorCode; code != 0 {
			t.Fatalf("create topic %s: error code %d", rt.Topic, code)
		}
	}
}

// read consumes the table's topic from the start up to its end offsets,
// partition by partition.
func read(admin *kgo.Client, addrs []string) func(t *testing.T, table string) []sinktest.Received {
	return func(t *testing.T, table string) []sinktest.Received {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		req := kmsg.NewPtrListOffsetsRequest()
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = topic(table)
		for p := range int32(4) {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition, rp.Timestamp = p, -1 // latest
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		resp, err := req.RequestWith(ctx, admin)
		if err != nil {
			t.Fatalf("list offsets: %v", err)
		}
		end := map[int32]int64{}
		total := int64(0)
		for _, p := range resp.Topics[0].Partitions {
			if p.ErrorCode != 0 {
				t.Fatalf("list offsets of %s/%d: error code %d", rt.Topic, p.Partition, p.ErrorCode)
			}
			end[p.Partition] = p.Offset
			total += p.Offset
		}
		if total == 0 {
			return nil
		}
		cons, err := kgo.NewClient(kgo.SeedBrokers(addrs...), kgo.ConsumeTopics(rt.Topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
		if err != nil {
			t.Fatal(err)
		}
		defer cons.Close()
		byPart := map[int32][]sinktest.Received{}
		for n := int64(0); n < total; {
			fs := cons.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				t.Fatalf("consumed %d of %d records: %v", n, total, err)
			}
			fs.EachRecord(func(r *kgo.Record) {
				if r.Offset >= end[r.Partition] {
					return
				}
				id := ""
				for _, h := range r.Headers {
					if h.Key == kafkasink.HeaderEventID {
						id = string(h.Value)
					}
				}
				byPart[r.Partition] = append(byPart[r.Partition], sinktest.Received{EventID: id, Payload: r.Value})
				n++
			})
		}
		var out []sinktest.Received
		for p := range int32(4) {
			out = append(out, byPart[p]...)
		}
		return out
	}
}

// via routes every connection of the client to addr (the suite's proxy in
// front of the one kfake broker).
func via(addr string) kafkasink.Option {
	var d net.Dialer
	return kafkasink.WithClientOptions(kgo.Dialer(func(ctx context.Context, network, _ string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}))
}

func cfg(addr string) kafkasink.Config {
	return kafkasink.Config{Brokers: []string{addr}, Topic: "pgcdc.{source}.{schema}.{table}", Timeout: 5 * time.Second, DialTimeout: 2 * time.Second}
}

func TestConformance(t *testing.T) {
	c, admin := cluster(t)
	kaddr := c.ListenAddrs()[0]
	sc, _ := cluster(t, kfake.EnableSASL(), kfake.Superuser("PLAIN", "admin", "secret"))
	sinktest.Run(t, sinktest.Harness{
		Addr:    kaddr,
		Prepare: prepare(admin),
		New: func(ctx context.Context, t *testing.T, addr string) (sink.Sink, error) {
			return kafkasink.New(ctx, cfg(addr), via(addr))
		},
		Read: read(admin, c.ListenAddrs()),
		Permanent: func(t *testing.T, table string) []sink.Message {
			prepare(admin)(t, table)
			// Over the producer's 1 MB batch limit: no retry can send it.
			msgs := sinktest.Messages(table, 1, 1)
			msgs[0].Payload = []byte(`{"big":"` + strings.Repeat("x", 2<<20) + `"}`)
			return msgs
		},
		BadConfigs: []sinktest.BadConfig{
			{Name: "topic", Want: "topic", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(kaddr)
				c.Topic = "cdc/{table}"
				return kafkasink.New(ctx, c)
			}},
			{Name: "brokers", Want: "brokers", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(kaddr)
				c.Brokers = []string{"localhost"}
				return kafkasink.New(ctx, c)
			}},
			{Name: "sasl mechanism", Want: "sasl.mechanism", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(kaddr)
				c.SASL.Mechanism = "GSSAPI"
				return kafkasink.New(ctx, c)
			}},
			{Name: "sasl password", Want: "sasl", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(sc.ListenAddrs()[0])
				c.SASL = kafkasink.SASLConfig{Mechanism: "PLAIN", Username: "admin", Password: "wrong"}
				return kafkasink.New(ctx, c)
			}},
		},
	})
}

// SASL PLAIN with the right password.
func TestSASL(t *testing.T) {
	c, _ := cluster(t, kfake.EnableSASL(), kfake.Superuser("PLAIN", "admin", "secret"), kfake.AllowAutoTopicCreation())
	ctx := context.Background()
	cf := cfg(c.ListenAddrs()[0])
	cf.SASL = kafkasink.SASLConfig{Mechanism: "PLAIN", Username: "admin", Password: "secret"}
	cf.AutoCreateTopics = true
	s, err := kafkasink.New(ctx, cf)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if err := s.Deliver(ctx, sinktest.Messages("sasl", 3, 1)); err != nil {
		t.Fatal(err)
	}
}

func TestEndToEnd(t *testing.T) {
	c, admin := cluster(t)
	ctx := context.Background()
	s, err := kafkasink.New(ctx, cfg(c.ListenAddrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Prepare: prepare(admin), Read: read(admin, c.ListenAddrs())})
}

// Keys and headers are as documented.
func TestKeyAndHeaders(t *testing.T) {
	c, admin := cluster(t)
	ctx := context.Background()
	s, err := kafkasink.New(ctx, cfg(c.ListenAddrs()[0]))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	prepare(admin)(t, "hdr")
	msgs := sinktest.Messages("hdr", 1, 1)
	msgs[0].RowKey = 0xabc
	if err := s.Deliver(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	cons, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.ConsumeTopics(topic("hdr")), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	var rec *kgo.Record
	for rec == nil {
		cons.PollFetches(ctx).EachRecord(func(r *kgo.Record) { rec = r })
	}
	h := map[string]string{}
	for _, x := range rec.Headers {
		h[x.Key] = string(x.Value)
	}
	if string(rec.Key) != "0000000000000abc" || h["event_id"] != msgs[0].EventID || h["action"] != "INSERT" || h["source"] != "sinktest" ||
		h["schema"] != "public" || h["table"] != "hdr" || h["lsn"] != msgs[0].LSN {
		t.Errorf("record key %q headers %v", rec.Key, h)
	}
}

// A topic missing without auto creation gives an error that says so.
func TestMissingTopic(t *testing.T) {
	c, _ := cluster(t)
	ctx := context.Background()
	cf := cfg(c.ListenAddrs()[0])
	cf.Timeout = 3 * time.Second
	s, err := kafkasink.New(ctx, cf, kafkasink.WithClientOptions(kgo.UnknownTopicRetries(1)))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	err = s.Deliver(ctx, sinktest.Messages("missing", 1, 1))
	if err == nil || sink.IsPermanent(err) || !strings.Contains(err.Error(), "auto_create_topics") {
		t.Fatalf("Deliver to a missing topic: %v; want a retryable error naming auto_create_topics", err)
	}
}

// Validate reports every bad setting at once, without connecting; good
// settings pass without a server.
func TestValidate(t *testing.T) {
	err := kafkasink.Config{Brokers: []string{"x"}, SASL: kafkasink.SASLConfig{Mechanism: "NOPE"}}.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad settings")
	}
	for _, want := range []string{"brokers", "sasl.mechanism"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to name %q", err, want)
		}
	}
	good := kafkasink.Config{Brokers: []string{"nowhere.invalid:9092"}}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate of good settings: %v", err)
	}
}
