package pgcdc

import (
	"context"
	"time"

	"github.com/pgcdc/pgcdc/internal/trigger"
)

// SourceStatus is the state of one source at one moment (Worker.Status).
// It marshals to JSON with the tags below; a source that has not streamed
// yet has zero positions and LagBytes -1.
type SourceStatus struct {
	Name   string      `json:"name"`   // "" for the default source
	Engine string      `json:"engine"` // "logical", "trigger", or "auto" before auto chose
	State  SourceState `json:"state"`
	// Slot and Publication name what the logical engine reads; TriggerSchema
	// the schema the trigger engine owns. Both are set before auto chose.
	Slot          string `json:"slot,omitempty"`
	Publication   string `json:"publication,omitempty"`
	TriggerSchema string `json:"trigger_schema,omitempty"`
	// ConfirmedLSN is the last position confirmed to the server ("" before
	// the first; logical engine only), ConfirmedCommitTime the commit time
	// of the last transaction confirmed.
	ConfirmedLSN        string    `json:"confirmed_lsn,omitempty"`
	ConfirmedCommitTime time.Time `json:"confirmed_commit_time,omitzero"`
	// LagBytes is the WAL the server holds for the slot beyond the confirmed
	// position (sampled every second; -1 when unknown or in trigger mode).
	LagBytes int64 `json:"lag_bytes"`
	// LagSeconds is how long ago the oldest transaction received and not
	// yet confirmed committed: 0 when everything received is confirmed
	// (logical engine; 0 in trigger mode, see Backlog).
	LagSeconds float64 `json:"lag_seconds"`
	// LastError is the last connection or fatal error (kept after the
	// source recovered; LastErrorTime says when).
	LastError     string    `json:"last_error,omitempty"`
	LastErrorTime time.Time `json:"last_error_time,omitzero"`
	// EventsHandled counts the events a handler accepted (delivered or
	// filtered) since NewWorker; DeadLetters the events this worker stored in
	// the dead-letter table.
	EventsHandled int64 `json:"events_handled"`
	DeadLetters   int64 `json:"dead_letters"`
	// Backlog is the trigger engine's undelivered events (-1 for the
	// logical engine or when it cannot be read).
	Backlog int64 `json:"backlog"`
	// Snapshots is the progress of the source's snapshot runs in this
	// process (see Backfill).
	Snapshots []SnapshotStatus `json:"snapshots,omitempty"`
}

// SnapshotStatus is the progress of one table's snapshot run.
type SnapshotStatus struct {
	Table        string  `json:"table"` // "schema.table"
	Run          string  `json:"run"`
	RowsDone     int64   `json:"rows_done"`
	RowsEstimate int64   `json:"rows_estimate"` // the table's row estimate (pg_class.reltuples)
	RowsPerSec   float64 `json:"rows_per_sec"`  // since the run started in this process
	Done         bool    `json:"done"`
}

// Status returns the state of every configured source, in the order they
// were added. It can be called at any time, also before and after Serve.
// ctx bounds the one query it may make per trigger-mode source (Backlog).
func (w *Worker) Status(ctx context.Context) []SourceStatus {
	now := time.Now()
	out := make([]SourceStatus, 0, len(w.opt.sources))
	for _, s := range w.opt.sources {
		snap := w.obs[s.name].Snapshot(now)
		st := SourceStatus{
			Name: s.name, Engine: w.engineOf(s.name), State: SourceState(snap.State),
			ConfirmedCommitTime: snap.ConfirmedTime, LagBytes: snap.LagBytes, LagSeconds: snap.LagSeconds,
			LastErrorTime: snap.ErrAt, EventsHandled: snap.Handled, DeadLetters: snap.DeadLetters, Backlog: -1,
		}
		if snap.Confirmed != 0 {
			st.ConfirmedLSN = lsnString(snap.Confirmed)
		}
		if snap.Err != nil {
			st.LastError = snap.Err.Error()
		}
		if st.Engine != "trigger" {
			st.Slot = w.slotName(s.name)
			st.Publication = st.Slot
		}
		if st.Engine != "logical" {
			st.TriggerSchema = w.TriggerSchema()
			st.LagBytes = -1
		}
		if st.Engine == "logical" && w.serving() {
			for _, p := range w.SnapshotProgress(s.name) {
				ss := SnapshotStatus{Table: p.Schema + "." + p.Table, Run: p.Run, RowsDone: p.RowsDone, RowsEstimate: p.RowsEstimate, Done: p.Done}
				if d := now.Sub(p.Started).Seconds(); d > 0 {
					ss.RowsPerSec = float64(p.RowsDone-p.RowsAtStart) / d
				}
				st.Snapshots = append(st.Snapshots, ss)
			}
		}
		if st.Engine == "trigger" && st.State != StateStopped {
			if n, err := w.Backlog(ctx, s.name); err == nil {
				st.Backlog = n
			}
		}
		out = append(out, st)
	}
	return out
}

// engineOf names the engine a source runs (or will run).
func (w *Worker) engineOf(source string) string {
	switch w.opt.captureMode {
	case CaptureLogical:
		return "logical"
	case CaptureTrigger:
		return "trigger"
	}
	w.mu.Lock()
	e := w.sources[source]
	w.mu.Unlock()
	if a, ok := e.(*autoEngine); ok {
		if c := a.chosen.Load(); c != nil {
			if _, isTrigger := (*c).(*trigger.Source); isTrigger {
				return "trigger"
			}
			return "logical"
		}
	}
	return "auto"
}
