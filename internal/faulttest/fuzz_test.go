package faulttest

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// FuzzPgoutputDecode feeds arbitrary pgoutput messages to a worker through
// the public API: a consumer process streams table t through a proxy that
// replaces the first Insert message the server sends with the fuzz input.
// Whatever the input, the consumer must not panic (it may report an error,
// reconnect, or deliver what it understood). The seed corpus (below and in
// testdata/fuzz/FuzzPgoutputDecode) runs with go test; explore with
//
//	go test ./internal/faulttest/ -run '^$' -fuzz FuzzPgoutputDecode -fuzztime 2m
//
// (slow: one consumer session per input).
func FuzzPgoutputDecode(f *testing.F) {
	f.Add([]byte{})                                                // empty message
	f.Add([]byte("R0000\x000\x00"))                                // truncated Relation
	f.Add([]byte("I"))                                             // truncated Insert
	f.Add([]byte("I\x00\x00\x00\x01N\x00\x01t\x00\x00\x00\x0142")) // Insert for an unknown relation
	f.Add([]byte("I\x00\x00\x00\x01N\xff\xff"))                    // absurd column count
	f.Add([]byte("B\x00\x00\x00"))                                 // truncated Begin
	f.Add([]byte("C\x00"))                                         // truncated Commit
	f.Add([]byte("Z"))                                             // unknown message type
	f.Add([]byte("O\x00\x00\x00\x00\x00\x00\x00\x01origin\x00"))   // Origin
	f.Add([]byte("Y\x00\x00\x00\x01public\x00mood\x00"))           // Type

	dsn := pgtest.NewDatabase(f)
	recDSN := newRecordDB(f)
	execSQL(f, dsn, `CREATE TABLE t (id bigint PRIMARY KEY, v text)`)
	rec, src := newPool(f, recDSN), newPool(f, dsn)
	oid := uint32(queryInt(f, src, `SELECT 't'::regclass::oid::bigint`))
	// Inserts for the real relation with odd tuples.
	insert := func(cols ...string) []byte {
		b := append([]byte{'I'}, binary.BigEndian.AppendUint32(nil, oid)...)
		b = append(b, 'N')
		b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
		for _, c := range cols {
			kind, val, _ := strings.Cut(c, ":")
			b = append(b, kind[0])
			if kind == "t" || kind == "b" {
				b = binary.BigEndian.AppendUint32(b, uint32(len(val)))
				b = append(b, val...)
			}
		}
		return b
	}
	f.Add(insert("t:7", "t:ok"))              // well formed
	f.Add(insert("t:abc", "t:x"))             // not a number in a bigint
	f.Add(insert("t:8"))                      // fewer columns than the relation
	f.Add(insert("t:9", "t:x", "t:extra"))    // more columns than the relation
	f.Add(insert("t:10", "u"))                // unchanged TOAST in an insert
	f.Add(insert("n", "n"))                   // NULL key
	f.Add(insert("b:\x00\x00\x00\x0b", "t:")) // binary value
	f.Add(insert("t:99999999999999999999999999", "t:\xff\xfe"))

	bin := buildConsumer(f)
	var replacement atomic.Pointer[[]byte]
	px := newProxy(f, serverAddr(f, dsn), func(typ byte, body []byte) []byte {
		// CopyData carrying XLogData ('w', 24 bytes of positions and time)
		// whose WAL data is an Insert.
		if typ == 'd' && len(body) > 25 && body[0] == 'w' && body[25] == 'I' {
			if r := replacement.Swap(nil); r != nil {
				return append(body[:25:25], *r...)
			}
		}
		return body
	})
	pdsn := withPort(f, dsn, px.port())
	var n atomic.Int64

	f.Fuzz(func(t *testing.T, msg []byte) {
		k := n.Add(1)
		m := append([]byte(nil), msg...)
		replacement.Store(&m)
		p := startConsumer(t, bin, fmt.Sprintf("fuzz%d", k), "-dsn", pdsn, "-record-dsn", recDSN, "-table", "t",
			"-worker-type", "ft_fuzz", "-run", strconv.FormatInt(k, 10), "-goroutines", "1")
		waitSlotActive(t, src, slotName("ft_fuzz"), true)
		execSQL(t, dsn, `INSERT INTO t VALUES ($1, 'x')`, 1_000_000+k)
		_ = pollUntil(2*time.Second, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
			if p.exited() {
				return true, nil
			}
			var got int64
			err := rec.QueryRow(ctx, `SELECT count(*) FROM seen WHERE run = $1`, k).Scan(&got)
			return got > 0, err
		})
		if replacement.Load() != nil {
			t.Fatalf("the input was not injected: no Insert message went through the proxy")
		}
		if os.Getenv("PGCDC_FUZZ_VERBOSE") != "" {
			t.Logf("consumer log:\n%s", p.tail(3000))
		}
		if !p.exited() {
			_ = p.cmd.Process.Signal(sigterm)
			select {
			case <-p.done:
			case <-time.After(40 * time.Second):
				t.Fatalf("the consumer did not stop within 40s of SIGTERM after message %q", msg)
			}
		}
		out := p.tail(6000)
		if strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
			t.Fatalf("PANIC: the consumer crashed on pgoutput message %q:\n%s", msg, out)
		}
		if i := strings.Index(out, "SERVE-ERROR"); i >= 0 {
			t.Logf("Serve stopped on message %q: %s", msg, strings.TrimSpace(out[i:]))
		}
	})
}
