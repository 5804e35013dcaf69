package logical

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/rowjson"
)

// Snapshots (backfills) read a routed table's rows into the live stream,
// in chunks of its primary key, interleaved so that no snapshot row ever
// reaches a handler after a newer change of its row (watermarks, as in
// Netflix's DBLog):
//
//  1. the runner writes a low watermark: a transactional logical message
//     (prefix SnapshotPrefix) in a transaction of its own;
//  2. it reads the next chunk (keyset on the primary key) and hands the
//     rows to the stream;
//  3. it writes a high watermark.
//
// The stream sees both watermarks in commit order. Between them it notes
// the keys of the table's changes; at the high watermark it delivers the
// chunk's rows whose key did not change in between (those it delivered, or
// will, as changes: they are newer than the chunk's read, or as new), as
// events with action READ, in the high watermark's transaction, before
// anything committed after it. Every changed key's newest state therefore
// reaches the handler after the snapshot row or instead of it.
//
// Progress is kept in a table of pgcdc's schema (snapshots) and advanced
// only once a chunk's events are resolved, so a crash resumes at the first
// chunk not fully handled. Nothing is written to user tables; the role
// needs SELECT on the table.

// SnapshotPrefix is the prefix of the watermark messages.
const SnapshotPrefix = "pgcdc-snapshot"

// ActionRead is the action of a snapshot row's event.
const ActionRead = "READ"

// SnapshotRequest asks a source to read a routed table's rows.
type SnapshotRequest struct {
	Schema, Table string
	// Where optionally limits the rows (an SQL predicate on the table).
	Where string
	// ChunkSize is the number of rows per chunk (< 1: 4096).
	ChunkSize int
	// Restart starts a new run from the first row; otherwise an unfinished
	// run of the table resumes, and a finished one is not run again.
	Restart bool
}

// SnapshotProgress is a run's progress.
type SnapshotProgress struct {
	Schema, Table string
	Run           string
	RowsDone      int64
	RowsEstimate  int64 // the table's row estimate (pg_class.reltuples)
	Done          bool
	Started       time.Time // when this process started or resumed the run
	RowsAtStart   int64     // RowsDone then
}

// snapshots is a source's snapshot state shared by its runners and the
// stream.
type snapshots struct {
	mu     sync.Mutex
	chunks map[string]*chunk // by watermark id, between the runner's read and the high watermark
	runs   map[string]*SnapshotProgress
	reqs   chan snapshotReq // to the streaming session
}

type snapshotReq struct {
	req  SnapshotRequest
	done chan error
}

// chunk is the rows of one chunk, waiting for their high watermark.
type chunk struct {
	routeKey, schema, table, run string
	rows                         []snapRow
	left                         atomic.Int64  // events not yet resolved
	resolved                     chan struct{} // closed once left reaches 0
}

type snapRow struct {
	key  string // the primary key's text, as the stream would see it
	part uint64 // the dispatcher's partition key
	json []byte // row_to_json of the row
}

// window is a chunk's interval between its watermarks, seen by the stream.
type window struct {
	routeKey string
	changed  map[uint64]struct{} // partition keys of rows changed in between
	all      bool                // the table was truncated in between
}

// chunkPos resolves a snapshot event: its transaction's change, and the
// chunk's count.
type chunkPos struct {
	txn change.Resolver
	c   *chunk
}

func (p *chunkPos) Done() {
	p.txn.Done()
	if p.c.left.Add(-1) == 0 {
		close(p.c.resolved)
	}
}

func newSnapshots() *snapshots {
	return &snapshots{chunks: map[string]*chunk{}, runs: map[string]*SnapshotProgress{}, reqs: make(chan snapshotReq, 16)}
}

// Snapshot asks the source to read a table's rows into the stream and
// waits until every row was handled (or dead-lettered), ctx ends, or the
// run fails. The source must be streaming (it is queued until it does).
func (s *Source) Snapshot(ctx context.Context, req SnapshotRequest) error {
	if req.ChunkSize < 1 {
		req.ChunkSize = 4096
	}
	if !slicesContainsTable(s.cfg.Tables, req.Schema, req.Table) {
		return &errs.Fatal{Err: fmt.Errorf("%w: snapshot of %s: the table is not routed on source %s", errs.ErrConfig, pgident.Qualified(req.Schema, req.Table), s.label())}
	}
	r := snapshotReq{req: req, done: make(chan error, 1)}
	select {
	case s.snap.reqs <- r:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SnapshotProgress returns the progress of the source's snapshot runs.
func (s *Source) SnapshotProgress() []SnapshotProgress {
	s.snap.mu.Lock()
	defer s.snap.mu.Unlock()
	out := make([]SnapshotProgress, 0, len(s.snap.runs))
	for _, p := range s.snap.runs {
		out = append(out, *p)
	}
	return out
}

func slicesContainsTable(ts []Table, schema, table string) bool {
	for _, t := range ts {
		if t.Schema == schema && t.Table == table && !t.Route.Tx {
			return true
		}
	}
	return false
}

// runSnapshots serves snapshot requests during a streaming session: the
// initial snapshots of the routes that ask for one, then requests as they
// come. It returns when ctx ends, after its runners.
func (s *Source) runSnapshots(ctx context.Context, pool *pgxpool.Pool) {
	var wg sync.WaitGroup
	defer wg.Wait()
	start := func(r snapshotReq) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.snapshot(ctx, pool, r.req)
			if err != nil && ctx.Err() == nil {
				s.cfg.Logger.Error("pgcdc: snapshot failed; the stream goes on without it", "source", s.cfg.Name, "table", r.req.Schema+"."+r.req.Table, "error", err)
				if s.cfg.OnError != nil {
					s.cfg.OnError(err)
				}
			}
			if r.done != nil {
				r.done <- err
			}
		}()
	}
	// Unfinished runs resume (an on-demand backfill cut by a restart too);
	// routes asking for an initial snapshot get one unless it was done.
	unfinished := map[string]bool{}
	var exists bool
	state := pgident.Qualified(s.cfg.StateSchema, "snapshots")
	if err := pool.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, state).Scan(&exists); err == nil && exists {
		if rows, err := pool.Query(ctx, `SELECT schema_name || '.' || table_name FROM `+state+` WHERE slot = $1 AND NOT done`, s.cfg.Slot); err == nil {
			keys, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			for _, k := range keys {
				unfinished[k] = true
			}
		}
	}
	for _, t := range s.live {
		if t.Snapshot || (unfinished[t.Schema+"."+t.Table] && !t.Route.Tx) {
			start(snapshotReq{req: SnapshotRequest{Schema: t.Schema, Table: t.Table, ChunkSize: 4096}})
		}
	}
	for {
		select {
		case r := <-s.snap.reqs:
			start(r)
		case <-ctx.Done():
			return
		}
	}
}

// snapshot runs (or resumes) one table's snapshot.
func (s *Source) snapshot(ctx context.Context, pool *pgxpool.Pool, req SnapshotRequest) error {
	qname := pgident.Qualified(req.Schema, req.Table)
	state := pgident.Qualified(s.cfg.StateSchema, "snapshots")
	if err := s.ensureSnapshotTable(ctx, pool, state); err != nil {
		return err
	}
	ti, ok := s.tables[req.Schema+"."+req.Table]
	if !ok {
		return fmt.Errorf("%w: snapshot of %s: the table is not streamed", errs.ErrConfig, qname)
	}
	pk, err := primaryKey(ctx, pool, ti.oid)
	if err != nil {
		return fmt.Errorf("snapshot of %s: %w", qname, err)
	}
	if len(pk) == 0 {
		return fmt.Errorf("%w: snapshot of %s: the table has no primary key; snapshots read tables in primary key order, in chunks", errs.ErrConfig, qname)
	}

	// The run: resumed from its last fully handled chunk, or a new one.
	var run string
	var lastKey []string
	var rowsDone int64
	var done bool
	var where string
	err = pool.QueryRow(ctx, `SELECT run, last_key, rows_done, done, where_clause FROM `+state+` WHERE slot = $1 AND schema_name = $2 AND table_name = $3`,
		s.cfg.Slot, req.Schema, req.Table).Scan(&run, &lastKey, &rowsDone, &done, &where)
	if err == nil && !req.Restart {
		req.Where = where // a resumed run reads the rows it was started for
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows) || (err == nil && req.Restart):
		run, lastKey, rowsDone, done = newRunID(), nil, 0, false
		if _, err := pool.Exec(ctx, `INSERT INTO `+state+` (slot, schema_name, table_name, run, where_clause, last_key, rows_done, done)
			VALUES ($1, $2, $3, $4, $5, NULL, 0, false)
			ON CONFLICT (slot, schema_name, table_name) DO UPDATE SET run = $4, where_clause = $5, last_key = NULL, rows_done = 0, done = false, updated_at = now()`,
			s.cfg.Slot, req.Schema, req.Table, run, req.Where); err != nil {
			return fmt.Errorf("snapshot of %s: recording the run: %w", qname, err)
		}
	case err != nil:
		return fmt.Errorf("snapshot of %s: reading progress: %w", qname, err)
	}
	var estimate int64
	_ = pool.QueryRow(ctx, `SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = $1`, ti.oid).Scan(&estimate)
	prog := &SnapshotProgress{Schema: req.Schema, Table: req.Table, Run: run, RowsDone: rowsDone, RowsEstimate: estimate, Done: done, Started: time.Now(), RowsAtStart: rowsDone}
	s.snap.mu.Lock()
	s.snap.runs[req.Schema+"."+req.Table] = prog
	s.snap.mu.Unlock()
	if done {
		return nil
	}
	s.cfg.Logger.Info("pgcdc: snapshot", "source", s.cfg.Name, "table", qname, "run", run, "resume_after", lastKey)

	// Chunks are read while the ones before are handled: at most two wait
	// for their events to be resolved; progress is recorded in order, for
	// each chunk once its events are.
	type pending struct {
		id       string
		c        *chunk
		lastKey  []string
		rowsDone int64
		finished bool
	}
	queue := make(chan pending, 1)
	recorded := make(chan error, 1)
	go func() {
		for p := range queue {
			select {
			case <-p.c.resolved:
			case <-ctx.Done():
				s.dropChunk(p.id)
				recorded <- ctx.Err()
				return
			}
			if _, err := pool.Exec(ctx, `UPDATE `+state+` SET last_key = $4, rows_done = $5, done = $6, updated_at = now()
				WHERE slot = $1 AND schema_name = $2 AND table_name = $3 AND run = $7`,
				s.cfg.Slot, req.Schema, req.Table, p.lastKey, p.rowsDone, p.finished, run); err != nil {
				recorded <- fmt.Errorf("snapshot of %s: recording progress: %w", qname, err)
				return
			}
			s.snap.mu.Lock()
			prog.RowsDone, prog.Done = p.rowsDone, p.finished
			s.snap.mu.Unlock()
			if p.finished {
				s.cfg.Logger.Info("pgcdc: snapshot done", "source", s.cfg.Name, "table", qname, "run", run, "rows", p.rowsDone)
				recorded <- nil
				return
			}
		}
		recorded <- ctx.Err()
	}()
	fail := func(err error) error {
		close(queue)
		<-recorded
		return err
	}
	for n := 0; ; n++ {
		id := run + "/" + strconv.Itoa(n) + "/" + strconv.FormatInt(time.Now().UnixNano(), 36)
		if err := s.watermark(ctx, pool, req.Schema+"."+req.Table, id, "lo"); err != nil {
			return fail(fmt.Errorf("snapshot of %s: %w", qname, err))
		}
		if err := s.waitInProgress(ctx, pool, qname); err != nil {
			return fail(fmt.Errorf("snapshot of %s: %w", qname, err))
		}
		c, key, err := readChunk(ctx, pool, chunkQuery(qname, pk, req.Where, len(lastKey) > 0), lastKey, req.ChunkSize)
		if err != nil {
			return fail(fmt.Errorf("snapshot of %s: reading a chunk: %w", qname, err))
		}
		c.routeKey, c.schema, c.table, c.run = req.Schema+"."+req.Table, req.Schema, req.Table, run
		s.snap.mu.Lock()
		s.snap.chunks[id] = c
		s.snap.mu.Unlock()
		if err := s.watermark(ctx, pool, req.Schema+"."+req.Table, id, "hi"); err != nil {
			s.dropChunk(id)
			return fail(fmt.Errorf("snapshot of %s: %w", qname, err))
		}
		finished := len(c.rows) < req.ChunkSize
		rowsDone += int64(len(c.rows))
		if len(c.rows) > 0 {
			lastKey = key
		}
		select {
		case queue <- pending{id: id, c: c, lastKey: lastKey, rowsDone: rowsDone, finished: finished}:
		case err := <-recorded:
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
		if finished {
			close(queue)
			return <-recorded
		}
	}
}

// readChunk reads the chunk after lastKey.
func readChunk(ctx context.Context, pool *pgxpool.Pool, q chunkSQL, lastKey []string, size int) (*chunk, []string, error) {
	args := []any{size}
	for _, k := range lastKey {
		args = append(args, k)
	}
	rows, err := pool.Query(ctx, q.sql, args...)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	c := &chunk{resolved: make(chan struct{}), rows: make([]snapRow, 0, size)}
	var key []string
	for rows.Next() {
		var js string
		key = make([]string, len(q.hashOrder))
		dest := []any{&js}
		for i := range key {
			dest = append(dest, &key[i])
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, nil, err
		}
		c.rows = append(c.rows, snapRow{key: strings.Join(key, "\x00"), part: hashKey(key, q.hashOrder), json: []byte(js)})
	}
	return c, key, rows.Err()
}

// waitInProgress waits until the transactions in progress now have ended.
// PostgreSQL makes a commit visible to other sessions only after its WAL
// record is written (and, with synchronous replication, acknowledged): a
// change whose commit precedes the low watermark in the WAL, so that the
// stream delivers it before the window, may still be invisible to a read
// right after the watermark, which would then deliver the row's older
// version after it. Every such transaction is in progress now; once they
// all ended, the chunk's read sees them. (CREATE INDEX CONCURRENTLY waits
// the same way.) Transactions that commit later are in the window, or
// after it, and need no wait.
func (s *Source) waitInProgress(ctx context.Context, pool *pgxpool.Pool, qname string) error {
	rows, err := pool.Query(ctx, `SELECT x::text FROM pg_catalog.pg_snapshot_xip(pg_catalog.pg_current_snapshot()) x`)
	if err != nil {
		return fmt.Errorf("reading the transactions in progress: %w", err)
	}
	xids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(xids) == 0 {
		return err
	}
	start, warned := time.Now(), false
	for {
		var running int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_catalog.unnest($1::text[]) x
			WHERE pg_catalog.pg_xact_status(x::xid8) = 'in progress'`, xids).Scan(&running); err != nil {
			return fmt.Errorf("waiting for the transactions in progress: %w", err)
		}
		if running == 0 {
			return nil
		}
		if !warned && time.Since(start) > 10*time.Second {
			warned = true
			s.cfg.Logger.Warn("pgcdc: snapshot chunk waits for transactions in progress to end (long-running write transactions delay snapshots)",
				"source", s.cfg.Name, "table", qname, "running", running)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (s *Source) dropChunk(id string) {
	s.snap.mu.Lock()
	delete(s.snap.chunks, id)
	s.snap.mu.Unlock()
}

func newRunID() string {
	sum := md5.Sum([]byte(strconv.FormatInt(time.Now().UnixNano(), 10)))
	return hex.EncodeToString(sum[:6])
}

// watermark writes a watermark message in a transaction of its own.
func (s *Source) watermark(ctx context.Context, pool *pgxpool.Pool, table, id, mark string) error {
	content, _ := json.Marshal(watermarkMsg{Slot: s.cfg.Slot, ID: id, Mark: mark, Table: table})
	// Flushed at commit even where synchronous_commit is off: the stream
	// sees only flushed WAL, and the chunk waits for its high watermark.
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("writing the %s watermark: %w", mark, err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
		return fmt.Errorf("writing the %s watermark: %w", mark, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_catalog.pg_logical_emit_message(true, $1, $2::text)`, SnapshotPrefix, string(content)); err != nil {
		return fmt.Errorf("writing the %s watermark: %w", mark, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("writing the %s watermark: %w", mark, err)
	}
	return nil
}

// pkColumn is one primary key column: its name, type and position.
type pkColumn struct {
	name, typ string
	attnum    int
}

// primaryKey returns the primary key columns of a table in index order.
func primaryKey(ctx context.Context, pool *pgxpool.Pool, oid uint32) ([]pkColumn, error) {
	rows, err := pool.Query(ctx, `SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnum
		FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
		WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`, oid)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (pkColumn, error) {
		var c pkColumn
		err := r.Scan(&c.name, &c.typ, &c.attnum)
		return c, err
	})
}

// chunkQuery is the keyset query of a table's chunks: $1 the chunk size,
// $2... the last key's text (after is false for the first chunk). It
// returns the order in which the key's columns are hashed (attnum order,
// as the stream does).
func chunkQuery(qname string, pk []pkColumn, where string, after bool) chunkSQL {
	cols := make([]string, len(pk))
	texts := make([]string, len(pk))
	params := make([]string, len(pk))
	for i, c := range pk {
		cols[i] = "t." + pgident.Quote(c.name)
		texts[i] = cols[i] + "::text"
		params[i] = "$" + strconv.Itoa(i+2) + "::text::" + c.typ
	}
	var conds []string
	if after {
		conds = append(conds, "("+strings.Join(cols, ", ")+") > ("+strings.Join(params, ", ")+")")
	}
	if where != "" {
		conds = append(conds, "("+where+")")
	}
	q := "SELECT row_to_json(t)::text, " + strings.Join(texts, ", ") + " FROM " + qname + " t"
	if len(conds) > 0 {
		q += " WHERE " + strings.Join(conds, " AND ")
	}
	q += " ORDER BY " + strings.Join(cols, ", ") + " LIMIT $1"
	order := make([]int, len(pk))
	for i := range order {
		order[i] = i
	}
	// attnum order
	for i := 1; i < len(order); i++ {
		for j := i; j > 0 && pk[order[j]].attnum < pk[order[j-1]].attnum; j-- {
			order[j], order[j-1] = order[j-1], order[j]
		}
	}
	return chunkSQL{sql: q, hashOrder: order}
}

// chunkSQL is a chunk query and the order its key columns are hashed in.
type chunkSQL struct {
	sql       string
	hashOrder []int
}

// hashKey is partKey for a key given as text, in the given column order.
func hashKey(key []string, order []int) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for _, i := range order {
		for j := 0; j < len(key[i]); j++ {
			h = (h ^ uint64(key[i][j])) * prime
		}
		h *= prime
	}
	return h
}

func (s *Source) ensureSnapshotTable(ctx context.Context, pool *pgxpool.Pool, state string) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	ddl := `BEGIN; SELECT pg_advisory_xact_lock(7245931182654220);
CREATE SCHEMA IF NOT EXISTS ` + pgident.Quote(s.cfg.StateSchema) + `;
CREATE TABLE IF NOT EXISTS ` + state + ` (
	slot        text NOT NULL,
	schema_name text NOT NULL,
	table_name  text NOT NULL,
	run         text NOT NULL,
	where_clause text NOT NULL DEFAULT '',
	last_key    text[],
	rows_done   bigint NOT NULL DEFAULT 0,
	done        boolean NOT NULL DEFAULT false,
	updated_at  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (slot, schema_name, table_name)
);
COMMENT ON TABLE ` + state + ` IS 'pgcdc: progress of table snapshots';
COMMIT`
	if _, err := conn.Conn().PgConn().Exec(ctx, ddl).ReadAll(); err != nil {
		return fmt.Errorf("creating the snapshot progress table %s (grant CREATE on the database, or create schema %s for the role): %w", state, pgident.Quote(s.cfg.StateSchema), err)
	}
	return nil
}

// watermarkMsg is a watermark's content.
type watermarkMsg struct {
	Slot  string `json:"slot"`
	ID    string `json:"id"`
	Mark  string `json:"mark"`
	Table string `json:"table"` // the route key of the chunk's table
}

// onWatermark handles a watermark message in the stream.
func (st *stream) onWatermark(ctx context.Context, content []byte) error {
	var m watermarkMsg
	if err := json.Unmarshal(content, &m); err != nil || m.Slot != st.s.cfg.Slot {
		return nil // another worker's snapshot
	}
	switch m.Mark {
	case "lo":
		if st.windows == nil {
			st.windows = map[string]*window{}
		}
		st.windows[m.ID] = &window{routeKey: m.Table, changed: map[uint64]struct{}{}}
	case "hi":
		w := st.windows[m.ID]
		delete(st.windows, m.ID)
		st.s.snap.mu.Lock()
		c := st.s.snap.chunks[m.ID]
		delete(st.s.snap.chunks, m.ID)
		st.s.snap.mu.Unlock()
		if c == nil || w == nil {
			return nil // a watermark of an earlier session: that chunk is read again
		}
		return st.deliverChunk(ctx, c, w)
	}
	return nil
}

// noteChange records, in the open windows of c's table, that a row changed.
func (st *stream) noteChange(c *change.Change) {
	for _, w := range st.windows {
		if w.routeKey != c.RouteKey {
			continue
		}
		if c.Action == change.Truncate {
			w.all = true
		} else {
			w.changed[c.PartKey] = struct{}{}
		}
	}
}

// deliverChunk hands the rows of a chunk that did not change while it was
// read to the handlers, as READ events of the current transaction.
func (st *stream) deliverChunk(ctx context.Context, c *chunk, w *window) error {
	var rows []snapRow
	if !w.all {
		for _, r := range c.rows {
			if _, changed := w.changed[r.part]; !changed {
				rows = append(rows, r)
			}
		}
	}
	c.left.Store(int64(len(rows)) + 1)
	defer func() {
		if c.left.Add(-1) == 0 {
			close(c.resolved)
		}
	}()
	for _, r := range rows {
		ch := st.dec.read(c, r)
		if st.txn == nil {
			return nil
		}
		st.txn.Add(1)
		ch.Pos = &chunkPos{txn: st.txn, c: c}
		queued, err := st.s.disp.Send(ctx, ch, st.idle)
		if !queued {
			ch.Pos.Done()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// read builds the event of a snapshot row.
func (d *decoder) read(c *chunk, r snapRow) *change.Change {
	ch := &change.Change{
		Source: d.cfg.Source, Schema: c.schema, Table: c.table, RouteKey: c.routeKey, Action: ActionRead,
		LSN: uint64(d.commitLSN), XID: d.xid, CommitTime: d.commitTime, PartKey: r.part,
		KeyColumns: d.keyCols[c.routeKey],
	}
	sum := md5.Sum([]byte(d.cfg.SourceID + "/snapshot/" + c.run + "/" + c.routeKey + "/" + r.key))
	ch.EventID = hex.EncodeToString(sum[:])
	b := make([]byte, 0, len(r.json)+256)
	b = change.AppendHead(b, ch.EventID, rowjson.AppendString(nil, c.table), ActionRead)
	b = append(b, "null"...)
	b = change.AppendNew(b)
	b = append(b, r.json...)
	b = change.AppendSource(b, rowjson.AppendString(nil, c.schema), d.sourceJSON)
	b = change.AppendField(b, "snapshot", rowjson.AppendString(nil, c.run))
	ch.Message = d.appendTail(b)
	return ch
}
