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
	// SchemaName, when set, is the table's schema and TableName is the bare
	// table name (see CreateTableRoute); otherwise TableName is "table" or
	// "schema.table".
	SchemaName string `json:"schemaName,omitempty"`
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

// CreateTableRoute returns the route of table schema.table in the source
// added with AddPostgresDSN(sourceName, ...) ("" for the default source),
// with schema and table given apart: for names that contain a dot
// ("my.schema"), which "schema.table" routes cannot express.
func CreateTableRoute(sourceName, schema, table string) string {
	return PostgresHandlerRouteKey{SourceName: sourceName, SchemaName: schema, TableName: table}.String()
}

// ParseHandlerRoute reverses CreateHandlerRoute. A plain route ("orders",
// "sales.orders") yields an empty source name and the route as table.
func ParseHandlerRoute(route string) (sourceName, tableName string) {
	if strings.HasPrefix(route, "{") {
		var k PostgresHandlerRouteKey
		if err := json.Unmarshal([]byte(route), &k); err == nil && k.TableName != "" {
			if k.SchemaName != "" {
				return k.SourceName, k.SchemaName + "." + k.TableName
			}
			return k.SourceName, k.TableName
		}
	}
	return "", route
}

// parseRoute splits any route into its source, schema and table.
func parseRoute(route string) (source, schema, table string) {
	if strings.HasPrefix(route, "{") {
		var k PostgresHandlerRouteKey
		if err := json.Unmarshal([]byte(route), &k); err == nil && k.TableName != "" {
			if k.SchemaName != "" {
				return k.SourceName, k.SchemaName, k.TableName
			}
			schema, table = splitRoute(k.TableName)
			return k.SourceName, schema, table
		}
	}
	schema, table = splitRoute(route)
	return "", schema, table
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
