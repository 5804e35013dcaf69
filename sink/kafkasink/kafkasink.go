// Package kafkasink delivers pgcdc events to Apache Kafka with franz-go.
//
// Each event becomes one record on a topic named after its table
// (template, default DefaultTopic), keyed by its row: the key is the
// row's primary key as JSON ({"id":42}, see sink.KeyJSON), or for a table
// without one its RowKey (a 64-bit hash of its replica identity) as 16
// lower-case hex digits, so every change of a row goes to one partition and
// keeps its order there. Headers event_id, action,
// source, schema, table and lsn carry the event's metadata; the value is
// the event JSON.
//
// The producer is idempotent with acks=all: a record retried inside the
// client is written once. An event redelivered by the worker (after a
// crash, or a lost acknowledgement) is a new record: at-least-once;
// consumers deduplicate on the event_id header.
package kafkasink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/internal/gate"
	"github.com/pgcdc/pgcdc/sink/internal/order"
)

// Defaults used for zero Config fields.
const (
	DefaultBroker  = "127.0.0.1:9092"
	DefaultTopic   = "pgcdc.{source}.{schema}.{table}"
	DefaultTimeout = 30 * time.Second
)

// Header keys set on every record.
const (
	HeaderEventID = "event_id"
	HeaderAction  = "action"
	HeaderSource  = "source"
	HeaderSchema  = "schema"
	HeaderTable   = "table"
	HeaderLSN     = "lsn"
)

// Config configures the sink. Its yaml keys are those of the daemon's
// sink entry (type: kafka).
type Config struct {
	// Brokers are the seed brokers, host:port (default DefaultBroker).
	Brokers []string `yaml:"brokers"`
	// Topic is the topic template; placeholders {source}, {schema},
	// {table}, {action}. Characters a topic name cannot hold (anything but
	// letters, digits, '.', '_', '-') in a value become '_'. Default
	// DefaultTopic.
	Topic string `yaml:"topic"`
	// AutoCreateTopics lets the broker create a missing topic (if the
	// broker allows it). Off by default: a missing topic is an error.
	AutoCreateTopics bool `yaml:"auto_create_topics"`
	// Timeout bounds one Deliver, and a record's delivery inside the
	// client (default DefaultTimeout).
	Timeout time.Duration `yaml:"timeout"`
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// Linger is how long the client waits to fill a batch (default 0:
	// Deliver flushes at once).
	Linger time.Duration `yaml:"linger"`
	// SASL authentication, if Mechanism is set.
	SASL SASLConfig `yaml:"sasl"`
	// TLS settings.
	TLS sink.TLSConfig `yaml:"tls"`
	// ClientID names the client to the brokers (default "pgcdc").
	ClientID string `yaml:"client_id"`
}

// SASLConfig is the SASL authentication.
type SASLConfig struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// Option changes what Config cannot express.
type Option func(*[]kgo.Opt)

// WithClientOptions adds franz-go client options (applied after those
// made from Config).
func WithClientOptions(opts ...kgo.Opt) Option {
	return func(o *[]kgo.Opt) { *o = append(*o, opts...) }
}

// Sink produces to Kafka. It is safe for concurrent use.
type Sink struct {
	client  *kgo.Client
	topic   sink.Template
	timeout time.Duration
	gate    gate.Gate
}

var _ sink.Sink = (*Sink)(nil)

// New checks cfg, makes the client and pings a broker.
func New(ctx context.Context, cfg Config, opts ...Option) (*Sink, error) {
	return build(ctx, cfg, opts, true)
}

// Validate checks the settings as New does, without connecting: what
// a configuration check reports.
func (cfg Config) Validate() error {
	_, err := build(context.Background(), cfg, nil, false)
	return err
}

func build(ctx context.Context, cfg Config, opts []Option, connect bool) (*Sink, error) {
	var problems []error
	if len(cfg.Brokers) == 0 {
		cfg.Brokers = []string{DefaultBroker}
	}
	for _, b := range cfg.Brokers {
		if _, port, ok := strings.Cut(b, ":"); !ok || port == "" {
			problems = append(problems, fmt.Errorf("brokers: %q is not host:port", b))
		}
	}
	if cfg.Topic == "" {
		cfg.Topic = DefaultTopic
	}
	topic, err := sink.ParseTemplate(cfg.Topic)
	if err != nil {
		problems = append(problems, fmt.Errorf("topic: %w", err))
	} else if bad := strings.Trim(strings.NewReplacer("{source}", "", "{schema}", "", "{table}", "", "{action}", "").Replace(cfg.Topic),
		"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"); bad != "" {
		problems = append(problems, fmt.Errorf("topic: %q holds characters a topic name cannot (only letters, digits, '.', '_', '-')", cfg.Topic))
	}
	if cfg.Timeout < 0 || cfg.DialTimeout < 0 || cfg.Linger < 0 {
		problems = append(problems, errors.New("timeout, dial_timeout, linger: must not be negative"))
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.ClientID == "" {
		cfg.ClientID = "pgcdc"
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID(cfg.ClientID),
		kgo.RequiredAcks(kgo.AllISRAcks()), // and idempotent writes, franz-go's default
		kgo.RecordDeliveryTimeout(cfg.Timeout),
		kgo.ProduceRequestTimeout(cfg.Timeout),
		kgo.DialTimeout(cfg.DialTimeout),
		kgo.ProducerLinger(cfg.Linger),
	}
	if cfg.AutoCreateTopics {
		kopts = append(kopts, kgo.AllowAutoTopicCreation())
	}
	switch strings.ToUpper(cfg.SASL.Mechanism) {
	case "":
		if cfg.SASL.Username != "" || cfg.SASL.Password != "" {
			problems = append(problems, errors.New("sasl.mechanism: set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 to use sasl.username/password"))
		}
	case "PLAIN":
		kopts = append(kopts, kgo.SASL(plain.Auth{User: cfg.SASL.Username, Pass: cfg.SASL.Password}.AsMechanism()))
	case "SCRAM-SHA-256":
		kopts = append(kopts, kgo.SASL(scram.Auth{User: cfg.SASL.Username, Pass: cfg.SASL.Password}.AsSha256Mechanism()))
	case "SCRAM-SHA-512":
		kopts = append(kopts, kgo.SASL(scram.Auth{User: cfg.SASL.Username, Pass: cfg.SASL.Password}.AsSha512Mechanism()))
	default:
		problems = append(problems, fmt.Errorf("sasl.mechanism: %q is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", cfg.SASL.Mechanism))
	}
	tlsCfg, err := cfg.TLS.Build()
	if err != nil {
		problems = append(problems, err)
	}
	if tlsCfg != nil {
		kopts = append(kopts, kgo.DialTLSConfig(tlsCfg))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("kafka sink: %w", errors.Join(problems...))
	}
	if !connect {
		return nil, nil
	}
	for _, o := range opts {
		o(&kopts)
	}
	client, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka sink: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if err := client.Ping(pctx); err != nil {
		client.Close()
		return nil, fmt.Errorf("kafka sink: cannot reach brokers %s: %w (are they up, and brokers, sasl and tls right?)", strings.Join(cfg.Brokers, ","), err)
	}
	return &Sink{client: client, topic: topic, timeout: cfg.Timeout}, nil
}

func escapeTopic(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// Key returns the record key of m: the row's primary key as JSON
// (sink.KeyJSON, e.g. {"id":42}), or, for a table without a primary key,
// its RowKey (a hash of its replica identity) as 16 hex digits.
func Key(m *sink.Message) []byte {
	if k := sink.KeyJSON(*m); k != nil {
		return k
	}
	return fmt.Appendf(make([]byte, 0, 16), "%016x", m.RowKey)
}

// Deliver produces msgs and returns once every record is acknowledged by
// all in-sync replicas. A row's later message is produced only after its
// earlier one in msgs was acknowledged.
func (s *Sink) Deliver(ctx context.Context, msgs []sink.Message) error {
	if err := s.gate.Enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	if len(msgs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for _, wave := range order.Waves(msgs) {
		recs := make([]*kgo.Record, len(wave))
		for i, m := range wave {
			recs[i] = &kgo.Record{
				Topic: s.topic.Render(m, escapeTopic),
				Key:   Key(m),
				Value: m.Payload,
				Headers: []kgo.RecordHeader{
					{Key: HeaderEventID, Value: []byte(m.EventID)},
					{Key: HeaderAction, Value: []byte(m.Action)},
					{Key: HeaderSource, Value: []byte(m.Source)},
					{Key: HeaderSchema, Value: []byte(m.Schema)},
					{Key: HeaderTable, Value: []byte(m.Table)},
					{Key: HeaderLSN, Value: []byte(m.LSN)},
				},
			}
		}
		// With idempotent writes, franz-go keeps a record whose request
		// got no answer until it knows its fate, whatever its context:
		// wait for the results only until ctx ends. Records left behind
		// may still be written (before any retry of them, in order), or
		// are failed by Close.
		done := make(chan kgo.ProduceResults, 1)
		go func() { done <- s.client.ProduceSync(ctx, recs...) }()
		var results kgo.ProduceResults
		select {
		case results = <-done:
		case <-ctx.Done():
			return fmt.Errorf("kafka sink: %d record(s) to %s not acknowledged in time: %w", len(recs), recs[0].Topic, ctx.Err())
		}
		for _, r := range results {
			if r.Err == nil {
				continue
			}
			err := fmt.Errorf("kafka sink: produce to %s (event %s): %w", r.Record.Topic, r.Record.Headers[0].Value, r.Err)
			switch {
			case errors.Is(r.Err, kerr.MessageTooLarge), errors.Is(r.Err, kerr.RecordListTooLarge),
				errors.Is(r.Err, kerr.InvalidTopicException), errors.Is(r.Err, kerr.InvalidRecord):
				return sink.Permanent(err)
			case errors.Is(r.Err, kerr.UnknownTopicOrPartition):
				return fmt.Errorf("%w (create the topic, or set auto_create_topics: true)", err)
			}
			return err
		}
	}
	return nil
}

// Close waits for the deliveries in flight (until ctx ends) and closes
// the client.
func (s *Sink) Close(ctx context.Context) error {
	first, err := s.gate.Close(ctx)
	if !first {
		return nil
	}
	s.client.Close()
	return err
}
