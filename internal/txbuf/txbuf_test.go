package txbuf

import (
	"fmt"
	"os"
	"testing"
)

func TestSpillsAndReplaysInOrder(t *testing.T) {
	dir := t.TempDir()
	b := New(100, dir)
	for i := range 1000 {
		if err := b.Add([]byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	if !b.Spilled() || b.Len() != 1000 {
		t.Fatalf("spilled=%v len=%d", b.Spilled(), b.Len())
	}
	for range 2 { // Each can be repeated (a retried handler)
		i := 0
		err := b.Each(func(m []byte) error {
			if want := fmt.Sprintf(`{"n":%d}`, i); string(m) != want {
				return fmt.Errorf("message %d = %s, want %s", i, m, want)
			}
			i++
			return nil
		})
		if err != nil || i != 1000 {
			t.Fatalf("Each: %v after %d", err, i)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Fatalf("files left after Close: %v", left)
	}
}
