package logical

import (
	"encoding/binary"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/rowjson"
)

// msg builds pgoutput messages byte by byte.
type msg []byte

func (m msg) u8(b byte) msg      { return append(m, b) }
func (m msg) u16(v uint16) msg   { return binary.BigEndian.AppendUint16(m, v) }
func (m msg) u32(v uint32) msg   { return binary.BigEndian.AppendUint32(m, v) }
func (m msg) str(s string) msg   { return append(append(m, s...), 0) }
func (m msg) text(s string) msg  { return append(m.u8('t').u32(uint32(len(s))), s...) }
func (m msg) null() msg          { return m.u8('n') }
func (m msg) unchanged() msg     { return m.u8('u') }
func (m msg) tuple(n uint16) msg { return m.u16(n) }

// relationMsg: items(id int4 key, body text, n numeric) in public.
func relationMsg() []byte {
	m := msg{}.u8('R').u32(16400).str("public").str("items").u8('f').u16(3)
	m = m.u8(1).str("id").u32(23).u32(0xFFFFFFFF)
	m = m.u8(0).str("body").u32(25).u32(0xFFFFFFFF)
	return m.u8(0).str("n").u32(1700).u32(0xFFFFFFFF)
}

func testDecoder(t testing.TB) *decoder {
	d := newDecoder(decoderConfig{
		Source: "src", Label: `"src"`, SourceID: "7000000000000000001/db", Types: rowjson.NewTypes(),
		Routed: func(key string, _ bool) bool { return key == "public.items" },
	})
	rm, err := pglogrepl.Parse(relationMsg())
	if err != nil {
		t.Fatal(err)
	}
	rm, _ = unwrapV2(rm)
	d.setRelation(rm.(*pglogrepl.RelationMessage), []string{"id"})
	d.begin(&pglogrepl.BeginMessage{FinalLSN: 0x16B3748, Xid: 42, CommitTime: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)})
	return d
}

func decode(t testing.TB, d *decoder, b []byte) map[string]json.RawMessage {
	t.Helper()
	var m rowMsg
	if err := m.parse(b, false); err != nil {
		t.Fatal(err)
	}
	c, err := d.change(&m)
	if err != nil || c == nil {
		t.Fatalf("change = %v, %v", c, err)
	}
	var out map[string]json.RawMessage
	if err := json.Unmarshal(c.Message, &out); err != nil {
		t.Fatalf("message is not JSON: %v: %s", err, c.Message)
	}
	out["_part"], _ = json.Marshal(c.PartKey)
	return out
}

func TestEventIDStableAndDistinct(t *testing.T) {
	ins := msg{}.u8('I').u32(16400).u8('N').tuple(3).text("1").text("x").text("1.50")
	a, b := testDecoder(t), testDecoder(t)
	e1, e2 := decode(t, a, ins), decode(t, b, ins)
	if string(e1["event_id"]) != string(e2["event_id"]) {
		t.Fatal("the same change got two event_ids")
	}
	e3 := decode(t, a, ins) // next position in the transaction
	if string(e1["event_id"]) == string(e3["event_id"]) {
		t.Fatal("two changes share an event_id")
	}
	if got := string(e1["data"]); got != `{"old":null,"new":{"id":1,"body":"x","n":1.50}}` {
		t.Fatalf("data = %s", got)
	}
	if string(e1["lsn"]) != `"0/16B3748"` || string(e1["xid"]) != "42" || string(e1["source"]) != `"src"` {
		t.Fatalf("metadata = %s %s %s", e1["lsn"], e1["xid"], e1["source"])
	}
}

func TestUnchangedToast(t *testing.T) {
	d := testDecoder(t)
	// FULL identity: the old row has the value, so new is complete.
	upd := msg{}.u8('U').u32(16400).u8('O').tuple(3).text("1").text("big").text("1").
		u8('N').tuple(3).text("1").unchanged().text("2")
	ev := decode(t, d, upd)
	if got := string(ev["data"]); got != `{"old":{"id":1,"body":"big","n":1},"new":{"id":1,"body":"big","n":2}}` {
		t.Fatalf("FULL: data = %s", got)
	}
	if _, ok := ev["unchanged_toast"]; ok {
		t.Fatal("FULL: unchanged_toast present")
	}
	// DEFAULT identity: no old row; the column is left out and listed.
	upd = msg{}.u8('U').u32(16400).u8('N').tuple(3).text("1").unchanged().text("3")
	ev = decode(t, d, upd)
	if got := string(ev["data"]); got != `{"old":null,"new":{"id":1,"n":3}}` || string(ev["unchanged_toast"]) != `["body"]` {
		t.Fatalf("DEFAULT: data = %s, unchanged_toast = %s", got, ev["unchanged_toast"])
	}
	// DELETE with a key tuple: only key columns in old.
	del := msg{}.u8('D').u32(16400).u8('K').tuple(3).text("1").null().null()
	ev = decode(t, d, del)
	if got := string(ev["data"]); got != `{"old":{"id":1},"new":null}` {
		t.Fatalf("DELETE key: data = %s", got)
	}
}

func TestPartitionKeyFollowsPrimaryKey(t *testing.T) {
	d := testDecoder(t)
	a := decode(t, d, msg{}.u8('I').u32(16400).u8('N').tuple(3).text("7").text("a").text("1"))
	b := decode(t, d, msg{}.u8('U').u32(16400).u8('N').tuple(3).text("7").text("b").text("2"))
	c := decode(t, d, msg{}.u8('I').u32(16400).u8('N').tuple(3).text("8").text("a").text("1"))
	if string(a["_part"]) != string(b["_part"]) || string(a["_part"]) == string(c["_part"]) {
		t.Fatalf("partition keys: %s %s %s", a["_part"], b["_part"], c["_part"])
	}
}

// FuzzDecodeChange feeds arbitrary pgoutput messages to the decoder after a
// valid Relation message: it must return an error or an event, never panic,
// and an event must be valid JSON.
func FuzzDecodeChange(f *testing.F) {
	f.Add([]byte(msg{}.u8('I').u32(16400).u8('N').tuple(3).text("1").text("x").text("1.50")))
	f.Add([]byte(msg{}.u8('U').u32(16400).u8('K').tuple(3).text("1").null().null().u8('N').tuple(3).text("2").unchanged().text("NaN")))
	f.Add([]byte(msg{}.u8('D').u32(16400).u8('O').tuple(2).text("1").text("x")))
	f.Add([]byte(msg{}.u8('I').u32(16400).u8('N').tuple(5).text("1").text("x").text("1e5").text("extra").null()))
	f.Add([]byte(msg{}.u8('I').u32(16400).u8('N').tuple(3).text("{").text("\x00\xff").text("--1")))
	f.Add(relationMsg())
	f.Fuzz(func(t *testing.T, b []byte) {
		d := testDecoder(t)
		if isRowMsg(b) {
			var rm rowMsg
			err := rm.parse(b, false)
			sameAsPglogrepl(t, b, &rm, err)
			if err != nil {
				return
			}
			c, err := d.change(&rm)
			if err == nil && c != nil && !json.Valid(c.Message) {
				t.Fatalf("invalid JSON: %q", c.Message)
			}
			return
		}
		m, err := parse(b, false)
		if err != nil {
			return
		}
		m, _ = unwrapV2(m)
		switch m := m.(type) {
		case *pglogrepl.RelationMessage:
			d.setRelation(m, []string{"id"})
		case *pglogrepl.TruncateMessage:
			d.truncate(m)
		}
	})
}

// sameAsPglogrepl checks the decoder's own row-message parser against
// pglogrepl's: whatever pglogrepl reads, it reads the same way.
func sameAsPglogrepl(t *testing.T, b []byte, got *rowMsg, err error) {
	t.Helper()
	if err != nil {
		// The parser refuses what pglogrepl lets through (unknown column
		// kinds, missing tuple markers), and pglogrepl may try to allocate
		// the length a corrupt field claims: compare only what parsed.
		return
	}
	pm, perr := parse(b, false)
	if perr != nil {
		return
	}
	var relID uint32
	var oldT, newT *pglogrepl.TupleData
	switch m := pm.(type) {
	case *pglogrepl.InsertMessageV2:
		relID, newT = m.RelationID, m.Tuple
	case *pglogrepl.UpdateMessageV2:
		relID, oldT, newT = m.RelationID, m.OldTuple, m.NewTuple
	case *pglogrepl.DeleteMessageV2:
		relID, oldT = m.RelationID, m.OldTuple
	default:
		t.Fatalf("pglogrepl returned %T for a row message", pm)
	}
	if got.relID != relID || !sameTuple(got.oldT, oldT) || !sameTuple(got.newT, newT) {
		t.Fatalf("parsed %+v, pglogrepl %#v", got, pm)
	}
}

func sameTuple(a, b *pglogrepl.TupleData) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	if len(a.Columns) != len(b.Columns) {
		return false
	}
	for i := range a.Columns {
		x, y := a.Columns[i], b.Columns[i]
		if x.DataType != y.DataType || string(x.Data) != string(y.Data) {
			return false
		}
	}
	return true
}

func TestAppendLSN(t *testing.T) {
	for _, lsn := range []pglogrepl.LSN{0, 0x16B3748, 0x16_B374D848, 0xFFFFFFFF_FFFFFFFF} {
		if got := string(change.AppendLSN(nil, uint64(lsn))); got != lsn.String() {
			t.Errorf("AppendLSN(%d) = %s, want %s", lsn, got, lsn.String())
		}
	}
}

func BenchmarkDecodeInsert(b *testing.B) {
	d := testDecoder(b)
	ins := msg{}.u8('I').u32(16400).u8('N').tuple(3).text("123456").text("row-123456-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghij").text("1234.50")
	b.ReportAllocs()
	b.SetBytes(int64(len(ins)))
	var m rowMsg
	for b.Loop() {
		if err := m.parse(ins, false); err != nil {
			b.Fatal(err)
		}
		if _, err := d.change(&m); err != nil {
			b.Fatal(err)
		}
	}
}
