package postgresworker

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"strings"
)

// newCandiLogger prints pgcdc's engine logs the way candi's workers print
// theirs: through the standard log package, prefixed [POSTGRES-LISTENER],
// errors red and warnings yellow (always), information only in debug mode.
func newCandiLogger(debug bool) *slog.Logger {
	return slog.New(&candiLogHandler{debug: debug})
}

type candiLogHandler struct {
	debug  bool
	attrs  []slog.Attr
	prefix string // group prefix for attribute keys
}

func (h *candiLogHandler) Enabled(_ context.Context, l slog.Level) bool {
	if l >= slog.LevelWarn {
		return true
	}
	return h.debug && l >= slog.LevelInfo
}

func (h *candiLogHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString("[POSTGRES-LISTENER] ")
	b.WriteString(r.Message)
	write := func(a slog.Attr) {
		if a.Equal(slog.Attr{}) {
			return
		}
		fmt.Fprintf(&b, " %s%s=%v", h.prefix, a.Key, a.Value.Resolve())
	}
	for _, a := range h.attrs {
		write(a)
	}
	r.Attrs(func(a slog.Attr) bool { write(a); return true })
	switch {
	case r.Level >= slog.LevelError:
		log.Printf("\x1b[31;1m%s\x1b[0m", b.String())
	case r.Level >= slog.LevelWarn:
		log.Printf("\x1b[33;1m%s\x1b[0m", b.String())
	default:
		log.Print(b.String())
	}
	return nil
}

func (h *candiLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.attrs = append(append([]slog.Attr(nil), h.attrs...), attrs...)
	return &n
}

func (h *candiLogHandler) WithGroup(name string) slog.Handler {
	n := *h
	n.prefix = h.prefix + name + "."
	return &n
}
