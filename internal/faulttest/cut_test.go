package faulttest

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcdc/pgcdc"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// viaProxy returns dsn rewritten to connect through a new proxy to the
// server dsn names.
func viaProxy(t testing.TB, dsn string) (string, *proxy) {
	t.Helper()
	p := newProxy(t, serverAddr(t, dsn))
	return withPort(t, dsn, p.port()), p
}

// serverAddr is the host:port dsn connects to.
func serverAddr(t testing.TB, dsn string) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// withPort returns dsn pointed at 127.0.0.1:port, everything else kept.
func withPort(t testing.TB, dsn string, port int) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return fmt.Sprintf("%s host=127.0.0.1 port=%d", dsn, port)
	}
	u.Host = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	return u.String()
}

// cutRun is a worker streaming table "rows" through a proxy while a writer
// inserts rows directly.
type cutRun struct {
	t     *testing.T
	rec   *memRecorder
	px    *proxy
	wr    *rowWriter
	sv    *serving
	src   string
	errs  *syncBuffer
	batch int
}

func startCutRun(t *testing.T, workerType string, minRecon, maxRecon time.Duration, seed uint64, batch int) *cutRun {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	execSQL(t, dsn, `CREATE TABLE rows (id bigint PRIMARY KEY)`)
	pdsn, px := viaProxy(t, dsn)
	logger, _ := bufLogger(t)
	r := &cutRun{t: t, rec: newMemRecorder(), px: px, src: dsn, errs: &syncBuffer{}, batch: batch}
	w, err := pgcdc.NewWorker(pgcdc.SetPostgresDSN(pdsn), pgcdc.SetWorkerType(workerType), pgcdc.SetLogger(logger),
		pgcdc.SetMaxGoroutines(4), pgcdc.SetMinReconnectInterval(minRecon), pgcdc.SetMaxReconnectInterval(maxRecon),
		pgcdc.SetOnErrorConnectionCallback(func(err error) { fmt.Fprintf(r.errs, "%s %v\n", time.Now().Format("15:04:05.000"), err) }))
	if err != nil {
		t.Fatal(err)
	}
	w.Handle("rows", r.rec.handle)
	r.sv = serve(t, w)
	waitSlotActive(t, newPool(t, dsn), slotName(workerType), true)
	r.wr = startWriter(dsn, "rows", batch, 2*time.Millisecond, seed)
	t.Cleanup(r.wr.stop)
	return r
}

// cut waits for progress, cuts every proxied connection and returns how long
// it took until a row written after the cut was delivered.
func (r *cutRun) cut(i int, reset bool, progress int, wait time.Duration) (time.Duration, bool) {
	t := r.t
	t.Helper()
	before := r.rec.distinctRows()
	if !r.rec.wait(time.Minute, func() bool { return r.rec.distinctRows() >= before+progress }) {
		t.Fatalf("cut %d: no progress before the cut (serving: %v)", i, !r.sv.wait(0))
	}
	// Rows whose transaction starts after the cut can only arrive through a
	// new connection.
	boundary := r.wr.next.Load() + int64(r.batch)
	at := time.Now()
	n := r.px.cut(reset)
	if !r.rec.wait(wait, func() bool { _, ok := r.rec.firstAtLeast(boundary); return ok }) {
		t.Errorf("cut %d: no row written after the cut was delivered within %s\nconnection errors:\n%s", i, wait, r.errs.String())
		return 0, false
	}
	first, _ := r.rec.firstAtLeast(boundary)
	d := first.Sub(at)
	t.Logf("cut %d (%d connections, reset=%v): resumed after %s", i, n, reset, d.Round(time.Millisecond))
	return d, true
}

// finish stops the writer, waits for every row and reports the figures.
func (r *cutRun) finish(scenario string, maxResume time.Duration) {
	t := r.t
	t.Helper()
	r.wr.stop()
	written := writtenIDs(t, newPool(t, r.src), "rows")
	r.rec.wait(2*time.Minute, func() bool { d, _, _ := r.rec.tally(written); return d == len(written) })
	delivered, dups, missing := r.rec.tally(written)
	if len(missing) > 0 {
		t.Errorf("LOST: %d of %d rows never delivered; first: %v", len(missing), len(written), missing[:min(20, len(missing))])
	}
	if r.sv.wait(0) {
		t.Errorf("Serve returned: %v", r.sv.err)
	}
	r.sv.stop(t)
	figures(t, scenario, len(written), delivered, dups, maxResume)
}

// TestConnectionCut cuts every TCP connection between pgcdc and PostgreSQL
// (through a proxy the test controls; alternately with FIN and RST) while
// rows are written. After each cut pgcdc must deliver a row written after the
// cut within the maximum reconnect interval (plus 1.5 s to connect and set
// up), and in the end every row at least once.
func TestConnectionCut(t *testing.T) {
	sz := suiteSizes()
	rng := newRand(t)
	const minRecon, maxRecon, slack = 100 * time.Millisecond, 2 * time.Second, 1500 * time.Millisecond
	r := startCutRun(t, "ft_cut", minRecon, maxRecon, rng.Uint64(), sz.cutRowsBatch)
	var maxResume time.Duration
	for i := 1; i <= sz.cuts; i++ {
		time.Sleep(time.Duration(rng.Int64N(int64(300 * time.Millisecond)))) // a random instant
		d, ok := r.cut(i, i%2 == 0, 20, maxRecon+30*time.Second)
		if !ok {
			break
		}
		maxResume = max(maxResume, d)
		if d > maxRecon+slack {
			t.Errorf("cut %d: resumed after %s, more than the max reconnect interval %s (+%s)", i, d.Round(time.Millisecond), maxRecon, slack)
		}
	}
	t.Logf("proxy accepted %d connections", r.px.connections())
	r.finish("tcp_cut", maxResume)
}

// TestConnectionCutBackoffResets checks that the reconnect wait starts from
// the minimum again after a session that streamed successfully: a worker
// that lost its connection a few times over its life must not wait the
// maximum interval (30 s by default) after every later blip.
func TestConnectionCutBackoffResets(t *testing.T) {
	rng := newRand(t)
	const minRecon, maxRecon = 200 * time.Millisecond, 10 * time.Second
	const limit = minRecon + 1800*time.Millisecond
	r := startCutRun(t, "ft_backoff", minRecon, maxRecon, rng.Uint64(), 1)
	var maxResume time.Duration
	for i := 1; i <= 6; i++ {
		// Each session streams 200 rows first: it was a success.
		d, ok := r.cut(i, false, 200, maxRecon+30*time.Second)
		if !ok {
			break
		}
		maxResume = max(maxResume, d)
		if d > limit {
			t.Errorf("cut %d: resumed after %s; after a session that streamed, the first reconnect should wait the minimum interval (%s), not a backoff grown by earlier, unrelated failures (limit %s)",
				i, d.Round(time.Millisecond), minRecon, limit)
			break
		}
	}
	r.finish("tcp_cut_backoff", maxResume)
}
