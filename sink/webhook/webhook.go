// Package webhook is the sink that POSTs events to an HTTP endpoint: one
// event JSON per request, or a JSON array of events when a batch is
// delivered.
//
// Each request carries
//
//	Content-Type: application/json
//	Pgcdc-Event-Id: <event_id>            (a batch: the ids, comma-separated, in body order)
//	Pgcdc-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed with the secret>
//
// (the signature only when a secret is configured). A 2xx answer means
// delivered. 408, 429, 5xx and network errors are retried with doubling
// backoff, waiting at least what a Retry-After header asks for; after
// MaxAttempts the error goes back to the caller (pgcdc retries the event
// again later, then dead-letters it). Any other status is permanent: the
// event is dead-lettered at once with the status and the start of the
// answer's body.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/pgcdc/pgcdc/sink"
)

// Header names.
const (
	HeaderSignature = "Pgcdc-Signature"
	HeaderEventID   = "Pgcdc-Event-Id"
)

// Defaults of the Config fields left zero.
const (
	DefaultTimeout       = 10 * time.Second
	DefaultMaxAttempts   = 3
	DefaultMinBackoff    = 500 * time.Millisecond
	DefaultMaxBackoff    = 30 * time.Second
	DefaultMaxRetryAfter = 5 * time.Minute
)

// Config configures a webhook sink.
type Config struct {
	// URL is the endpoint (http or https). Required.
	URL string `yaml:"url"`
	// Secret, if set, signs every request (Pgcdc-Signature).
	Secret string `yaml:"secret"`
	// Headers are added to every request (Authorization, ...).
	Headers map[string]string `yaml:"headers"`
	// Timeout bounds one request, answer included (default 10s).
	Timeout time.Duration `yaml:"timeout"`
	// MaxAttempts is how many requests one Deliver makes before it returns
	// a retryable failure (default 3).
	MaxAttempts int `yaml:"max_attempts"`
	// MinBackoff and MaxBackoff bound the doubling wait between attempts
	// (defaults 500ms and 30s).
	MinBackoff time.Duration `yaml:"min_backoff"`
	MaxBackoff time.Duration `yaml:"max_backoff"`
	// MaxRetryAfter caps the wait a Retry-After header can ask for
	// (default 5m).
	MaxRetryAfter time.Duration `yaml:"max_retry_after"`
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.URL == "" {
		errs = append(errs, errors.New("url: missing: the endpoint events are POSTed to"))
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, errors.New("url: want an http:// or https:// URL with a host"))
	}
	if c.Timeout < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 || c.MaxRetryAfter < 0 {
		errs = append(errs, errors.New("timeout, min_backoff, max_backoff, max_retry_after: must not be negative"))
	}
	if c.MaxAttempts < 0 {
		errs = append(errs, errors.New("max_attempts: must not be negative"))
	}
	if c.MinBackoff > 0 && c.MaxBackoff > 0 && c.MinBackoff > c.MaxBackoff {
		errs = append(errs, errors.New("min_backoff is above max_backoff"))
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			errs = append(errs, fmt.Errorf("headers: %q is not a header name", k))
		}
	}
	return errors.Join(errs...)
}

// Sink POSTs events to one URL.
type Sink struct {
	cfg    Config
	client *http.Client
	target string // the URL without credentials or query, for errors
	now    func() time.Time
}

// Option adjusts a Sink.
type Option func(*Sink)

// WithHTTPClient sets the client requests go through (default: a client
// of its own; Config.Timeout applies per request either way).
func WithHTTPClient(c *http.Client) Option { return func(s *Sink) { s.client = c } }

// New returns a webhook sink. It does no I/O.
func New(cfg Config, opts ...Option) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.MaxRetryAfter == 0 {
		cfg.MaxRetryAfter = DefaultMaxRetryAfter
	}
	u, _ := url.Parse(cfg.URL)
	s := &Sink{cfg: cfg, target: u.Scheme + "://" + u.Host + u.Path, now: time.Now}
	for _, o := range opts {
		o(s)
	}
	if s.client == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Deliveries run concurrently (one per lane): keep a connection
		// per lane instead of the default 2, or every request past the
		// second opens a new one.
		t.MaxIdleConns, t.MaxIdleConnsPerHost = 256, 256
		s.client = &http.Client{Transport: t}
	}
	return s, nil
}

// Sign returns the Pgcdc-Signature value of body sent at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

// Verify checks a Pgcdc-Signature header against body: the signature must
// match and t must be within tolerance of now (0: not checked). Receivers
// in Go can use it as is; docs/daemon.md shows the same in other languages.
func Verify(secret, header string, body []byte, tolerance time.Duration, now time.Time) error {
	var ts string
	var sigs []string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return errors.New("webhook: malformed signature header")
	}
	if tolerance > 0 {
		if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
			return errors.New("webhook: signature timestamp outside the tolerance")
		}
	}
	want := Sign(secret, time.Unix(sec, 0), body)
	_, wantSig, _ := strings.Cut(want, ",v1=")
	for _, sig := range sigs {
		if hmac.Equal([]byte(sig), []byte(wantSig)) {
			return nil
		}
	}
	return errors.New("webhook: signature mismatch")
}

// Deliver POSTs msgs (one event as its JSON, several as a JSON array) and
// returns nil once the endpoint answered 2xx.
func (s *Sink) Deliver(ctx context.Context, msgs []sink.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	body, ids := encode(msgs)
	var last error
	for attempt := 1; ; attempt++ {
		retryAfter, err := s.post(ctx, body, ids)
		if err == nil || sink.IsPermanent(err) {
			return err
		}
		last = err
		if attempt >= s.cfg.MaxAttempts || ctx.Err() != nil {
			break
		}
		wait := s.cfg.MinBackoff << min(attempt-1, 30)
		if wait > s.cfg.MaxBackoff || wait <= 0 {
			wait = s.cfg.MaxBackoff
		}
		wait = max(wait, min(retryAfter, s.cfg.MaxRetryAfter))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (then: %w)", last, ctx.Err())
		case <-t.C:
		}
	}
	return fmt.Errorf("%w (after %d attempts)", last, s.cfg.MaxAttempts)
}

func encode(msgs []sink.Message) (body []byte, ids string) {
	if len(msgs) == 1 {
		return msgs[0].Payload, msgs[0].EventID
	}
	var b bytes.Buffer
	var id strings.Builder
	b.WriteByte('[')
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(',')
			id.WriteByte(',')
		}
		b.Write(m.Payload)
		id.WriteString(m.EventID)
	}
	b.WriteByte(']')
	return b.Bytes(), id.String()
}

// post makes one request. It returns the Retry-After wait asked for (0 if
// none) and an error: permanent, retryable or nil.
func (s *Sink) post(ctx context.Context, body []byte, ids string) (time.Duration, error) {
	rctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodPost, s.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return 0, sink.Permanent(fmt.Errorf("webhook %s: %w", s.target, err))
	}
	for k, v := range s.cfg.Headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderEventID, ids)
	if s.cfg.Secret != "" {
		req.Header.Set(HeaderSignature, Sign(s.cfg.Secret, s.now(), body))
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("webhook %s: %w", s.target, scrubURL(err))
	}
	defer resp.Body.Close()
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)) // reuse the connection
	code := resp.StatusCode
	switch {
	case code >= 200 && code < 300:
		return 0, nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code >= 500:
		return retryAfter(resp.Header.Get("Retry-After"), s.now()),
			fmt.Errorf("webhook %s answered %s: %q", s.target, resp.Status, excerpt)
	default:
		return 0, sink.Permanent(fmt.Errorf("webhook %s answered %s: %q", s.target, resp.Status, excerpt))
	}
}

// retryAfter parses a Retry-After value: seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && n >= 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// scrubURL drops the URL (which may hold credentials in its user info or
// query) from a client error, keeping the cause.
func scrubURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", ue.Op, ue.Err)
	}
	return err
}

// Close releases idle connections.
func (s *Sink) Close(context.Context) error {
	s.client.CloseIdleConnections()
	return nil
}
