package postgresworker

const (
	// ActionInsert is the action of an event for an INSERT.
	ActionInsert = "INSERT"
	// ActionUpdate is the action of an event for an UPDATE.
	ActionUpdate = "UPDATE"
	// ActionDelete is the action of an event for a DELETE.
	ActionDelete = "DELETE"
)

type (
	// EventPayload is the event model: decode a handler's
	// EventContext.Message() into it, as with candi's postgres_worker.
	// The fields, their types and JSON names are candi's own.
	//
	// The message may carry more fields after "data" (schema, source, lsn,
	// xid, commit_time, unchanged_toast); decoding into EventPayload ignores
	// them. See docs/candi.md.
	EventPayload struct {
		EventID string           `json:"event_id"`
		Table   string           `json:"table"`
		Action  string           `json:"action"`
		Data    EventPayloadData `json:"data"`
	}
	// EventPayloadData holds the row before (Old) and after (New) the
	// change, each a JSON object as PostgreSQL's row_to_json renders it, or
	// null. IsTooLongPayload is never set by this worker: rows have no size
	// limit, so OldID and NewID stay empty. They are kept so that code
	// written for candi compiles and behaves unchanged.
	EventPayloadData struct {
		IsTooLongPayload bool        `json:"is_too_long_payload,omitempty"`
		OldID            string      `json:"old_id"`
		NewID            string      `json:"new_id"`
		Old              interface{} `json:"old"`
		New              interface{} `json:"new"`
	}
)

// GetID returns the id of the row when the payload was cut because it was
// too long (candi's 7500-byte limit), else "". This worker never cuts
// payloads, so it returns "" for its own events; it keeps candi's behaviour
// for payloads built elsewhere.
func (e EventPayload) GetID() string {
	if e.Data.IsTooLongPayload {
		if e.Data.NewID != "" {
			return e.Data.NewID
		}
		return e.Data.OldID
	}

	return ""
}
