package rowjson

import (
	"fmt"
)

// This file parses the text forms of arrays (array_out / array_in) and
// composites (record_out / record_in) and renders them as array_to_json and
// composite_to_json do, streaming into dst.

// arraySpace is array_isspace of arrayfuncs.c.
func arraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func skipArraySpace(s []byte, i int) int {
	for i < len(s) && arraySpace(s[i]) {
		i++
	}
	return i
}

func errArray(s []byte, i int, what string) error {
	const show = 64
	lo := max(0, i-show/2)
	hi := min(len(s), lo+show)
	return fmt.Errorf("%w: array literal at byte %d: %s (near %q)", ErrMalformed, i, what, s[lo:hi])
}

// array renders an array literal whose elements have type eti (a non-domain
// type) and are separated by delim.
func (r *renderer) array(dst []byte, eti *TypeInfo, delim byte, s []byte, depth int) ([]byte, error) {
	i := skipArraySpace(s, 0)
	if i < len(s) && s[i] == '[' {
		// Dimension decoration "[lo:hi][lo:hi]=": bounds are not rendered.
		for i < len(s) && s[i] == '[' {
			j := i + 1
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '-' || s[j] == '+' || s[j] == ':' || arraySpace(s[j])) {
				j++
			}
			if j >= len(s) || s[j] != ']' || j == i+1 {
				return dst, errArray(s, j, "bad dimension")
			}
			i = skipArraySpace(s, j+1)
		}
		if i >= len(s) || s[i] != '=' {
			return dst, errArray(s, i, `expected "="`)
		}
		i = skipArraySpace(s, i+1)
	}
	if i >= len(s) || s[i] != '{' {
		return dst, errArray(s, i, `expected "{"`)
	}
	dst, i, err := r.arrayLevel(dst, eti, delim, s, i, depth)
	if err != nil {
		return dst, err
	}
	if i = skipArraySpace(s, i); i != len(s) {
		return dst, errArray(s, i, "junk after array")
	}
	return dst, nil
}

// arrayLevel renders the brace group at s[i] == '{' and returns the index
// after its closing brace.
func (r *renderer) arrayLevel(dst []byte, eti *TypeInfo, delim byte, s []byte, i, depth int) ([]byte, int, error) {
	if depth > maxDepth {
		return dst, i, errArray(s, i, "nested too deeply")
	}
	dst = append(dst, '[')
	i = skipArraySpace(s, i+1)
	if i < len(s) && s[i] == '}' {
		return append(dst, ']'), i + 1, nil
	}
	const unknown, scalars, subarrays = 0, 1, 2
	shape := unknown
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		i = skipArraySpace(s, i)
		if i >= len(s) {
			return dst, i, errArray(s, i, "unterminated array")
		}
		var err error
		if s[i] == '{' {
			if shape == scalars {
				return dst, i, errArray(s, i, "mixed dimensions")
			}
			shape = subarrays
			dst, i, err = r.arrayLevel(dst, eti, delim, s, i, depth+1)
		} else {
			if shape == subarrays {
				return dst, i, errArray(s, i, "mixed dimensions")
			}
			shape = scalars
			dst, i, err = r.arrayElem(dst, eti, delim, s, i, depth)
		}
		if err != nil {
			return dst, i, err
		}
		i = skipArraySpace(s, i)
		switch {
		case i >= len(s):
			return dst, i, errArray(s, i, "unterminated array")
		case s[i] == delim:
			i++
		case s[i] == '}':
			return append(dst, ']'), i + 1, nil
		default:
			return dst, i, errArray(s, i, "expected delimiter or \"}\"")
		}
	}
}

// arrayElem renders the element starting at s[i] (not a brace, not space)
// and returns the index of the delimiter or closing brace after it.
func (r *renderer) arrayElem(dst []byte, eti *TypeInfo, delim byte, s []byte, i, depth int) ([]byte, int, error) {
	start := i
	quoted, escaped, inQuote := false, false, false
	for ; i < len(s); i++ {
		c := s[i]
		if c == '\\' {
			escaped = true
			i++
			continue
		}
		if c == '"' {
			quoted = true
			inQuote = !inQuote
			continue
		}
		if !inQuote {
			if c == delim || c == '}' {
				break
			}
			if c == '{' {
				return dst, i, errArray(s, i, `unexpected "{"`)
			}
		}
	}
	if i > len(s) || inQuote {
		return dst, i, errArray(s, start, "unterminated element")
	}
	if i == len(s) {
		return dst, i, errArray(s, i, "unterminated array")
	}
	raw := s[start:i]
	end := i
	var val []byte
	switch {
	case !quoted && !escaped:
		for len(raw) > 0 && arraySpace(raw[len(raw)-1]) {
			raw = raw[:len(raw)-1]
		}
		if len(raw) == 4 && (raw[0]|0x20) == 'n' && (raw[1]|0x20) == 'u' && (raw[2]|0x20) == 'l' && (raw[3]|0x20) == 'l' {
			return append(dst, "null"...), end, nil
		}
		val = raw
	case !escaped && raw[0] == '"':
		// "...": the only quotes are the first and the closing one,
		// which may be followed by space.
		q := 1
		for raw[q] != '"' {
			q++
		}
		if skipArraySpace(raw, q+1) != len(raw) {
			return r.arrayElemSlow(dst, eti, raw, end, depth)
		}
		val = raw[1:q]
	default:
		return r.arrayElemSlow(dst, eti, raw, end, depth)
	}
	if len(val) == 0 && !quoted {
		return dst, end, errArray(s, start, "empty element")
	}
	dst, err := r.value(dst, eti, val, depth)
	return dst, end, err
}

// arrayElemSlow unescapes an element with backslashes or inner quotes into
// the scratch buffer (array_in's rules: backslash quotes the next byte,
// quotes protect their content, unprotected trailing space is dropped).
func (r *renderer) arrayElemSlow(dst []byte, eti *TypeInfo, raw []byte, end, depth int) ([]byte, int, error) {
	bp := r.scratch()
	mark := len(*bp)
	b := *bp
	keep := len(b)
	inQuote := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '\\':
			i++
			b = append(b, raw[i]) // the scanner guarantees a next byte
			keep = len(b)
		case c == '"':
			inQuote = !inQuote
			keep = len(b)
		default:
			b = append(b, c)
			if inQuote || !arraySpace(c) {
				keep = len(b)
			}
		}
	}
	b = b[:keep]
	*bp = b
	dst, err := r.value(dst, eti, b[mark:], depth)
	*bp = (*bp)[:mark]
	return dst, end, err
}

// vector renders int2vector / oidvector text: elements separated by spaces.
func (r *renderer) vector(dst []byte, eti *TypeInfo, s []byte, depth int) ([]byte, error) {
	dst = append(dst, '[')
	first := true
	for i := 0; ; {
		for i < len(s) && arraySpace(s[i]) {
			i++
		}
		if i >= len(s) {
			break
		}
		j := i
		for j < len(s) && !arraySpace(s[j]) {
			j++
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		var err error
		if dst, err = r.value(dst, eti, s[i:j], depth); err != nil {
			return dst, err
		}
		i = j
	}
	return append(dst, ']'), nil
}

func errRecord(ti *TypeInfo, s []byte, i int, what string) error {
	const show = 64
	lo := max(0, i-show/2)
	hi := min(len(s), lo+show)
	return fmt.Errorf("%w: %s literal at byte %d: %s (near %q)", ErrMalformed, ti.Name, i, what, s[lo:hi])
}

const recordOID = 2249

// record renders a composite literal "(a,\"b c\",)" of type ti as an object.
func (r *renderer) record(dst []byte, ti *TypeInfo, s []byte, depth int) ([]byte, error) {
	if ti.OID == recordOID {
		return dst, fmt.Errorf("%w: anonymous record", ErrUnsupported)
	}
	if len(ti.Fields) != len(ti.keys) {
		return dst, fmt.Errorf("%w: %s: attributes of the composite are not known", ErrUnknownType, ti.Name)
	}
	i := skipArraySpace(s, 0)
	if i >= len(s) || s[i] != '(' {
		return dst, errRecord(ti, s, i, `expected "("`)
	}
	i++
	dst = append(dst, '{')
	if len(ti.Fields) == 0 {
		if i >= len(s) || s[i] != ')' {
			return dst, fmt.Errorf("%w: %s has no attributes but the value has", ErrTypeChanged, ti.Name)
		}
		i++
	}
	for f := range ti.Fields {
		if f > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, ti.keys[f]...)
		start := i
		quoted, escaped, inQuote := false, false, false
		for ; i < len(s); i++ {
			c := s[i]
			if c == '\\' {
				escaped = true
				i++
				continue
			}
			if c == '"' {
				if inQuote && i+1 < len(s) && s[i+1] == '"' {
					escaped = true
					i++
					continue
				}
				quoted = true
				inQuote = !inQuote
				continue
			}
			if !inQuote && (c == ',' || c == ')') {
				break
			}
		}
		if i >= len(s) {
			return dst, errRecord(ti, s, start, "unterminated record")
		}
		raw := s[start:i]
		var err error
		switch {
		case len(raw) == 0:
			dst = append(dst, "null"...)
		case !quoted && !escaped:
			dst, err = r.field(dst, ti.Fields[f].Type, raw, depth)
		case !escaped && raw[0] == '"' && raw[len(raw)-1] == '"' && noQuote(raw[1:len(raw)-1]):
			dst, err = r.field(dst, ti.Fields[f].Type, raw[1:len(raw)-1], depth)
		default:
			dst, err = r.fieldSlow(dst, ti.Fields[f].Type, raw, depth)
		}
		if err != nil {
			return dst, err
		}
		last := f == len(ti.Fields)-1
		switch {
		case s[i] == ',' && !last, s[i] == ')' && last:
			i++
		default:
			return dst, fmt.Errorf("%w: %s: value has a different number of attributes than the %d known",
				ErrTypeChanged, ti.Name, len(ti.Fields))
		}
	}
	if i = skipArraySpace(s, i); i != len(s) {
		return dst, errRecord(ti, s, i, "junk after record")
	}
	return append(dst, '}'), nil
}

func noQuote(b []byte) bool {
	for _, c := range b {
		if c == '"' {
			return false
		}
	}
	return true
}

func (r *renderer) field(dst []byte, oid uint32, val []byte, depth int) ([]byte, error) {
	fti, ok := r.t.Lookup(oid)
	if !ok {
		return dst, fmt.Errorf("%w: oid %d (attribute type)", ErrUnknownType, oid)
	}
	return r.value(dst, fti, val, depth)
}

// fieldSlow unescapes a record field into the scratch buffer (record_in's
// rules: backslash quotes the next byte, "" inside quotes is a quote).
func (r *renderer) fieldSlow(dst []byte, oid uint32, raw []byte, depth int) ([]byte, error) {
	bp := r.scratch()
	mark := len(*bp)
	b := *bp
	inQuote := false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c == '\\':
			i++
			b = append(b, raw[i]) // the scanner guarantees a next byte
		case c == '"' && inQuote && i+1 < len(raw) && raw[i+1] == '"':
			i++
			b = append(b, '"')
		case c == '"':
			inQuote = !inQuote
		default:
			b = append(b, c)
		}
	}
	*bp = b
	dst, err := r.field(dst, oid, b[mark:], depth)
	*bp = (*bp)[:mark]
	return dst, err
}
