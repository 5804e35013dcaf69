//go:build !linux

package rawread

import "net"

// Conn returns c unchanged: raw reads are implemented on Linux only.
func Conn(c net.Conn) net.Conn { return c }
