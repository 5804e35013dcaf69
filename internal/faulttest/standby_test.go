package faulttest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

// TestStandbyTakeover runs several consumer processes of the same worker
// (same worker type, same source) while rows are written. Exactly one
// streams at a time — the recorded deliveries switch instance only at a
// takeover — the others stand by (stay alive), and after kill -9 of the
// active one another takes over within 5 s (kill to the first delivery of a
// row written after the kill). Nothing is lost. Two variants: the slot alone
// as the lock, and pgcdc.NewAdvisoryLocker.
func TestStandbyTakeover(t *testing.T) {
	for _, locker := range []string{"slot", "advisory"} {
		t.Run(locker, func(t *testing.T) { testStandby(t, locker) })
	}
}

func testStandby(t *testing.T, locker string) {
	sz := suiteSizes()
	rng := newRand(t)
	dsn := pgtest.NewDatabase(t)
	recDSN := newRecordDB(t)
	execSQL(t, dsn, `CREATE TABLE rows (id bigint PRIMARY KEY)`)
	src, rec := newPool(t, dsn), newPool(t, recDSN)
	bin := buildConsumer(t)
	wt := "ft_standby_" + locker
	const limit = 5 * time.Second

	procs := map[string]*proc{}
	gen := 0
	start := func(name string) {
		gen++
		args := []string{"-dsn", dsn, "-record-dsn", recDSN, "-table", "rows", "-worker-type", wt,
			"-run", strconv.Itoa(gen), "-instance", name, "-goroutines", "4",
			"-min-reconnect", "200ms", "-max-reconnect", "1s"}
		if locker == "advisory" {
			args = append(args, "-locker", "advisory", "-lock-interval", "200ms")
		}
		procs[name] = startConsumer(t, bin, name, args...)
	}
	for i := range sz.instances {
		start(string(rune('a' + i)))
	}
	waitSlotActive(t, src, slotName(wt), true)
	wr := startWriter(dsn, "rows", 5, 2*time.Millisecond, rng.Uint64())
	defer wr.stop()

	// active returns the instance that recorded the latest delivery.
	active := func(after int64) string {
		var inst string
		waitUntil(t, time.Minute, 10*time.Millisecond, "a delivery", func(ctx context.Context) (bool, error) {
			err := rec.QueryRow(ctx, `SELECT inst FROM seen WHERE id > $1 ORDER BY id DESC LIMIT 1`, after).Scan(&inst)
			if errors.Is(err, pgx.ErrNoRows) {
				return false, nil
			}
			return err == nil, err
		})
		return inst
	}
	var maxTakeover time.Duration
	var lastID int64
	for k := 1; k <= sz.takeovers; k++ {
		victim := active(lastID)
		for name, p := range procs {
			if p.exited() {
				t.Fatalf("instance %s exited while standing by: %v\n%s", name, p.err, p.tail(3000))
			}
		}
		time.Sleep(time.Duration(200+rng.Int64N(300)) * time.Millisecond) // stream a little, then a random instant
		boundary := wr.next.Load() + 5
		procs[victim].kill()
		killedAt := time.Now()
		var heir string
		var at time.Time
		waitUntil(t, limit+30*time.Second, 10*time.Millisecond, fmt.Sprintf("takeover %d", k), func(ctx context.Context) (bool, error) {
			err := rec.QueryRow(ctx, `SELECT inst, at, id FROM seen WHERE row_id >= $1 ORDER BY id LIMIT 1`, boundary).Scan(&heir, &at, &lastID)
			if errors.Is(err, pgx.ErrNoRows) {
				return false, nil
			}
			return err == nil, err
		})
		d := at.Sub(killedAt)
		maxTakeover = max(maxTakeover, d)
		t.Logf("takeover %d: killed %s, %s took over after %s", k, victim, heir, d.Round(time.Millisecond))
		if heir == victim {
			t.Fatalf("takeover %d: the killed instance %s recorded a row written after its death", k, victim)
		}
		if d > limit {
			t.Errorf("takeover %d took %s, more than %s", k, d.Round(time.Millisecond), limit)
		}
		delete(procs, victim)
		start(victim + "'")
	}
	waitUntil(t, 5*time.Minute, 20*time.Millisecond, fmt.Sprintf("%d rows written", sz.standbyRows), func(context.Context) (bool, error) {
		return wr.next.Load() > int64(sz.standbyRows), nil
	})
	wr.stop()
	waitSlotConfirmed(t, src, slotName(wt), currentLSN(t, src), 2*time.Minute)

	written := writtenIDs(t, src, "rows")
	seen := loadSeen(t, rec)
	tl := countSeen(t, written, seen)
	tl.check(t)
	// One reader at a time: in recording order, the instance changes only
	// at takeovers.
	var switches []string
	for i := 1; i < len(seen); i++ {
		if seen[i].inst != seen[i-1].inst {
			switches = append(switches, seen[i-1].inst+"->"+seen[i].inst)
		}
	}
	t.Logf("recording instance changes: %s", strings.Join(switches, " "))
	if len(switches) > sz.takeovers {
		t.Errorf("the recording instance changed %d times for %d takeovers: more than one instance streamed at a time (%v)", len(switches), sz.takeovers, switches)
	}
	for name, p := range procs {
		if p.exited() {
			t.Errorf("instance %s exited: %v", name, p.err)
		}
	}
	for _, p := range procs {
		p.term(t, 30*time.Second)
	}
	figures(t, "standby_"+locker, tl.written, tl.delivered, tl.duplicates, maxTakeover)
}
