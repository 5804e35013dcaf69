package postgresworker

import (
	"context"
	"sync"
	"time"

	"github.com/golangid/candi/candiutils"
	"github.com/golangid/candi/codebase/interfaces"
	"github.com/pgcdc/pgcdc"
)

// leaseMisses is how many checks in a row a standby must find the active
// instance's heartbeat missing before it takes the lock over.
const leaseMisses = 3

// candiLeader turns a candi interfaces.Locker (candi's Redis locker: INCR to
// lock, DEL to unlock, no expiry) into a pgcdc.Locker that elects the one
// instance streaming a source.
//
// candi's locker has no expiry, so a holder killed with -9 would keep its key
// for ever. The lease is a heartbeat key next to the lock key: the holder
// recreates it every interval/3; every standby deletes it every interval and
// takes the lock over once it found it missing leaseMisses times in a row.
// The lock only picks the active instance: at-least-once delivery never
// depends on it (in logical mode the replication slot admits one reader).
type candiLeader struct {
	locker   interfaces.Locker
	prefix   string
	interval time.Duration
}

// newCandiLeader returns nil for no locker (nil or candi's NoopLocker).
func newCandiLeader(l interfaces.Locker, prefix string, interval time.Duration) pgcdc.Locker {
	switch l.(type) {
	case nil, candiutils.NoopLocker, *candiutils.NoopLocker:
		return nil
	}
	if interval <= 0 {
		interval = defaultLockInterval
	}
	return &candiLeader{locker: l, prefix: prefix, interval: interval}
}

// Lock blocks until this instance holds the lock named key or ctx is done.
func (c *candiLeader) Lock(ctx context.Context, key string) (context.Context, func(), error) {
	lockKey := c.prefix + key
	aliveKey := lockKey + ":alive"
	misses := 0
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		if !c.locker.IsLocked(lockKey) { // INCR gave 1: ours
			c.locker.Unlock(aliveKey)
			c.locker.IsLocked(aliveKey)
			return c.hold(ctx, lockKey, aliveKey)
		}
		// Held by another instance: challenge its heartbeat.
		if c.locker.HasBeenLocked(aliveKey) {
			c.locker.Unlock(aliveKey)
			misses = 0
		} else if misses++; misses >= leaseMisses {
			c.locker.Unlock(lockKey) // its holder stopped renewing: free it
			misses = 0
			continue
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-t.C:
		}
	}
}

// hold renews the heartbeat until release, and ends the held context when
// the lock key disappears (deleted by a standby or by hand).
func (c *candiLeader) hold(ctx context.Context, lockKey, aliveKey string) (context.Context, func(), error) {
	held, lost := context.WithCancel(context.WithoutCancel(ctx))
	stop := make(chan struct{})
	done := make(chan struct{})
	stolen := false // the lock key vanished: it may be another holder's now
	go func() {
		defer close(done)
		defer lost()
		t := time.NewTicker(c.interval / leaseMisses)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			if !c.locker.HasBeenLocked(lockKey) {
				stolen = true
				return
			}
			if !c.locker.HasBeenLocked(aliveKey) {
				c.locker.IsLocked(aliveKey)
			}
		}
	}()
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(stop)
			<-done
			if !stolen {
				c.locker.Unlock(aliveKey)
				c.locker.Unlock(lockKey)
			}
		})
	}
	return held, release, nil
}
