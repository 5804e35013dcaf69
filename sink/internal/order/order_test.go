package order

import (
	"fmt"
	"testing"

	"github.com/pgcdc/pgcdc/sink"
)

func TestWaves(t *testing.T) {
	keys := []uint64{1, 2, 1, 3, 1, 2}
	msgs := make([]sink.Message, len(keys))
	for i, k := range keys {
		msgs[i] = sink.Message{EventID: fmt.Sprint(i), RowKey: k}
	}
	var got [][]string
	for _, w := range Waves(msgs) {
		var ids []string
		for _, m := range w {
			ids = append(ids, m.EventID)
		}
		got = append(got, ids)
	}
	if fmt.Sprint(got) != "[[0 1 3] [2 5] [4]]" {
		t.Errorf("Waves = %v", got)
	}
}
