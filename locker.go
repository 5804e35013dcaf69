package pgcdc

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// AdvisoryLocker is a Locker backed by a PostgreSQL session advisory lock:
// the lock lives as long as the connection that took it, so an instance that
// dies (even kill -9) frees it as soon as PostgreSQL notices the closed
// connection, and a standby takes over.
type AdvisoryLocker struct {
	dsn      string
	interval time.Duration
}

// NewAdvisoryLocker returns a Locker that takes advisory locks in the
// database dsn. A standby tries to take the lock every interval (0 means
// 500ms), and the holder checks its connection as often.
func NewAdvisoryLocker(dsn string, interval time.Duration) *AdvisoryLocker {
	if interval <= 0 {
		interval = 500 * time.Millisecond
	}
	return &AdvisoryLocker{dsn: dsn, interval: interval}
}

// Lock blocks until it holds the advisory lock for key (hashed to 64 bits)
// or ctx is done. The held context ends when the lock's connection fails.
func (l *AdvisoryLocker) Lock(ctx context.Context, key string) (context.Context, func(), error) {
	cfg, err := pgx.ParseConfig(l.dsn)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: advisory locker: the DSN cannot be parsed", ErrConfig)
	}
	cfg.RuntimeParams["application_name"] = "pgcdc-lock"
	h := fnv.New64a()
	h.Write([]byte(key))
	id := int64(h.Sum64())
	for {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			var got bool
			if err = conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", id).Scan(&got); err == nil && got {
				return l.hold(ctx, conn, id)
			}
			conn.Close(context.Background())
		}
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		t := time.NewTimer(l.interval)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, nil, ctx.Err()
		}
	}
}

// hold watches the lock's connection until release or failure.
func (l *AdvisoryLocker) hold(ctx context.Context, conn *pgx.Conn, id int64) (context.Context, func(), error) {
	held, lost := context.WithCancel(context.WithoutCancel(ctx))
	released := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer lost()
		t := time.NewTicker(l.interval)
		defer t.Stop()
		for {
			select {
			case <-released:
				uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _ = conn.Exec(uctx, "SELECT pg_advisory_unlock($1)", id)
				conn.Close(uctx)
				cancel()
				return
			case <-t.C:
				pctx, cancel := context.WithTimeout(context.Background(), 5*l.interval+time.Second)
				err := conn.Ping(pctx)
				cancel()
				if err != nil {
					conn.Close(context.Background())
					return
				}
			}
		}
	}()
	var once sync.Once
	release := func() {
		once.Do(func() { close(released) })
		<-done
	}
	return held, release, nil
}

var _ Locker = (*AdvisoryLocker)(nil)
