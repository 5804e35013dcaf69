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

func TestTruncateTo(t *testing.T) {
	for _, limit := range []int64{1, 30, 1 << 20} { // all on disk, split, all in memory
		b := New(limit, t.TempDir())
		add := func(from, to int) {
			for i := from; i < to; i++ {
				if err := b.Add([]byte(fmt.Sprint(i))); err != nil {
					t.Fatal(err)
				}
			}
		}
		add(0, 5)
		p := b.Mark()
		add(5, 9)
		if err := b.TruncateTo(p); err != nil {
			t.Fatal(err)
		}
		add(9, 12)
		var got []string
		_ = b.Each(func(m []byte) error { got = append(got, string(m)); return nil })
		if fmt.Sprint(got) != "[0 1 2 3 4 9 10 11]" || b.Len() != 8 {
			t.Fatalf("limit %d: %v (len %d)", limit, got, b.Len())
		}
		b.Close()
	}
}
