package logical

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/rowjson"
	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// relation is the decoder's view of one table, rebuilt from every Relation
// message, so columns added, dropped or retyped mid-stream are followed.
type relation struct {
	schema, name string
	tableJSON    []byte // "name" as a JSON string
	schemaJSON   []byte
	cols         []column
	partIdx      []int // primary key columns: the partition key
	routeKey     string
	omitted      []string // generated columns not published (omitted_generated)
	keyNames     []string // primary key columns, in key order (Change.KeyColumns)
}

type column struct {
	name   string
	key    []byte // "name": ready to append
	typ    uint32
	ident  bool // part of the replica identity key
	warned bool // invalid UTF-8 reported (SQL_ASCII databases)
}

// decoder turns pgoutput row messages into events. It is pure: bytes and
// its relation cache in, changes out. What it needs from outside (which
// tables are routed, what the catalog says of a relation) comes through
// decoderConfig, so it is tested without a connection or a dispatcher.
type decoder struct {
	cfg  decoderConfig
	rels map[uint32]*relation

	commitLSN  pglogrepl.LSN
	xid        uint32
	commitTime time.Time
	seq        int
	sourceJSON []byte
	// keyCols maps a route key to its table's primary key columns, in key
	// order (from the relation messages seen).
	keyCols map[string][]string
	// txContext is the writer's context of the transaction being decoded
	// (a "pgcdc" logical message, see SetTxContext), as JSON; nil if none.
	txContext []byte
}

// decoderConfig is what a decoder is given by its source.
type decoderConfig struct {
	Source   string // source name, in every event
	Label    string // source label for errors
	SourceID string // system identifier / database: part of every event_id
	Types    *rowjson.Types
	// Routed reports whether changes of the table under key ("schema.table"
	// as routed) are wanted; with truncate, whether TRUNCATE is.
	Routed func(key string, truncate bool) bool
	// Describe learns what the catalog says of an announced relation: it
	// resolves the column types into Types and returns the primary key and
	// generated columns. It is the decoder's only I/O.
	Describe func(ctx context.Context, m *pglogrepl.RelationMessage) (relationMeta, error)
	// RouteKeys maps the OIDs of routed tables to their route key, so a
	// table renamed mid-stream keeps its route.
	RouteKeys map[uint32]string
	SQLASCII  bool // text may hold bytes that are not UTF-8
	Logger    *slog.Logger
}

// relationMeta is what the catalog says of a relation.
type relationMeta struct {
	PK        []string // primary key columns
	Generated []string // generated columns
}

func newDecoder(cfg decoderConfig) *decoder {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &decoder{cfg: cfg, rels: map[uint32]*relation{}, keyCols: map[string][]string{}, sourceJSON: rowjson.AppendString(nil, cfg.Source)}
}

func (d *decoder) begin(m *pglogrepl.BeginMessage) {
	d.commitLSN, d.xid, d.commitTime, d.seq = m.FinalLSN, m.Xid, m.CommitTime, 0
	d.txContext = nil
}

// ContextPrefix is the prefix of the transactional logical messages that
// carry a writer's context (pg_logical_emit_message(true, 'pgcdc', json)).
const ContextPrefix = "pgcdc"

// relation learns what the catalog says of an announced relation, then
// caches it.
func (d *decoder) relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	meta, err := d.cfg.Describe(ctx, m)
	if err != nil {
		return err
	}
	d.setRelation(m, meta.PK)
	d.rels[m.RelationID].omitGenerated(meta.Generated, m)
	return nil
}

// describe is the catalog side of a decoder (decoderConfig.Describe) for a
// source: column types, primary key and generated columns of a relation.
func (s *Source) describe(pool *pgxpool.Pool) func(context.Context, *pglogrepl.RelationMessage) (relationMeta, error) {
	return func(ctx context.Context, m *pglogrepl.RelationMessage) (relationMeta, error) {
		var meta relationMeta
		table := m.Namespace + "." + m.RelationName
		oids := make([]uint32, len(m.Columns))
		for i, c := range m.Columns {
			oids[i] = c.DataType
		}
		s.types.Forget(oids...) // a type may have changed (ALTER TYPE): learn it again
		if err := s.types.Resolve(ctx, pool, oids...); errors.Is(err, rowjson.ErrUnknownType) {
			// The type was dropped (or altered away) after the change was
			// written: pgoutput still sends the value's text, so deliver it
			// as a JSON string rather than stop the stream.
			for _, o := range s.types.AssumeText(oids...) {
				for _, c := range m.Columns {
					if c.DataType == o {
						s.cfg.Logger.Warn("pgcdc: column type no longer exists; delivering its values as JSON strings of their text",
							"source", s.cfg.Name, "table", table, "column", c.Name, "type_oid", o)
					}
				}
			}
		} else if err != nil {
			return meta, fmt.Errorf("source %s: resolving column types of %s: %w", s.label(), table, err)
		}
		var err error
		if meta.PK, err = queryNames(ctx, pool, `SELECT a.attname FROM pg_index i
			JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
			WHERE i.indrelid = $1 AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)`, m.RelationID); err != nil {
			return meta, fmt.Errorf("source %s: reading primary key of %s: %w", s.label(), table, err)
		}
		// PostgreSQL publishes generated columns only from version 18 on
		// (publish_generated_columns): name those left out in each event.
		if meta.Generated, err = queryNames(ctx, pool, `SELECT attname FROM pg_attribute
			WHERE attrelid = $1 AND attgenerated <> '' AND attnum > 0 AND NOT attisdropped ORDER BY attnum`, m.RelationID); err != nil {
			return meta, fmt.Errorf("source %s: reading generated columns of %s: %w", s.label(), table, err)
		}
		if err := s.checkColumnList(ctx, pool, m); err != nil {
			return meta, err
		}
		return meta, nil
	}
}

// checkColumnList reports, loudly, a column added to a table with a
// publication column list (WithoutColumns) after pgcdc set that list: the
// server does not send it, so the events lack it until a restart brings
// the list up to date. It is not left to pass silently.
func (s *Source) checkColumnList(ctx context.Context, pool *pgxpool.Pool, m *pglogrepl.RelationMessage) error {
	var t *Table
	for i := range s.live {
		if ti, ok := s.tables[s.live[i].Schema+"."+s.live[i].Table]; ok && ti.oid == m.RelationID && ti.columns != "" {
			t = &s.live[i]
		}
	}
	if t == nil {
		return nil
	}
	live, err := queryNames(ctx, pool, `SELECT attname FROM pg_attribute
		WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum`, m.RelationID)
	if err != nil {
		return fmt.Errorf("source %s: reading the columns of %s.%s: %w", s.label(), m.Namespace, m.RelationName, err)
	}
	for _, name := range live {
		sent := slices.ContainsFunc(m.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == name })
		wanted := slices.Contains(t.Columns, name) || (len(t.Columns) == 0 && !slices.Contains(t.Exclude, name))
		if wanted && !sent {
			err := fmt.Errorf("source %s: column %q of %s.%s was added after pgcdc set the publication's column list, so the server does not send it: its values are missing from the events until pgcdc restarts (which updates the list)",
				s.label(), name, m.Namespace, m.RelationName)
			s.cfg.Logger.Error("pgcdc: column not published", "source", s.cfg.Name, "error", err)
			if s.cfg.OnError != nil {
				s.cfg.OnError(err)
			}
		}
	}
	return nil
}

// queryNames runs a query of one text column for one relation.
func queryNames(ctx context.Context, pool *pgxpool.Pool, sql string, relID uint32) ([]string, error) {
	rows, err := pool.Query(ctx, sql, relID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// omitGenerated records the generated columns the Relation message lacks:
// each event of the relation lists them in "omitted_generated".
func (r *relation) omitGenerated(gen []string, m *pglogrepl.RelationMessage) {
	r.omitted = nil
	for _, g := range gen {
		if !slices.ContainsFunc(m.Columns, func(c *pglogrepl.RelationMessageColumn) bool { return c.Name == g }) {
			r.omitted = append(r.omitted, g)
		}
	}
}

// setRelation caches a relation with its primary key column names.
func (d *decoder) setRelation(m *pglogrepl.RelationMessage, pk []string) {
	r := &relation{
		schema: m.Namespace, name: m.RelationName,
		tableJSON:  rowjson.AppendString(nil, m.RelationName),
		schemaJSON: rowjson.AppendString(nil, m.Namespace),
		cols:       make([]column, len(m.Columns)),
	}
	for i, c := range m.Columns {
		key := append(rowjson.AppendString(nil, c.Name), ':')
		r.cols[i] = column{name: c.Name, key: key, typ: c.DataType, ident: c.Flags&1 != 0}
	}
	for i, c := range r.cols {
		for _, name := range pk {
			if c.name == name {
				r.partIdx = append(r.partIdx, i)
			}
		}
	}
	// Routes name tables, but the stream names relations by OID: a routed
	// table renamed mid-stream keeps its route instead of being skipped.
	r.routeKey = r.schema + "." + r.name
	if key, ok := d.cfg.RouteKeys[m.RelationID]; ok && key != r.routeKey {
		d.cfg.Logger.Warn("pgcdc: routed table was renamed; its changes keep going to its route, but update the route before the next restart",
			"source", d.cfg.Source, "route_table", key, "now", r.routeKey)
		r.routeKey = key
	}
	d.rels[m.RelationID] = r
	if len(pk) > 0 {
		r.keyNames = slices.Clone(pk)
		d.keyCols[r.routeKey] = r.keyNames
	} else {
		delete(d.keyCols, r.routeKey)
	}
}

// change builds the event of one row message; nil when its table is not
// routed (the message is then skipped and counts as resolved).
func (d *decoder) change(m *rowMsg) (*change.Change, error) {
	d.seq++
	r, err := d.rel(m.relID)
	if err != nil || !d.cfg.Routed(r.routeKey, false) {
		return nil, err
	}
	c := &change.Change{
		Source: d.cfg.Source, Schema: r.schema, Table: r.name, RouteKey: r.routeKey, Action: m.action,
		LSN: uint64(d.commitLSN), XID: d.xid, CommitTime: d.commitTime,
	}
	c.EventID = d.eventID()
	c.PartKey = partKey(r, m.key())
	c.KeyColumns = r.keyNames
	c.Message = d.message(r, c, m)
	return c, nil
}

// rel finds the relation of a row message.
func (d *decoder) rel(relID uint32) (*relation, error) {
	r, ok := d.rels[relID]
	if !ok {
		return nil, fmt.Errorf("source %s: change for relation %d before its Relation message", d.cfg.Label, relID)
	}
	return r, nil
}

// truncate builds one TRUNCATE event per truncated table whose route asked
// for them.
func (d *decoder) truncate(m *pglogrepl.TruncateMessage) []*change.Change {
	var out []*change.Change
	for _, id := range m.RelationIDs {
		d.seq++
		r, ok := d.rels[id]
		if !ok || !d.cfg.Routed(r.routeKey, true) {
			continue
		}
		c := &change.Change{
			Source: d.cfg.Source, Schema: r.schema, Table: r.name, RouteKey: r.routeKey, Action: change.Truncate,
			LSN: uint64(d.commitLSN), XID: d.xid, CommitTime: d.commitTime,
		}
		c.EventID = d.eventID()
		c.Message = d.message(r, c, &rowMsg{action: change.Truncate})
		out = append(out, c)
	}
	return out
}

// transaction builds the change that carries a whole transaction's grouped
// events to the transaction route. Its event_id is derived like the
// changes' own, from the commit LSN and a position no change can have.
func (d *decoder) transaction(b *txbuf.Buffer) *change.Change {
	c := &change.Change{
		Source: d.cfg.Source, Action: change.Transaction, RouteKey: dispatch.TxKey,
		LSN: uint64(d.commitLSN), XID: d.xid, CommitTime: d.commitTime, Tx: b,
	}
	seq := d.seq
	d.seq = 0 // position 0: before every change of the transaction
	c.EventID = d.eventID()
	d.seq = seq
	return c
}

// eventID is md5(source identity / commit LSN / position in the transaction):
// the same for the same change however often it is delivered.
func (d *decoder) eventID() string {
	var buf [96]byte
	b := append(buf[:0], d.cfg.SourceID...)
	b = append(b, '/')
	b = strconv.AppendUint(b, uint64(d.commitLSN), 16)
	b = append(b, '/')
	b = strconv.AppendInt(b, int64(d.seq), 10)
	sum := md5.Sum(b)
	return hex.EncodeToString(sum[:])
}

func partKey(r *relation, t *pglogrepl.TupleData) uint64 {
	if len(r.partIdx) == 0 || t == nil {
		return 0 // no key: one lane keeps the table's order
	}
	// FNV-1a over the key values, each followed by a zero byte.
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for _, i := range r.partIdx {
		if i < len(t.Columns) {
			for _, c := range t.Columns[i].Data {
				h = (h ^ uint64(c)) * prime
			}
		}
		h *= prime // ^ 0
	}
	return h
}

func (d *decoder) message(r *relation, c *change.Change, m *rowMsg) []byte {
	b := make([]byte, 0, messageSize(r, m.oldT, m.newT))
	b = change.AppendID(b, c.EventID)
	b = d.appendBody(b, r, m)
	return d.appendTail(b)
}

// appendBody writes the part of an event that does not depend on the
// commit: from "table" to "source" and the extra fields. A streamed
// transaction keeps only this until it commits.
func (d *decoder) appendBody(b []byte, r *relation, m *rowMsg) []byte {
	var unchanged []string
	b = change.AppendBodyHead(b, r.tableJSON, m.action)
	b = d.appendRow(b, r, m.oldT, nil, m.oldIsKey, nil)
	b = change.AppendNew(b)
	b = d.appendRow(b, r, m.newT, m.oldT, false, &unchanged)
	b = change.AppendSource(b, r.schemaJSON, d.sourceJSON)
	b = change.AppendNames(b, "unchanged_toast", unchanged)
	b = change.AppendNames(b, "omitted_generated", r.omitted)
	if d.txContext != nil {
		b = change.AppendField(b, "context", d.txContext)
	}
	return b
}

// appendTail writes the commit's fields and closes the event.
func (d *decoder) appendTail(b []byte) []byte {
	return change.AppendTail(b, uint64(d.commitLSN), d.xid, d.commitTime)
}

// messageSize guesses the event's length, so building it rarely grows the
// buffer: the fixed fields, column names and values with a margin for
// escaping and array punctuation.
func messageSize(r *relation, tuples ...*pglogrepl.TupleData) int {
	n := 256 + len(r.tableJSON) + len(r.schemaJSON)
	for _, t := range tuples {
		if t == nil {
			continue
		}
		for i, c := range t.Columns {
			n += len(c.Data) + len(c.Data)/8 + 8
			if i < len(r.cols) {
				n += len(r.cols[i].key)
			}
		}
	}
	return n
}

// appendRow renders a tuple as a JSON object (null when absent). keyOnly
// limits it to replica identity columns (an old key tuple). An unchanged
// TOASTed value is taken from fallback (the old row) when it has it;
// otherwise the column is left out and its name added to unchanged.
func (d *decoder) appendRow(b []byte, r *relation, t, fallback *pglogrepl.TupleData, keyOnly bool, unchanged *[]string) []byte {
	if t == nil {
		return append(b, "null"...)
	}
	b = append(b, '{')
	first := true
	for i, col := range t.Columns {
		if i >= len(r.cols) {
			break
		}
		rc := &r.cols[i]
		if keyOnly && !rc.ident {
			continue
		}
		kind, data := col.DataType, col.Data
		if kind == pglogrepl.TupleDataTypeToast {
			if fallback != nil && i < len(fallback.Columns) && fallback.Columns[i].DataType == pglogrepl.TupleDataTypeText {
				kind, data = pglogrepl.TupleDataTypeText, fallback.Columns[i].Data
			} else {
				if unchanged != nil {
					*unchanged = append(*unchanged, rc.name)
				}
				continue
			}
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, rc.key...)
		switch kind {
		case pglogrepl.TupleDataTypeNull:
			b = append(b, "null"...)
		case pglogrepl.TupleDataTypeText:
			if d.cfg.SQLASCII && !utf8.Valid(data) {
				data = d.invalidUTF8(r, rc, data)
			}
			out, err := d.cfg.Types.AppendValue(b, rc.typ, data)
			if err != nil {
				d.cfg.Logger.Error("pgcdc: cannot render value; delivering its text as a string",
					"table", r.schema+"."+r.name, "column", rc.name, "type_oid", rc.typ, "error", err)
				out = rowjson.AppendString(b, string(data))
			}
			b = out
		default: // binary: not requested; render as text to stay lossless
			b = rowjson.AppendString(b, string(data))
		}
	}
	return append(b, '}')
}

// invalidUTF8 replaces the bytes of a SQL_ASCII database's value that are
// not UTF-8 with U+FFFD (events are UTF-8 JSON), and says so once per
// column.
func (d *decoder) invalidUTF8(r *relation, rc *column, data []byte) []byte {
	if !rc.warned {
		rc.warned = true
		d.cfg.Logger.Warn("pgcdc: SQL_ASCII database holds a value that is not UTF-8; its invalid bytes are delivered as U+FFFD",
			"source", d.cfg.Source, "table", r.schema+"."+r.name, "column", rc.name, "lsn", d.commitLSN)
	}
	return []byte(strings.ToValidUTF8(string(data), "\uFFFD"))
}

// parse decodes one pgoutput message. pglogrepl panics on some malformed
// input (an empty message, short tuples); that becomes an error here.
func parse(data []byte, inStream bool) (m pglogrepl.Message, err error) {
	if len(data) == 0 {
		return nil, fmt.Errorf("empty pgoutput message")
	}
	defer func() {
		if v := recover(); v != nil {
			m, err = nil, fmt.Errorf("malformed pgoutput message (type %q, %d bytes): %v", data[0], len(data), v)
		}
	}()
	if data[0] == 'T' {
		// pglogrepl sizes the relation list by the count the message gives.
		off := 1
		if inStream {
			off += 4
		}
		if len(data) < off+5 || uint64(len(data)-off-5) < 4*uint64(binary.BigEndian.Uint32(data[off:])) {
			return nil, fmt.Errorf("malformed pgoutput truncate message: %d bytes", len(data))
		}
	}
	return pglogrepl.ParseV2(data, inStream)
}
