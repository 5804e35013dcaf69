// Package file is the sink that writes events as JSON lines (one event per
// line, exactly the library's event JSON) to a file or to standard output.
//
// A file sink acknowledges an event only once its line is written and, with
// the default fsync policy "always", synced to disk: concurrent deliveries
// share one fsync (group commit).
package file

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/pgcdc/pgcdc/sink"
)

// Fsync policies.
const (
	// FsyncAlways syncs the file before Deliver returns: a delivered event
	// survives a crash of the machine.
	FsyncAlways = "always"
	// FsyncInterval syncs every Config.FsyncInterval in the background:
	// Deliver returns once the line is written to the operating system, so
	// a machine crash can lose the last interval's events (a crash of
	// pgcdc alone loses nothing).
	FsyncInterval = "interval"
	// FsyncNever leaves syncing to the operating system.
	FsyncNever = "never"
)

// Config configures a file sink.
type Config struct {
	// Path is the file the lines are appended to (created with mode 0644
	// when missing). Required.
	Path string `yaml:"path"`
	// Fsync is the sync policy: "always" (default), "interval" or "never".
	Fsync string `yaml:"fsync"`
	// FsyncInterval is the period of the "interval" policy (default 1s).
	FsyncInterval time.Duration `yaml:"fsync_interval"`
}

// Validate reports every problem of the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Path == "" {
		errs = append(errs, errors.New("path: missing: the file the events are appended to"))
	}
	switch c.Fsync {
	case "", FsyncAlways, FsyncInterval, FsyncNever:
	default:
		errs = append(errs, fmt.Errorf("fsync: %q: want always, interval or never", c.Fsync))
	}
	if c.FsyncInterval < 0 {
		errs = append(errs, errors.New("fsync_interval: must not be negative"))
	}
	return errors.Join(errs...)
}

// Sink appends JSON lines to a writer.
type Sink struct {
	mu     sync.Mutex // guards out, written, closed
	out    io.Writer
	f      *os.File // nil for a plain writer
	fsync  string
	closed bool

	written uint64 // Deliver calls whose lines were written to out
	syncMu  sync.Mutex
	synced  uint64 // lines covered by the last fsync

	stop chan struct{}
	done chan struct{}
}

// New opens (creating or appending to) the file of cfg.
func New(cfg Config) (*Sink, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(cfg.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("file sink: %w", err)
	}
	s := newSink(f, f)
	s.fsync = cfg.Fsync
	if s.fsync == "" {
		s.fsync = FsyncAlways
	}
	if s.fsync == FsyncInterval {
		every := cfg.FsyncInterval
		if every <= 0 {
			every = time.Second
		}
		s.stop, s.done = make(chan struct{}), make(chan struct{})
		go s.syncLoop(every)
	}
	return s, nil
}

// NewWriter returns a sink writing to w (standard output, say) without
// syncing: Deliver returns once the lines were written to w.
func NewWriter(w io.Writer) *Sink {
	s := newSink(w, nil)
	s.fsync = FsyncNever
	return s
}

func newSink(out io.Writer, f *os.File) *Sink {
	return &Sink{out: out, f: f}
}

// Deliver writes one line per message and returns once they reached the
// file (and the disk, with FsyncAlways). A payload holding a line break (a
// json column keeps its text as written) is compacted first, so each event
// stays one line.
func (s *Sink) Deliver(ctx context.Context, msgs []sink.Message) error {
	var buf []byte
	for _, m := range msgs {
		var err error
		if buf, err = appendLine(buf, m.Payload); err != nil {
			return sink.Permanent(fmt.Errorf("file sink: event %s: %w", m.EventID, err))
		}
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return sink.ErrClosed
	}
	_, err := s.out.Write(buf) // one write: lines of concurrent deliveries never interleave
	s.written++
	mine := s.written
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("file sink: writing: %w", err)
	}
	if s.fsync != FsyncAlways || s.f == nil {
		return nil
	}
	return s.syncUpTo(mine)
}

// syncUpTo makes sure an fsync began after write number n: one fsync
// covers every write flushed before it started.
func (s *Sink) syncUpTo(n uint64) error {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if s.synced >= n {
		return nil
	}
	s.mu.Lock()
	upTo := s.written
	s.mu.Unlock()
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("file sink: fsync: %w", err)
	}
	s.synced = upTo
	return nil
}

func (s *Sink) syncLoop(every time.Duration) {
	defer close(s.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.mu.Lock()
			n := s.written
			s.mu.Unlock()
			_ = s.syncUpTo(n) // an error shows at the next sync or Close
		}
	}
}

func appendLine(b, payload []byte) ([]byte, error) {
	if bytes.ContainsAny(payload, "\r\n") {
		var buf bytes.Buffer
		if err := json.Compact(&buf, payload); err != nil {
			return b, fmt.Errorf("event is not valid JSON: %w", err)
		}
		payload = buf.Bytes()
	}
	b = append(b, payload...)
	return append(b, '\n'), nil
}

// Close flushes, syncs and closes the file. Deliver returns
// sink.ErrClosed afterwards.
func (s *Sink) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var err error
	if s.stop != nil {
		close(s.stop)
		<-s.done
	}
	if s.f == nil {
		return err
	}
	if serr := s.f.Sync(); err == nil {
		err = serr
	}
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	return err
}
