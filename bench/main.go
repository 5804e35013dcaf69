// Command bench measures pgcdc against pg_recvlogical, candi v1.17.16's
// postgres_worker and no capture at all, on one throwaway PostgreSQL 15
// cluster, in one run.
//
//	cd bench && go run . -quick   # about a minute, 1 run of each figure
//	cd bench && go run .          # full: median of 3 runs, < 15 minutes
//
// It prints a table of absolute numbers and ratios and writes
// results/latest.md, results/latest.json, results/chart.svg and the CPU
// profile of a pgcdc drain (results/cpu.pprof, results/cpu_top.txt).
// `go run . consume ...` is the consumer subprocess the harness starts.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/pgcdc/pgcdc/bench/internal/cluster"
)

type config struct {
	quick        bool
	runs         int
	backlogTxns  int           // P1 backlog: txns × 1000 rows
	sleepTarget  int64         // events drained with the 1 ms handler
	writeDur     int           // P2/P3 pgbench seconds
	latDur       int           // P5 pgbench -R seconds
	quiet        time.Duration // P5 idle before the single row
	candi        bool
	candiBacklog int // candi drain backlog: txns × 1000 rows
	candiLat     bool
	recvLat      bool
	bigTxn       int64 // rows in one transaction for the big-txn RSS figure (0 = skip)
	profile      bool
	out          string
	pgBin        string
	only         string
	waitLoad     float64
	waitMax      time.Duration
}

type env struct {
	cfg    config
	cl     *cluster.Cluster
	dsn    string
	dbname string
	admin  *db
	log    *os.File // harness log (pgbench output, pg_recvlogical stderr)
	clog   string   // consumer log path
	res    *results
	dir    string // scratch dir for scripts

	profileExe string // binary of the profiled consumer
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "consume" {
		if err := consumeMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "consume:", err)
			os.Exit(1)
		}
		return
	}
	var c config
	flag.BoolVar(&c.quick, "quick", false, "quick mode: about a minute, one run, smaller backlogs")
	flag.IntVar(&c.runs, "runs", 0, "runs per figure (default 3, quick 1)")
	flag.BoolVar(&c.candi, "candi", true, "measure candi v1.17.16 too")
	flag.BoolVar(&c.candiLat, "candi-lat", true, "also measure candi's latency at 1k rows/s")
	flag.BoolVar(&c.recvLat, "recv-lat", true, "also measure pg_recvlogical+test_decoding latency as a reference for P5")
	flag.Int64Var(&c.bigTxn, "bigtxn", 0, "also measure pgcdc's peak RSS on one transaction of this many rows (e.g. 5000000); 0 = skip")
	flag.BoolVar(&c.profile, "profile", true, "profile one extra pgcdc drain (pprof CPU + allocations)")
	flag.StringVar(&c.out, "out", "results", "results directory")
	flag.StringVar(&c.pgBin, "pgbin", "", "PostgreSQL bin directory (default: /usr/lib/postgresql/15/bin)")
	flag.StringVar(&c.only, "only", "", "comma list of phases to run: p1,p2,p5,big (default all), daemon (only when listed)")
	flag.Float64Var(&c.waitLoad, "wait-load", 0, "before starting, wait until the 1-minute load average is below this (polls every 30 s; 0 = do not wait)")
	flag.DurationVar(&c.waitMax, "wait-max", 20*time.Minute, "give up waiting for -wait-load after this long and run anyway")
	flag.Parse()
	if c.quick {
		c.backlogTxns, c.sleepTarget, c.writeDur, c.latDur, c.quiet, c.candiBacklog = 200, 2000, 5, 5, 10*time.Second, 20
		if c.runs == 0 {
			c.runs = 1
		}
	} else {
		c.backlogTxns, c.sleepTarget, c.writeDur, c.latDur, c.quiet, c.candiBacklog = 1000, 5000, 20, 15, 60*time.Second, 100
		if c.runs == 0 {
			c.runs = 3
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func (c config) want(phase string) bool {
	if c.only == "" {
		return true
	}
	for _, p := range strings.Split(c.only, ",") {
		if strings.TrimSpace(p) == phase {
			return true
		}
	}
	return false
}

// waitForLoad polls the 1-minute load average until it is below c.waitLoad
// or c.waitMax passed, and says what happened.
func waitForLoad(ctx context.Context, c config) string {
	if c.waitLoad <= 0 {
		return ""
	}
	deadline := time.Now().Add(c.waitMax)
	for {
		l := load1()
		if l < c.waitLoad {
			return fmt.Sprintf("1-min load %.2f < %.2f when starting", l, c.waitLoad)
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("1-min load still %.2f ≥ %.2f after waiting %s: ran anyway", l, c.waitLoad, c.waitMax)
		}
		step("waiting for the 1-minute load average (%.2f) to drop below %.2f", l, c.waitLoad)
		select {
		case <-ctx.Done():
			return "interrupted"
		case <-time.After(30 * time.Second):
		}
	}
}

func load1() float64 {
	var l float64
	fmt.Sscanf(loadavg(), "%f", &l)
	return l
}

// sampleLoad records the 1-minute load average every 5 s until ctx ends.
func sampleLoad(ctx context.Context, out *[]float64, done chan<- struct{}) {
	defer close(done)
	for {
		*out = append(*out, load1())
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

func run(ctx context.Context, c config) error {
	waited := waitForLoad(ctx, c)
	if waited != "" {
		step("%s", waited)
	}
	began := time.Now()
	var loads []float64
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go sampleLoad(sctx, &loads, sampled)
	summarizeLoad := func() string {
		stopSampling()
		<-sampled
		if len(loads) == 0 {
			return "?"
		}
		return fmt.Sprintf("min %.2f / median %.2f / max %.2f (%d samples)", slices.Min(loads), median(loads), slices.Max(loads), len(loads))
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	out, _ := filepath.Abs(c.out)
	c.out = out
	logf, err := os.Create(filepath.Join(c.out, "harness.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	clog := filepath.Join(c.out, "consumer.log")
	_ = os.Remove(clog)

	bin, err := cluster.FindBinDir(c.pgBin, 15)
	if err != nil {
		return err
	}
	settings := map[string]string{
		"wal_level":             "logical",
		"max_replication_slots": "20",
		"max_wal_senders":       "20",
		"fsync":                 "on",
		"synchronous_commit":    "on",
		"shared_buffers":        "1GB",
		"max_wal_size":          "8GB",
		"checkpoint_timeout":    "30min",
	}
	step("booting PostgreSQL from %s", bin)
	cl, err := cluster.Start(ctx, bin, settings)
	if err != nil {
		return err
	}
	defer cl.Close()
	// Stop the cluster on Ctrl-C too.
	go func() { <-ctx.Done(); cl.Close() }()

	e := &env{cfg: c, cl: cl, dbname: "bench", log: logf, clog: clog, res: newResults(), dir: c.out}
	e.profileExe, _ = os.Executable() // consumers are this binary: pprof symbolizes with it
	admin0, err := openDB(ctx, cl.DSN("postgres"))
	if err != nil {
		return err
	}
	if err := admin0.exec(ctx, "CREATE DATABASE bench"); err != nil {
		return err
	}
	admin0.conn.Close(ctx)
	e.dsn = cl.DSN(e.dbname)
	if e.admin, err = openDB(ctx, e.dsn); err != nil {
		return err
	}
	defer e.admin.conn.Close(context.Background())
	if err := e.prepare(ctx); err != nil {
		return err
	}
	e.res.machine = e.machine(ctx)
	e.res.machine.LoadStart = loadavg()
	step("machine: %s", e.res.machine.oneLine())

	if c.want("p1") {
		if err := e.phaseDrain(ctx); err != nil {
			return fmt.Errorf("P1 drain: %w", err)
		}
	}
	if c.want("p2") {
		if err := e.phaseWrite(ctx); err != nil {
			return fmt.Errorf("P2/P3 write: %w", err)
		}
	}
	if c.want("p5") {
		if err := e.phaseLatency(ctx); err != nil {
			return fmt.Errorf("P5 latency: %w", err)
		}
	}
	if c.bigTxn > 0 && c.want("big") {
		if err := e.phaseBigTxn(ctx); err != nil {
			return fmt.Errorf("big transaction: %w", err)
		}
	}
	if c.only != "" && c.want("daemon") {
		if err := e.phaseDaemon(ctx); err != nil {
			return fmt.Errorf("daemon: %w", err)
		}
	}
	e.res.machine.LoadEnd = loadavg()
	e.res.machine.LoadDuring = summarizeLoad()
	e.res.machine.LoadWait = waited
	e.res.machine.Elapsed = time.Since(began).Round(time.Second).String()
	return e.report()
}

func step(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

type machine struct {
	Cores      int
	CPU        string
	MemGiB     float64
	PG         string
	Go         string
	Kernel     string
	LoadStart  string
	LoadEnd    string
	LoadDuring string
	LoadWait   string
	Elapsed    string
	Mode       string
}

func (m machine) oneLine() string {
	return fmt.Sprintf("%d cores (%s), %.0f GiB RAM, %s, %s, kernel %s", m.Cores, m.CPU, m.MemGiB, m.PG, m.Go, m.Kernel)
}

func (e *env) machine(ctx context.Context) machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				if i := strings.IndexByte(l, ':'); i >= 0 {
					m.CPU = strings.TrimSpace(l[i+1:])
				}
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb float64
		fmt.Sscanf(strings.TrimPrefix(strings.Split(string(b), "\n")[0], "MemTotal:"), "%f", &kb)
		m.MemGiB = kb / (1 << 20)
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if v, err := e.admin.str(ctx, "SHOW server_version"); err == nil {
		m.PG = "PostgreSQL " + v
	}
	m.Mode = "full"
	if e.cfg.quick {
		m.Mode = "quick"
	}
	return m
}

const pad = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr"

// prepare creates the tables, the publication pg_recvlogical reads and the
// pgbench scripts.
func (e *env) prepare(ctx context.Context) error {
	for _, t := range []string{"t_drain", "t_write", "t_lat", "t_candi", "t_big"} {
		// autovacuum off on the bench tables: an auto-ANALYZE/VACUUM of a
		// freshly loaded table would land in the middle of a measurement.
		sql := fmt.Sprintf(`CREATE TABLE %s (id bigserial PRIMARY KEY, payload text, created_at timestamptz DEFAULT clock_timestamp()) WITH (autovacuum_enabled = false)`, t)
		if err := e.admin.exec(ctx, sql); err != nil {
			return err
		}
	}
	if err := e.admin.exec(ctx, `CREATE PUBLICATION bench_pub_drain FOR TABLE t_drain`); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `CREATE PUBLICATION bench_pub_write FOR TABLE t_write`); err != nil {
		return err
	}
	for _, t := range []string{"t_write", "t_lat", "t_candi"} {
		script := fmt.Sprintf("\\set r random(1, 1000000000)\nINSERT INTO %s(payload) VALUES ('row-' || :r || '-%s');\n", t, pad)
		if err := os.WriteFile(e.script(t), []byte(script), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) script(table string) string { return filepath.Join(e.dir, "ins_"+table+".sql") }

// load writes txns transactions of 1000 rows each into table.
func (e *env) load(ctx context.Context, table string, txns int) error {
	sql := fmt.Sprintf(`INSERT INTO %s(payload) SELECT 'row-' || g || '-%s' FROM generate_series(1, 1000) g`, table, pad)
	for range txns {
		if _, err := e.admin.conn.Exec(ctx, sql); err != nil {
			return err
		}
	}
	return nil
}
