// Package redissink delivers pgcdc events to Redis Streams: one XADD per
// event to a stream named after the table, with the fields event_id,
// action and payload (the event JSON).
//
// Redis has no deduplication: a redelivered event (after a crash, or an
// acknowledgement lost in a network failure) is added again, so the
// stream is at-least-once. Consumers deduplicate on event_id.
package redissink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/internal/gate"
)

// DefaultStream is the stream key template used when Config.Stream is
// empty.
const DefaultStream = "pgcdc:{source}:{schema}:{table}"

// DefaultTimeout bounds one Deliver when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// Config configures the sink. Its yaml keys are those of the daemon's
// sink entry (type: redis).
type Config struct {
	// URL is the server, redis://[user:password@]host:port[/db] or
	// rediss:// for TLS. Default redis://127.0.0.1:6379/0.
	URL string `yaml:"url"`
	// Username and Password, if set, override the URL's (write
	// ${REDIS_PASSWORD} in the daemon's config to take it from the
	// environment).
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Stream is the stream key template; placeholders {source}, {schema},
	// {table}, {action}. Default DefaultStream.
	Stream string `yaml:"stream"`
	// MaxLen, if positive, trims each stream to about that many entries
	// (XADD MAXLEN ~): older entries are dropped whether or not a
	// consumer read them.
	MaxLen int64 `yaml:"max_len"`
	// Timeout bounds one Deliver (default DefaultTimeout); a timed-out
	// delivery is retried by the worker.
	Timeout time.Duration `yaml:"timeout"`
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// TLS settings; a rediss:// URL turns TLS on too.
	TLS sink.TLSConfig `yaml:"tls"`
}

// Option changes what Config cannot express.
type Option func(*redis.Options)

// WithClientOptions lets fn adjust the go-redis options before the client
// is made.
func WithClientOptions(fn func(*redis.Options)) Option { return Option(fn) }

// Sink writes to Redis Streams. It is safe for concurrent use.
type Sink struct {
	client  *redis.Client
	stream  sink.Template
	maxLen  int64
	timeout time.Duration
	gate    gate.Gate
}

var _ sink.Sink = (*Sink)(nil)

// New checks cfg, connects and pings the server.
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
	if cfg.URL == "" {
		cfg.URL = "redis://127.0.0.1:6379/0"
	}
	ropts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		problems = append(problems, fmt.Errorf("url: %w (want redis://[user:password@]host:port[/db] or rediss://...)", err))
		ropts = &redis.Options{}
	}
	if cfg.Stream == "" {
		cfg.Stream = DefaultStream
	}
	stream, err := sink.ParseTemplate(cfg.Stream)
	if err != nil {
		problems = append(problems, fmt.Errorf("stream: %w", err))
	}
	if cfg.MaxLen < 0 {
		problems = append(problems, fmt.Errorf("max_len: %d is negative (0 keeps every entry)", cfg.MaxLen))
	}
	if cfg.Timeout < 0 || cfg.DialTimeout < 0 {
		problems = append(problems, errors.New("timeout, dial_timeout: must not be negative"))
	}
	tlsCfg, err := cfg.TLS.Build()
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("redis sink: %w", errors.Join(problems...))
	}
	if !connect {
		return nil, nil
	}
	if cfg.Username != "" {
		ropts.Username = cfg.Username
	}
	if cfg.Password != "" {
		ropts.Password = cfg.Password
	}
	if tlsCfg != nil {
		ropts.TLSConfig = tlsCfg
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	ropts.DialTimeout = cfg.DialTimeout
	if ropts.DialTimeout == 0 {
		ropts.DialTimeout = 5 * time.Second
	}
	ropts.ContextTimeoutEnabled = true
	for _, o := range opts {
		o(ropts)
	}
	client := redis.NewClient(ropts)
	pctx, cancel := context.WithTimeout(ctx, ropts.DialTimeout)
	defer cancel()
	if err := client.Ping(pctx).Err(); err != nil {
		client.Close()
		return nil, fmt.Errorf("redis sink: cannot reach %s: %w (is the server up, the url right?)", ropts.Addr, err)
	}
	return &Sink{client: client, stream: stream, maxLen: cfg.MaxLen, timeout: cfg.Timeout}, nil
}

// Deliver adds msgs to their streams in one pipeline and returns once
// Redis answered every XADD. A reply error that retrying cannot fix (a
// key of another type, WRONGTYPE) is permanent; a network failure is not.
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
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		cmds[i] = pipe.XAdd(ctx, &redis.XAddArgs{
			Stream: s.stream.Render(m, nil),
			MaxLen: s.maxLen,
			Approx: s.maxLen > 0,
			Values: []any{"event_id", m.EventID, "action", m.Action, "payload", m.Payload},
		})
	}
	_, err := pipe.Exec(ctx)
	if err == nil {
		return nil
	}
	for i, c := range cmds {
		if cerr := c.Err(); cerr != nil {
			err = fmt.Errorf("redis sink: XADD %s (event %s): %w", c.Args()[1], msgs[i].EventID, cerr)
			if permanent(cerr) {
				return sink.Permanent(err)
			}
			return err
		}
	}
	return fmt.Errorf("redis sink: %w", err)
}

// permanent reports whether a Redis reply error cannot be fixed by
// retrying: a wrong key type or a malformed command.
func permanent(err error) bool {
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false
	}
	msg := rerr.Error()
	return strings.HasPrefix(msg, "WRONGTYPE") || strings.HasPrefix(msg, "ERR syntax") ||
		strings.HasPrefix(msg, "ERR wrong number") || strings.HasPrefix(msg, "ERR Invalid")
}

// Close waits for the deliveries in flight (until ctx ends) and closes
// the connections.
func (s *Sink) Close(ctx context.Context) error {
	first, err := s.gate.Close(ctx)
	if !first {
		return nil
	}
	if cerr := s.client.Close(); err == nil {
		err = cerr
	}
	return err
}
