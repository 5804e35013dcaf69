package faulttest

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
)

// proxy forwards TCP connections from a loopback port to a target address and
// can cut every current connection, as a network fault would.
type proxy struct {
	ln     net.Listener
	target string
	// rewrite, if set, sees every message the server sends (type and body)
	// and returns the body to forward instead.
	rewrite func(typ byte, body []byte) []byte

	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	accepted int
	closed   bool
	wg       sync.WaitGroup
}

// newProxy listens on 127.0.0.1:0 and forwards to target; it is closed at
// cleanup.
func newProxy(t testing.TB, target string, rewrite ...func(typ byte, body []byte) []byte) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	if len(rewrite) > 0 {
		p.rewrite = rewrite[0]
	}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Port is the port clients connect to.
func (p *proxy) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.accepted++
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(up, c)
		if p.rewrite != nil {
			go p.pipeMessages(c, up)
		} else {
			go p.pipe(c, up)
		}
	}
}

// pipe copies src to dst; when either side ends, both are closed.
func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	p.drop(dst)
	p.drop(src)
}

// pipeMessages copies the server's protocol messages from src to dst through
// p.rewrite. (No SSL or GSS negotiation: the DSN must say sslmode=disable.)
func (p *proxy) pipeMessages(dst, src net.Conn) {
	defer p.wg.Done()
	defer p.drop(dst)
	defer p.drop(src)
	r := bufio.NewReaderSize(src, 64<<10)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			return
		}
		body := make([]byte, n)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		body = p.rewrite(hdr[0], body)
		binary.BigEndian.PutUint32(hdr[1:], uint32(len(body)+4))
		if _, err := dst.Write(append(hdr[:], body...)); err != nil {
			return
		}
	}
}

func (p *proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// cut closes every current connection, both sides. With reset, the sockets
// are closed with SO_LINGER 0, so the peers get a TCP RST instead of a FIN.
// It returns the number of client connections cut.
func (p *proxy) cut(reset bool) int {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.conns = map[net.Conn]struct{}{}
	p.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0)
		}
		c.Close()
	}
	return len(conns) / 2
}

// connections is the number of client connections accepted so far.
func (p *proxy) connections() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

func (p *proxy) close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.cut(false)
	p.wg.Wait()
}
