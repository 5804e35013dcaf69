package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// consumerArgs builds the consume flags.
func (e *env) consumerArgs(impl, table string, extra ...string) []string {
	return append([]string{"-impl", impl, "-dsn", e.dsn, "-table", table}, extra...)
}

// setupPgcdc starts pgcdc once with workerType so that it creates its
// publication and slot, then stops it.
func (e *env) setupPgcdc(workerType, table string) (string, error) {
	c, err := startConsumer(e.clog, e.consumerArgs("pgcdc", table, "-worker-type", workerType, "-setup")...)
	if err != nil {
		return "", err
	}
	r, err := c.next("ready", 2*time.Minute)
	if err != nil {
		c.kill()
		return "", fmt.Errorf("pgcdc setup %s: %w", workerType, err)
	}
	d, err := c.next("done", time.Minute)
	c.wait(10 * time.Second)
	if err != nil {
		return "", err
	}
	if d.Err != "" {
		return "", fmt.Errorf("pgcdc setup %s: %s", workerType, d.Err)
	}
	if n, err := e.admin.int(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, r.Slot); err != nil || n != 1 {
		return "", fmt.Errorf("pgcdc setup %s: slot %s missing after Serve+Shutdown (%v)", workerType, r.Slot, err)
	}
	return r.Slot, nil
}

type drainVariant struct {
	key     string // result key suffix
	label   string
	maxGor  int
	sleep   time.Duration
	profile bool
}

// phaseDrain is P1 (drain of a backlog vs pg_recvlogical), P6 (peak RSS
// during the drain) and the scaling figures.
func (e *env) phaseDrain(ctx context.Context) error {
	c := e.cfg
	n := int64(c.backlogTxns) * 1000
	variants := []drainVariant{
		{key: "g1", label: "pgcdc drain, no-op handler, SetMaxGoroutines(1) (default)", maxGor: 1},
		{key: "g4", label: "pgcdc drain, no-op handler, SetMaxGoroutines(4)", maxGor: 4},
		{key: "g16", label: "pgcdc drain, no-op handler, SetMaxGoroutines(16)", maxGor: 16},
		{key: "s1", label: "pgcdc drain, 1 ms handler, SetMaxGoroutines(1)", maxGor: 1, sleep: time.Millisecond},
		{key: "s4", label: "pgcdc drain, 1 ms handler, SetMaxGoroutines(4)", maxGor: 4, sleep: time.Millisecond},
		{key: "s16", label: "pgcdc drain, 1 ms handler, SetMaxGoroutines(16)", maxGor: 16, sleep: time.Millisecond},
	}
	for run := range c.runs {
		step("P1 run %d/%d: backlog of %d changes (%d txns × 1000 rows); load %s", run+1, c.runs, n, c.backlogTxns, loadavg())
		if err := e.admin.dropSlots(ctx); err != nil {
			return err
		}
		if err := e.admin.exec(ctx, `TRUNCATE t_drain RESTART IDENTITY`); err != nil {
			return err
		}
		vs := variants
		if run == 0 && c.profile {
			vs = append(vs, drainVariant{key: "prof", label: "pgcdc drain under pprof", maxGor: 1, profile: true})
		}
		recvSlot := fmt.Sprintf("bench_recv_r%d", run)
		if err := e.admin.exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, recvSlot); err != nil {
			return err
		}
		types, slots := map[string]string{}, map[string]string{}
		for _, v := range vs {
			wt := fmt.Sprintf("p1_%s_r%d", v.key, run)
			slot, err := e.setupPgcdc(wt, "t_drain")
			if err != nil {
				return err
			}
			types[v.key], slots[v.key] = wt, slot
		}
		if err := e.admin.exec(ctx, `CHECKPOINT`); err != nil {
			return err
		}
		t0 := time.Now()
		if err := e.load(ctx, "t_drain", c.backlogTxns); err != nil {
			return err
		}
		loadSec := time.Since(t0).Seconds()
		endLSN, err := e.admin.str(ctx, `SELECT pg_current_wal_lsn()::text`)
		if err != nil {
			return err
		}
		walBytes, _ := e.admin.int(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $2`, endLSN, recvSlot)
		e.res.add("p1.load", "write ceiling: psql-style load, 1000-row txns (rows/s)", "rows/s", float64(n)/loadSec)
		step("  loaded in %.1fs (%.0f rows/s), WAL to decode %.0f MB, end LSN %s", loadSec, float64(n)/loadSec, float64(walBytes)/1e6, endLSN)
		if err := e.admin.exec(ctx, `CHECKPOINT`); err != nil {
			return err
		}

		recv := func() error {
			ws := e.watchWalsender(recvSlot)
			t0 := time.Now()
			cmd, err := startRecvlogical(e, recvSlot, "bench_pub_drain", "-E", endLSN, "--no-loop", "-s", "1")
			if err != nil {
				ws.stop()
				return err
			}
			if err := cmd.Wait(); err != nil {
				ws.stop()
				return fmt.Errorf("pg_recvlogical drain: %w", err)
			}
			sec := time.Since(t0).Seconds()
			wsCPU := ws.stop()
			cpu := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
			e.res.add("p1.recv", "pg_recvlogical drain (changes/s)", "changes/s", float64(n)/sec)
			e.res.add("p1.recv_cpu", "CPU per change, pg_recvlogical process (µs)", "µs", cpu/float64(n)*1e6)
			e.res.add("p1.recv_ws", "CPU per change, the walsender serving pg_recvlogical (µs)", "µs", wsCPU/float64(n)*1e6)
			step("  pg_recvlogical: %.2fs = %.0f changes/s; CPU %.2fs, walsender CPU %.2fs", sec, float64(n)/sec, cpu, wsCPU)
			return nil
		}
		pg := func(v drainVariant) error {
			target := n
			if v.sleep > 0 {
				target = min(n, c.sleepTarget)
			}
			args := e.consumerArgs("pgcdc", "t_drain", "-worker-type", types[v.key], "-maxgor", strconv.Itoa(v.maxGor),
				"-target", strconv.FormatInt(target, 10))
			if v.sleep > 0 {
				args = append(args, "-sleep", v.sleep.String())
			}
			if v.profile {
				args = append(args, "-cpuprofile", filepath.Join(c.out, "cpu.pprof"), "-memprofile", filepath.Join(c.out, "allocs.pprof"))
			}
			ws := e.watchWalsender(slots[v.key])
			cons, err := startConsumer(e.clog, args...)
			if err != nil {
				ws.stop()
				return err
			}
			timeout := time.Duration(target/500+120) * time.Second // ≥ 500 events/s or give up
			ts, err := cons.next("target", timeout)
			wsCPU := ws.stop()
			if err != nil {
				st, _ := e.admin.str(ctx, `SELECT coalesce(string_agg(slot_name || ' confirmed ' || confirmed_flush_lsn::text || ' active ' || active::text, '; '), '') FROM pg_replication_slots`)
				cons.kill()
				return fmt.Errorf("pgcdc %s: %w (slots: %s; end LSN %s)", v.key, err, st, endLSN)
			}
			fin, ferr := cons.next("done", 2*time.Minute)
			cons.wait(30 * time.Second)
			sec := float64(ts.TargetNs-cons.started.UnixNano()) / 1e9
			rate := float64(target) / sec
			switch v.key {
			case "prof":
				e.res.note(fmt.Sprintf("Profiled drain (not in the medians): %.0f events/s; profile in results/cpu.pprof.", rate))
			default:
				e.res.add("p1."+v.key, v.label+" (events/s)", "events/s", rate)
			}
			if v.key == "g1" {
				e.res.add("p1.g1_cpu", "CPU per event, pgcdc consumer process (µs)", "µs", ts.CPUSec/float64(target)*1e6)
				e.res.add("p1.g1_ws", "CPU per event, the walsender serving pgcdc (µs)", "µs", wsCPU/float64(target)*1e6)
				e.res.add("p6.hwm", "P6 peak RSS (VmHWM) of the pgcdc process draining the backlog (MiB)", "MiB", float64(ts.HWMKiB)/1024)
				e.res.add("p1.delivered", "pgcdc drain: distinct rows delivered (of the backlog)", "rows", float64(ts.Distinct))
				e.res.add("p1.dups", "pgcdc drain: duplicate deliveries", "events", float64(ts.Dups))
				e.res.add("p1.firstevent", "pgcdc drain: process start → first event (ms)", "ms", float64(ts.FirstNs-cons.started.UnixNano())/1e6)
			}
			if v.key == "g16" {
				e.res.add("p6.hwm16", "P6 peak RSS draining with SetMaxGoroutines(16) (MiB)", "MiB", float64(ts.HWMKiB)/1024)
			}
			if ts.Dups > 0 || ts.Other > 0 {
				e.res.note(fmt.Sprintf("P1 run %d %s: %d duplicate deliveries, %d events without an id.", run+1, v.key, ts.Dups, ts.Other))
			}
			extra := ""
			if ferr != nil || fin.Err != "" {
				extra = fmt.Sprintf(" (stop: %v %s)", ferr, fin.Err)
				e.res.note(fmt.Sprintf("P1 run %d %s: consumer shutdown problem: %v %s", run+1, v.key, ferr, fin.Err))
			}
			step("  pgcdc %-4s: %d events in %.2fs = %.0f events/s, first event after %.0f ms, dups %d, VmHWM %.1f MiB, CPU %.2fs, walsender CPU %.2fs%s",
				v.key, target, sec, rate, float64(ts.FirstNs-cons.started.UnixNano())/1e6, ts.Dups, float64(ts.HWMKiB)/1024, ts.CPUSec, wsCPU, extra)
			return nil
		}
		var order []func() error
		pgAll := func() error {
			for _, v := range vs {
				if err := pg(v); err != nil {
					return err
				}
			}
			return nil
		}
		if run%2 == 0 {
			order = []func() error{recv, pgAll}
		} else {
			order = []func() error{pgAll, recv}
		}
		for _, f := range order {
			if err := f(); err != nil {
				return err
			}
		}
		e.res.ratio("p1.ratio", "P1 pgcdc drain ÷ pg_recvlogical drain", "p1.g1", "p1.recv")
		e.res.ratio("p1.ratio4", "scaling: SetMaxGoroutines(4) ÷ (1), no-op", "p1.g4", "p1.g1")
		e.res.ratio("p1.ratio16", "scaling: SetMaxGoroutines(16) ÷ (1), no-op", "p1.g16", "p1.g1")
	}
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	if c.candi {
		if err := e.candiDrain(ctx); err != nil {
			e.res.note("candi drain: not measured: " + err.Error())
			step("  candi drain failed: %v", err)
		}
	}
	return nil
}

// candiDrain measures candi's drain of a NOTIFY backlog: the listener is
// SIGSTOPped while the rows are inserted, then SIGCONTed.
func (e *env) candiDrain(ctx context.Context) error {
	c := e.cfg
	n := int64(c.candiBacklog) * 1000
	for run := range c.runs {
		for _, tuned := range []bool{true, false} {
			if err := e.admin.exec(ctx, `TRUNCATE t_candi RESTART IDENTITY`); err != nil {
				return err
			}
			args := e.consumerArgs("candi", "t_candi", "-target", strconv.FormatInt(n, 10))
			name := "candi (defaults: SetMaxGoroutines 1, debug on)"
			key := "p1.candi_def"
			if tuned {
				args = append(args, "-maxgor", "8", "-debug=false")
				name = "candi (tuned: SetMaxGoroutines 8, debug off)"
				key = "p1.candi"
			} else {
				args = append(args, "-maxgor", "1", "-debug=true")
			}
			cons, err := startConsumer(e.clog, args...)
			if err != nil {
				return err
			}
			if _, err := cons.next("ready", time.Minute); err != nil {
				cons.kill()
				return err
			}
			if err := cons.signal(syscall.SIGSTOP); err != nil {
				cons.kill()
				return err
			}
			if err := e.load(ctx, "t_candi", c.candiBacklog); err != nil {
				_ = cons.signal(syscall.SIGCONT)
				cons.kill()
				return err
			}
			usage, _ := e.admin.str(ctx, `SELECT pg_notification_queue_usage()::text`)
			t0 := time.Now()
			if err := cons.signal(syscall.SIGCONT); err != nil {
				cons.kill()
				return err
			}
			ts, err := cons.next("target", time.Duration(n/200+60)*time.Second)
			if err != nil {
				s, _ := cons.stats()
				cons.kill()
				return fmt.Errorf("%s: %w (delivered %d of %d)", name, err, s.Distinct, n)
			}
			cons.next("done", time.Minute)
			cons.wait(10 * time.Second)
			sec := float64(ts.TargetNs-t0.UnixNano()) / 1e9
			e.res.add(key, "candi drain of a NOTIFY backlog, "+name+" (events/s)", "events/s", float64(n)/sec)
			step("  %s drain run %d: %d events in %.2fs = %.0f events/s (NOTIFY queue usage %s)", name, run+1, n, sec, float64(n)/sec, usage)
		}
	}
	return nil
}

// phaseWrite is P2 (write TPS with no capture / pgcdc / pg_recvlogical /
// candi live) and P3 (rows written and delivered end to end).
func (e *env) phaseWrite(ctx context.Context) error {
	c := e.cfg
	configs := []string{"none", "pgcdc", "recv"}
	if c.candi {
		configs = append(configs, "candi")
	}
	for run := range c.runs {
		order := configs
		if run%2 == 1 {
			order = make([]string, len(configs))
			for i, x := range configs {
				order[len(configs)-1-i] = x
			}
		}
		step("P2/P3 run %d/%d: pgbench -c 8 -j 2 -T %d, order %s; load %s", run+1, c.runs, c.writeDur, strings.Join(order, ", "), loadavg())
		for _, cfg := range order {
			if err := e.writeOne(ctx, run, cfg); err != nil {
				if cfg == "candi" {
					e.res.note(fmt.Sprintf("candi live run %d failed: %v", run+1, err))
					step("  candi failed: %v", err)
					continue
				}
				return err
			}
		}
		e.res.ratio("p2.ratio_pgcdc", "P2 pgcdc live TPS ÷ no capture", "p2.pgcdc", "p2.none")
		e.res.ratio("p2.ratio_recv", "P2 pg_recvlogical live TPS ÷ no capture", "p2.recv", "p2.none")
		e.res.ratio("p2.ratio_candi", "P2 candi live TPS ÷ no capture", "p2.candi", "p2.none")
		e.res.ratio("p3.ratio", "P3 pgcdc delivered rows/s ÷ candi delivered rows/s (8 writers)", "p3.pgcdc_e2e", "p3.candi_e2e")
	}
	if c.profile {
		step("P2 extra run: pgcdc live under pprof (not in the medians)")
		if err := e.writeOne(ctx, -1, "pgcdc"); err != nil {
			return err
		}
		e.res.note("Profiled live run (not in the medians): see the live CPU profile below (results/live_cpu.pprof).")
	}
	return e.admin.dropSlots(ctx)
}

// writeOne measures one configuration; run < 0 is the extra profiled pgcdc
// run, whose figures are not recorded.
func (e *env) writeOne(ctx context.Context, run int, cfg string) error {
	c := e.cfg
	add := e.res.add
	var profArgs []string
	if run < 0 {
		add = func(string, string, string, float64) {}
		profArgs = []string{"-cpuprofile", filepath.Join(c.out, "live_cpu.pprof"), "-memprofile", filepath.Join(c.out, "live_allocs.pprof")}
	}
	table := "t_write"
	if cfg == "candi" {
		table = "t_candi"
	}
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `TRUNCATE `+table+` RESTART IDENTITY`); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `CHECKPOINT`); err != nil {
		return err
	}
	var cons *consumer
	var recv *exec.Cmd
	var err error
	switch cfg {
	case "pgcdc":
		cons, err = startConsumer(e.clog, append(e.consumerArgs("pgcdc", table, "-worker-type", fmt.Sprintf("p2_r%d", run+1), "-lat"), profArgs...)...)
	case "candi":
		cons, err = startConsumer(e.clog, e.consumerArgs("candi", table, "-lat")...) // candi defaults
	case "recv":
		slot := "bench_recv_live"
		if err = e.admin.exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, slot); err != nil {
			return err
		}
		if recv, err = startRecvlogical(e, slot, "bench_pub_write", "-s", "1", "-F", "1"); err != nil {
			return err
		}
		err = e.admin.waitSlotActive(ctx, slot, time.Minute)
	}
	if err != nil {
		return err
	}
	var ws *cpuWatch
	if cons != nil {
		r, err := cons.next("ready", 2*time.Minute)
		if err != nil {
			cons.kill()
			return err
		}
		if r.Slot != "" {
			ws = e.watchWalsender(r.Slot)
		}
	} else if recv != nil {
		ws = e.watchWalsender("bench_recv_live")
	}
	var cpu0 float64
	if cons != nil {
		s0, err := cons.stats()
		if err != nil {
			cons.kill()
			return err
		}
		cpu0 = s0.CPUSec
	}
	t0 := time.Now()
	pb, err := runPgbench(ctx, e, e.script(table), "-c", "8", "-j", "2", "-T", strconv.Itoa(c.writeDur))
	t1 := time.Now()
	if err != nil {
		if cons != nil {
			cons.kill()
		}
		if recv != nil {
			_ = recv.Process.Kill()
			_ = recv.Wait()
		}
		return err
	}
	written, err := e.admin.int(ctx, `SELECT count(*) FROM `+table)
	if err != nil {
		return err
	}
	add("p2."+cfg, map[string]string{
		"none":  "P2 write TPS, no capture (8 clients)",
		"pgcdc": "P2 write TPS, pgcdc streaming live",
		"recv":  "P2 write TPS, pg_recvlogical streaming live",
		"candi": "P2 write TPS, candi trigger + listener live (candi defaults)",
	}[cfg], "TPS", pb.TPS)
	line := fmt.Sprintf("  %-5s: %.0f TPS (%d rows)", cfg, pb.TPS, written)
	if recv != nil {
		// Time until the slot confirmed everything written.
		endLSN, _ := e.admin.str(ctx, `SELECT pg_current_wal_lsn()::text`)
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			ok, _ := e.admin.int(ctx, `SELECT (confirmed_flush_lsn >= $1::pg_lsn)::int FROM pg_replication_slots WHERE slot_name = 'bench_recv_live'`, endLSN)
			if ok == 1 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		line += fmt.Sprintf(", slot confirmed the end LSN %.2fs after pgbench ended (status interval 1 s)", time.Since(t1).Seconds())
		wsCPU := ws.stop()
		_ = recv.Process.Signal(os.Interrupt)
		_ = recv.Wait()
		cpu := (recv.ProcessState.UserTime() + recv.ProcessState.SystemTime()).Seconds()
		add("p2.recv_cpu", "P2 CPU per row, pg_recvlogical process (µs)", "µs", cpu/float64(written)*1e6)
		add("p2.recv_ws", "P2 CPU per row, its walsender (µs)", "µs", wsCPU/float64(written)*1e6)
		line += fmt.Sprintf("; CPU %.2fs, walsender %.2fs", cpu, wsCPU)
	}
	if cons != nil {
		// Wait until every written row was delivered (or no progress for 15 s).
		var s Stats
		last, lastChange := int64(-1), time.Now()
		for {
			s, err = cons.stats()
			if err != nil {
				cons.kill()
				return err
			}
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
		var wsCPU float64
		if ws != nil {
			wsCPU = ws.stop()
		}
		fin, ferr := cons.stop()
		if ferr == nil && fin.Err != "" {
			e.res.note(fmt.Sprintf("P2 %s run %d: consumer reported: %s", cfg, run+1, fin.Err))
		}
		e2e := float64(s.Distinct) / (float64(s.LastNs-t0.UnixNano()) / 1e9)
		lost := written - s.Distinct
		add("p3."+cfg+"_written", "P3 "+cfg+": rows/s written (8 single-row writers)", "rows/s", float64(written)/t1.Sub(t0).Seconds())
		add("p3."+cfg+"_e2e", "P3 "+cfg+": rows/s delivered end to end (distinct rows ÷ pgbench start → last delivery)", "rows/s", e2e)
		add("p3."+cfg+"_lost", "P3 "+cfg+": rows written but never delivered", "rows", float64(lost))
		add("p3."+cfg+"_dups", "P3 "+cfg+": duplicate deliveries", "events", float64(s.Dups))
		add("p3."+cfg+"_catchup", "P3 "+cfg+": last delivery − pgbench exit (ms; < 0: before pgbench exited)", "ms", float64(s.LastNs-t1.UnixNano())/1e6)
		add("p3."+cfg+"_p99", "P3 "+cfg+": commit→handler p99 under that saturating load (ms)", "ms", s.LatP99)
		add("p2."+cfg+"_cpu", "P2 CPU per row, "+cfg+" consumer process (µs)", "µs", (s.CPUSec-cpu0)/float64(written)*1e6)
		if ws != nil {
			add("p2."+cfg+"_ws", "P2 CPU per row, its walsender (µs)", "µs", wsCPU/float64(written)*1e6)
		}
		line += fmt.Sprintf(", CPU %.2fs", s.CPUSec-cpu0)
		if ws != nil {
			line += fmt.Sprintf(", walsender %.2fs", wsCPU)
		}
		line += fmt.Sprintf(", delivered %d distinct (%d lost, %d dups) = %.0f rows/s e2e, last delivery +%.0f ms after pgbench, latency p50/p99 %.1f/%.1f ms",
			s.Distinct, lost, s.Dups, e2e, float64(s.LastNs-t1.UnixNano())/1e6, s.LatP50, s.LatP99)
	}
	step("%s", line)
	return nil
}

// phaseLatency is P5: commit → handler latency at fixed rates, and one row
// after a quiet period.
func (e *env) phaseLatency(ctx context.Context) error {
	c := e.cfg
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `TRUNCATE t_lat RESTART IDENTITY`); err != nil {
		return err
	}
	cons, err := startConsumer(e.clog, e.consumerArgs("pgcdc", "t_lat", "-worker-type", "p5", "-lat")...)
	if err != nil {
		return err
	}
	defer cons.kill()
	if _, err := cons.next("ready", 2*time.Minute); err != nil {
		return err
	}
	rate := func(cons *consumer, table string, r int) (Stats, error) {
		if err := cons.reset(); err != nil {
			return Stats{}, err
		}
		before, err := e.admin.int(ctx, `SELECT count(*) FROM `+table)
		if err != nil {
			return Stats{}, err
		}
		pb, err := runPgbench(ctx, e, e.script(table), "-c", "8", "-j", "2", "-T", strconv.Itoa(c.latDur), "-R", strconv.Itoa(r))
		if err != nil {
			return Stats{}, err
		}
		if table == "t_lat" {
			e.res.add(fmt.Sprintf("p5.%dk_tps", r/1000), fmt.Sprintf("P5 rate pgbench achieved with -R %d (TPS)", r), "TPS", pb.TPS)
		} else {
			e.res.add("p5.candi1k_tps", fmt.Sprintf("P5 candi: rate pgbench achieved with -R %d (TPS)", r), "TPS", pb.TPS)
		}
		after, err := e.admin.int(ctx, `SELECT count(*) FROM `+table)
		if err != nil {
			return Stats{}, err
		}
		want := after - before
		deadline := time.Now().Add(time.Minute)
		for {
			s, err := cons.stats()
			if err != nil {
				return s, err
			}
			if s.Distinct >= want || time.Now().After(deadline) {
				if s.Distinct < want {
					e.res.note(fmt.Sprintf("P5 %d rows/s on %s: only %d of %d rows delivered within a minute", r, table, s.Distinct, want))
				}
				return s, nil
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for run := range c.runs {
		for _, r := range []int{1000, 5000} {
			s, err := rate(cons, "t_lat", r)
			if err != nil {
				return err
			}
			k := fmt.Sprintf("p5.%dk", r/1000)
			lbl := fmt.Sprintf("P5 pgcdc commit→handler at %dk rows/s", r/1000)
			e.res.add(k+"_p50", lbl+", p50 (ms)", "ms", s.LatP50)
			e.res.add(k+"_p95", lbl+", p95 (ms)", "ms", s.LatP95)
			e.res.add(k+"_p99", lbl+", p99 (ms)", "ms", s.LatP99)
			e.res.add(k+"_max", lbl+", max (ms)", "ms", s.LatMax)
			if s.CLatCount > 0 {
				e.res.add(k+"_cp50", fmt.Sprintf("P5 pgcdc commit record (event commit_time) → handler at %dk rows/s, p50 (ms)", r/1000), "ms", s.CLatP50)
				e.res.add(k+"_cp99", fmt.Sprintf("P5 pgcdc commit record (event commit_time) → handler at %dk rows/s, p99 (ms)", r/1000), "ms", s.CLatP99)
			}
			step("P5 run %d/%d at %d rows/s: %d events, p50/p95/p99/max %.2f/%.2f/%.2f/%.2f ms, dups %d",
				run+1, c.runs, r, s.LatCount, s.LatP50, s.LatP95, s.LatP99, s.LatMax, s.Dups)
		}
	}
	// Quiet: one row after c.quiet without writes.
	if err := cons.reset(); err != nil {
		return err
	}
	step("P5 quiet: %s idle, then one row", c.quiet)
	select {
	case <-time.After(c.quiet):
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := e.admin.exec(ctx, `INSERT INTO t_lat(payload) VALUES ('quiet')`); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := cons.stats()
		if err != nil {
			return err
		}
		if s.Distinct >= 1 {
			e.res.add("p5.quiet", fmt.Sprintf("P5 pgcdc commit→handler, one row after %s idle (ms, 1 sample)", c.quiet), "ms", s.LatMax)
			step("  quiet row latency %.2f ms", s.LatMax)
			break
		}
		if time.Now().After(deadline) {
			e.res.note("P5 quiet row not delivered within 30 s")
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if _, err := cons.stop(); err != nil {
		return err
	}
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	// Reference: the same load read by pg_recvlogical with test_decoding,
	// its text output parsed here: server → client latency with no pgcdc.
	if c.recvLat {
		for run := range c.runs {
			for _, r := range []int{1000, 5000} {
				l, err := e.recvLatency(ctx, r)
				if err != nil {
					e.res.note(fmt.Sprintf("pg_recvlogical latency reference at %d rows/s: %v", r, err))
					step("  pg_recvlogical latency reference failed: %v", err)
					continue
				}
				k := fmt.Sprintf("p5.recv%dk", r/1000)
				lbl := fmt.Sprintf("P5 reference: pg_recvlogical + test_decoding at %dk rows/s, created_at → line read", r/1000)
				e.res.add(k+"_p50", lbl+", p50 (ms)", "ms", l.LatP50)
				e.res.add(k+"_p99", lbl+", p99 (ms)", "ms", l.LatP99)
				step("P5 reference run %d/%d: pg_recvlogical+test_decoding at %d rows/s: %d rows, p50/p95/p99/max %.2f/%.2f/%.2f/%.2f ms",
					run+1, c.runs, r, l.LatCount, l.LatP50, l.LatP95, l.LatP99, l.LatMax)
			}
		}
	}
	if c.candi && c.candiLat {
		if err := e.admin.exec(ctx, `TRUNCATE t_candi RESTART IDENTITY`); err != nil {
			return err
		}
		cc, err := startConsumer(e.clog, e.consumerArgs("candi", "t_candi", "-lat")...)
		if err != nil {
			return err
		}
		defer cc.kill()
		if _, err := cc.next("ready", time.Minute); err != nil {
			e.res.note("candi latency: not measured: " + err.Error())
			return nil
		}
		for run := range c.runs {
			s, err := rate(cc, "t_candi", 1000)
			if err != nil {
				e.res.note("candi latency: " + err.Error())
				return nil
			}
			e.res.add("p5.candi1k_p50", "P5 candi (defaults) at 1k rows/s, p50 (ms)", "ms", s.LatP50)
			e.res.add("p5.candi1k_p95", "P5 candi (defaults) at 1k rows/s, p95 (ms)", "ms", s.LatP95)
			e.res.add("p5.candi1k_p99", "P5 candi (defaults) at 1k rows/s, p99 (ms)", "ms", s.LatP99)
			step("P5 candi run %d/%d at 1000 rows/s: %d events, p50/p95/p99/max %.2f/%.2f/%.2f/%.2f ms",
				run+1, c.runs, s.LatCount, s.LatP50, s.LatP95, s.LatP99, s.LatMax)
		}
		cc.stop()
	}
	return nil
}

// phaseBigTxn measures pgcdc's peak RSS on one transaction of c.bigTxn rows.
func (e *env) phaseBigTxn(ctx context.Context) error {
	c := e.cfg
	if err := e.admin.dropSlots(ctx); err != nil {
		return err
	}
	if err := e.admin.exec(ctx, `TRUNCATE t_big RESTART IDENTITY`); err != nil {
		return err
	}
	if _, err := e.setupPgcdc("big", "t_big"); err != nil {
		return err
	}
	step("big transaction: %d rows in one INSERT", c.bigTxn)
	t0 := time.Now()
	if err := e.admin.exec(ctx, fmt.Sprintf(`INSERT INTO t_big(payload) SELECT 'row-' || g || '-%s' FROM generate_series(1, %d) g`, pad, c.bigTxn)); err != nil {
		return err
	}
	step("  inserted in %.1fs", time.Since(t0).Seconds())
	cons, err := startConsumer(e.clog, e.consumerArgs("pgcdc", "t_big", "-worker-type", "big", "-target", strconv.FormatInt(c.bigTxn, 10))...)
	if err != nil {
		return err
	}
	ts, err := cons.next("target", time.Duration(c.bigTxn/500+120)*time.Second)
	if err != nil {
		cons.kill()
		return err
	}
	cons.next("done", time.Minute)
	cons.wait(10 * time.Second)
	sec := float64(ts.TargetNs-cons.started.UnixNano()) / 1e9
	e.res.add("p6.big", fmt.Sprintf("P6 peak RSS (VmHWM), one %d-row transaction (MiB)", c.bigTxn), "MiB", float64(ts.HWMKiB)/1024)
	e.res.add("p6.big_rate", fmt.Sprintf("drain of one %d-row transaction (events/s)", c.bigTxn), "events/s", float64(c.bigTxn)/sec)
	step("  pgcdc drained %d events in %.1fs, VmHWM %.1f MiB, dups %d", c.bigTxn, sec, float64(ts.HWMKiB)/1024, ts.Dups)
	return e.admin.dropSlots(ctx)
}

// recvLatency runs pgbench -R r on t_lat while pg_recvlogical streams a
// fresh test_decoding slot to a pipe read here; latency = time the line is
// read − the row's created_at.
func (e *env) recvLatency(ctx context.Context, r int) (Stats, error) {
	c := e.cfg
	const slot = "bench_td"
	if err := e.admin.exec(ctx, `SELECT pg_create_logical_replication_slot($1, 'test_decoding')`, slot); err != nil {
		return Stats{}, err
	}
	defer e.admin.dropSlots(ctx)
	args := []string{"-d", e.dsn, "--slot", slot, "--start", "-f", "-", "-F", "0", "-s", "1",
		"-o", "include-xids=0", "-o", "skip-empty-xacts=1"}
	cmd := exec.Command(e.cl.Bin("pg_recvlogical"), args...)
	cmd.Stderr = e.log
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return Stats{}, err
	}
	if err := cmd.Start(); err != nil {
		return Stats{}, err
	}
	var lats []int64
	var mu sync.Mutex
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		br := bufio.NewReaderSize(pipe, 1<<16)
		key := []byte("created_at[timestamp with time zone]:'")
		for {
			line, err := br.ReadSlice('\n')
			now := time.Now()
			if i := bytes.Index(line, key); i >= 0 && bytes.Contains(line, []byte("table public.t_lat: INSERT")) {
				rest := line[i+len(key):]
				if j := bytes.IndexByte(rest, '\''); j > 0 {
					if t, perr := time.Parse("2006-01-02 15:04:05.999999-07", string(rest[:j])); perr == nil {
						mu.Lock()
						lats = append(lats, now.Sub(t).Nanoseconds())
						mu.Unlock()
					}
				}
			}
			if err != nil && err != bufio.ErrBufferFull {
				return
			}
		}
	}()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		_ = cmd.Wait()
		<-readDone
	}
	if err := e.admin.waitSlotActive(ctx, slot, time.Minute); err != nil {
		stop()
		return Stats{}, err
	}
	before, _ := e.admin.int(ctx, `SELECT count(*) FROM t_lat`)
	if _, err := runPgbench(ctx, e, e.script("t_lat"), "-c", "8", "-j", "2", "-T", strconv.Itoa(c.latDur), "-R", strconv.Itoa(r)); err != nil {
		stop()
		return Stats{}, err
	}
	after, _ := e.admin.int(ctx, `SELECT count(*) FROM t_lat`)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		mu.Lock()
		got := int64(len(lats))
		mu.Unlock()
		if got >= after-before {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	mu.Lock()
	l := slices.Clone(lats)
	mu.Unlock()
	var st Stats
	if len(l) == 0 {
		return st, fmt.Errorf("no rows parsed from pg_recvlogical's output")
	}
	slices.Sort(l)
	st.LatCount, st.LatP50, st.LatP95, st.LatP99, st.LatMax = len(l), pct(l, 0.50), pct(l, 0.95), pct(l, 0.99), float64(l[len(l)-1])/1e6
	if int64(len(l)) < after-before {
		e.res.note(fmt.Sprintf("pg_recvlogical latency reference at %d rows/s: %d of %d rows seen", r, len(l), after-before))
	}
	return st, nil
}
