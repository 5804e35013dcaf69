package amqpsink_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pgcdc/pgcdc/internal/pgtest"
	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/amqpsink"
	"github.com/pgcdc/pgcdc/sink/sinktest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

const (
	addr     = "127.0.0.1:5672"
	exchange = "pgcdc.sinktest"
)

// broker is a plain connection the tests read and clean up with, and what
// it read so far per table (a get takes the message off the queue).
type broker struct {
	ch   *amqp.Channel
	mu   sync.Mutex
	seen map[string][]sinktest.Received
}

// admin connects; the broker must be up: a test fails, never skips, when
// it is not.
func admin(t *testing.T) *broker {
	t.Helper()
	conn, err := amqp.DialConfig("amqp://guest:guest@"+addr+"/", amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ at %s is not reachable (.ci/run starts it): %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	return &broker{ch: ch, seen: map[string][]sinktest.Received{}}
}

func queue(table string) string { return "pgcdc.sinktest." + table }

// prepare binds a queue to the table's routing keys, deleted when the
// test ends.
func (b *broker) prepare(t *testing.T, table string) {
	t.Helper()
	q := queue(table)
	if _, err := b.ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.ch.QueueBind(q, "sinktest.public."+table+".*", exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = b.ch.QueueDelete(q, false, false, false) })
}

func (b *broker) read(t *testing.T, table string) []sinktest.Received {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		d, ok, err := b.ch.Get(queue(table), true)
		if err != nil {
			t.Fatalf("get from %s: %v", queue(table), err)
		}
		if !ok {
			break
		}
		b.seen[table] = append(b.seen[table], sinktest.Received{EventID: d.MessageId, Payload: d.Body})
	}
	return b.seen[table]
}

func cfg(addr string) amqpsink.Config {
	return amqpsink.Config{URL: "amqp://guest:guest@" + addr + "/", Exchange: exchange, Declare: true, Timeout: 5 * time.Second, DialTimeout: 2 * time.Second}
}

func TestConformance(t *testing.T) {
	b := admin(t)
	sinktest.Run(t, sinktest.Harness{
		Addr:    addr,
		Prepare: b.prepare,
		New: func(ctx context.Context, t *testing.T, addr string) (sink.Sink, error) {
			return amqpsink.New(ctx, cfg(addr))
		},
		Read: b.read,
		Permanent: func(t *testing.T, table string) []sink.Message {
			// No queue is bound to the table's routing keys.
			return sinktest.Messages(table, 3, 1)
		},
		BadConfigs: []sinktest.BadConfig{
			{Name: "url", Want: "url", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(addr)
				c.URL = "http://" + addr
				return amqpsink.New(ctx, c)
			}},
			{Name: "routing_key", Want: "routing_key", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(addr)
				c.RoutingKey = "{table"
				return amqpsink.New(ctx, c)
			}},
			{Name: "exchange_type", Want: "exchange_type", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(addr)
				c.ExchangeType = "fan"
				return amqpsink.New(ctx, c)
			}},
			{Name: "missing exchange", Want: "declare: true", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(addr)
				c.Exchange, c.Declare = "pgcdc.no-such-exchange", false
				return amqpsink.New(ctx, c)
			}},
			{Name: "password", Want: "username or password not allowed", New: func(ctx context.Context) (sink.Sink, error) {
				c := cfg(addr)
				c.Password = "wrong"
				return amqpsink.New(ctx, c)
			}},
		},
	})
}

func TestEndToEnd(t *testing.T) {
	b := admin(t)
	ctx := context.Background()
	s, err := amqpsink.New(ctx, cfg(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	sinktest.EndToEndTest(t, sinktest.EndToEnd{DSN: pgtest.NewDatabase(t), Sink: s, Prepare: b.prepare, Read: b.read})
}

// Message properties and headers are as documented.
func TestProperties(t *testing.T) {
	b := admin(t)
	ctx := context.Background()
	s, err := amqpsink.New(ctx, cfg(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	tbl := "props"
	b.prepare(t, tbl)
	msgs := sinktest.Messages(tbl, 1, 1)
	if err := s.Deliver(ctx, msgs); err != nil {
		t.Fatal(err)
	}
	d, ok, err := b.ch.Get(queue(tbl), true)
	if err != nil || !ok {
		t.Fatalf("get: %v %v", ok, err)
	}
	if d.MessageId != msgs[0].EventID || d.DeliveryMode != amqp.Persistent || d.RoutingKey != "sinktest.public.props.INSERT" ||
		d.ContentType != "application/json" || d.Headers[amqpsink.HeaderAction] != "INSERT" || d.Headers[amqpsink.HeaderLSN] != msgs[0].LSN ||
		d.Headers[amqpsink.HeaderSource] != "sinktest" || d.Headers[amqpsink.HeaderTable] != tbl || string(d.Body) != string(msgs[0].Payload) {
		t.Errorf("message: id %s mode %d key %s type %s headers %v body %s", d.MessageId, d.DeliveryMode, d.RoutingKey, d.ContentType, d.Headers, d.Body)
	}
}

// Validate reports every bad setting at once, without connecting; good
// settings pass without a server.
func TestValidate(t *testing.T) {
	err := amqpsink.Config{URL: "http://x", ExchangeType: "fan"}.Validate()
	if err == nil {
		t.Fatal("Validate accepted bad settings")
	}
	for _, want := range []string{"url", "exchange_type"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate: %v; want it to name %q", err, want)
		}
	}
	good := amqpsink.Config{URL: "amqp://u:p@nowhere.invalid:5672/"}
	if err := good.Validate(); err != nil {
		t.Errorf("Validate of good settings: %v", err)
	}
}
