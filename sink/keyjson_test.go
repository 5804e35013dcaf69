package sink

import "testing"

func TestKeyJSON(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cols    []string
		payload string
		want    string
	}{
		{"insert", []string{"id"}, `{"event_id":"e","table":"t","action":"INSERT","data":{"old":null,"new":{"id":42,"v":"x"}}}`, `{"id":42}`},
		{"delete takes old", []string{"region", "id"}, `{"action":"DELETE","data":{"old":{"id":7,"region":"eu","v":1},"new":null}}`, `{"region":"eu","id":7}`},
		{"exact values", []string{"n"}, `{"action":"INSERT","data":{"old":null,"new":{"n":12.50}}}`, `{"n":12.50}`},
		{"no key", nil, `{"action":"INSERT","data":{"old":null,"new":{"id":1}}}`, ``},
		{"key column missing", []string{"id"}, `{"action":"TRUNCATE","data":{"old":null,"new":null}}`, ``},
	} {
		got := string(KeyJSON(Message{KeyColumns: tc.cols, Payload: []byte(tc.payload)}))
		if got != tc.want {
			t.Errorf("%s: KeyJSON = %q, want %q", tc.name, got, tc.want)
		}
	}
}
