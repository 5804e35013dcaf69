package pgcdc_test

import (
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestStreamedTransactions makes PostgreSQL stream large transactions
// (logical_decoding_work_mem at its 64 kB minimum) and checks that a
// committed one with a rolled-back savepoint yields exactly the events the
// same transaction yields unstreamed, byte for byte, and an aborted one
// yields none.
func TestStreamedTransactions(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	exec(t, dsn, `CREATE TABLE big (id int PRIMARY KEY, pad text)`)
	smallMem := pgcdc.SetDBOption(func(c *pgconn.Config) { c.RuntimeParams["logical_decoding_work_mem"] = "64kB" })
	streamed, plain := newRecorder(), newRecorder()
	ws := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("streamed"), smallMem, pgcdc.SetTxBufferBytes(256<<10))
	ws.Handle("big", streamed.handle)
	wp := newWorker(t, pgcdc.SetPostgresDSN(dsn), pgcdc.SetWorkerType("plain"), smallMem, pgcdc.DisableStreaming())
	wp.Handle("big", plain.handle)
	serve(t, ws)
	serve(t, wp)
	waitStreaming(t, dsn, "pgcdc_streamed_default")
	waitStreaming(t, dsn, "pgcdc_plain_default")

	exec(t, dsn, `BEGIN;
		INSERT INTO big SELECT g, repeat('x', 50) FROM generate_series(1, 20000) g;
		SAVEPOINT a;
		INSERT INTO big SELECT g, 'rolled back' FROM generate_series(100001, 110000) g;
		ROLLBACK TO a;
		UPDATE big SET pad = 'updated' WHERE id <= 5000;
		INSERT INTO big SELECT g, repeat('y', 50) FROM generate_series(20001, 30000) g;
		COMMIT;`)
	exec(t, dsn, `BEGIN; INSERT INTO big SELECT g, 'aborted' FROM generate_series(200001, 230000) g; ROLLBACK;`)
	exec(t, dsn, `INSERT INTO big VALUES (0, 'last')`)
	const want = 20000 + 5000 + 10000 + 1
	last := func(e []pgcdc.EventPayload) bool {
		return len(e) >= want && string(e[len(e)-1].Data.New) == `{"id":0,"pad":"last"}`
	}
	streamed.waitFor(t, 2*time.Minute, "the streamed worker's events", last)
	plain.waitFor(t, 2*time.Minute, "the plain worker's events", last)

	rawS, rawP := snapshotRaw(streamed), snapshotRaw(plain)
	if len(rawS) != want || len(rawP) != want {
		t.Fatalf("streamed worker got %d events, plain %d; want %d each (no rolled-back or aborted rows)", len(rawS), len(rawP), want)
	}
	sort.Strings(rawS)
	sort.Strings(rawP)
	for i := range rawS {
		if rawS[i] != rawP[i] {
			t.Fatalf("streamed and unstreamed events differ:\n%s\n%s", rawS[i], rawP[i])
		}
		if strings.Contains(rawS[i], "rolled back") || strings.Contains(rawS[i], "aborted") {
			t.Fatalf("event of a rolled-back change: %s", rawS[i])
		}
	}
	stats := queryStrings(t, dsn, `SELECT slot_name || ' stream_bytes>0=' || (stream_bytes > 0) || ' spill_bytes>0=' || (spill_bytes > 0)
		FROM pg_stat_replication_slots WHERE slot_name IN ('pgcdc_streamed_default', 'pgcdc_plain_default') ORDER BY 1`)
	t.Logf("slot stats: %v", stats)
	if len(stats) != 2 || stats[1] != "pgcdc_streamed_default stream_bytes>0=true spill_bytes>0=false" {
		t.Errorf("slot stats = %v; want the streamed slot to stream and not spill", stats)
	}
}

func snapshotRaw(r *recorder) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.raw))
	for i, b := range r.raw {
		out[i] = string(b)
	}
	return out
}
