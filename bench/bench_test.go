package main

import "testing"

// The benchmark is not a test: CI only builds and vets it. This checks the
// pure helpers so `go test` has something cheap to run.
func TestParse(t *testing.T) {
	msg := []byte(`{"event_id":"x","table":"t","action":"INSERT","data":{"old":null,"new":{"id":42,"payload":"p","created_at":"2024-01-02T03:04:05.123456+00:00"}}}`)
	if id, ok := parseID(msg); !ok || id != 42 {
		t.Fatalf("parseID = %d, %v", id, ok)
	}
	if _, ok := parseCreatedAt(msg); !ok {
		t.Fatal("parseCreatedAt failed")
	}
	candi := []byte(`{"event_id":"x","table":"t","action":"INSERT","data":{"old_id":"","new_id":"","old":null,"new":{"created_at":"2024-01-02T03:04:05.1+00:00","id":7,"payload":"p"}}}`)
	if id, ok := parseID(candi); !ok || id != 7 {
		t.Fatalf("parseID(candi) = %d, %v", id, ok)
	}
	if median([]float64{3, 1, 2}) != 2 {
		t.Fatal("median")
	}
}
