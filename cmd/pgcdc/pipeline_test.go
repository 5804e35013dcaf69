package main

import (
	"testing"

	"github.com/pgcdc/pgcdc/sink"
)

func TestPipelineFilters(t *testing.T) {
	p := &pipeline{rules: []*rule{
		{sinks: []string{"all"}},
		{sinks: []string{"paid"}, actions: []string{"UPDATE"}, changed: []string{"status"}, where: map[string]any{"status": "paid", "total": 12.5}},
		{sinks: []string{"trunc", "all"}, actions: []string{"TRUNCATE"}},
		{sinks: []string{"gone"}, actions: []string{"DELETE"}, where: map[string]any{"id": 7, "vip": true, "note": nil}},
	}}
	for _, c := range []struct {
		name, action, payload string
		want                  []string
	}{
		{"insert", "INSERT", `{"action":"INSERT","data":{"old":null,"new":{"id":1,"status":"paid","total":12.50}}}`, []string{"all"}},
		{"paid update", "UPDATE", `{"action":"UPDATE","data":{"old":{"status":"new","total":12.5},"new":{"status":"paid","total":12.50}}}`, []string{"all", "paid"}},
		{"status unchanged", "UPDATE", `{"action":"UPDATE","data":{"old":{"status":"paid","total":1},"new":{"status":"paid","total":12.5}}}`, []string{"all"}},
		{"no old row", "UPDATE", `{"action":"UPDATE","data":{"old":null,"new":{"status":"paid","total":12.5}}}`, []string{"all", "paid"}},
		{"other total", "UPDATE", `{"action":"UPDATE","data":{"old":{"status":"new"},"new":{"status":"paid","total":13}}}`, []string{"all"}},
		{"unchanged toast", "UPDATE", `{"action":"UPDATE","data":{"old":{"status":"new"},"new":{"total":12.5}},"unchanged_toast":["status"]}`, []string{"all"}},
		{"truncate", "TRUNCATE", `{"action":"TRUNCATE","data":{"old":null,"new":null}}`, []string{"trunc", "all"}},
		{"delete vip", "DELETE", `{"action":"DELETE","data":{"old":{"id":7,"vip":true,"note":null},"new":null}}`, []string{"all", "gone"}},
		{"delete other", "DELETE", `{"action":"DELETE","data":{"old":{"id":7,"vip":false,"note":null},"new":null}}`, []string{"all"}},
	} {
		got, err := p.targets(sink.Message{Action: c.action, Payload: []byte(c.payload)})
		if err != nil || len(got) != len(c.want) {
			t.Errorf("%s: targets = %v, %v; want %v", c.name, got, err, c.want)
			continue
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Errorf("%s: targets = %v, want %v", c.name, got, c.want)
			}
		}
	}
}
