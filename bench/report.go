package main

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

type metric struct {
	Key   string    `json:"key"`
	Label string    `json:"label"`
	Unit  string    `json:"unit"`
	Vals  []float64 `json:"values"`
}

type results struct {
	machine machine
	order   []string
	m       map[string]*metric
	notes   []string
	ratioAt map[string][2]int // lengths of num/den when the ratio was last taken
}

func newResults() *results {
	return &results{m: map[string]*metric{}, ratioAt: map[string][2]int{}}
}

func (r *results) add(key, label, unit string, v float64) {
	m := r.m[key]
	if m == nil {
		m = &metric{Key: key, Label: label, Unit: unit}
		r.m[key] = m
		r.order = append(r.order, key)
	}
	m.Vals = append(m.Vals, v)
}

func (r *results) note(s string) { r.notes = append(r.notes, s) }

// ratio adds num/den when both got a new value since the last call for key.
func (r *results) ratio(key, label, num, den string) {
	n, d := r.m[num], r.m[den]
	if n == nil || d == nil {
		return
	}
	prev := r.ratioAt[key]
	if len(n.Vals) == prev[0] || len(d.Vals) == prev[1] {
		return
	}
	r.ratioAt[key] = [2]int{len(n.Vals), len(d.Vals)}
	r.add(key, label, "×", n.Vals[len(n.Vals)-1]/d.Vals[len(d.Vals)-1])
}

// pairRatio sets key to num[i]/den[i] for each run i both have (for
// figures measured in different phases of the same run).
func (r *results) pairRatio(key, label, num, den string) {
	n, d := r.m[num], r.m[den]
	if n == nil || d == nil {
		return
	}
	delete(r.m, key)
	r.order = slices.DeleteFunc(r.order, func(k string) bool { return k == key })
	for i := range min(len(n.Vals), len(d.Vals)) {
		r.add(key, label, "×", n.Vals[i]/d.Vals[i])
	}
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (m *metric) median() float64 { return median(m.Vals) }

func fmtNum(v float64, unit string) string {
	if math.IsNaN(v) {
		return "–"
	}
	switch unit {
	case "×":
		return fmt.Sprintf("%.2f×", v)
	case "ms":
		if v >= 100 {
			return fmt.Sprintf("%.0f", v)
		}
		return fmt.Sprintf("%.2f", v)
	case "µs":
		return fmt.Sprintf("%.1f", v)
	case "MiB":
		return fmt.Sprintf("%.1f", v)
	}
	return group(v)
}

// group prints an integer with thin spaces between thousands.
func group(v float64) string {
	neg := v < 0
	s := fmt.Sprintf("%.0f", math.Abs(v))
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteString(" ")
		}
		b.WriteRune(ch)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func (m *metric) spread() string {
	if len(m.Vals) < 2 {
		return ""
	}
	return fmt.Sprintf("%s – %s", fmtNum(slices.Min(m.Vals), m.Unit), fmtNum(slices.Max(m.Vals), m.Unit))
}

// Goals (issue 6) and reference figures from ../shared/research/baseline.md.
var goals = map[string]string{
	"p1.ratio":               "goal ≥ 1.0×",
	"p1.vs_candi":            "goal ≥ 2×",
	"p2.ratio_pgcdc":         "goal ≥ 0.90×",
	"p2.ratio_recv":          "baseline.md: 0.86× [0.82–0.86]",
	"p2.ratio_candi":         "baseline.md: 0.28× [0.25–0.28]",
	"p2.none":                "baseline.md: 10 514",
	"p1.recv":                "baseline.md: 123 883",
	"p1.candi":               "baseline.md: 62 698 (100k backlog)",
	"p1.candi_def":           "baseline.md: 28 920",
	"p3.ratio":               "goal ≥ 3× (ceiling ≈ 3.6×)",
	"p3.candi_e2e":           "baseline.md b1: 3 331",
	"p5.1k_p99":              "goal ≤ 2 ms (candi 1.4 ms, baseline.md)",
	"p5.5k_p99":              "goal ≤ 5 ms",
	"p5.quiet":               "goal ≤ 5 ms",
	"p5.candi1k_p99":         "baseline.md: 1.4 [1.4–3.3]",
	"p5.candi1k_p50":         "baseline.md: 0.4",
	"p6.hwm":                 "goal ≤ 128 MiB",
	"p6.big":                 "goal ≤ 128 MiB",
	"daemon.webhook8_ratio":  "goal ≥ 0.7",
	"daemon.webhook8b_ratio": "goal ≥ 0.7",
	"p1.load":                "baseline.md: 309 505",
}

type section struct {
	title string
	keys  []string
}

func (r *results) sections() []section {
	secs := []section{
		{"P1 drain of a backlog (no writes competing)", []string{"p1.recv", "p1.g1", "p1.ratio", "p1.delivered", "p1.dups", "p1.firstevent", "p1.recv_cpu", "p1.recv_ws", "p1.g1_cpu", "p1.g1_ws", "p1.candi", "p1.candi_def", "p1.vs_candi", "p1.vs_candi_baseline", "p1.load"}},
		{"Scaling (drain)", []string{"p1.g4", "p1.g16", "p1.ratio4", "p1.ratio16", "p1.s1", "p1.s4", "p1.s16"}},
		{"P2 write overhead (pgbench, 8 clients, single-row INSERT)", []string{"p2.none", "p2.pgcdc", "p2.ratio_pgcdc", "p2.recv", "p2.ratio_recv", "p2.candi", "p2.ratio_candi", "p2.pgcdc_cpu", "p2.pgcdc_ws", "p2.recv_cpu", "p2.recv_ws", "p2.candi_cpu"}},
		{"P3 end to end with 8 single-row writers", []string{"p3.pgcdc_written", "p3.pgcdc_e2e", "p3.pgcdc_lost", "p3.pgcdc_dups", "p3.pgcdc_catchup", "p3.pgcdc_p99", "p3.candi_written", "p3.candi_e2e", "p3.candi_lost", "p3.candi_dups", "p3.candi_catchup", "p3.candi_p99", "p3.ratio", "p3.ratio_baseline"}},
		{"P5 latency, commit (created_at) → handler", []string{"p5.1k_tps", "p5.1k_p50", "p5.1k_p95", "p5.1k_p99", "p5.1k_max", "p5.1k_cp50", "p5.1k_cp99", "p5.5k_tps", "p5.5k_p50", "p5.5k_p95", "p5.5k_p99", "p5.5k_max", "p5.5k_cp50", "p5.5k_cp99", "p5.quiet", "p5.recv1k_p50", "p5.recv1k_p99", "p5.recv5k_p50", "p5.recv5k_p99", "p5.candi1k_tps", "p5.candi1k_p50", "p5.candi1k_p95", "p5.candi1k_p99"}},
		{"P6 memory", []string{"p6.hwm", "p6.hwm16", "p6.big", "p6.big_rate"}},
	}
	// Anything not placed above goes last.
	placed := map[string]bool{}
	for _, s := range secs {
		for _, k := range s.keys {
			placed[k] = true
		}
	}
	var rest []string
	for _, k := range r.order {
		if !placed[k] {
			rest = append(rest, k)
		}
	}
	if len(rest) > 0 {
		secs = append(secs, section{"Other", rest})
	}
	return secs
}

func (r *results) table() string {
	var b strings.Builder
	m := r.machine
	fmt.Fprintf(&b, "Machine: %s\n\n", m.oneLine())
	if m.LoadWait != "" {
		fmt.Fprintf(&b, "Load wait: %s.\n\n", m.LoadWait)
	}
	fmt.Fprintf(&b, "Mode: %s; load average (1/5/15 min) at start %s, at end %s; 1-min load sampled every 5 s during the run: %s; run took %s.\n\n", m.Mode, m.LoadStart, m.LoadEnd, m.LoadDuring, m.Elapsed)
	b.WriteString("| figure | median | spread (min – max) | runs | goal / reference (baseline.md = not this run) |\n|---|---:|---|---:|---|\n")
	for _, s := range r.sections() {
		var rows []string
		for _, k := range s.keys {
			mt := r.m[k]
			if mt == nil {
				continue
			}
			rows = append(rows, fmt.Sprintf("| %s | **%s** | %s | %d | %s |", mt.Label, fmtNum(mt.median(), mt.Unit), mt.spread(), len(mt.Vals), goals[k]))
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "| ***%s*** | | | | |\n", s.title)
		for _, row := range rows {
			b.WriteString(row + "\n")
		}
	}
	if len(r.notes) > 0 {
		b.WriteString("\nNotes:\n")
		for _, n := range r.notes {
			b.WriteString("- " + n + "\n")
		}
	}
	return b.String()
}

func (e *env) report() error {
	r := e.res
	r.pairRatio("p1.vs_candi", "P3 pgcdc drain ÷ candi tuned drain (run i with run i)", "p1.g1", "p1.candi")
	// Without a candi figure from this run, compare with baseline.md's,
	// clearly labelled.
	if r.m["p1.candi"] == nil && r.m["p1.g1"] != nil {
		r.add("p1.vs_candi_baseline", "pgcdc drain ÷ candi tuned drain 62 698/s FROM baseline.md (not this run)", "×", r.m["p1.g1"].median()/62698)
		r.note("candi drain: not measured in this run; the ratio uses baseline.md's figure.")
	}
	if r.m["p3.candi_e2e"] == nil && r.m["p3.pgcdc_e2e"] != nil {
		r.add("p3.ratio_baseline", "pgcdc delivered rows/s ÷ candi 3 331/s FROM baseline.md b1 (not this run)", "×", r.m["p3.pgcdc_e2e"].median()/3331)
		r.note("candi live: not measured in this run; the ratio uses baseline.md's figure.")
	}
	tbl := r.table()
	prof := e.profileTop()
	fmt.Println()
	fmt.Println(tbl)
	if prof != "" {
		fmt.Println(prof)
	}
	md := "# pgcdc benchmark: latest run\n\nCommand: `cd bench && go run ." + map[bool]string{true: " -quick", false: ""}[e.cfg.quick] + "`\n\n" +
		tbl + "\n![chart](chart.svg)\n\n" + prof + "\n" + methodText
	if err := os.WriteFile(filepath.Join(e.cfg.out, "latest.md"), []byte(md), 0o644); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(struct {
		Machine machine   `json:"machine"`
		Metrics []*metric `json:"metrics"`
		Notes   []string  `json:"notes"`
	}{r.machine, r.list(), r.notes}, "", "  ")
	if err := os.WriteFile(filepath.Join(e.cfg.out, "latest.json"), js, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(e.cfg.out, "chart.svg"), []byte(r.chart()), 0o644); err != nil {
		return err
	}
	step("wrote %s/latest.md, latest.json, chart.svg", e.cfg.out)
	return nil
}

func (r *results) list() []*metric {
	out := make([]*metric, 0, len(r.order))
	for _, k := range r.order {
		out = append(out, r.m[k])
	}
	return out
}

// profileTop runs `go tool pprof -top` on the profiled drain and live run.
func (e *env) profileTop() string {
	var b strings.Builder
	for _, p := range []struct{ title, cpu, allocs string }{
		{"one pgcdc drain of the backlog (no-op handler)", "cpu.pprof", "allocs.pprof"},
		{"pgcdc streaming live under pgbench -c 8 (P2 load)", "live_cpu.pprof", "live_allocs.pprof"},
	} {
		b.WriteString(e.profileOne(p.title, p.cpu, p.allocs))
	}
	_ = os.WriteFile(filepath.Join(e.cfg.out, "cpu_top.txt"), []byte(b.String()), 0o644)
	return b.String()
}

func (e *env) profileOne(title, cpuFile, allocFile string) string {
	p := filepath.Join(e.cfg.out, cpuFile)
	if e.profileExe == "" {
		return ""
	}
	if _, err := os.Stat(p); err != nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "## CPU profile of %s (consumer process, results/%s)\n\n", title, cpuFile)
	for _, v := range []struct{ title, flag string }{{"by cumulative time", "-cum"}, {"by flat time", ""}} {
		args := []string{"tool", "pprof", "-top", "-nodecount=15"}
		if v.flag != "" {
			args = append(args, v.flag)
		}
		args = append(args, e.profileExe, p)
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			fmt.Fprintf(&b, "pprof failed: %v\n", err)
			continue
		}
		fmt.Fprintf(&b, "Top 15 %s:\n\n```\n%s```\n\n", v.title, trimPprof(string(out)))
	}
	ap := filepath.Join(e.cfg.out, allocFile)
	if _, err := os.Stat(ap); err == nil {
		out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=15", "-sample_index=alloc_space", e.profileExe, ap).CombinedOutput()
		if err == nil {
			fmt.Fprintf(&b, "Top 15 allocations (alloc_space, whole process life):\n\n```\n%s```\n\n", trimPprof(string(out)))
		}
	}
	return b.String()
}

func trimPprof(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "File:") || strings.HasPrefix(l, "Build ID:") || strings.HasPrefix(l, "Type:") || strings.HasPrefix(l, "Time:") {
			continue
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

const methodText = `## Method

- One throwaway PostgreSQL 15 cluster per run: wal_level=logical, shared_buffers=1GB,
  max_wal_size=8GB, checkpoint_timeout=30min, fsync=on, synchronous_commit=on,
  max_replication_slots=20, max_wal_senders=20, everything else default. Bench tables have
  autovacuum_enabled=false so an auto-analyze does not land inside a measurement.
- Table: (id bigserial primary key, payload text, created_at timestamptz default clock_timestamp()),
  payload about 115 bytes.
- P1: every slot (pg_recvlogical's, created with SQL, and pgcdc's, created by starting and
  shutting down a pgcdc worker with its own SetWorkerType) exists before the backlog is written
  with 1000-row INSERT … generate_series transactions. pg_recvlogical (proto_version=1,
  publication_names, -E <end LSN> --no-loop -f /dev/null) and pgcdc (no-op handler that only
  counts and checks ids for duplicates, separate process) then drain it one after another
  (order alternates between runs). Rate = changes ÷ (process start → end). The 1 ms-handler
  variants stop after a fixed number of events. Peak RSS is VmHWM of the consumer process.
- candi drain: the candi listener process is SIGSTOPped while the backlog is written (NOTIFY
  queue), then SIGCONTed; rate = rows ÷ (SIGCONT → last row handled).
- P2/P3: pgbench -n -c 8 -j 2 -T <dur> -M prepared, one single-row INSERT per transaction;
  TRUNCATE and CHECKPOINT before each configuration; order alternates between runs.
  Delivered = distinct ids the handler saw; end to end = delivered ÷ (pgbench start → last delivery).
- P5: pgbench -R <rate> -c 8 -j 2; latency = handler time.Now() − created_at (same clock);
  percentiles over all rows of the run. Quiet: one INSERT after the idle period.
`
