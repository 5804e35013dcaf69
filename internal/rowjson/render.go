package rowjson

import (
	"fmt"
	"sync"
)

// maxDepth bounds the nesting of arrays, composites and domains in one
// value, so that hostile input cannot exhaust the stack.
const maxDepth = 100

// SessionParams returns the session settings under which the text output of
// values must be produced for AppendValue to match row_to_json: pass them as
// startup parameters of the replication connection (and set them in any
// session used to compare). A new map is returned on every call.
func SessionParams() map[string]string {
	return map[string]string{
		"DateStyle":          "ISO",
		"IntervalStyle":      "postgres",
		"TimeZone":           "UTC",
		"extra_float_digits": "1",
		"bytea_output":       "hex",
		"client_encoding":    "UTF8",
		// reg* values (regclass, regproc, regtype, ...) render relative to
		// search_path: pinned like the trigger engine's function, so they
		// do not depend on the database's or role's search_path.
		"search_path": "pg_catalog, public",
	}
}

// AppendString appends s as a JSON string escaped exactly like PostgreSQL's
// escape_json: \" \\ \b \f \n \r \t, other bytes below 0x20 as \u00xx (lower
// case hex), everything else (DEL, non-ASCII) unchanged. PostgreSQL text
// never contains NUL; here it is written as \u0000.
func AppendString(dst []byte, s string) []byte { return appendEscaped(dst, s) }

// AppendStringBytes is AppendString for a byte slice.
func AppendStringBytes(dst []byte, s []byte) []byte { return appendEscaped(dst, s) }

// needsEscape marks the bytes escape_json rewrites.
var needsEscape = func() (t [256]bool) {
	for c := 0; c < 0x20; c++ {
		t[c] = true
	}
	t['"'], t['\\'] = true, true
	return t
}()

const hexDigits = "0123456789abcdef"

// Constants for testing eight bytes at a time.
const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// safeWord reports whether none of the eight bytes of w needs escaping:
// no byte is below 0x20, '"' or '\\' (bytes >= 0x80 are safe).
func safeWord(w uint64) bool {
	low := (w - lsb*0x20) & ^w // any byte < 0x20
	quote := ((w ^ lsb*'"') - lsb) & ^(w ^ lsb*'"')
	bslash := ((w ^ lsb*'\\') - lsb) & ^(w ^ lsb*'\\')
	return (low|quote|bslash)&msb == 0
}

func appendEscaped[T string | []byte](dst []byte, s T) []byte {
	dst = append(dst, '"')
	start, i := 0, 0
	for i < len(s) {
		end := len(s)
		if i+8 <= len(s) {
			if safeWord(uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
				uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56) {
				i += 8
				continue
			}
			end = i + 8
		}
		for ; i < end; i++ {
			if c := s[i]; needsEscape[c] {
				dst = append(dst, s[start:i]...)
				dst = appendEscapedByte(dst, c)
				start = i + 1
			}
		}
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

func appendEscapedByte(dst []byte, c byte) []byte {
	switch c {
	case '"':
		return append(dst, '\\', '"')
	case '\\':
		return append(dst, '\\', '\\')
	case '\b':
		return append(dst, '\\', 'b')
	case '\f':
		return append(dst, '\\', 'f')
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	}
	if c < 0x20 {
		return append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
	}
	return append(dst, c)
}

// AppendValue appends the JSON rendering of one non-NULL value of type oid,
// given as the type's text output (produced under SessionParams), exactly as
// row_to_json renders it. An unknown OID, a malformed literal or a type that
// cannot be rendered yields an error and dst unchanged; it never panics.
func (t *Types) AppendValue(dst []byte, oid uint32, text []byte) ([]byte, error) {
	ti, ok := t.Lookup(oid)
	if !ok {
		return dst, fmt.Errorf("%w: oid %d", ErrUnknownType, oid)
	}
	// Scalars do not need the renderer state.
	switch ti.Kind {
	case KindOther, KindDate:
		return appendEscaped(dst, text), nil
	case KindNumber:
		return appendNumber(dst, text), nil
	}
	r := renderer{t: t}
	out, err := r.value(dst, ti, text, 0)
	r.release()
	if err != nil {
		return dst, err
	}
	return out, nil
}

// renderer carries the scratch buffer used to unescape nested literals.
type renderer struct {
	t   *Types
	buf *[]byte // from scratchPool; nil until needed
}

var scratchPool = sync.Pool{New: func() any {
	b := make([]byte, 0, 512)
	return &b
}}

// maxPooled is the largest scratch buffer kept for reuse.
const maxPooled = 64 << 10

func (r *renderer) scratch() *[]byte {
	if r.buf == nil {
		r.buf = scratchPool.Get().(*[]byte)
	}
	return r.buf
}

func (r *renderer) release() {
	if r.buf != nil {
		if cap(*r.buf) <= maxPooled {
			*r.buf = (*r.buf)[:0]
			scratchPool.Put(r.buf)
		}
		r.buf = nil
	}
}

// base follows a domain to its underlying non-domain type.
func (r *renderer) base(ti *TypeInfo) (*TypeInfo, error) {
	for depth := 0; ti.Base != 0; depth++ {
		b, ok := r.t.Lookup(ti.Base)
		if !ok || depth > maxDepth {
			return nil, fmt.Errorf("%w: oid %d (base of domain %s)", ErrUnknownType, ti.Base, ti.Name)
		}
		ti = b
	}
	return ti, nil
}

// value renders text as a value of type ti.
func (r *renderer) value(dst []byte, ti *TypeInfo, text []byte, depth int) ([]byte, error) {
	ti, err := r.base(ti)
	if err != nil {
		return dst, err
	}
	if depth > maxDepth {
		return dst, fmt.Errorf("%w: nested too deeply", ErrMalformed)
	}
	switch ti.Kind {
	case KindOther, KindDate:
		return appendEscaped(dst, text), nil
	case KindNumber:
		return appendNumber(dst, text), nil
	case KindBool:
		switch {
		case len(text) == 1 && text[0] == 't':
			return append(dst, "true"...), nil
		case len(text) == 1 && text[0] == 'f':
			return append(dst, "false"...), nil
		}
		return dst, malformed(ti, text)
	case KindJSON:
		if len(text) == 0 {
			return dst, malformed(ti, text)
		}
		return append(dst, text...), nil
	case KindTimestamp, KindTimestampTZ:
		out, ok := appendTimestamp(dst, text, ti.Kind == KindTimestampTZ)
		if !ok {
			return dst, malformed(ti, text)
		}
		return out, nil
	case KindArray, KindVector:
		eti, ok := r.t.Lookup(ti.Elem)
		if !ok {
			return dst, fmt.Errorf("%w: oid %d (element of %s)", ErrUnknownType, ti.Elem, ti.Name)
		}
		if eti, err = r.base(eti); err != nil {
			return dst, err
		}
		if ti.Kind == KindVector {
			return r.vector(dst, eti, text, depth+1)
		}
		return r.array(dst, eti, ti.Delim, text, depth+1)
	case KindComposite:
		return r.record(dst, ti, text, depth+1)
	case KindHstore:
		out, ok := appendHstore(dst, text)
		if !ok {
			return dst, malformed(ti, text)
		}
		return out, nil
	case KindCast:
		return dst, fmt.Errorf("%w: %s", ErrUnsupported, ti.Name)
	}
	return dst, fmt.Errorf("%w: %s has kind %v", ErrUnsupported, ti.Name, ti.Kind)
}

func malformed(ti *TypeInfo, text []byte) error {
	const show = 64
	s := text
	if len(s) > show {
		s = s[:show]
	}
	return fmt.Errorf("%w: %s: %q", ErrMalformed, ti.Name, s)
}

// appendNumber renders the text output of a numeric type: as is when it is a
// valid JSON number (IsValidJsonNumber), else as a string (NaN, Infinity).
func appendNumber(dst, text []byte) []byte {
	if validNumber(text) {
		return append(dst, text...)
	}
	return appendEscaped(dst, text)
}

// validNumber reports whether s is one JSON number, as json.c's lexer sees it.
func validNumber(s []byte) bool {
	i, n := 0, len(s)
	if i < n && s[i] == '-' {
		i++
	}
	switch {
	case i < n && s[i] == '0':
		i++
	case i < n && s[i] >= '1' && s[i] <= '9':
		i = skipDigits(s, i)
	default:
		return false
	}
	if i < n && s[i] == '.' {
		j := skipDigits(s, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < n && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < n && (s[i] == '+' || s[i] == '-') {
			i++
		}
		j := skipDigits(s, i)
		if j == i {
			return false
		}
		i = j
	}
	return i == n
}

func skipDigits(s []byte, i int) int {
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	return i
}

// digitsAt checks that s[i:i+n] are n digits.
func digitsAt(s []byte, i, n int) bool {
	if i+n > len(s) {
		return false
	}
	for _, c := range s[i : i+n] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// appendTimestamp converts the ISO text output of a timestamp or
// timestamptz ("2024-01-02 03:04:05.5+00", "... BC", "infinity") to the XSD
// form row_to_json uses ("2024-01-02T03:04:05.5+00:00") and appends it as a
// JSON string. It reports false when text is not in that form.
func appendTimestamp(dst, s []byte, withTZ bool) ([]byte, bool) {
	if string(s) == "infinity" || string(s) == "-infinity" {
		return appendEscaped(dst, s), true
	}
	i := skipDigits(s, 0) // year: at least 4 digits, more after 9999
	if i < 4 || i >= len(s) || s[i] != '-' || !digitsAt(s, i+1, 2) ||
		i+3 >= len(s) || s[i+3] != '-' || !digitsAt(s, i+4, 2) {
		return dst, false
	}
	sep := i + 6
	i = sep + 1
	if sep >= len(s) || s[sep] != ' ' || !digitsAt(s, i, 2) || i+2 >= len(s) || s[i+2] != ':' ||
		!digitsAt(s, i+3, 2) || i+5 >= len(s) || s[i+5] != ':' || !digitsAt(s, i+6, 2) {
		return dst, false
	}
	i += 8
	if i < len(s) && s[i] == '.' {
		j := skipDigits(s, i+1)
		if j == i+1 {
			return dst, false
		}
		i = j
	}
	hourEnd, addMinutes := -1, false
	if withTZ {
		if i >= len(s) || (s[i] != '+' && s[i] != '-') {
			return dst, false
		}
		j := skipDigits(s, i+1)
		if j < i+3 {
			return dst, false
		}
		hourEnd, i = j, j
		if i < len(s) && s[i] == ':' {
			if !digitsAt(s, i+1, 2) {
				return dst, false
			}
			i += 3
			if i < len(s) && s[i] == ':' {
				if !digitsAt(s, i+1, 2) {
					return dst, false
				}
				i += 3
			}
		} else {
			addMinutes = true
		}
	}
	if rest := s[i:]; len(rest) != 0 && string(rest) != " BC" {
		return dst, false
	}
	dst = append(dst, '"')
	dst = append(dst, s[:sep]...)
	dst = append(dst, 'T')
	if addMinutes {
		dst = append(dst, s[sep+1:hourEnd]...)
		dst = append(dst, ':', '0', '0')
		dst = append(dst, s[hourEnd:]...)
	} else {
		dst = append(dst, s[sep+1:]...)
	}
	return append(dst, '"'), true
}

// appendHstore renders hstore's text output ("a"=>"1", "b"=>NULL) the way
// its cast to json (hstore_to_json) does: {"a": "1", "b": null}.
func appendHstore(dst, s []byte) ([]byte, bool) {
	dst = append(dst, '{')
	i := 0
	for first := true; i < len(s); first = false {
		if !first {
			if i+1 >= len(s) || s[i] != ',' || s[i+1] != ' ' {
				return dst, false
			}
			i += 2
			dst = append(dst, ',', ' ')
		}
		var ok bool
		if dst, i, ok = appendHstoreString(dst, s, i); !ok {
			return dst, false
		}
		if i+1 >= len(s) || s[i] != '=' || s[i+1] != '>' {
			return dst, false
		}
		i += 2
		dst = append(dst, ':', ' ')
		if i+4 <= len(s) && string(s[i:i+4]) == "NULL" {
			dst = append(dst, "null"...)
			i += 4
			continue
		}
		if dst, i, ok = appendHstoreString(dst, s, i); !ok {
			return dst, false
		}
	}
	return append(dst, '}'), true
}

// appendHstoreString reads a double-quoted, backslash-escaped hstore string
// at s[i] and appends it as a JSON string.
func appendHstoreString(dst, s []byte, i int) ([]byte, int, bool) {
	if i >= len(s) || s[i] != '"' {
		return dst, i, false
	}
	dst = append(dst, '"')
	for i++; i < len(s); i++ {
		c := s[i]
		switch c {
		case '"':
			return append(dst, '"'), i + 1, true
		case '\\':
			i++
			if i >= len(s) {
				return dst, i, false
			}
			c = s[i]
		}
		dst = appendEscapedByte(dst, c)
	}
	return dst, i, false
}
