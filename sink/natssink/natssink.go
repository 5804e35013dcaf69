// Package natssink delivers pgcdc events to NATS JetStream.
//
// Each event is published to a subject named after its table (template,
// default DefaultSubject) with the header Nats-Msg-Id set to its
// event_id, so the stream's duplicate window (2 minutes unless the stream
// says otherwise) drops a redelivered event: effectively-once into the
// stream, as long as a redelivery comes within that window. Deliver
// returns only once JetStream acknowledged (PubAck) every message.
// Messages are published asynchronously, up to MaxInFlight awaiting their
// PubAck at a time per Deliver.
package natssink

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/internal/gate"
	"github.com/pgcdc/pgcdc/sink/internal/order"
)

// Defaults used for zero Config fields.
const (
	DefaultURL         = "nats://127.0.0.1:4222"
	DefaultSubject     = "pgcdc.{source}.{schema}.{table}.{action}"
	DefaultTimeout     = 30 * time.Second
	DefaultMaxInFlight = 1024
)

// Headers set on every message besides Nats-Msg-Id (= event_id).
const (
	HeaderAction = "Pgcdc-Action"
	HeaderSource = "Pgcdc-Source"
	HeaderLSN    = "Pgcdc-Lsn"
)

// Config configures the sink. Its yaml keys are those of the daemon's
// sink entry (type: nats).
type Config struct {
	// URL is the server, or a comma-separated list (default DefaultURL).
	URL string `yaml:"url"`
	// Subject is the subject template; placeholders {source}, {schema},
	// {table}, {action}. Characters a subject token cannot hold ('.',
	// '*', '>', white space) in a value become '_'. Default
	// DefaultSubject.
	Subject string `yaml:"subject"`
	// Stream, if its name is set, is the stream the subjects are stored
	// in: New checks it exists, or creates it when Create is true.
	Stream StreamConfig `yaml:"stream"`
	// MaxInFlight bounds the messages one Deliver has awaiting their
	// PubAck (default DefaultMaxInFlight).
	MaxInFlight int `yaml:"max_in_flight"`
	// Timeout bounds one Deliver, and the wait for one PubAck (default
	// DefaultTimeout).
	Timeout time.Duration `yaml:"timeout"`
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// Authentication: at most one of CredsFile (a .creds file), NKeyFile
	// (an nkey seed file), Token, Username/Password.
	CredsFile string `yaml:"creds_file"`
	NKeyFile  string `yaml:"nkey_file"`
	Token     string `yaml:"token"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
	// TLS settings (a tls:// URL turns TLS on too).
	TLS sink.TLSConfig `yaml:"tls"`
}

// StreamConfig names the JetStream stream, and what to create it with.
type StreamConfig struct {
	// Name of the stream ("" checks nothing: publishing fails while no
	// stream captures the subjects).
	Name string `yaml:"name"`
	// Create creates the stream when it does not exist. An existing
	// stream is used as it is.
	Create bool `yaml:"create"`
	// Subjects the created stream captures (default the subject
	// template's text up to its first placeholder, followed by ">").
	Subjects []string `yaml:"subjects"`
	// Storage is "file" (default) or "memory".
	Storage string `yaml:"storage"`
	// Replicas of the created stream (default 1).
	Replicas int `yaml:"replicas"`
	// MaxAge drops messages older than this (0 keeps them).
	MaxAge time.Duration `yaml:"max_age"`
	// Duplicates is the duplicate window (default 2 minutes): a message
	// whose Nats-Msg-Id was stored within it is dropped.
	Duplicates time.Duration `yaml:"duplicates"`
}

// Option changes what Config cannot express.
type Option func(*[]nats.Option)

// WithNATSOptions adds nats.go connection options (applied after those
// made from Config).
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *[]nats.Option) { *o = append(*o, opts...) }
}

// Sink publishes to JetStream. It is safe for concurrent use.
type Sink struct {
	nc          *nats.Conn
	js          jetstream.JetStream
	subject     sink.Template
	timeout     time.Duration
	maxInFlight int
	gate        gate.Gate
}

var _ sink.Sink = (*Sink)(nil)

// New checks cfg, connects, and checks or creates the stream.
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
		cfg.URL = DefaultURL
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject
	}
	subject, err := sink.ParseTemplate(cfg.Subject)
	if err != nil {
		problems = append(problems, fmt.Errorf("subject: %w", err))
	} else if strings.ContainsAny(strings.ReplaceAll(cfg.Subject, "{", ""), "*> \t") || strings.Contains(cfg.Subject, "..") ||
		strings.HasPrefix(cfg.Subject, ".") || strings.HasSuffix(cfg.Subject, ".") {
		problems = append(problems, fmt.Errorf("subject: %q is not a valid subject to publish to (no wildcards, spaces or empty tokens)", cfg.Subject))
	}
	if cfg.MaxInFlight < 0 {
		problems = append(problems, fmt.Errorf("max_in_flight: %d is negative", cfg.MaxInFlight))
	}
	if cfg.Timeout < 0 || cfg.DialTimeout < 0 {
		problems = append(problems, errors.New("timeout, dial_timeout: must not be negative"))
	}
	auth := 0
	for _, set := range []bool{cfg.CredsFile != "", cfg.NKeyFile != "", cfg.Token != "", cfg.Username != "" || cfg.Password != ""} {
		if set {
			auth++
		}
	}
	if auth > 1 {
		problems = append(problems, errors.New("creds_file, nkey_file, token, username/password: give at most one way to authenticate"))
	}
	switch cfg.Stream.Storage {
	case "", "file", "memory":
	default:
		problems = append(problems, fmt.Errorf("stream.storage: %q is neither file nor memory", cfg.Stream.Storage))
	}
	if cfg.Stream.Create && cfg.Stream.Name == "" {
		problems = append(problems, errors.New("stream.create: needs stream.name"))
	}
	if cfg.Stream.Create && len(cfg.Stream.Subjects) == 0 {
		if _, ok := defaultSubjects(cfg.Subject); !ok {
			problems = append(problems, fmt.Errorf("stream.subjects: give the subjects of the stream to create (none can be derived from subject %q)", cfg.Subject))
		}
	}
	if cfg.Stream.Replicas < 0 || cfg.Stream.MaxAge < 0 || cfg.Stream.Duplicates < 0 {
		problems = append(problems, errors.New("stream.replicas, stream.max_age, stream.duplicates: must not be negative"))
	}
	tlsCfg, err := cfg.TLS.Build()
	if err != nil {
		problems = append(problems, err)
	}
	nopts := []nats.Option{
		nats.Name("pgcdc"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A publish while disconnected fails at once rather than being
		// buffered: a buffered message could be stored after a later
		// one that a retry sends again.
		nats.ReconnectBufSize(-1),
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	nopts = append(nopts, nats.Timeout(cfg.DialTimeout))
	switch {
	case cfg.CredsFile != "":
		nopts = append(nopts, nats.UserCredentials(cfg.CredsFile))
	case cfg.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(cfg.NKeyFile)
		if err != nil {
			problems = append(problems, fmt.Errorf("nkey_file: %w", err))
		} else {
			nopts = append(nopts, o)
		}
	case cfg.Token != "":
		nopts = append(nopts, nats.Token(cfg.Token))
	case cfg.Username != "" || cfg.Password != "":
		nopts = append(nopts, nats.UserInfo(cfg.Username, cfg.Password))
	}
	if tlsCfg != nil {
		nopts = append(nopts, nats.Secure(tlsCfg))
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("nats sink: %w", errors.Join(problems...))
	}
	if !connect {
		return nil, nil
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInFlight == 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	for _, o := range opts {
		o(&nopts)
	}

	nc, err := nats.Connect(cfg.URL, nopts...)
	if err != nil {
		return nil, fmt.Errorf("nats sink: cannot connect to %s: %w", cfg.URL, err)
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncTimeout(cfg.Timeout),
		jetstream.WithPublishAsyncMaxPending(4*cfg.MaxInFlight))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats sink: %w", err)
	}
	if cfg.Stream.Name != "" {
		if err := ensureStream(ctx, js, cfg, subject); err != nil {
			nc.Close()
			return nil, err
		}
	}
	return &Sink{nc: nc, js: js, subject: subject, timeout: cfg.Timeout, maxInFlight: cfg.MaxInFlight}, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, cfg Config, subject sink.Template) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	_, err := js.Stream(ctx, cfg.Stream.Name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("nats sink: stream %s: %w (is JetStream enabled on the server?)", cfg.Stream.Name, err)
	}
	if !cfg.Stream.Create {
		return fmt.Errorf("nats sink: stream %s does not exist: create it, or set stream.create: true", cfg.Stream.Name)
	}
	sc := jetstream.StreamConfig{
		Name:       cfg.Stream.Name,
		Subjects:   cfg.Stream.Subjects,
		Replicas:   cfg.Stream.Replicas,
		MaxAge:     cfg.Stream.MaxAge,
		Duplicates: cfg.Stream.Duplicates,
		Storage:    jetstream.FileStorage,
	}
	if cfg.Stream.Storage == "memory" {
		sc.Storage = jetstream.MemoryStorage
	}
	if len(sc.Subjects) == 0 {
		sc.Subjects, _ = defaultSubjects(subject.String())
	}
	if _, err := js.CreateStream(ctx, sc); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("nats sink: create stream %s for %v: %w", sc.Name, sc.Subjects, err)
	}
	return nil
}

// defaultSubjects derives a created stream's subjects from the subject
// template: its text before the first placeholder, followed by ">" (or
// the subject itself when it has no placeholder).
func defaultSubjects(text string) ([]string, bool) {
	prefix, _, placeholders := strings.Cut(text, "{")
	switch {
	case !placeholders:
		return []string{text}, true
	case strings.HasSuffix(prefix, ".") && prefix != ".":
		return []string{prefix + ">"}, true
	}
	return nil, false
}

var tokenEscaper = strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_", "\t", "_", "\r", "_", "\n", "_")

func escapeToken(s string) string {
	if s == "" {
		return "_"
	}
	return tokenEscaper.Replace(s)
}

// Deliver publishes msgs and returns once JetStream acknowledged every
// one (a duplicate dropped by the stream counts as acknowledged).
// Messages of one RowKey are published one after the other, each after
// the previous one's PubAck, so a failure cannot reorder them; messages
// of different keys are in flight together.
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
		if err := s.publish(ctx, wave); err != nil {
			return err
		}
	}
	return nil
}

type pending struct {
	m   *sink.Message
	f   jetstream.PubAckFuture
	sub string
}

func (s *Sink) publish(ctx context.Context, wave []*sink.Message) error {
	inflight := make([]pending, 0, min(len(wave), s.maxInFlight))
	for _, m := range wave {
		if len(inflight) == s.maxInFlight {
			if err := s.await(ctx, inflight[0]); err != nil {
				return err
			}
			inflight = inflight[1:]
		}
		sub := s.subject.Render(m, escapeToken)
		msg := &nats.Msg{Subject: sub, Data: m.Payload, Header: nats.Header{
			jetstream.MsgIDHeader: []string{m.EventID},
			HeaderAction:          []string{m.Action},
			HeaderSource:          []string{m.Source},
			HeaderLSN:             []string{m.LSN},
		}}
		f, err := s.js.PublishMsgAsync(msg)
		if err != nil {
			return s.fail(sub, m, err)
		}
		inflight = append(inflight, pending{m, f, sub})
	}
	for _, p := range inflight {
		if err := s.await(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

func (s *Sink) await(ctx context.Context, p pending) error {
	select {
	case <-p.f.Ok():
		return nil
	case err := <-p.f.Err():
		return s.fail(p.sub, p.m, err)
	case <-ctx.Done():
		return fmt.Errorf("nats sink: no PubAck for %s (event %s): %w", p.sub, p.m.EventID, ctx.Err())
	}
}

func (s *Sink) fail(sub string, m *sink.Message, err error) error {
	err = fmt.Errorf("nats sink: publish to %s (event %s): %w", sub, m.EventID, err)
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, nats.ErrMaxPayload), errors.Is(err, nats.ErrBadSubject),
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamMessageExceedsMaximum:
		return sink.Permanent(err)
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("%w: no JetStream stream captures this subject (create one, or set stream.name and stream.create: true)", err)
	}
	return err
}

// Close waits for the deliveries in flight (until ctx ends), then closes
// the connection.
func (s *Sink) Close(ctx context.Context) error {
	first, err := s.gate.Close(ctx)
	if !first {
		return nil
	}
	s.nc.Close()
	return err
}
