package webhook_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcdc/pgcdc/sink"
	"github.com/pgcdc/pgcdc/sink/webhook"
)

func TestSignVerify(t *testing.T) {
	now := time.Unix(1700000000, 0)
	body := []byte(`{"event_id":"x"}`)
	h := webhook.Sign("secret", now, body)
	// The value is the documented scheme: HMAC-SHA256 of "<t>.<body>".
	if !strings.HasPrefix(h, "t=1700000000,v1=") || len(h) != len("t=1700000000,v1=")+64 {
		t.Fatalf("Sign = %q", h)
	}
	if err := webhook.Verify("secret", h, body, time.Minute, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		secret, header string
		body           []byte
		at             time.Time
	}{
		{"other", h, body, now},
		{"secret", h, []byte(`{"event_id":"y"}`), now},
		{"secret", h, body, now.Add(time.Hour)},
		{"secret", "v1=abc", body, now},
	} {
		if webhook.Verify(c.secret, c.header, c.body, time.Minute, c.at) == nil {
			t.Errorf("Verify(%q, %q, %s) accepted", c.secret, c.header, c.body)
		}
	}
}

func TestDeliverStatuses(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	var headers []http.Header
	status := []int{503, 200}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		bodies = append(bodies, string(b))
		headers = append(headers, r.Header.Clone())
		code := status[0]
		if len(status) > 1 {
			status = status[1:]
		}
		if code == 503 {
			w.Header().Set("Retry-After", "0")
		}
		w.WriteHeader(code)
		_, _ = io.WriteString(w, "answer body")
	}))
	defer srv.Close()
	s, err := webhook.New(webhook.Config{URL: srv.URL + "/in?key=k", Secret: "sec", Headers: map[string]string{"X-Team": "a"}, MinBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []sink.Message{{EventID: "e1", Payload: []byte(`{"n":1}`)}, {EventID: "e2", Payload: []byte(`{"n":2}`)}}
	if err := s.Deliver(context.Background(), msgs); err != nil {
		t.Fatalf("503 then 200: %v", err)
	}
	var arr []json.RawMessage
	if len(bodies) != 2 || json.Unmarshal([]byte(bodies[1]), &arr) != nil || len(arr) != 2 {
		t.Fatalf("bodies = %q, want the batch as a JSON array, twice", bodies)
	}
	h := headers[1]
	if h.Get(webhook.HeaderEventID) != "e1,e2" || h.Get("X-Team") != "a" || h.Get("Content-Type") != "application/json" ||
		webhook.Verify("sec", h.Get(webhook.HeaderSignature), []byte(bodies[1]), time.Minute, time.Now()) != nil {
		t.Errorf("headers = %v", h)
	}

	status = []int{404}
	err = s.Deliver(context.Background(), msgs[:1])
	if !sink.IsPermanent(err) || !strings.Contains(err.Error(), "404 Not Found") || !strings.Contains(err.Error(), "answer body") ||
		strings.Contains(err.Error(), "key=k") {
		t.Errorf("404: %v, want a permanent error with status and body, without the query", err)
	}
	status = []int{500}
	err = s.Deliver(context.Background(), msgs[:1])
	if err == nil || sink.IsPermanent(err) || !strings.Contains(err.Error(), "after 3 attempts") {
		t.Errorf("500 for ever: %v, want a retryable error after 3 attempts", err)
	}
}

func TestConfigValidate(t *testing.T) {
	err := (&webhook.Config{URL: "ftp://x", MaxAttempts: -1, Headers: map[string]string{"a b": "c"}}).Validate()
	for _, want := range []string{"url: want an http", "max_attempts", `headers: "a b"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want %q", err, want)
		}
	}
}
