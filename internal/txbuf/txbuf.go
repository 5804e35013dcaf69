// Package txbuf holds the events of one transaction until its commit: in
// memory up to a byte budget, then in a temporary file, so a transaction of
// millions of changes does not grow the process's memory.
package txbuf

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Buffer is an append-only list of messages. It is not safe for concurrent
// use; Close removes its file.
type Buffer struct {
	limit    int64
	mem      [][]byte
	memBytes int64
	file     *os.File
	w        *bufio.Writer
	n        int
	dir      string
	fileLen  int64 // bytes written to the file
}

// Pos is a position in a buffer (see Mark).
type Pos struct {
	n, mem  int
	fileLen int64
}

// After reports whether p was marked after q.
func (p Pos) After(q Pos) bool { return p.n > q.n }

// Mark returns the current end of the buffer.
func (b *Buffer) Mark() Pos { return Pos{n: b.n, mem: len(b.mem), fileLen: b.fileLen} }

// TruncateTo drops every message added after p was marked (an aborted
// subtransaction's changes).
func (b *Buffer) TruncateTo(p Pos) error {
	if p.n >= b.n {
		return nil
	}
	b.n = p.n
	clear(b.mem[p.mem:])
	b.mem = b.mem[:p.mem]
	b.memBytes = 0
	for _, m := range b.mem {
		b.memBytes += int64(len(m))
	}
	if b.file == nil {
		return nil
	}
	if err := b.w.Flush(); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	if err := b.file.Truncate(p.fileLen); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	if _, err := b.file.Seek(p.fileLen, io.SeekStart); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	b.fileLen = p.fileLen
	return nil
}

// New returns a buffer that keeps up to limit bytes in memory (< 1 means
// 16 MiB) and spills the rest into a temporary file in dir ("" means the
// system's temporary directory).
func New(limit int64, dir string) *Buffer {
	if limit < 1 {
		limit = 16 << 20
	}
	return &Buffer{limit: limit, dir: dir}
}

// Len is the number of messages added.
func (b *Buffer) Len() int { return b.n }

// Spilled reports whether part of the buffer is on disk.
func (b *Buffer) Spilled() bool { return b.file != nil }

// Add appends a message (the buffer keeps msg; do not modify it after).
func (b *Buffer) Add(msg []byte) error {
	b.n++
	if b.file == nil && b.memBytes+int64(len(msg)) <= b.limit {
		b.mem = append(b.mem, msg)
		b.memBytes += int64(len(msg))
		return nil
	}
	if b.file == nil {
		f, err := os.CreateTemp(b.dir, "pgcdc-tx-*")
		if err != nil {
			return fmt.Errorf("txbuf: spilling a large transaction to disk: %w", err)
		}
		b.file, b.w = f, bufio.NewWriterSize(f, 1<<16)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(len(msg)))
	if _, err := b.w.Write(hdr[:]); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	if _, err := b.w.Write(msg); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	b.fileLen += int64(len(hdr) + len(msg))
	return nil
}

// Each calls fn with every message in the order added, stopping at the
// first error. It can be called more than once.
func (b *Buffer) Each(fn func(msg []byte) error) error {
	for _, m := range b.mem {
		if err := fn(m); err != nil {
			return err
		}
	}
	if b.file == nil {
		return nil
	}
	if err := b.w.Flush(); err != nil {
		return fmt.Errorf("txbuf: %w", err)
	}
	r := bufio.NewReaderSize(io.NewSectionReader(b.file, 0, b.fileLen), 1<<16)
	var hdr [4]byte
	var buf []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("txbuf: reading spilled events: %w", err)
		}
		n := int(binary.BigEndian.Uint32(hdr[:]))
		if cap(buf) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("txbuf: reading spilled events: %w", err)
		}
		if err := fn(buf); err != nil {
			return err
		}
	}
}

// Close frees the memory and removes the file.
func (b *Buffer) Close() error {
	b.mem = nil
	if b.file == nil {
		return nil
	}
	name := b.file.Name()
	err := b.file.Close()
	b.file, b.w = nil, nil
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}
