package main

// The daemon figure (-only daemon): `pgcdc run` with a webhook sink POSTing
// to an HTTP server in this process that acknowledges at once, under the
// same 8 single-row pgbench writers as P3, next to the library with a no-op
// handler in the same run.

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// daemonVariant is one daemon configuration measured.
type daemonVariant struct {
	key, label string
	maxGor     int
	batch      int
}

var daemonVariants = []daemonVariant{
	{"webhook8", "webhook, max_goroutines 8, one event per request", 8, 1},
	{"webhook8b", "webhook, max_goroutines 8, batch_size 8", 8, 8},
}

// phaseDaemon measures the daemon; the library's figure of the same run is
// P3's pgcdc end-to-end rate (measured here too).
func (e *env) phaseDaemon(ctx context.Context) error {
	c := e.cfg
	bin := filepath.Join(e.dir, "pgcdc-daemon")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/pgcdc")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building the daemon: %v\n%s", err, out)
	}
	for run := range c.runs {
		step("daemon run %d/%d: library no-op handler, then the daemon; pgbench -c 8 -j 2 -T %d; load %s", run+1, c.runs, c.writeDur, loadavg())
		if err := e.writeOne(ctx, run, "pgcdc"); err != nil {
			return err
		}
		for _, v := range daemonVariants {
			if err := e.daemonOne(ctx, run, bin, v); err != nil {
				return err
			}
			e.res.ratio("daemon."+v.key+"_ratio", "daemon ("+v.label+") delivered rows/s ÷ library no-op handler (P3 pgcdc)", "daemon."+v.key+"_e2e", "p3.pgcdc_e2e")
		}
	}
	return e.admin.dropSlots(ctx)
}

func (e *env) daemonOne(ctx context.Context, run int, bin string, v daemonVariant) error {
	c := e.cfg
	table := "t_write"
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `TRUNCATE `+table+` RESTART IDENTITY`); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	// The webhook target: counts every event, acknowledges at once.
	cnt := newCounter(true, 0, 0)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		for _, ev := range splitEvents(body) {
			cnt.observe(ev)
		}
		w.WriteHeader(http.StatusNoContent)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	workerType := fmt.Sprintf("d_%s_r%d", v.key, run+1)
	cfgPath := filepath.Join(e.dir, "daemon.yaml")
	cfg := fmt.Sprintf(`sources:
  bench: {dsn: %q, worker_type: %s, max_goroutines: %d}
routes:
  - {tables: [%s], sinks: [hook]}
sinks:
  hook: {type: webhook, url: "http://%s/", batch_size: %d}
log: {level: warn}
`, e.dsn, workerType, v.maxGor, table, ln.Addr(), v.batch)
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return err
	}
	logf, err := os.OpenFile(e.clog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	d := exec.Command(bin, "run", "-c", cfgPath)
	d.Stdout, d.Stderr = logf, logf
	if err := d.Start(); err != nil {
		return err
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = d.Process.Kill()
			_ = d.Wait()
		}
	}()
	slot := "pgcdc_" + workerType + "_bench"
	if err := e.admin.waitSlotActive(ctx, slot, 2*time.Minute); err != nil {
		return err
	}
	ws := e.watchWalsender(slot)
	cpu0, _ := procCPU(d.Process.Pid)
	t0 := time.Now()
	pb, err := runPgbench(ctx, e, e.script(table), "-c", "8", "-j", "2", "-T", strconv.Itoa(c.writeDur))
	t1 := time.Now()
	if err != nil {
		return err
	}
	written, err := e.admin.int(ctx, `SELECT count(*) FROM `+table)
	if err != nil {
		return err
	}
	var s Stats
	last, lastChange := int64(-1), time.Now()
	for {
		s = cnt.stats("stats")
		if s.Distinct >= written {
			break
		}
		if s.Distinct != last {
			last, lastChange = s.Distinct, time.Now()
		}
		if time.Since(lastChange) > 15*time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	cpu1, _ := procCPU(d.Process.Pid)
	hwm, _ := procMem(strconv.Itoa(d.Process.Pid))
	wsCPU := ws.stop()
	_ = d.Process.Signal(syscall.SIGTERM)
	_ = d.Wait()
	stopped = true
	e2e := float64(s.Distinct) / (float64(s.LastNs-t0.UnixNano()) / 1e9)
	k := "daemon." + v.key
	e.res.add(k+"_e2e", "daemon ("+v.label+"): rows/s delivered end to end (8 single-row writers)", "rows/s", e2e)
	e.res.add(k+"_tps", "daemon ("+v.label+"): write TPS while it ran", "TPS", pb.TPS)
	e.res.add(k+"_lost", "daemon ("+v.label+"): rows written but never delivered", "rows", float64(written-s.Distinct))
	e.res.add(k+"_dups", "daemon ("+v.label+"): duplicate deliveries", "events", float64(s.Dups))
	e.res.add(k+"_cpu", "daemon ("+v.label+"): CPU per row of the daemon process (µs)", "µs", (cpu1-cpu0)/float64(written)*1e6)
	e.res.add(k+"_ws", "daemon ("+v.label+"): CPU per row of its walsender (µs)", "µs", wsCPU/float64(written)*1e6)
	e.res.add(k+"_rss", "daemon ("+v.label+"): peak RSS of the daemon (MiB)", "MiB", float64(hwm)/1024)
	e.res.add(k+"_p99", "daemon ("+v.label+"): commit→webhook p99 under that load (ms)", "ms", s.LatP99)
	step("  daemon %s: %.0f TPS, %d rows, delivered %d distinct (%d lost, %d dups) = %.0f rows/s e2e (last +%.0f ms after pgbench), daemon CPU %.2fs (%.1f µs/row), peak RSS %.1f MiB, p50/p99 %.1f/%.1f ms",
		v.key, pb.TPS, written, s.Distinct, written-s.Distinct, s.Dups, e2e, float64(s.LastNs-t1.UnixNano())/1e6,
		cpu1-cpu0, (cpu1-cpu0)/float64(written)*1e6, float64(hwm)/1024, s.LatP50, s.LatP99)
	return nil
}

// splitEvents returns the events of a webhook body: one event, or each
// element of a JSON array of events (found by brace depth; strings are
// skipped).
func splitEvents(body []byte) [][]byte {
	if len(body) == 0 || body[0] != '[' {
		return [][]byte{body}
	}
	var out [][]byte
	depth, start, inStr, esc := 0, -1, false, false
	for i, b := range body {
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case b == '\\':
				esc = true
			case b == '"':
				inStr = false
			}
		case b == '"':
			inStr = true
		case b == '{':
			if depth == 0 {
				start = i
			}
			depth++
		case b == '}':
			depth--
			if depth == 0 && start >= 0 {
				out = append(out, body[start:i+1])
			}
		}
	}
	return out
}
