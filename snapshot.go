package pgcdc

import (
	"context"
	"fmt"

	"github.com/pgcdc/pgcdc/internal/logical"
)

// ActionRead is the action of a snapshot row's event: a row that existed
// when its table was read (see WithSnapshot and Worker.Backfill). Its
// data.old is null, data.new the row, and the event has a "snapshot" field
// naming the run.
const ActionRead = logical.ActionRead

// SnapshotMode says when a route's existing rows are read into the stream.
type SnapshotMode string

// Snapshot modes.
const (
	// SnapshotNever: only changes from the slot's creation on (the default,
	// as candi's worker).
	SnapshotNever SnapshotMode = "never"
	// SnapshotInitial: the first time a route is served, its table's rows
	// are read (in primary key order, in chunks, without locking it)
	// alongside the live changes; the run resumes after a restart and is
	// not repeated once finished.
	SnapshotInitial SnapshotMode = "initial"
)

// SetSnapshotMode sets the snapshot mode of every route (default
// SnapshotNever); WithSnapshot overrides it per route. Snapshots need the
// logical capture mode and a primary key.
func SetSnapshotMode(m SnapshotMode) OptionFunc {
	return func(o *option) { o.snapshot = m }
}

// WithSnapshot sets one route's snapshot mode.
func WithSnapshot(m SnapshotMode) HandlerOption {
	return func(c *handlerConfig) { c.snapshot = m }
}

// BackfillOption adjusts a Backfill.
type BackfillOption func(*logical.SnapshotRequest)

// BackfillWhere limits a backfill to the rows matching an SQL predicate on
// the table ("created_at > now() - interval '1 day'"). It is SQL run as the
// worker's role: never build it from untrusted input.
func BackfillWhere(predicate string) BackfillOption {
	return func(r *logical.SnapshotRequest) { r.Where = predicate }
}

// BackfillChunkSize sets the rows read per chunk (default 4096).
func BackfillChunkSize(n int) BackfillOption {
	return func(r *logical.SnapshotRequest) { r.ChunkSize = n }
}

// Backfill reads the rows of a route's table into the stream while it runs:
// each row reaches the route's handler as an event with action ActionRead,
// interleaved with the live changes so that no row's snapshot ever reaches
// the handler after a newer change of that row. It reads in primary key
// order, in chunks, without locking the table, and resumes after a restart
// from the last chunk fully handled. It returns once every row was handled
// (or dead-lettered), or when ctx ends (the backfill then continues in the
// background while the worker serves, and resumes after a restart). Serve
// must be running; logical capture mode only.
func (w *Worker) Backfill(ctx context.Context, route string, opts ...BackfillOption) error {
	src, schema, table := parseRoute(route)
	if _, ok := w.sourceByName(src); !ok && src == "" && len(w.opt.sources) == 1 {
		src = w.opt.sources[0].name
	}
	ls, err := w.logicalSource(src)
	if err != nil {
		return err
	}
	req := logical.SnapshotRequest{Schema: schema, Table: table, Restart: true}
	for _, o := range opts {
		o(&req)
	}
	return ls.Snapshot(ctx, req)
}

// SnapshotProgress reports the snapshot runs of a source: rows done, the
// table's row estimate, whether the run finished.
func (w *Worker) SnapshotProgress(sourceName string) []logical.SnapshotProgress {
	ls, err := w.logicalSource(sourceName)
	if err != nil {
		return nil
	}
	return ls.SnapshotProgress()
}

func (w *Worker) sourceByName(name string) (source, bool) {
	for _, s := range w.opt.sources {
		if s.name == name {
			return s, true
		}
	}
	return source{}, false
}

// logicalSource returns the logical engine streaming a source.
func (w *Worker) logicalSource(name string) (*logical.Source, error) {
	if !w.serving() {
		return nil, fmt.Errorf("%w: the worker is not serving: call Backfill while Serve runs", ErrConfig)
	}
	w.mu.Lock()
	e := w.sources[name]
	w.mu.Unlock()
	if a, ok := e.(*autoEngine); ok {
		if c := a.chosen.Load(); c != nil {
			e = *c
		}
	}
	ls, ok := e.(*logical.Source)
	if !ok {
		return nil, fmt.Errorf("%w: source %q does not stream with logical replication: snapshots need the logical capture mode", ErrConfig, name)
	}
	return ls, nil
}
