package logical

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/txbuf"
)

// With pgoutput protocol 2 and streaming on, PostgreSQL sends a large
// transaction while it is still in progress, in segments (Stream Start …
// Stream Stop), and ends it with Stream Commit or Stream Abort. Nothing may
// reach a handler before the commit, so each change is rendered as it
// arrives (its row JSON needs the relation as it is then) and kept in a
// txbuf (memory up to a budget, then a temporary file); the commit's fields
// and the event_id are added at Stream Commit. The server then never spills
// the transaction to its own disk. A change's position in the transaction,
// which the event_id is derived from, counts exactly the changes the server
// would have sent unstreamed: those of aborted subtransactions are dropped
// before numbering.

// streamedTxn is one in-progress streamed transaction.
type streamedTxn struct {
	buf  *txbuf.Buffer
	subs map[uint32]txbuf.Pos // where each subtransaction's first change is
	ctx  []byte               // the writer's context (see decoder.txContext)
}

// Record kinds in a streamed transaction's buffer.
const (
	recSkip   = 0 // a change of an unrouted table: counts for the position only
	recChange = 1
)

// record renders a change of a streamed transaction for its buffer.
func (d *decoder) record(m *rowMsg) ([]byte, error) {
	r, err := d.rel(m.relID)
	if err != nil {
		return nil, err
	}
	if !d.cfg.Routed(r.routeKey, false) {
		return []byte{recSkip}, nil
	}
	return d.appendRecord(r, partKey(r, m.key()), m), nil
}

func (d *decoder) appendRecord(r *relation, part uint64, m *rowMsg) []byte {
	b := make([]byte, 0, messageSize(r, m.oldT, m.newT))
	b = append(b, recChange)
	b = binary.BigEndian.AppendUint64(b, part)
	for _, s := range []string{r.routeKey, r.schema, r.name, m.action} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return d.appendBody(b, r, m)
}

// truncateRecords renders a streamed TRUNCATE.
func (d *decoder) truncateRecords(m *pglogrepl.TruncateMessage) [][]byte {
	out := make([][]byte, 0, len(m.RelationIDs))
	for _, id := range m.RelationIDs {
		r, ok := d.rels[id]
		if !ok || !d.cfg.Routed(r.routeKey, true) {
			out = append(out, []byte{recSkip})
			continue
		}
		out = append(out, d.appendRecord(r, 0, &rowMsg{action: change.Truncate}))
	}
	return out
}

var errBadRecord = errors.New("corrupt streamed-transaction record")

// replay turns one buffered record into a change, at commit. It returns nil
// for a skipped change.
func (d *decoder) replay(rec []byte) (*change.Change, error) {
	d.seq++
	if len(rec) == 0 || rec[0] == recSkip {
		return nil, nil
	}
	if len(rec) < 9 {
		return nil, errBadRecord
	}
	c := &change.Change{Source: d.cfg.Source, LSN: uint64(d.commitLSN), XID: d.xid, CommitTime: d.commitTime}
	c.PartKey = binary.BigEndian.Uint64(rec[1:9])
	rest := rec[9:]
	var fields [4]string
	for i := range fields {
		if len(rest) < 2 {
			return nil, errBadRecord
		}
		n := int(binary.BigEndian.Uint16(rest))
		if len(rest) < 2+n {
			return nil, errBadRecord
		}
		fields[i] = string(rest[2 : 2+n])
		rest = rest[2+n:]
	}
	c.RouteKey, c.Schema, c.Table, c.Action = fields[0], fields[1], fields[2], fields[3]
	c.KeyColumns = d.keyCols[c.RouteKey]
	c.EventID = d.eventID()
	b := make([]byte, 0, len(rest)+160)
	b = append(b, `{"event_id":"`...)
	b = append(b, c.EventID...)
	b = append(b, '"')
	b = append(b, rest...)
	c.Message = d.appendTail(b)
	return c, nil
}

// streamMessage handles the protocol-2 messages of streamed transactions.
// It reports false for any other message.
func (st *stream) streamMessage(ctx context.Context, msg pglogrepl.Message) (bool, error) {
	switch m := msg.(type) {
	case *pglogrepl.StreamStartMessageV2:
		st.inStream, st.streamXid = true, m.Xid
		if st.streams == nil {
			st.streams = map[uint32]*streamedTxn{}
		}
		if st.streams[m.Xid] == nil {
			st.streams[m.Xid] = &streamedTxn{buf: txbuf.New(st.s.cfg.TxBufferBytes, ""), subs: map[uint32]txbuf.Pos{}}
		}
	case *pglogrepl.StreamStopMessageV2:
		st.inStream = false
	case *pglogrepl.StreamAbortMessageV2:
		t := st.streams[m.Xid]
		if t == nil {
			return true, nil
		}
		if m.SubXid == m.Xid || m.SubXid == 0 {
			delete(st.streams, m.Xid)
			return true, t.buf.Close()
		}
		if pos, ok := t.subs[m.SubXid]; ok {
			if err := t.buf.TruncateTo(pos); err != nil {
				return true, err
			}
			for sub, p := range t.subs { // later subtransactions went with it
				if p.After(pos) || sub == m.SubXid {
					delete(t.subs, sub)
				}
			}
		}
	case *pglogrepl.StreamCommitMessageV2:
		return true, st.streamCommit(ctx, m)
	default:
		return false, nil
	}
	return true, nil
}

// streamed buffers one change of the streamed transaction in progress.
func (st *stream) streamed(xid uint32, recs ...[]byte) error {
	t := st.streams[st.streamXid]
	if t == nil {
		return fmt.Errorf("source %s: streamed change outside a stream", st.s.label())
	}
	if xid != st.streamXid && xid != 0 {
		if _, seen := t.subs[xid]; !seen {
			t.subs[xid] = t.buf.Mark()
		}
	}
	for _, rec := range recs {
		if err := t.buf.Add(rec); err != nil {
			return err
		}
	}
	return nil
}

// streamCommit delivers a streamed transaction's changes, numbered as the
// unstreamed transaction's would be.
func (st *stream) streamCommit(ctx context.Context, m *pglogrepl.StreamCommitMessageV2) error {
	t := st.streams[m.Xid]
	delete(st.streams, m.Xid)
	st.txn = st.tracker.Open()
	st.dec.commitLSN, st.dec.xid, st.dec.commitTime, st.dec.seq = m.CommitLSN, m.Xid, m.CommitTime, 0
	if t != nil {
		defer t.buf.Close()
		err := t.buf.Each(func(rec []byte) error {
			c, err := st.dec.replay(rec)
			if err != nil || c == nil {
				return err
			}
			return st.handleChange(ctx, c)
		})
		if err != nil {
			return fmt.Errorf("source %s: replaying streamed transaction %d: %w", st.s.label(), m.Xid, err)
		}
	}
	return st.commit(ctx, m.TransactionEndLSN)
}
