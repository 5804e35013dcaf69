package postgresworker

import (
	"bytes"
	"encoding/json"
	"testing"

	candipw "github.com/golangid/candi/codebase/app/postgres_worker"
)

func TestWriteCandiMessage(t *testing.T) {
	in := `{"event_id":"0123456789abcdef0123456789abcdef","table":"orders","action":"UPDATE",` +
		`"data":{"old":{"id":1,"n":1.10,"s":"<&>"},"new":{"id":1,"n":90071992547409931}},` +
		`"schema":"public","source":"","lsn":"0/1","xid":7,"commit_time":"2026-01-01T00:00:00Z","unchanged_toast":["body"]}`
	want := `{"event_id":"0123456789abcdef0123456789abcdef","table":"orders","action":"UPDATE",` +
		`"data":{"old_id":"","new_id":"","old":{"id":1,"n":1.10,"s":"<&>"},"new":{"id":1,"n":90071992547409931}},` +
		`"schema":"public","source":"","lsn":"0/1","xid":7,"commit_time":"2026-01-01T00:00:00Z","unchanged_toast":["body"]}`
	var b bytes.Buffer
	if err := writeCandiMessage(&b, []byte(in)); err != nil {
		t.Fatal(err)
	}
	if b.String() != want {
		t.Fatalf("got  %s\nwant %s", b.String(), want)
	}
	// candi's own type decodes it.
	var p candipw.EventPayload
	if err := json.Unmarshal(b.Bytes(), &p); err != nil || p.Action != ActionUpdate || p.Data.Old == nil || p.Data.IsTooLongPayload || p.GetID() != "" {
		t.Fatalf("candi's EventPayload: %+v, %v", p, err)
	}

	// INSERT: old null.
	b.Reset()
	if err := writeCandiMessage(&b, []byte(`{"event_id":"x","table":"t","action":"INSERT","data":{"old":null,"new":{"id":1}}}`)); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); got != `{"event_id":"x","table":"t","action":"INSERT","data":{"old_id":"","new_id":"","old":null,"new":{"id":1}}}` {
		t.Fatalf("insert: %s", got)
	}
	for _, bad := range []string{``, `[]`, `{"data":[1]}`, `{"event_id":`} {
		if err := writeCandiMessage(&b, []byte(bad)); err == nil {
			t.Errorf("no error for %q", bad)
		}
	}
}
