package postgresworker

import (
	"encoding/json"
)

// PostgresHandlerRouteKey names a table of a named source (see
// AddPostgresDSN). Its String form is the route CreateHandlerRoute returns.
type PostgresHandlerRouteKey struct {
	SourceName string `json:"sourceName"`
	TableName  string `json:"tableName"`
}

// String returns the route string for the key (a small JSON object, as in
// candi).
func (p PostgresHandlerRouteKey) String() string {
	b, err := json.Marshal(p)
	if err != nil { // cannot happen for two strings
		return p.TableName
	}
	return string(b)
}

// CreateHandlerRoute returns the route to mount a handler of table in the
// source added with AddPostgresDSN(sourceName, ...):
//
//	group.Add(postgresworker.CreateHandlerRoute("billing", "invoices"), h.invoices)
func CreateHandlerRoute(sourceName, tableName string) string {
	return PostgresHandlerRouteKey{
		SourceName: sourceName, TableName: tableName,
	}.String()
}

// ParseHandlerRoute reverses CreateHandlerRoute. Any other string is a table
// of the default source: it returns "" and the string.
func ParseHandlerRoute(str string) (sourceName, tableName string) {
	var key PostgresHandlerRouteKey
	err := json.Unmarshal([]byte(str), &key)
	if key.SourceName == "" && err != nil {
		key.TableName = str
	}
	return key.SourceName, key.TableName
}
