package rowjson

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
)

// Kind classifies a type by how row_to_json renders its values. It mirrors
// JsonTypeCategory of PostgreSQL's json.c; a domain has the kind of its base
// type.
type Kind uint8

const (
	// KindOther: any other type, rendered as a JSON string holding the text
	// output (escaped like escape_json).
	KindOther Kind = iota
	// KindBool: bool, rendered as true or false.
	KindBool
	// KindNumber: int2, int4, int8, float4, float8 and numeric, rendered as a
	// bare JSON number with the digits of the text output; NaN, Infinity and
	// -Infinity become JSON strings.
	KindNumber
	// KindJSON: json and jsonb, whose text output is inlined unchanged.
	KindJSON
	// KindDate: date, rendered as a JSON string ("2024-01-02", "infinity",
	// "0044-03-15 BC").
	KindDate
	// KindTimestamp: timestamp, rendered as a JSON string in XSD form
	// ("2024-01-02T03:04:05.123").
	KindTimestamp
	// KindTimestampTZ: timestamptz, rendered as a JSON string in XSD form
	// ("2024-01-02T03:04:05.123+00:00").
	KindTimestampTZ
	// KindArray: an array type (Elem and Delim are set), rendered as a JSON
	// array of its elements, nested per dimension, bounds dropped.
	KindArray
	// KindComposite: a composite (row) type (Fields is set), rendered as a
	// JSON object keyed by attribute name.
	KindComposite
	// KindVector: int2vector and oidvector, arrays whose text output is
	// space-separated without braces; rendered as a JSON array.
	KindVector
	// KindHstore: the hstore extension type, which row_to_json renders
	// through its cast to json (hstore_to_json): an object of strings.
	KindHstore
	// KindCast: a user-defined type with some other cast to json.
	// row_to_json calls that cast, which cannot be reproduced here:
	// AppendValue returns an error wrapping ErrUnsupported.
	KindCast
)

var kindNames = [...]string{"other", "bool", "number", "json", "date", "timestamp",
	"timestamptz", "array", "composite", "vector", "hstore", "cast"}

// String returns a short lower-case name of the kind.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// TypeInfo is what rendering needs to know about one type. Values returned by
// Lookup are shared and must not be modified.
type TypeInfo struct {
	// OID is the type's pg_type OID.
	OID uint32
	// Name is pg_type.typname (arrays are "_elem").
	Name string
	// Kind is the rendering category; for a domain, that of its base type.
	Kind Kind
	// Elem is the element type of an array or vector.
	Elem uint32
	// Delim is the element delimiter of an array's text form (the element
	// type's typdelim: ',' for all built-in types but box, which uses ';').
	Delim byte
	// Fields are the live (not dropped) attributes of a composite, in order.
	Fields []Field
	// Base is the base type of a domain (0 for other types).
	Base uint32

	keys []string // per field: its escaped JSON key followed by ':'
}

// Field is one attribute of a composite type.
type Field struct {
	// Name is the attribute name, used as the JSON object key.
	Name string
	// Type is the attribute's type OID.
	Type uint32
}

// Querier is what Types needs to read the catalog (satisfied by *pgx.Conn,
// *pgxpool.Pool and pgx.Tx). Resolve passes pgx.QueryExecModeSimpleProtocol
// as the only argument, which pgx treats as a query option, so it works on
// connections that cannot prepare statements.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Errors returned (wrapped) by AppendValue and Resolve.
var (
	// ErrUnknownType: the OID (or a type it needs) is not known; call
	// Resolve first.
	ErrUnknownType = errors.New("rowjson: unknown type")
	// ErrMalformed: the text is not a valid output of its type.
	ErrMalformed = errors.New("rowjson: malformed value")
	// ErrTypeChanged: a composite value does not have the attributes the
	// cache knows (the type was altered); call Refresh and retry.
	ErrTypeChanged = errors.New("rowjson: composite type changed")
	// ErrUnsupported: the type has a user-defined cast to json that
	// row_to_json would call; it cannot be rendered client-side.
	ErrUnsupported = errors.New("rowjson: type rendered through a user-defined cast to json")
)

// Types is a concurrency-safe cache of type information. The built-in types
// of PostgreSQL 15 are known without I/O; others are loaded by Resolve.
// Readers (Lookup, AppendValue) take no lock.
type Types struct {
	mu   sync.Mutex // serialises writers
	user atomic.Pointer[map[uint32]*TypeInfo]
}

// builtinByOID indexes the built-in types (and their arrays) by OID.
var builtinByOID = buildBuiltins()

func buildBuiltins() []*TypeInfo {
	maxOID := uint32(0)
	for _, r := range builtinRows {
		maxOID = max(maxOID, r.oid, r.array)
	}
	tab := make([]*TypeInfo, maxOID+1)
	for _, r := range builtinRows {
		ti := &TypeInfo{OID: r.oid, Name: r.name, Kind: r.kind}
		if r.kind == KindVector {
			ti.Elem = 21 // int2
			if r.oid == 30 {
				ti.Elem = 26 // oid
			}
			ti.Delim = ' '
		}
		tab[r.oid] = ti
		if r.array != 0 {
			tab[r.array] = &TypeInfo{OID: r.array, Name: "_" + r.name, Kind: KindArray,
				Elem: r.oid, Delim: r.delim}
		}
	}
	return tab
}

// NewTypes returns a cache that knows every built-in type of PostgreSQL 15.
func NewTypes() *Types {
	t := &Types{}
	m := map[uint32]*TypeInfo{}
	t.user.Store(&m)
	return t
}

// Lookup returns what is known about oid.
func (t *Types) Lookup(oid uint32) (*TypeInfo, bool) {
	if int(oid) < len(builtinByOID) {
		if ti := builtinByOID[oid]; ti != nil {
			return ti, true
		}
	}
	ti, ok := (*t.user.Load())[oid]
	return ti, ok
}

// Forget drops the given user-defined types from the cache (built-in types
// cannot be forgotten), so that the next Resolve reloads them.
func (t *Types) Forget(oids ...uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.user.Load()
	m := make(map[uint32]*TypeInfo, len(old))
	for k, v := range old {
		m[k] = v
	}
	for _, o := range oids {
		delete(m, o)
	}
	t.user.Store(&m)
}

// Refresh reloads every cached user-defined type from the catalog (after
// ALTER TYPE, or when AppendValue reported ErrTypeChanged). Types that no
// longer exist are dropped.
func (t *Types) Refresh(ctx context.Context, q Querier) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := *t.user.Load()
	oids := make([]uint32, 0, len(old))
	for k := range old {
		oids = append(oids, k)
	}
	if len(oids) == 0 {
		return nil
	}
	return t.load(ctx, q, oids, map[uint32]*TypeInfo{}, false)
}

// Resolve makes sure every given OID, and recursively the element, base and
// attribute types it needs, is known, loading unknown ones from pg_type and
// pg_attribute in one query. OIDs already known cost no I/O. It fails with
// ErrUnknownType when an OID does not exist.
func (t *Types) Resolve(ctx context.Context, q Querier, oids ...uint32) error {
	if t.known(oids) {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var missing []uint32
	for _, o := range oids {
		if !t.knownDeep(o, 0) {
			missing = append(missing, o)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	old := *t.user.Load()
	m := make(map[uint32]*TypeInfo, len(old)+len(missing))
	for k, v := range old {
		m[k] = v
	}
	return t.load(ctx, q, missing, m, true)
}

// AssumeText makes every given OID that Resolve could not learn (its type,
// or one it depends on, is no longer in pg_type: dropped while changes
// made with it still wait in the WAL) render as a JSON string of its text,
// and returns those OIDs. Known types are left alone.
func (t *Types) AssumeText(oids ...uint32) []uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var unknown []uint32
	for _, o := range oids {
		if !t.knownDeep(o, 0) {
			unknown = append(unknown, o)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	old := *t.user.Load()
	m := make(map[uint32]*TypeInfo, len(old)+len(unknown))
	for k, v := range old {
		m[k] = v
	}
	for _, o := range unknown {
		m[o] = &TypeInfo{OID: o, Name: "unknown", Kind: KindOther}
	}
	t.user.Store(&m)
	return unknown
}

// known reports whether all oids, and the types they depend on, are cached.
func (t *Types) known(oids []uint32) bool {
	for _, o := range oids {
		if !t.knownDeep(o, 0) {
			return false
		}
	}
	return true
}

func (t *Types) knownDeep(oid uint32, depth int) bool {
	ti, ok := t.Lookup(oid)
	if !ok || depth > maxDepth {
		return false
	}
	switch {
	case ti.Base != 0:
		return t.knownDeep(ti.Base, depth+1)
	case ti.Kind == KindArray || ti.Kind == KindVector:
		return ti.Elem == 0 || t.knownDeep(ti.Elem, depth+1)
	case ti.Kind == KindComposite:
		for _, f := range ti.Fields {
			if !t.knownDeep(f.Type, depth+1) {
				return false
			}
		}
	}
	return true
}

// catalogRow is one row of the type query.
type catalogRow struct {
	oid, elem, base uint32
	name, typtype   string
	delim           string
	isArray         bool
	names           []string
	ftypes          []uint32
	castFunc        *string
}

// typeQuery loads the closure of the requested types (element, base and
// attribute types, recursively). Argument 1 is the test for a true array type
// (typsubscript exists since PostgreSQL 14), argument 2 the array literal of
// the requested OIDs (inlined so that the simple protocol can be used).
const typeQuery = `WITH RECURSIVE need(oid) AS (
    SELECT o FROM pg_catalog.unnest('%[2]s'::pg_catalog.oid[]) AS o
  UNION
    SELECT d.dep FROM need n
    JOIN pg_catalog.pg_type t ON t.oid = n.oid
    CROSS JOIN LATERAL (
        SELECT t.typelem WHERE t.typelem <> 0
      UNION ALL
        SELECT t.typbasetype WHERE t.typbasetype <> 0
      UNION ALL
        SELECT a.atttypid FROM pg_catalog.pg_attribute a
        WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    ) AS d(dep)
)
SELECT t.oid, t.typname::text, t.typtype::text, t.typelem, t.typdelim::text, t.typbasetype,
  (%[1]s) AS is_array,
  ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
        WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum) AS names,
  ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a
        WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum) AS ftypes,
  (SELECT p.prosrc FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_proc p ON p.oid = c.castfunc
   WHERE c.castsource = t.oid AND c.casttarget = 'pg_catalog.json'::pg_catalog.regtype
     AND c.castmethod = 'f' LIMIT 1) AS cast_func
FROM pg_catalog.pg_type t WHERE t.oid IN (SELECT oid FROM need)`

const (
	arrayTestPG14 = `t.typelem <> 0 AND t.typsubscript = 'pg_catalog.array_subscript_handler'::pg_catalog.regproc`
	arrayTestOld  = `t.typelem <> 0 AND t.typlen = -1`
)

// load queries the catalog for oids (and their dependencies), adds the
// results to m and publishes m. Called with t.mu held.
func (t *Types) load(ctx context.Context, q Querier, oids []uint32, m map[uint32]*TypeInfo, strict bool) error {
	var lit strings.Builder
	lit.WriteByte('{')
	for i, o := range oids {
		if i > 0 {
			lit.WriteByte(',')
		}
		fmt.Fprintf(&lit, "%d", o)
	}
	lit.WriteByte('}')
	rows, err := t.query(ctx, q, fmt.Sprintf(typeQuery, arrayTestPG14, lit.String()))
	if err != nil && strings.Contains(err.Error(), "typsubscript") {
		rows, err = t.query(ctx, q, fmt.Sprintf(typeQuery, arrayTestOld, lit.String()))
	}
	if err != nil {
		return fmt.Errorf("rowjson: load types: %w", err)
	}
	raw := make(map[uint32]*catalogRow, len(rows))
	for i := range rows {
		raw[rows[i].oid] = &rows[i]
	}
	var domains []*TypeInfo // new domains; published TypeInfos are never modified
	for _, r := range raw {
		if int(r.oid) < len(builtinByOID) && builtinByOID[r.oid] != nil {
			continue
		}
		ti := &TypeInfo{OID: r.oid, Name: r.name}
		switch {
		case r.typtype == "d":
			ti.Base = r.base
			domains = append(domains, ti)
		case r.typtype == "c":
			if len(r.names) != len(r.ftypes) {
				return fmt.Errorf("rowjson: load type %d: attribute lists differ", r.oid)
			}
			fields := make([]Field, len(r.names))
			for i := range r.names {
				fields[i] = Field{Name: r.names[i], Type: r.ftypes[i]}
			}
			ti = compositeInfo(r.oid, r.name, fields)
		case r.isArray:
			ti.Kind = KindArray
			ti.Elem = r.elem
			ti.Delim = ','
			if er, ok := raw[r.elem]; ok && len(er.delim) == 1 {
				ti.Delim = er.delim[0]
			} else if eti, ok := t.lookupIn(m, r.elem); ok && eti.Kind != KindArray {
				ti.Delim = builtinDelim(eti)
			}
		case r.castFunc != nil && r.oid >= firstNormalObjectID:
			ti.Kind = KindCast
			if *r.castFunc == "hstore_to_json" {
				ti.Kind = KindHstore
			}
		}
		m[r.oid] = ti
	}
	// Domains take the kind of their (ultimate) base type.
	for _, ti := range domains {
		b, depth := ti.Base, 0
		for ; depth <= maxDepth; depth++ {
			bti, ok := t.lookupIn(m, b)
			if !ok {
				break
			}
			if bti.Base == 0 {
				ti.Kind = bti.Kind
				break
			}
			b = bti.Base
		}
	}
	t.user.Store(&m)
	if !strict {
		return nil // Refresh: what no longer exists is dropped silently
	}
	for _, o := range oids {
		if !t.knownDeep(o, 0) {
			return fmt.Errorf("%w: oid %d (or a type it depends on) is not in pg_type", ErrUnknownType, o)
		}
	}
	return nil
}

const firstNormalObjectID = 16384

// compositeInfo describes a composite type with the given live attributes.
func compositeInfo(oid uint32, name string, fields []Field) *TypeInfo {
	ti := &TypeInfo{OID: oid, Name: name, Kind: KindComposite, Fields: fields,
		keys: make([]string, len(fields))}
	for i, f := range fields {
		ti.keys[i] = string(AppendString(nil, f.Name)) + ":"
	}
	return ti
}

// builtinDelim returns the array delimiter for elements of type eti.
func builtinDelim(eti *TypeInfo) byte {
	for _, r := range builtinRows {
		if r.oid == eti.OID {
			return r.delim
		}
	}
	return ','
}

func (t *Types) lookupIn(m map[uint32]*TypeInfo, oid uint32) (*TypeInfo, bool) {
	if ti, ok := m[oid]; ok {
		return ti, true
	}
	return t.Lookup(oid)
}

func (t *Types) query(ctx context.Context, q Querier, sql string) ([]catalogRow, error) {
	// The simple protocol works on any connection (also in pgbouncer
	// transaction mode) and leaves no prepared statement behind.
	rows, err := q.Query(ctx, sql, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []catalogRow
	for rows.Next() {
		var r catalogRow
		if err := rows.Scan(&r.oid, &r.name, &r.typtype, &r.elem, &r.delim, &r.base,
			&r.isArray, &r.names, &r.ftypes, &r.castFunc); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}
