// Package rowjson renders column values the way PostgreSQL 15's row_to_json
// does, byte for byte, from the values' text output (what pgoutput sends in
// text mode) and their type OIDs.
//
// The rules follow json.c (json_categorize_type, datum_to_json,
// array_to_json, composite_to_json, escape_json):
//
//   - NULL is null.
//   - bool is true or false.
//   - int2, int4, int8, float4, float8 and numeric are bare JSON numbers with
//     the digits of the text output; NaN, Infinity and -Infinity are strings.
//     oid and the other integer-like types are strings, as in json.c.
//   - json and jsonb are inlined unchanged.
//   - date, timestamp and timestamptz are strings in XSD form
//     ("2024-01-02T03:04:05.5+00:00"), converted from the ISO text output.
//   - arrays (and int2vector/oidvector) are JSON arrays, one level per
//     dimension, lower bounds dropped; elements are rendered by their type.
//   - composites are objects keyed by attribute name (dropped attributes
//     skipped), fields rendered by their type.
//   - domains are rendered as their base type.
//   - hstore (an extension type with a cast to json) renders as its cast
//     does; other user-defined casts to json are not supported.
//   - everything else is a JSON string of the text output.
//
// The text must be produced under SessionParams (DateStyle=ISO,
// TimeZone=UTC, extra_float_digits=1, ...). Types caches what rendering needs
// to know about types: the built-ins without I/O, user-defined types after
// Resolve.
package rowjson
