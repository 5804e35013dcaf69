package file_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/file"
)

func TestFileSinkAppendsOneLinePerEvent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, []byte("{\"old\":1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := file.New(file.Config{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			msg := sink.Message{EventID: fmt.Sprint(i), Payload: fmt.Appendf(nil, `{"n":%d}`, i)}
			if err := s.Deliver(context.Background(), []sink.Message{msg}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// A json column keeps its line breaks in the event; the line does not.
	if err := s.Deliver(context.Background(), []sink.Message{{Payload: []byte("{\"doc\": {\"a\":\n 1}}")}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Deliver(context.Background(), []sink.Message{{EventID: "x", Payload: []byte("{broken\n")}}); !sink.IsPermanent(err) {
		t.Fatalf("invalid JSON with a line break: %v, want a permanent error", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 52 || lines[0] != `{"old":1}` || lines[51] != `{"doc":{"a":1}}` {
		t.Fatalf("%d lines: first %q last %q", len(lines), lines[0], lines[len(lines)-1])
	}
	if err := s.Deliver(context.Background(), []sink.Message{{Payload: []byte("{}")}}); err != sink.ErrClosed {
		t.Fatalf("Deliver after Close = %v", err)
	}
}

func TestFileSinkConfig(t *testing.T) {
	err := (&file.Config{Fsync: "sometimes", FsyncInterval: -1}).Validate()
	for _, want := range []string{"path: missing", `fsync: "sometimes"`, "fsync_interval: must not be negative"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want %q", err, want)
		}
	}
	if _, err := file.New(file.Config{Path: filepath.Join(t.TempDir(), "no", "dir", "f")}); err == nil {
		t.Error("New in a missing directory succeeded")
	}
}
