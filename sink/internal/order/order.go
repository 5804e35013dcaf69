// Package order splits a batch so that a failure cannot reorder one
// row's messages.
package order

import "github.com/pgcdc/pgcdc/sink"

// Waves splits msgs so that no wave holds two messages of one RowKey: the
// n-th message of each key is in wave n, and waves keep msgs' order. A
// sink that sends a wave's messages concurrently, and waits for a wave to
// be acknowledged before sending the next, cannot store a row's later
// message while an earlier one failed. Most batches are one wave.
func Waves(msgs []sink.Message) [][]*sink.Message {
	if len(msgs) == 1 {
		return [][]*sink.Message{{&msgs[0]}}
	}
	seen := make(map[uint64]int, len(msgs))
	var out [][]*sink.Message
	for i := range msgs {
		n := seen[msgs[i].RowKey]
		seen[msgs[i].RowKey] = n + 1
		if n == len(out) {
			out = append(out, make([]*sink.Message, 0, len(msgs)-i))
		}
		out[n] = append(out[n], &msgs[i])
	}
	return out
}
