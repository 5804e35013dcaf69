//go:build linux

// Package rawread reads sockets without the scheduler's system-call
// bookkeeping. A read of a non-blocking socket never blocks, so it can skip
// what the Go runtime does around a system call that might (entersyscall),
// which includes waking the runtime's monitor thread whenever the program
// was idle: on a stream of small messages arriving a millisecond apart,
// those wake-ups (context switches) cost more CPU than the reads. When no
// data is ready, the read waits in the network poller as usual, honouring
// the connection's deadlines.
package rawread

import (
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Conn wraps c so that its reads are raw; c is returned unchanged when it
// does not expose its file descriptor.
func Conn(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	return &conn{Conn: c, rc: rc}
}

type conn struct {
	net.Conn
	rc syscall.RawConn
}

func (c *conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			switch e {
			case 0:
				n, errno = int(r), 0
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait in the poller
			default:
				n, errno = 0, e
				return true
			}
		}
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, os.NewSyscallError("read", errno)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}
