// Package amqpsink delivers pgcdc events to RabbitMQ (AMQP 0-9-1).
//
// Each event is published to an exchange with a routing key made from a
// template (default DefaultRoutingKey), as a persistent message whose
// message_id is the event_id. The channels are in confirm mode: Deliver
// returns only once the broker confirmed every message. Messages are
// published with the mandatory flag: one that no queue is bound to
// receive is returned by the broker, and Deliver reports a permanent error
// (the worker dead-letters the event) instead of letting it vanish.
//
// RabbitMQ has no deduplication on message_id: a redelivered event is
// routed again (at-least-once). Consumers deduplicate on message_id.
package amqpsink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/internal/gate"
)

// Defaults used for zero Config fields.
const (
	DefaultURL        = "amqp://guest:guest@127.0.0.1:5672/"
	DefaultExchange   = "pgcdc"
	DefaultRoutingKey = "{source}.{schema}.{table}.{action}"
	DefaultTimeout    = 30 * time.Second
	DefaultChannels   = 8
)

// Headers set on every message (besides message_id = event_id).
const (
	HeaderAction = "pgcdc_action"
	HeaderSource = "pgcdc_source"
	HeaderSchema = "pgcdc_schema"
	HeaderTable  = "pgcdc_table"
	HeaderLSN    = "pgcdc_lsn"
)

// Config configures the sink. Its yaml keys are those of the daemon's
// sink entry (type: amqp).
type Config struct {
	// URL is the broker, amqp://user:password@host:port/vhost or amqps://
	// for TLS (default DefaultURL).
	URL string `yaml:"url"`
	// Username and Password, if set, override the URL's.
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Exchange is the exchange published to (default DefaultExchange).
	Exchange string `yaml:"exchange"`
	// ExchangeType is the type of a declared exchange (default "topic").
	ExchangeType string `yaml:"exchange_type"`
	// Declare declares the exchange (durable) if it does not exist;
	// otherwise New checks that it exists.
	Declare bool `yaml:"declare"`
	// RoutingKey is the routing key template; placeholders {source},
	// {schema}, {table}, {action} (default DefaultRoutingKey).
	RoutingKey string `yaml:"routing_key"`
	// AllowUnroutable publishes without the mandatory flag: a message no
	// queue is bound to receive is dropped by the broker and counts as
	// delivered. Off by default.
	AllowUnroutable bool `yaml:"allow_unroutable"`
	// Channels is the number of channels Deliver calls share (default
	// DefaultChannels): the number of deliveries in flight at once.
	Channels int `yaml:"channels"`
	// Timeout bounds one Deliver (default DefaultTimeout).
	Timeout time.Duration `yaml:"timeout"`
	// DialTimeout bounds connecting (default 5s).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// TLS settings; an amqps:// URL turns TLS on too.
	TLS sink.TLSConfig `yaml:"tls"`
}

// Sink publishes to RabbitMQ. It is safe for concurrent use. A lost
// connection is opened again by the next Deliver.
type Sink struct {
	url        string
	host       string
	amqpCfg    amqp.Config
	exchange   string
	routingKey sink.Template
	mandatory  bool
	timeout    time.Duration
	gate       gate.Gate

	slots chan struct{} // one token per channel that may be open
	idle  chan *channel // open channels not in use
	mu    sync.Mutex    // guards conn
	conn  *amqp.Connection
}

type channel struct {
	conn    *amqp.Connection
	ch      *amqp.Channel
	returns chan amqp.Return
	closed  chan *amqp.Error
}

var _ sink.Sink = (*Sink)(nil)

// New checks cfg, connects and checks (or declares) the exchange.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	return build(ctx, cfg, true)
}

// Validate checks the settings as New does, without connecting: what
// a configuration check reports.
func (cfg Config) Validate() error {
	_, err := build(context.Background(), cfg, false)
	return err
}

func build(ctx context.Context, cfg Config, connect bool) (*Sink, error) {
	var problems []error
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	uri, err := amqp.ParseURI(cfg.URL)
	if err != nil {
		problems = append(problems, fmt.Errorf("url: %w (want amqp://user:password@host:port/vhost)", err))
	}
	if cfg.Username != "" {
		uri.Username = cfg.Username
	}
	if cfg.Password != "" {
		uri.Password = cfg.Password
	}
	if cfg.Exchange == "" {
		cfg.Exchange = DefaultExchange
	}
	if cfg.ExchangeType == "" {
		cfg.ExchangeType = "topic"
	}
	switch cfg.ExchangeType {
	case "topic", "direct", "fanout", "headers":
	default:
		problems = append(problems, fmt.Errorf("exchange_type: %q is not topic, direct, fanout or headers", cfg.ExchangeType))
	}
	if cfg.RoutingKey == "" {
		cfg.RoutingKey = DefaultRoutingKey
	}
	rk, err := sink.ParseTemplate(cfg.RoutingKey)
	if err != nil {
		problems = append(problems, fmt.Errorf("routing_key: %w", err))
	}
	if cfg.Channels < 0 {
		problems = append(problems, fmt.Errorf("channels: %d is negative", cfg.Channels))
	}
	if cfg.Timeout < 0 || cfg.DialTimeout < 0 {
		problems = append(problems, errors.New("timeout, dial_timeout: must not be negative"))
	}
	tlsCfg, err := cfg.TLS.Build()
	if err != nil {
		problems = append(problems, err)
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("amqp sink: %w", errors.Join(problems...))
	}
	if !connect {
		return nil, nil
	}
	if cfg.Channels == 0 {
		cfg.Channels = DefaultChannels
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if tlsCfg != nil && uri.Scheme == "amqp" {
		uri.Scheme = "amqps"
		if uri.Port == 5672 {
			uri.Port = 5671
		}
	}
	s := &Sink{
		url:        uri.String(),
		host:       net.JoinHostPort(uri.Host, fmt.Sprint(uri.Port)),
		amqpCfg:    amqp.Config{Dial: amqp.DefaultDial(cfg.DialTimeout), TLSClientConfig: tlsCfg, Properties: amqp.Table{"connection_name": "pgcdc"}},
		exchange:   cfg.Exchange,
		routingKey: rk,
		mandatory:  !cfg.AllowUnroutable,
		timeout:    cfg.Timeout,
		slots:      make(chan struct{}, cfg.Channels),
		idle:       make(chan *channel, cfg.Channels),
	}
	c, err := s.open()
	if err != nil {
		return nil, err
	}
	if cfg.Declare {
		err = c.ch.ExchangeDeclare(cfg.Exchange, cfg.ExchangeType, true, false, false, false, nil)
	} else {
		err = c.ch.ExchangeDeclarePassive(cfg.Exchange, cfg.ExchangeType, true, false, false, false, nil)
	}
	if err != nil {
		s.conn.Close()
		if !cfg.Declare {
			return nil, fmt.Errorf("amqp sink: exchange %q: %w (declare it, or set declare: true)", cfg.Exchange, err)
		}
		return nil, fmt.Errorf("amqp sink: declare exchange %q (%s): %w", cfg.Exchange, cfg.ExchangeType, err)
	}
	// The exchange check may close the channel: start with none open.
	c.ch.Close()
	return s, nil
}

// open opens a channel in confirm mode, connecting first if needed.
func (s *Sink) open() (*channel, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil || s.conn.IsClosed() {
		conn, err := amqp.DialConfig(s.url, s.amqpCfg)
		if err != nil {
			return nil, fmt.Errorf("amqp sink: cannot connect to %s: %w", s.host, err)
		}
		s.conn = conn
	}
	ch, err := s.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("amqp sink: open channel on %s: %w", s.host, err)
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, fmt.Errorf("amqp sink: confirm mode: %w", err)
	}
	c := &channel{conn: s.conn, ch: ch, returns: make(chan amqp.Return, 64), closed: make(chan *amqp.Error, 1)}
	ch.NotifyReturn(c.returns)
	ch.NotifyClose(c.closed)
	return c, nil
}

// acquire returns a channel for one Deliver: an idle one, or a new one
// while fewer than Channels are open.
func (s *Sink) acquire(ctx context.Context) (*channel, error) {
	for {
		select {
		case c := <-s.idle:
			if !c.ch.IsClosed() {
				return c, nil
			}
			<-s.slots // a closed channel frees its slot
			continue
		default:
		}
		select {
		case c := <-s.idle:
			if !c.ch.IsClosed() {
				return c, nil
			}
			<-s.slots
		case s.slots <- struct{}{}:
			c, err := s.open()
			if err != nil {
				<-s.slots
				return nil, err
			}
			return c, nil
		case <-ctx.Done():
			return nil, fmt.Errorf("amqp sink: waiting for a channel: %w", ctx.Err())
		}
	}
}

// release hands c back, or closes it if it may hold stale state.
func (s *Sink) release(c *channel, ok bool) {
	if ok && !c.ch.IsClosed() {
		s.idle <- c
		return
	}
	c.ch.Close()
	<-s.slots
}

// Deliver publishes msgs on one channel and returns once the broker
// confirmed every one. Messages the broker returned as unroutable make
// the error permanent (unless AllowUnroutable); a nack, a lost connection
// or a timeout do not.
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
	c, err := s.acquire(ctx)
	if err != nil {
		return err
	}
	err = s.publish(ctx, c, msgs)
	s.release(c, err == nil || sink.IsPermanent(err))
	return err
}

func (s *Sink) publish(ctx context.Context, c *channel, msgs []sink.Message) error {
	dcs := make([]*amqp.DeferredConfirmation, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		dc, err := c.ch.PublishWithDeferredConfirmWithContext(ctx, s.exchange, s.routingKey.Render(m, nil), s.mandatory, false, amqp.Publishing{
			DeliveryMode: amqp.Persistent,
			ContentType:  "application/json",
			MessageId:    m.EventID,
			Body:         m.Payload,
			Headers: amqp.Table{
				HeaderAction: m.Action,
				HeaderSource: m.Source,
				HeaderSchema: m.Schema,
				HeaderTable:  m.Table,
				HeaderLSN:    m.LSN,
			},
		})
		if err != nil {
			return s.channelErr(c, fmt.Errorf("amqp sink: publish event %s: %w", m.EventID, err))
		}
		dcs[i] = dc
	}
	var returned []amqp.Return
	returns := c.returns // nil once closed (the channel shut down)
	for i, dc := range dcs {
	wait:
		for {
			select {
			case <-dc.Done():
				break wait
			case r, ok := <-returns:
				if !ok {
					returns = nil
					continue
				}
				returned = append(returned, r)
			case <-ctx.Done():
				return fmt.Errorf("amqp sink: no confirm for event %s: %w", msgs[i].EventID, ctx.Err())
			}
		}
		if !dc.Acked() {
			return s.channelErr(c, fmt.Errorf("amqp sink: broker did not confirm event %s (nack or channel closed)", msgs[i].EventID))
		}
	}
	// A return comes before its confirm: every one is in c.returns now.
	for drained := returns == nil; !drained; {
		select {
		case r, ok := <-returns:
			if !ok {
				drained = true
				break
			}
			returned = append(returned, r)
		default:
			drained = true
		}
	}
	if len(returned) > 0 {
		ids := make([]string, len(returned))
		for i, r := range returned {
			ids[i] = r.MessageId
		}
		r := returned[0]
		return sink.Permanent(fmt.Errorf("amqp sink: %d message(s) unroutable: exchange %q routes key %q to no queue (%d %s); events %s",
			len(returned), r.Exchange, r.RoutingKey, r.ReplyCode, r.ReplyText, strings.Join(ids, ", ")))
	}
	return nil
}

// channelErr adds the reason the broker closed the channel, if it did.
func (s *Sink) channelErr(c *channel, err error) error {
	select {
	case aerr, ok := <-c.closed:
		if ok && aerr != nil {
			return fmt.Errorf("%w: %v", err, aerr)
		}
	default:
	}
	return err
}

// Close waits for the deliveries in flight (until ctx ends) and closes
// the connection.
func (s *Sink) Close(ctx context.Context) error {
	first, err := s.gate.Close(ctx)
	if !first {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil && !s.conn.IsClosed() {
		if cerr := s.conn.Close(); err == nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = cerr
		}
	}
	return err
}
