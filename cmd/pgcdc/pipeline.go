package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/trace"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/sink"
)

// rule is one route of the file, compiled.
type rule struct {
	index   int // position in routes
	sinks   []string
	actions []string // empty: INSERT, UPDATE, DELETE
	changed []string
	where   map[string]any
}

// wantsTruncate reports whether the rule keeps TRUNCATE events.
func (r *rule) wantsTruncate() bool { return slices.Contains(r.actions, pgcdc.ActionTruncate) }

// pipeline delivers the events of one table to the sinks of the rules that
// keep them.
type pipeline struct {
	rules  []*rule
	sinks  map[string]sink.Sink
	logger *slog.Logger
	debug  bool
	tracer trace.Tracer // nil: no tracing
}

// row is the part of an event the filters read.
type row struct {
	Action string `json:"action"`
	Data   struct {
		Old map[string]json.RawMessage `json:"old"`
		New map[string]json.RawMessage `json:"new"`
	} `json:"data"`
	UnchangedToast []string `json:"unchanged_toast"`
}

// targets returns the sinks msg goes to, in route order, each once.
func (p *pipeline) targets(msg sink.Message) ([]string, error) {
	var parsed *row
	var out []string
	for _, r := range p.rules {
		if len(r.actions) > 0 {
			if !slices.Contains(r.actions, msg.Action) {
				continue
			}
		} else if msg.Action == pgcdc.ActionTruncate {
			continue
		}
		if (len(r.changed) > 0 || len(r.where) > 0) && parsed == nil && msg.Action != pgcdc.ActionTruncate {
			parsed = &row{}
			if err := json.Unmarshal(msg.Payload, parsed); err != nil {
				return nil, sink.Permanent(fmt.Errorf("event %s is not valid JSON: %w", msg.EventID, err))
			}
		}
		if len(r.changed) > 0 && msg.Action == pgcdc.ActionUpdate && !changed(parsed, r.changed) {
			continue
		}
		if len(r.where) > 0 && (msg.Action == pgcdc.ActionTruncate || !matches(parsed, r.where)) {
			continue
		}
		for _, s := range r.sinks {
			if !slices.Contains(out, s) {
				out = append(out, s)
			}
		}
	}
	return out, nil
}

// deliver hands msg to its sinks, one after the other. It reports false
// when no route keeps it (filtered). An error leaves the event to be
// delivered again (to every one of its sinks: at least once).
func (p *pipeline) deliver(ctx context.Context, msg sink.Message) (bool, error) {
	targets, err := p.targets(msg)
	if err != nil {
		return false, err
	}
	if p.debug {
		p.logger.Debug("pgcdc: event", "event_id", msg.EventID, "table", msg.Schema+"."+msg.Table,
			"action", msg.Action, "sinks", targets, "payload", string(msg.Payload))
	}
	if len(targets) == 0 {
		return false, nil
	}
	batch := [1]sink.Message{msg}
	for _, name := range targets {
		if err := p.sinks[name].Deliver(ctx, batch[:]); err != nil {
			if sink.IsPermanent(err) {
				return true, sink.Permanent(fmt.Errorf("sink %q: %w", name, err))
			}
			return true, fmt.Errorf("sink %q: %w", name, err)
		}
	}
	return true, nil
}

// handler is the pipeline as a pgcdc handler.
func (p *pipeline) handler() pgcdc.HandlerFunc {
	return func(ec *pgcdc.EventContext) error {
		msg := sink.FromEvent(ec)
		kept, err := traced(p.tracer, ec.Context(), msg, func(ctx context.Context) (bool, error) { return p.deliver(ctx, msg) })
		if err == nil && !kept {
			ec.Filtered()
		}
		return err
	}
}

// changed reports whether one of cols differs between the old and new
// row. Without an old row (replica identity DEFAULT) it cannot tell and
// reports true.
func changed(r *row, cols []string) bool {
	if r.Data.Old == nil || r.Data.New == nil {
		return true
	}
	for _, c := range cols {
		if slices.Contains(r.UnchangedToast, c) {
			continue
		}
		o, inOld := r.Data.Old[c]
		n, inNew := r.Data.New[c]
		if inOld != inNew || !bytes.Equal(o, n) {
			return true
		}
	}
	return false
}

// matches reports whether every column of where has the given value in
// the row (the new row; the old row of a DELETE).
func matches(r *row, where map[string]any) bool {
	data := r.Data.New
	if r.Action == pgcdc.ActionDelete {
		data = r.Data.Old
	}
	for col, want := range where {
		raw, ok := data[col]
		if !ok || !equalJSON(raw, want) {
			return false
		}
	}
	return true
}

// equalJSON compares a JSON value with a value from the configuration:
// numbers by value (12.50 equals 12.5), strings, booleans and null exactly,
// anything else by its JSON text.
func equalJSON(raw json.RawMessage, want any) bool {
	raw = bytes.TrimSpace(raw)
	switch w := want.(type) {
	case nil:
		return string(raw) == "null"
	case bool:
		return string(raw) == fmt.Sprint(w)
	case string:
		var s string
		return json.Unmarshal(raw, &s) == nil && s == w
	case int, int64, uint64, float64:
		a, ok1 := new(big.Rat).SetString(string(raw))
		b, ok2 := new(big.Rat).SetString(strings.TrimSpace(fmt.Sprint(w)))
		return ok1 && ok2 && a.Cmp(b) == 0
	default:
		wj, err := json.Marshal(w)
		if err != nil {
			return false
		}
		var a, b any
		return json.Unmarshal(raw, &a) == nil && json.Unmarshal(wj, &b) == nil && fmt.Sprint(a) == fmt.Sprint(b)
	}
}
