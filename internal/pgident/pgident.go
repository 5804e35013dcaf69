// Package pgident quotes and builds PostgreSQL identifiers. Every name that
// reaches SQL goes through Quote; nothing is spliced in unquoted.
package pgident

import (
	"crypto/md5"
	"encoding/hex"
	"strings"
)

// Quote returns name as a quoted identifier ("a""b").
func Quote(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// Qualified returns schema.name with both parts quoted.
func Qualified(schema, name string) string {
	return Quote(schema) + "." + Quote(name)
}

// MaxLen is the longest identifier PostgreSQL keeps (NAMEDATALEN-1 bytes).
const MaxLen = 63

// SlotName builds a replication slot or publication name from parts: lower
// case letters, digits and underscores only (what slot names allow), joined
// by '_'. When a part had to be changed (upper case, other characters) or
// the name is longer than MaxLen, it is cut if need be and ends with a hash
// of the parts as given, so different parts never share a name.
func SlotName(parts ...string) string {
	var b strings.Builder
	changed := false
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('_')
		}
		for _, r := range p {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
				b.WriteRune(r)
			case r >= 'A' && r <= 'Z':
				b.WriteRune(r + 'a' - 'A')
				changed = true
			default:
				b.WriteByte('_')
				changed = true
			}
		}
	}
	s := b.String()
	if !changed && len(s) <= MaxLen {
		return s
	}
	// The name had to be changed: a hash of the parts as given keeps two
	// names that normalise alike ("Billing-Sync", "billing_sync") apart.
	sum := md5.Sum([]byte(strings.Join(parts, "\x00")))
	h := hex.EncodeToString(sum[:4])
	if n := MaxLen - len(h) - 1; len(s) > n {
		s = s[:n]
	}
	return s + "_" + h
}

// Literal returns s as a quoted SQL string literal ('it”s').
func Literal(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
