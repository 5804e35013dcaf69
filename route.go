package pgcdc

import (
	"encoding/json"
	"strings"
)

// PostgresHandlerRouteKey names a table of a named source. Its String form
// is the route string CreateHandlerRoute returns.
type PostgresHandlerRouteKey struct {
	SourceName string `json:"sourceName"`
	TableName  string `json:"tableName"`
}

// String returns the route string for the key.
func (k PostgresHandlerRouteKey) String() string {
	b, err := json.Marshal(k)
	if err != nil { // cannot happen for two strings; keep the API total
		return k.TableName
	}
	return string(b)
}

// CreateHandlerRoute returns the route of table (a "table" or
// "schema.table") in the source added with AddPostgresDSN(sourceName, ...).
func CreateHandlerRoute(sourceName, tableName string) string {
	return PostgresHandlerRouteKey{SourceName: sourceName, TableName: tableName}.String()
}

// ParseHandlerRoute reverses CreateHandlerRoute. A plain route ("orders",
// "sales.orders") yields an empty source name and the route as table.
func ParseHandlerRoute(route string) (sourceName, tableName string) {
	if strings.HasPrefix(route, "{") {
		var k PostgresHandlerRouteKey
		if err := json.Unmarshal([]byte(route), &k); err == nil && k.TableName != "" {
			return k.SourceName, k.TableName
		}
	}
	return "", route
}

// splitRoute splits "schema.table" at the first dot; a name without a dot
// is in schema public. Names are as stored in the catalog (case-sensitive,
// no SQL quoting).
func splitRoute(table string) (schema, name string) {
	if i := strings.IndexByte(table, '.'); i >= 0 {
		return table[:i], table[i+1:]
	}
	return "public", table
}
