package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// procCPU returns utime+stime of a process in seconds (from /proc/<pid>/stat).
func procCPU(pid int) (float64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	// fields after comm: state(0) ppid(1) ... utime(11) stime(12)
	if len(f) < 13 {
		return 0, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100, true // CLK_TCK is 100 on Linux
}

// cpuWatch follows the CPU time of the walsender serving a slot: it finds
// the slot's active_pid, then samples that process every 50 ms and keeps
// the last value (so the figure survives the walsender's exit, give or
// take the last 50 ms).
type cpuWatch struct {
	mu     sync.Mutex
	last   float64
	pid    int
	cancel context.CancelFunc
	done   chan struct{}
}

func (e *env) watchWalsender(slot string) *cpuWatch {
	ctx, cancel := context.WithCancel(context.Background())
	w := &cpuWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		conn, err := pgx.Connect(ctx, e.dsn)
		if err != nil {
			return
		}
		defer conn.Close(context.Background())
		var pid int
		for pid == 0 {
			var p *int32
			if err := conn.QueryRow(ctx, `SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&p); err == nil && p != nil {
				pid = int(*p)
				break
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
		w.mu.Lock()
		w.pid = pid
		w.mu.Unlock()
		for {
			v, ok := procCPU(pid)
			if !ok {
				return
			}
			w.mu.Lock()
			w.last = v
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return w
}

// stop ends the watch and returns the walsender's CPU seconds (0 if it was
// never found).
func (w *cpuWatch) stop() float64 {
	w.mu.Lock()
	pid := w.pid
	w.mu.Unlock()
	if pid != 0 {
		if v, ok := procCPU(pid); ok {
			w.mu.Lock()
			w.last = v
			w.mu.Unlock()
		}
	}
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last
}
