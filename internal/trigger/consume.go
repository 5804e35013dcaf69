package trigger

import (
	"cmp"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/observe"
	"github.com/pgcdc/pgcdc/internal/pgident"
	"github.com/pgcdc/pgcdc/internal/rowjson"
	"github.com/pgcdc/pgcdc/internal/runner"
)

// cleanupTimeout bounds the deletes and releases done when a session ends.
const cleanupTimeout = 5 * time.Second

// claimQueryTimeout bounds one claim statement.
const claimQueryTimeout = 30 * time.Second

// claimBytes bounds the stored size of one claimed batch (at least one event
// is claimed, however big), so a backlog of large rows does not fill memory.
const claimBytes = 16 << 20

// session is one connection's life: install, consume, and on the way out
// let the handlers in flight end, delete what they resolved and release
// the other claims.
func (s *Source) session(ctx, readCtx context.Context) error {
	pool, err := s.newPool(readCtx, 6)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := pool.Ping(readCtx); err != nil {
		return runner.ClassifyConnect(s.label, err)
	}
	if err := Install(readCtx, pool, s.cfg.Schema, s.cfg.Tables); err != nil {
		return fmt.Errorf("source %s: %w", s.label, err)
	}
	refs, err := lookupTables(readCtx, pool, s.cfg.Tables)
	if err != nil {
		return fmt.Errorf("source %s: %w", s.label, err)
	}
	s.keyCols = make(map[[2]string][]string, len(refs))
	for _, r := range refs {
		s.keyCols[[2]string{r.schema, r.name}] = r.key
	}
	if err := s.identify(readCtx, pool); err != nil {
		return err
	}
	s.warnUnrouted(readCtx, pool)
	// Leftovers of a failed session are released (or deleted) under that
	// session's claimer before this one claims anything: rows stay tracked
	// under one claimer at a time.
	if err := s.cleanup(readCtx, pool); err != nil {
		return err
	}
	s.sessions++
	s.claimer = fmt.Sprintf("%s/%d", s.instance, s.sessions)

	var dl dispatch.DeadLetter
	if s.cfg.NewDeadLetter != nil {
		if dl, err = s.cfg.NewDeadLetter(readCtx, pool); err != nil {
			return &errs.Fatal{Err: fmt.Errorf("source %s: %w", s.label, err)}
		}
	}
	disp := dispatch.New(dispatch.Config{DeadLetter: dl, Logger: s.cfg.Logger, OnRetry: s.cfg.Observe.Retry})
	for _, t := range s.cfg.Tables {
		disp.Add(t.Schema, t.Table, t.Route)
	}
	disp.Start(ctx)
	s.pool.Store(pool)
	defer s.pool.Store(nil)
	s.cfg.Logger.Info("pgcdc: consuming trigger events", "source", s.cfg.Name, "table", pgident.Qualified(s.cfg.Schema, EventTable), "claimer", s.claimer)

	s.consumed = true
	s.cfg.Observe.SetState(observe.Streaming, nil)
	sessCtx, fail := context.WithCancelCause(readCtx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.deleter(sessCtx, fail, pool) }()
	go func() { defer wg.Done(); s.heartbeat(sessCtx, fail, pool) }()

	err = s.consume(sessCtx, pool, disp)
	if cause := context.Cause(sessCtx); err == nil || (cause != nil && !errors.Is(cause, context.Canceled)) {
		err = cause
	}

	disp.Halt() // queued events stay for the next session; only those in flight finish
	s.cfg.Logger.Info("pgcdc: trigger source stopping: waiting for the handlers in flight", "source", s.cfg.Name, "cause", err)
	stopCtx := ctx
	if ctx.Err() != nil {
		stopCtx = context.Background()
	}
	if disp.Stop(stopCtx) != nil {
		_ = disp.Stop(context.Background()) // ctx ended meanwhile: handlers are cancelled
	}
	fail(context.Canceled)
	wg.Wait()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if cerr := s.cleanup(cctx, pool); cerr != nil {
		s.cfg.Logger.Warn("pgcdc: could not release claims; they are released by the next session or expire", "source", s.cfg.Name, "error", cerr)
	}
	if readCtx.Err() != nil {
		return nil
	}
	return err
}

// identify learns the source identity that event ids derive from.
func (s *Source) identify(ctx context.Context, pool *pgxpool.Pool) error {
	var db string
	var oid uint32
	var enc string
	err := pool.QueryRow(ctx, `SELECT current_database(), to_regclass($1)::oid, current_setting('track_commit_timestamp')::bool,
			current_setting('server_encoding')`,
		pgident.Qualified(s.cfg.Schema, EventTable)).Scan(&db, &oid, &s.commitTS, &enc)
	if err != nil {
		return fmt.Errorf("source %s: reading source identity: %w", s.label, err)
	}
	var sysid string
	if err := pool.QueryRow(ctx, `SELECT system_identifier::text FROM pg_catalog.pg_control_system()`).Scan(&sysid); err != nil {
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			return fmt.Errorf("source %s: reading system identifier: %w", s.label, err)
		}
		s.cfg.Logger.Warn("pgcdc: cannot read the system identifier; event ids are unique per database and event table only", "source", s.cfg.Name, "error", err)
		sysid = "unknown"
	}
	// The row JSON is read as UTF-8 bytes, converted by the server. A
	// SQL_ASCII database has no encoding to convert from (its text may hold
	// any bytes): its bytes are read as they are, and validUTF8 replaces
	// what is not UTF-8.
	s.readEncoding = "UTF8"
	if enc == "SQL_ASCII" {
		s.readEncoding = "SQL_ASCII"
	}
	s.sourceID = sysid + "/" + db + "/trigger/" + strconv.FormatUint(uint64(oid), 10) + "/"
	return nil
}

// warnUnrouted logs the tables that still carry this schema's capture
// trigger but have no route in this source: their events stay in the event
// table until a source routes them again, the trigger is dropped or
// Teardown runs.
func (s *Source) warnUnrouted(ctx context.Context, pool *pgxpool.Pool) {
	schemas, names := s.tableArrays()
	rows, err := pool.Query(ctx, `SELECT DISTINCT format('%I.%I', n.nspname, c.relname)
		FROM pg_catalog.pg_trigger t
		JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid
		JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
		WHERE pn.nspname = $1 AND (p.proname = $4 OR p.proname LIKE $5)
			AND obj_description(p.oid, 'pg_proc') LIKE 'pgcdc %'
			AND (n.nspname, c.relname) NOT IN (SELECT * FROM unnest($2::text[], $3::text[]))`,
		s.cfg.Schema, schemas, names, Function, Function+`\_%`)
	if err != nil {
		return
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err == nil && len(tables) > 0 {
		s.cfg.Logger.Warn("pgcdc: tables are captured but not routed by this source; their events accumulate in the event table (drop their pgcdc trigger, route them, or run the teardown)",
			"source", s.cfg.Name, "tables", tables)
	}
}

// event is one claimed row of the event table.
type event struct {
	id            int64
	schema, table string
	action        string
	rowKey        int64
	old, new      []byte // row_to_json text; nil for SQL NULL
	context       []byte // the writer's context (pgcdc.SetTxContext); nil if none
	xid           string // xid8 as text
	commitTime    time.Time
}

// claimSQL claims up to $3 events (and about $6 bytes) of the routed
// tables ($1, $2) for claimer $4 for $5 milliseconds, in id order, skipping
// any event of a key
// that has an earlier event outside the batch (claimed by another
// instance, being claimed right now, or left out) unless that earlier
// event is validly claimed by this instance; a TRUNCATE event is skipped
// likewise while any earlier event of its table is, and so is every event
// of a table after a TRUNCATE that is skipped. See the package doc.
func (s *Source) claimSQL() string {
	t := pgident.Qualified(s.cfg.Schema, EventTable)
	when := "e.tx_time"
	if s.commitTS {
		when = "coalesce(pg_catalog.pg_xact_commit_timestamp(e.xid::xid), e.tx_time)"
	}
	return render(claimTmpl, map[string]string{"EventTable": t, "CommitTime": when})
}

// consume claims batches and hands their changes to the lanes until ctx
// ends or an error.
func (s *Source) consume(ctx context.Context, pool *pgxpool.Pool, disp *dispatch.Dispatcher) error {
	q := claimQuery{sql: s.claimSQL(), timeoutMs: s.cfg.ClaimTimeout.Milliseconds()}
	q.schemas, q.names = s.tableArrays()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		// Claim no more than two batches ahead of the handlers: the rest
		// stays available to other instances.
		s.mu.Lock()
		limit := min(s.cfg.BatchSize, 2*s.cfg.BatchSize-len(s.inflight))
		s.mu.Unlock()
		if limit <= 0 {
			select {
			case <-s.room:
				continue
			case <-ctx.Done():
				return nil
			}
		}
		more, err := s.claim(ctx, pool, disp, q, limit)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if more {
			if ctx.Err() != nil {
				return nil
			}
			continue // a full batch: claim again at once
		}
		timer.Reset(s.cfg.PollInterval)
		select {
		case <-timer.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// claimQuery is the claim statement and its fixed arguments.
type claimQuery struct {
	sql            string
	schemas, names []string // the routed tables
	timeoutMs      int64    // how long a claim holds
}

// claim claims one batch of at most limit events and dispatches it. It
// reports whether more events are probably waiting: some were claimed and
// the candidate scan was full.
func (s *Source) claim(ctx context.Context, pool *pgxpool.Pool, disp *dispatch.Dispatcher, q claimQuery, limit int) (bool, error) {
	// The claim commits when the statement ends, so it is not cancelled
	// with ctx: every claimed row is read and tracked, and released when
	// the session ends, instead of staying claimed until it expires.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimQueryTimeout)
	defer cancel()
	rows, err := pool.Query(qctx, q.sql, q.schemas, q.names, limit, s.claimer, q.timeoutMs, claimBytes, s.readEncoding)
	if err != nil {
		return false, fmt.Errorf("source %s: claiming events: %w", s.label, err)
	}
	var batch []*event
	var candN int64
	for rows.Next() {
		ev := &event{}
		if err = rows.Scan(&ev.id, &ev.schema, &ev.table, &ev.action, &ev.rowKey, &ev.old, &ev.new, &ev.xid, &ev.commitTime, &candN, &ev.context); err != nil {
			break
		}
		var badOld, badNew bool
		ev.old, badOld = validUTF8(ev.old)
		ev.new, badNew = validUTF8(ev.new)
		if badOld || badNew {
			s.cfg.Logger.Warn("pgcdc: a captured row holds bytes that are not valid UTF-8 (a SQL_ASCII database); they are delivered as U+FFFD",
				"source", s.cfg.Name, "table", pgident.Qualified(ev.schema, ev.table), "event_row", ev.id)
		}
		batch = append(batch, ev)
	}
	rows.Close()
	if err == nil {
		err = rows.Err()
	}
	// The claim may be committed even when reading the rows failed halfway:
	// what was read is tracked as ours, so it is released at the session's
	// end. What was not read expires; the session ends on this error, and
	// to later sessions (other claimer names) those rows hold back the
	// later events of their keys until then.
	s.mu.Lock()
	fresh := batch[:0]
	for _, ev := range batch {
		// A row of this session whose claim lapsed (a late heartbeat) and
		// was claimed again is already in its lane: do not hand it over twice.
		if _, dup := s.inflight[ev.id]; !dup {
			s.inflight[ev.id] = struct{}{}
			fresh = append(fresh, ev)
		}
	}
	more := len(batch) > 0 && candN >= int64(limit)
	batch = fresh
	s.mu.Unlock()
	if err != nil {
		return false, fmt.Errorf("source %s: claiming events: %w", s.label, err)
	}
	slices.SortFunc(batch, func(a, b *event) int { return cmp.Compare(a.id, b.id) })
	for _, ev := range batch {
		c := s.change(ev)
		table := ev.schema + "." + ev.table
		if ev.action == "TRUNCATE" {
			// A barrier: every earlier event handled before it, and (below)
			// no later event of its table before it.
			if !s.barrier(ctx, func() bool { return s.unresolvedBefore(ev.id) }) {
				return more, nil
			}
			s.mu.Lock()
			s.truncs[ev.id] = table
			s.mu.Unlock()
		} else if !s.barrier(ctx, func() bool { return s.truncateBefore(ev.id, table) }) {
			return more, nil
		}
		routed, err := disp.Send(ctx, c, func() error { return nil })
		if err != nil {
			return more, nil // ctx ended: the rest is released when the session ends
		}
		if !routed {
			c.Pos.Done() // not routed (cannot happen: the claim filters by table)
		}
	}
	return more, nil
}

// barrier waits until held reports false, checking again after each
// millisecond; held runs under s.mu. It reports false when ctx ended
// first.
func (s *Source) barrier(ctx context.Context, held func() bool) bool {
	for {
		s.mu.Lock()
		pending := held()
		s.mu.Unlock()
		if !pending {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(time.Millisecond):
		}
	}
}

// unresolvedBefore reports whether an event before id that this instance
// claimed is unresolved. Called with s.mu held.
func (s *Source) unresolvedBefore(id int64) bool {
	for other := range s.inflight {
		if other < id {
			return true
		}
	}
	return false
}

// truncateBefore reports whether a TRUNCATE of table before id that this
// instance claimed is unresolved. Called with s.mu held.
func (s *Source) truncateBefore(id int64, table string) bool {
	for other, t := range s.truncs {
		if other < id && t == table {
			return true
		}
	}
	return false
}

// rowRef resolves one event row: once its change is handled or
// dead-lettered, the row is deleted.
type rowRef struct {
	s  *Source
	id int64
}

// Done marks the row for deletion.
func (r rowRef) Done() { r.s.resolve(r.id) }

func (s *Source) resolve(id int64) {
	s.mu.Lock()
	delete(s.inflight, id)
	delete(s.truncs, id)
	s.resolved = append(s.resolved, id)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	select {
	case s.room <- struct{}{}:
	default:
	}
}

// change builds the change and its event JSON, shaped like the logical
// engine's (without "lsn").
func (s *Source) change(ev *event) *change.Change {
	x, _ := strconv.ParseUint(ev.xid, 10, 64)
	xid := uint32(x) // the 32-bit xid, without the epoch, as in the logical engine
	var buf [32]byte
	sum := md5.Sum(strconv.AppendInt(append(buf[:0], s.sourceID...), ev.id, 10))
	eventID := hex.EncodeToString(sum[:])

	b := make([]byte, 0, 192+len(ev.old)+len(ev.new)+len(ev.table)+len(ev.schema)+len(s.sourceJSON))
	b = change.AppendHead(b, eventID, rowjson.AppendString(nil, ev.table), ev.action)
	b = appendJSON(b, ev.old)
	b = change.AppendNew(b)
	b = appendJSON(b, ev.new)
	b = change.AppendSource(b, rowjson.AppendString(nil, ev.schema), s.sourceJSON)
	if ev.context != nil {
		b = change.AppendField(b, "context", change.ContextJSON(ev.context))
	}
	b = change.AppendTail(b, 0, xid, ev.commitTime) // no LSN in trigger mode
	return &change.Change{
		Source: s.cfg.Name, Schema: ev.schema, Table: ev.table, Action: ev.action,
		EventID: eventID, Message: b, PartKey: uint64(ev.rowKey), XID: xid, KeyColumns: s.keyCols[[2]string{ev.schema, ev.table}],
		CommitTime: ev.commitTime, Pos: rowRef{s: s, id: ev.id},
	}
}

func appendJSON(b, v []byte) []byte {
	if v == nil {
		return append(b, "null"...)
	}
	return append(b, v...)
}

// validUTF8 returns the row JSON with every byte that is not part of valid
// UTF-8 replaced by U+FFFD, and whether it had any. Only a SQL_ASCII
// database can hold such bytes (the server does not convert SQL_ASCII
// text); they can only sit inside JSON strings, so the JSON stays valid.
func validUTF8(v []byte) ([]byte, bool) {
	if utf8.Valid(v) {
		return v, false
	}
	out := make([]byte, 0, len(v)+16)
	for len(v) > 0 {
		r, size := utf8.DecodeRune(v)
		if r == utf8.RuneError && size <= 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
			v = v[1:]
			continue
		}
		out = append(out, v[:size]...)
		v = v[size:]
	}
	return out, true
}

// deleter deletes resolved rows in batches: each delete takes whatever was
// resolved while the previous one ran.
func (s *Source) deleter(ctx context.Context, fail context.CancelCauseFunc, pool *pgxpool.Pool) {
	for {
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		}
		if err := s.deleteResolved(ctx, pool); err != nil {
			if ctx.Err() == nil {
				fail(err)
			}
			return
		}
	}
}

func (s *Source) deleteResolved(ctx context.Context, pool *pgxpool.Pool) error {
	s.mu.Lock()
	ids := s.resolved
	s.resolved = nil
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	_, err := pool.Exec(ctx, `DELETE FROM `+pgident.Qualified(s.cfg.Schema, EventTable)+` WHERE id = ANY($1) AND claimed_by = $2`, ids, s.claimer)
	if err != nil {
		s.mu.Lock()
		s.resolved = append(s.resolved, ids...)
		s.mu.Unlock()
		return fmt.Errorf("source %s: deleting delivered events: %w", s.label, err)
	}
	return nil
}

// heartbeat renews the claims of this instance's unresolved and
// undeleted rows every ClaimTimeout/3.
func (s *Source) heartbeat(ctx context.Context, fail context.CancelCauseFunc, pool *pgxpool.Pool) {
	t := time.NewTicker(max(s.cfg.ClaimTimeout/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
		s.mu.Lock()
		ids := make([]int64, 0, len(s.inflight)+len(s.resolved))
		for id := range s.inflight {
			ids = append(ids, id)
		}
		ids = append(ids, s.resolved...)
		s.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		_, err := pool.Exec(ctx, `UPDATE `+pgident.Qualified(s.cfg.Schema, EventTable)+`
			SET claimed_until = now() + $3 * interval '1 millisecond' WHERE id = ANY($1) AND claimed_by = $2`,
			ids, s.claimer, s.cfg.ClaimTimeout.Milliseconds())
		if err != nil {
			if ctx.Err() == nil {
				fail(fmt.Errorf("source %s: renewing claims: %w", s.label, err))
			}
			return
		}
	}
}

// cleanup deletes the resolved rows and releases the claims of the
// unresolved ones, so other instances (or the next session) take them at
// once. It runs when no handler is running. What it cannot do stays
// recorded for the next session.
func (s *Source) cleanup(ctx context.Context, pool *pgxpool.Pool) error {
	if err := s.deleteResolved(ctx, pool); err != nil {
		return err
	}
	s.mu.Lock()
	ids := make([]int64, 0, len(s.inflight))
	for id := range s.inflight {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	_, err := pool.Exec(ctx, `UPDATE `+pgident.Qualified(s.cfg.Schema, EventTable)+`
		SET claimed_until = NULL, claimed_by = NULL WHERE id = ANY($1) AND claimed_by = $2`, ids, s.claimer)
	if err != nil {
		return fmt.Errorf("source %s: releasing claims: %w", s.label, err)
	}
	s.mu.Lock()
	for _, id := range ids {
		delete(s.inflight, id)
		delete(s.truncs, id)
	}
	s.mu.Unlock()
	return nil
}
