package logical

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/jackc/pglogrepl"

	"github.com/pgcdc/pgcdc/internal/change"
)

// rowMsg is one pgoutput Insert, Update or Delete message. The decoder
// parses these itself, into tuples reused from one message to the next, so
// the hot path allocates nothing per column: the values point into the
// received message and are valid only until the next one is read. (Every
// other message goes through pglogrepl.)
type rowMsg struct {
	action   string // INSERT, UPDATE, DELETE
	relID    uint32
	xid      uint32               // inside a stream: the (sub)transaction id; else 0
	oldT     *pglogrepl.TupleData // nil when absent
	newT     *pglogrepl.TupleData // nil when absent
	oldIsKey bool                 // oldT holds only the replica identity key

	old, new tuple // storage behind oldT and newT
}

// key is the tuple that identifies the row: the new one, or the old one
// of a DELETE.
func (m *rowMsg) key() *pglogrepl.TupleData {
	if m.newT != nil {
		return m.newT
	}
	return m.oldT
}

// tuple is the reusable storage of one pgoutput TupleData.
type tuple struct {
	t    pglogrepl.TupleData
	cols []pglogrepl.TupleDataColumn
	ptrs []*pglogrepl.TupleDataColumn
}

// isRowMsg reports whether a pgoutput message is an Insert, Update or
// Delete.
func isRowMsg(data []byte) bool {
	return len(data) > 0 && (data[0] == 'I' || data[0] == 'U' || data[0] == 'D')
}

// parse reads an Insert, Update or Delete message into m. Inside a stream
// (protocol 2) each carries the transaction id after its type byte.
func (m *rowMsg) parse(data []byte, inStream bool) error {
	r := reader{b: data}
	typ := r.u8()
	m.xid = 0
	if inStream {
		m.xid = r.u32()
	}
	m.relID = r.u32()
	m.oldT, m.newT, m.oldIsKey = nil, nil, false
	switch typ {
	case 'I':
		m.action = change.Insert
		if k := r.u8(); k != 'N' && r.err == nil {
			return fmt.Errorf("insert message: tuple marker %q, want 'N'", k)
		}
		m.newT = m.new.read(&r)
	case 'U':
		m.action = change.Update
		k := r.u8()
		if k == 'K' || k == 'O' {
			m.oldIsKey = k == 'K'
			m.oldT = m.old.read(&r)
			k = r.u8()
		}
		if k != 'N' && r.err == nil {
			return fmt.Errorf("update message: tuple marker %q, want 'N'", k)
		}
		m.newT = m.new.read(&r)
	case 'D':
		m.action = change.Delete
		k := r.u8()
		if k != 'K' && k != 'O' && r.err == nil {
			return fmt.Errorf("delete message: tuple marker %q, want 'K' or 'O'", k)
		}
		m.oldIsKey = k == 'K'
		m.oldT = m.old.read(&r)
	default:
		return fmt.Errorf("message type %q is not a row change", typ)
	}
	if r.err != nil {
		return fmt.Errorf("%s message of %d bytes: %w", m.action, len(data), r.err)
	}
	return nil
}

// read parses a TupleData into t's storage.
func (t *tuple) read(r *reader) *pglogrepl.TupleData {
	n := int(r.u16())
	if r.err != nil {
		return nil
	}
	if cap(t.cols) < n {
		t.cols = make([]pglogrepl.TupleDataColumn, n)
		t.ptrs = make([]*pglogrepl.TupleDataColumn, n)
		for i := range t.cols {
			t.ptrs[i] = &t.cols[i]
		}
	}
	t.cols, t.ptrs = t.cols[:n], t.ptrs[:n]
	for i := range t.cols {
		c := &t.cols[i]
		c.DataType = r.u8()
		c.Length, c.Data = 0, nil
		switch c.DataType {
		case pglogrepl.TupleDataTypeNull, pglogrepl.TupleDataTypeToast:
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			c.Length = r.u32()
			c.Data = r.bytes(int(c.Length))
		default:
			if r.err == nil {
				r.err = fmt.Errorf("column %d: unknown kind %q", i+1, c.DataType)
			}
		}
		if r.err != nil {
			return nil
		}
	}
	t.t = pglogrepl.TupleData{ColumnNum: uint16(n), Columns: t.ptrs}
	return &t.t
}

// reader reads big-endian fields; past the end it records an error and
// returns zeros.
type reader struct {
	b   []byte
	err error
}

// errTruncated is the error of a message shorter than its fields say.
var errTruncated = errors.New("truncated message")

func (r *reader) short(n int) bool {
	if r.err == nil && len(r.b) < n {
		r.err = fmt.Errorf("%w: %d more bytes needed, %d left", errTruncated, n, len(r.b))
	}
	return r.err != nil
}

func (r *reader) u8() byte {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// bytes returns the next n bytes (nil past the end, or for n = 0).
func (r *reader) bytes(n int) []byte {
	if n < 0 || r.short(n) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}
