package change

import (
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"github.com/pgcdc/pgcdc/internal/rowjson"
)

// The event JSON is built here, by both capture engines and snapshots, so
// its format is one edit away:
//
//	{"event_id":ID,"table":T,"action":A,"data":{"old":OLD,"new":NEW},
//	 "schema":S,"source":SRC[,extra fields],"lsn":L,"xid":X,"commit_time":C}
//
// An event is appended in parts, in this order: AppendHead, the old row,
// AppendNew, the new row, AppendSource, any extra fields (AppendNames,
// AppendField), AppendTail. The logical engine keeps what lies between the
// head and the tail for a transaction still in progress, so the parts
// split where the commit's fields begin.

// AppendHead starts an event: its id, table and action, up to the old row.
// tableJSON is the table name as a JSON string.
func AppendHead(b []byte, eventID string, tableJSON []byte, action string) []byte {
	b = AppendID(b, eventID)
	return AppendBodyHead(b, tableJSON, action)
}

// AppendID starts an event with its event_id.
func AppendID(b []byte, eventID string) []byte {
	b = append(b, `{"event_id":"`...)
	b = append(b, eventID...)
	return append(b, '"')
}

// AppendBodyHead writes the table and action, up to the old row: what
// follows AppendID.
func AppendBodyHead(b []byte, tableJSON []byte, action string) []byte {
	b = append(b, `,"table":`...)
	b = append(b, tableJSON...)
	b = append(b, `,"action":`...)
	b = rowjson.AppendString(b, action)
	return append(b, `,"data":{"old":`...)
}

// AppendNew ends the old row and starts the new one.
func AppendNew(b []byte) []byte { return append(b, `,"new":`...) }

// AppendSource ends the new row and writes the schema and source (both as
// JSON strings).
func AppendSource(b []byte, schemaJSON, sourceJSON []byte) []byte {
	b = append(b, `},"schema":`...)
	b = append(b, schemaJSON...)
	b = append(b, `,"source":`...)
	return append(b, sourceJSON...)
}

// AppendNames writes an extra field holding a list of column names
// (unchanged_toast, omitted_generated); nothing when names is empty.
func AppendNames(b []byte, key string, names []string) []byte {
	if len(names) == 0 {
		return b
	}
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":[`...)
	for i, name := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = rowjson.AppendString(b, name)
	}
	return append(b, ']')
}

// AppendField writes an extra field whose value is raw JSON (context,
// snapshot).
func AppendField(b []byte, key string, raw []byte) []byte {
	b = append(b, `,"`...)
	b = append(b, key...)
	b = append(b, `":`...)
	return append(b, raw...)
}

// ContextJSON is the JSON of an event's "context" field for a writer's
// context (pgcdc.SetTxContext): the value as sent when it is JSON, else a
// JSON string of it (nothing the writer sent is dropped).
func ContextJSON(content []byte) []byte {
	if json.Valid(content) {
		return append([]byte(nil), content...)
	}
	return rowjson.AppendString(nil, strings.ToValidUTF8(string(content), "\uFFFD"))
}

// AppendTail writes the commit's fields and ends the event. An lsn of 0 is
// left out (the trigger engine has none).
func AppendTail(b []byte, lsn uint64, xid uint32, commitTime time.Time) []byte {
	if lsn != 0 {
		b = append(b, `,"lsn":"`...)
		b = AppendLSN(b, lsn)
		b = append(b, '"')
	}
	b = append(b, `,"xid":`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	b = append(b, `,"commit_time":"`...)
	b = commitTime.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...)
}
