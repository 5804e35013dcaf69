package postgresworker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// writeCandiMessage writes pgcdc's event JSON msg in candi's shape:
//
//	{"event_id":…,"table":…,"action":…,"data":{"old_id":"","new_id":"","old":…,"new":…},<pgcdc's other fields>}
//
// Every value is copied byte for byte from msg (pgcdc renders the rows
// exactly as row_to_json does); only the order of the top-level fields and
// candi's empty old_id/new_id change.
func writeCandiMessage(w io.Writer, msg []byte) error {
	fields, err := rawObject(msg)
	if err != nil {
		return err
	}
	var data []rawField
	var rest []rawField
	get := func(key string) json.RawMessage {
		for _, f := range fields {
			if f.key == key {
				return f.value
			}
		}
		return nil
	}
	for _, f := range fields {
		switch f.key {
		case "event_id", "table", "action":
		case "data":
			if data, err = rawObject(f.value); err != nil {
				return fmt.Errorf("data: %w", err)
			}
		default:
			rest = append(rest, f)
		}
	}
	oldRow, newRow := json.RawMessage("null"), json.RawMessage("null")
	for _, f := range data {
		switch f.key {
		case "old":
			oldRow = f.value
		case "new":
			newRow = f.value
		}
	}
	var b bytes.Buffer
	b.Grow(len(msg) + 32)
	b.WriteString(`{"event_id":`)
	b.Write(orNull(get("event_id")))
	b.WriteString(`,"table":`)
	b.Write(orNull(get("table")))
	b.WriteString(`,"action":`)
	b.Write(orNull(get("action")))
	b.WriteString(`,"data":{"old_id":"","new_id":"","old":`)
	b.Write(oldRow)
	b.WriteString(`,"new":`)
	b.Write(newRow)
	b.WriteByte('}')
	for _, f := range rest {
		b.WriteByte(',')
		k, _ := json.Marshal(f.key)
		b.Write(k)
		b.WriteByte(':')
		b.Write(f.value)
	}
	b.WriteByte('}')
	_, err = w.Write(b.Bytes())
	return err
}

func orNull(v json.RawMessage) []byte {
	if len(v) == 0 {
		return []byte("null")
	}
	return v
}

type rawField struct {
	key   string
	value json.RawMessage
}

// rawObject splits a JSON object into its fields, in order, each value as
// its exact bytes.
func rawObject(b []byte) ([]rawField, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	var out []rawField
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, ok := tok.(string)
		if !ok {
			return nil, errors.New("object key is not a string")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, rawField{key: key, value: v})
	}
	return out, nil
}
