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
// by '_'. A name longer than MaxLen is cut and ends with a hash of the whole.
func SlotName(parts ...string) string {
	var b strings.Builder
	for i, p := range parts {
		if i > 0 {
			b.WriteByte('_')
		}
		for _, r := range strings.ToLower(p) {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
				b.WriteRune(r)
			default:
				b.WriteByte('_')
			}
		}
	}
	s := b.String()
	if len(s) <= MaxLen {
		return s
	}
	sum := md5.Sum([]byte(s))
	h := hex.EncodeToString(sum[:4])
	return s[:MaxLen-len(h)-1] + "_" + h
}

// Literal returns s as a quoted SQL string literal ('it”s').
func Literal(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
