package main

// The consumer subprocess: `bench consume -impl pgcdc|candi ...`. It runs one
// listener with a handler that counts events (and, with -lat, measures
// handler time − created_at), and speaks a line protocol:
//
//	fd 3 (or stdout): one JSON object per line, {"type": "ready"|"target"|"stats"|"done", ...}
//	stdin:  "stats", "reset", "stop" (EOF = stop)
//
// With -target N it reports "target" when N distinct rows have been handled
// and then stops by itself. With -setup it stops as soon as it is ready (used
// to have pgcdc create its publication and slot before a backlog is written).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc"
)

// Stats is what the consumer reports.
type Stats struct {
	Type     string  `json:"type"`
	Slot     string  `json:"slot,omitempty"`
	N        int64   `json:"n"`        // handler calls counted (row events)
	Distinct int64   `json:"distinct"` // distinct ids seen
	Dups     int64   `json:"dups"`     // events whose id was already seen
	Other    int64   `json:"other"`    // events without an id (e.g. TRUNCATE, PING)
	FirstNs  int64   `json:"first_ns"` // unix ns of the first counted event
	LastNs   int64   `json:"last_ns"`  // unix ns of the last counted event
	TargetNs int64   `json:"target_ns,omitempty"`
	HWMKiB   int64   `json:"vmhwm_kib"`
	RSSKiB   int64   `json:"vmrss_kib"`
	NumGC    uint32  `json:"num_gc,omitempty"`
	CPUSec   float64 `json:"cpu_s"` // user+system CPU of the consumer process so far
	LatCount int     `json:"lat_count"`
	LatP50   float64 `json:"lat_p50_ms"`
	LatP95   float64 `json:"lat_p95_ms"`
	LatP99   float64 `json:"lat_p99_ms"`
	LatMax   float64 `json:"lat_max_ms"`
	LatBadTS int64   `json:"lat_bad_ts,omitempty"`
	// Commit record (the event's commit_time) → handler; pgcdc only.
	CLatCount int     `json:"clat_count"`
	CLatP50   float64 `json:"clat_p50_ms"`
	CLatP99   float64 `json:"clat_p99_ms"`
	Err       string  `json:"err,omitempty"`
	ServeDone bool    `json:"serve_done,omitempty"`
}

type counter struct {
	lat      bool
	sleep    time.Duration
	target   int64
	targetCh chan struct{}

	n, distinct, dups, other, first, last, targetAt, badTS atomic.Int64
	bits                                                   []atomic.Uint64

	mu    sync.Mutex
	lats  []int64
	clats []int64
}

const maxID = 1 << 23 // ids above this are counted but not checked for duplicates

func newCounter(lat bool, sleep time.Duration, target int64) *counter {
	return &counter{lat: lat, sleep: sleep, target: target, targetCh: make(chan struct{}),
		bits: make([]atomic.Uint64, maxID/64)}
}

var (
	keyNew        = []byte(`"new":`)
	keyID         = []byte(`"id":`)
	keyCreatedAt  = []byte(`"created_at":"`)
	keyCommitTime = []byte(`"commit_time":"`)
)

// parseID finds the "id" of the new row in an event message.
func parseID(msg []byte) (int64, bool) {
	i := bytes.Index(msg, keyNew)
	if i < 0 {
		return 0, false
	}
	j := bytes.Index(msg[i:], keyID)
	if j < 0 {
		return 0, false
	}
	k := i + j + len(keyID)
	var id int64
	start := k
	for k < len(msg) && msg[k] >= '0' && msg[k] <= '9' {
		id = id*10 + int64(msg[k]-'0')
		k++
	}
	return id, k > start
}

// pct is the nearest-rank percentile of sorted ns values, in ms.
func pct(l []int64, p float64) float64 {
	i := int(p*float64(len(l))+0.5) - 1
	i = max(0, min(i, len(l)-1))
	return float64(l[i]) / 1e6
}

func parseCreatedAt(msg []byte) (time.Time, bool) { return parseTimeField(msg, keyCreatedAt) }

func parseTimeField(msg, key []byte) (time.Time, bool) {
	i := bytes.Index(msg, key)
	if i < 0 {
		return time.Time{}, false
	}
	rest := msg[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return time.Time{}, false
	}
	s := string(rest[:j])
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		// row_to_json may print "+00" style offsets in some settings.
		t, err = time.Parse("2006-01-02T15:04:05.999999-07", s)
	}
	return t, err == nil
}

func (c *counter) observe(msg []byte) {
	if c.sleep > 0 {
		time.Sleep(c.sleep)
	}
	now := time.Now()
	id, ok := parseID(msg)
	if !ok {
		c.other.Add(1)
		return
	}
	if c.lat {
		if t, ok := parseCreatedAt(msg); ok {
			d := now.Sub(t).Nanoseconds()
			ct, cok := parseTimeField(msg, keyCommitTime)
			c.mu.Lock()
			c.lats = append(c.lats, d)
			if cok {
				c.clats = append(c.clats, now.Sub(ct).Nanoseconds())
			}
			c.mu.Unlock()
		} else {
			c.badTS.Add(1)
		}
	}
	c.n.Add(1)
	if id >= 0 && id < maxID {
		bit := uint64(1) << (id & 63)
		if c.bits[id>>6].Or(bit)&bit != 0 {
			c.dups.Add(1)
		} else if c.distinct.Add(1) == c.target {
			c.targetAt.Store(now.UnixNano())
			close(c.targetCh)
		}
	} else if c.n.Load() == c.target { // unchecked ids
		c.targetAt.Store(now.UnixNano())
		close(c.targetCh)
	}
	ns := now.UnixNano()
	c.first.CompareAndSwap(0, ns)
	c.last.Store(ns)
}

func (c *counter) reset() {
	c.n.Store(0)
	c.distinct.Store(0)
	c.dups.Store(0)
	c.other.Store(0)
	c.first.Store(0)
	c.last.Store(0)
	c.badTS.Store(0)
	for i := range c.bits {
		if c.bits[i].Load() != 0 {
			c.bits[i].Store(0)
		}
	}
	c.mu.Lock()
	c.lats = c.lats[:0]
	c.clats = c.clats[:0]
	c.mu.Unlock()
}

func (c *counter) stats(typ string) Stats {
	s := Stats{Type: typ, N: c.n.Load(), Distinct: c.distinct.Load(), Dups: c.dups.Load(),
		Other: c.other.Load(), FirstNs: c.first.Load(), LastNs: c.last.Load(), TargetNs: c.targetAt.Load(),
		LatBadTS: c.badTS.Load()}
	s.HWMKiB, s.RSSKiB = procMem("self")
	s.CPUSec = selfCPU()
	c.mu.Lock()
	l := slices.Clone(c.lats)
	cl := slices.Clone(c.clats)
	c.mu.Unlock()
	if len(l) > 0 {
		slices.Sort(l)
		s.LatCount, s.LatP50, s.LatP95, s.LatP99, s.LatMax = len(l), pct(l, 0.50), pct(l, 0.95), pct(l, 0.99), float64(l[len(l)-1])/1e6
	}
	if len(cl) > 0 {
		slices.Sort(cl)
		s.CLatCount, s.CLatP50, s.CLatP99 = len(cl), pct(cl, 0.50), pct(cl, 0.99)
	}
	return s
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
}

// procMem reads VmHWM and VmRSS (KiB) of /proc/<pid>/status.
func procMem(pid string) (hwm, rss int64) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			switch f[0] {
			case "VmHWM:":
				hwm, _ = strconv.ParseInt(f[1], 10, 64)
			case "VmRSS:":
				rss, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return hwm, rss
}

type out struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (o *out) send(v any) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.enc.Encode(v)
}

// listener is what consume drives: pgcdc or candi.
type listener interface {
	start(ctx context.Context) error // returns once the stream is live
	slot() string
	stop(ctx context.Context) error
	done() <-chan struct{}
	err() error
}

func consumeMain(args []string) error {
	fs := flag.NewFlagSet("consume", flag.ContinueOnError)
	impl := fs.String("impl", "pgcdc", "pgcdc or candi")
	dsn := fs.String("dsn", "", "database DSN")
	table := fs.String("table", "", "table to handle")
	workerType := fs.String("worker-type", "bench", "pgcdc worker type (slot and publication name)")
	maxGor := fs.Int("maxgor", 1, "SetMaxGoroutines")
	debug := fs.Bool("debug", false, "SetDebugMode (candi's default is true)")
	sleep := fs.Duration("sleep", 0, "handler sleep per event")
	target := fs.Int64("target", 0, "stop after this many distinct rows (drain mode)")
	setup := fs.Bool("setup", false, "create publication and slot, then stop")
	lat := fs.Bool("lat", false, "record latency handler time − created_at")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile (until target or stop)")
	memprofile := fs.String("memprofile", "", "write an allocation profile at the end")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" || *table == "" {
		return fmt.Errorf("consume: -dsn and -table are required")
	}
	// Protocol lines go to fd 3 when the harness passed a pipe there, so
	// that whatever a library prints on stdout (candi does) cannot mix in.
	var w io.Writer = os.Stdout
	if os.Getenv("BENCH_PROTO_FD") == "3" {
		w = os.NewFile(3, "proto")
	}
	o := &out{enc: json.NewEncoder(w)}
	c := newCounter(*lat, *sleep, *target)

	var l listener
	switch *impl {
	case "pgcdc":
		l = &pgcdcListener{dsn: *dsn, table: *table, workerType: *workerType, maxGor: *maxGor, debug: *debug, c: c}
	case "candi":
		l = newCandiListener(*dsn, *table, *maxGor, *debug, c)
	default:
		return fmt.Errorf("consume: unknown -impl %q", *impl)
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer f.Close()
	}
	stopProfile := sync.OnceFunc(func() {
		if *cpuprofile != "" {
			pprof.StopCPUProfile()
		}
	})
	defer stopProfile()

	ctx := context.Background()
	startCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	err := l.start(startCtx)
	cancel()
	if err != nil {
		o.send(Stats{Type: "done", Err: err.Error()})
		return err
	}
	o.send(Stats{Type: "ready", Slot: l.slot()})

	finish := func(typ string) error {
		stopProfile()
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		serr := l.stop(sctx)
		cancel()
		s := c.stats(typ)
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		s.NumGC = ms.NumGC
		if serr != nil {
			s.Err = "shutdown: " + serr.Error()
		}
		if e := l.err(); e != nil {
			s.Err += " serve: " + e.Error()
		}
		if *memprofile != "" {
			if f, err := os.Create(*memprofile); err == nil {
				_ = pprof.Lookup("allocs").WriteTo(f, 0)
				f.Close()
			}
		}
		o.send(s)
		return nil
	}
	if *setup {
		return finish("done")
	}

	cmds := make(chan string)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			cmds <- strings.TrimSpace(sc.Text())
		}
		close(cmds)
	}()
	var targetCh <-chan struct{}
	if *target > 0 {
		targetCh = c.targetCh
	}
	for {
		select {
		case <-targetCh:
			stopProfile()
			o.send(c.stats("target"))
			return finish("done")
		case <-l.done():
			s := c.stats("done")
			s.ServeDone = true
			if e := l.err(); e != nil {
				s.Err = "serve returned: " + e.Error()
			} else {
				s.Err = "serve returned nil"
			}
			o.send(s)
			return fmt.Errorf("consume: listener stopped: %s", s.Err)
		case cmd, ok := <-cmds:
			switch {
			case !ok || cmd == "stop":
				return finish("done")
			case cmd == "stats":
				o.send(c.stats("stats"))
			case cmd == "reset":
				c.reset()
				o.send(c.stats("stats"))
			}
		}
	}
}

// ---- pgcdc ----

type pgcdcListener struct {
	dsn, table, workerType string
	maxGor                 int
	debug                  bool
	c                      *counter

	w       *pgcdc.Worker
	slotNm  string
	doneCh  chan struct{}
	serveEr error
}

func (p *pgcdcListener) start(ctx context.Context) error {
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	w, err := pgcdc.NewWorker(
		pgcdc.SetPostgresDSN(p.dsn),
		pgcdc.SetWorkerType(p.workerType),
		pgcdc.SetMaxGoroutines(p.maxGor),
		pgcdc.SetDebugMode(p.debug),
		pgcdc.SetLogger(logger),
	)
	if err != nil {
		return err
	}
	c := p.c
	w.Handle(p.table, func(ec *pgcdc.EventContext) error {
		c.observe(ec.Message())
		return nil
	})
	p.w = w
	p.slotNm = w.Sources()[0].Slot
	p.doneCh = make(chan struct{})
	go func() {
		p.serveEr = w.Serve(context.Background())
		close(p.doneCh)
	}()
	// Live = the walsender holding the slot is in state catchup or
	// streaming, i.e. START_REPLICATION ran. (The slot alone shows active
	// while CREATE_REPLICATION_SLOT is still running: not enough.)
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for {
		var state string
		err := conn.QueryRow(ctx, `SELECT r.state FROM pg_replication_slots s JOIN pg_stat_replication r ON r.pid = s.active_pid
			WHERE s.slot_name = $1`, p.slotNm).Scan(&state)
		if err == nil && (state == "catchup" || state == "streaming") {
			return nil
		}
		select {
		case <-p.doneCh:
			return fmt.Errorf("pgcdc Serve returned before streaming: %v", p.serveEr)
		case <-ctx.Done():
			return fmt.Errorf("pgcdc slot %s not active: %w", p.slotNm, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (p *pgcdcListener) slot() string          { return p.slotNm }
func (p *pgcdcListener) done() <-chan struct{} { return p.doneCh }
func (p *pgcdcListener) err() error            { return p.serveEr }
func (p *pgcdcListener) stop(ctx context.Context) error {
	err := p.w.Shutdown(ctx)
	<-p.doneCh
	return err
}
