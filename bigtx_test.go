package pgcdc_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestHugeTransaction delivers one transaction of N row changes (100k in
// CI; PGCDC_BIGTX_ROWS=5000000 for the full size) and reports the process's
// peak RSS and the slot's spill and stream bytes. The memory goal is a
// figure to report (docs/performance.md), not an assertion:
//
//	PGCDC_BIGTX_ROWS=5000000 go test -run TestHugeTransaction -v -timeout 30m .
func TestHugeTransaction(t *testing.T) {
	rows := 100000
	if v := os.Getenv("PGCDC_BIGTX_ROWS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("PGCDC_BIGTX_ROWS=%q: %v", v, err)
		}
		rows = n
	}
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE t (id bigint PRIMARY KEY, payload text, created_at timestamptz DEFAULT clock_timestamp())`)
	var got atomic.Int64
	opts := []pgcdc.OptionFunc{pgcdc.SetPostgresDSN(dsn)}
	if os.Getenv("PGCDC_BIGTX_ROWS") == "" { // small: make the server stream it anyway
		opts = append(opts, pgcdc.SetDBOption(func(c *pgconn.Config) { c.RuntimeParams["logical_decoding_work_mem"] = "64kB" }))
	}
	w := newWorker(t, opts...)
	w.Handle("t", func(ec *pgcdc.EventContext) error {
		got.Add(1)
		return nil
	})
	serve(t, w)
	waitStreaming(t, dsn, defaultSlot)
	before := peakRSS()
	start := time.Now()
	exec(t, dsn, fmt.Sprintf(`INSERT INTO t (id, payload) SELECT g, 'row-' || g || '-0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz'
		FROM generate_series(1, %d) g`, rows))
	committed := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	for got.Load() < int64(rows) {
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d events delivered", got.Load(), rows)
		case <-time.After(20 * time.Millisecond):
		}
	}
	done := time.Now()
	stats := queryStrings(t, dsn, `SELECT spill_bytes || ' ' || stream_bytes FROM pg_stat_replication_slots WHERE slot_name = '`+defaultSlot+`'`)
	t.Logf("FIGURES bigtx rows=%d insert=%s delivered_after_commit=%s rate=%.0f/s peak_rss_before=%dMiB peak_rss=%dMiB spill_bytes/stream_bytes=%s",
		rows, committed.Sub(start).Round(time.Millisecond), done.Sub(committed).Round(time.Millisecond),
		float64(rows)/done.Sub(start).Seconds(), before>>20, peakRSS()>>20, stats)
	if f := strings.Fields(stats[0]); f[0] != "0" {
		t.Errorf("the server spilled %s bytes: the transaction was not streamed", f[0])
	}
}

// peakRSS is the process's peak resident set size in bytes (VmHWM).
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return -1
}
