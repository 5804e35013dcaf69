package sink

import (
	"fmt"
	"strings"
)

// Template names a destination (a subject, topic, stream key, routing key)
// after the message's origin. Its text may hold the placeholders {source},
// {schema}, {table} and {action}; everything else is kept as written. An
// empty source renders as "default".
//
//	pgcdc.{source}.{schema}.{table}.{action} → pgcdc.default.public.orders.INSERT
type Template struct {
	parts []tmplPart
	text  string
}

type tmplPart struct {
	lit   string
	field string // "" for a literal
}

var tmplFields = map[string]bool{"source": true, "schema": true, "table": true, "action": true}

// ParseTemplate parses a template, rejecting unknown or unclosed
// placeholders and an empty text.
func ParseTemplate(text string) (Template, error) {
	if text == "" {
		return Template{}, fmt.Errorf("empty template: give a text such as %q", "pgcdc.{source}.{schema}.{table}")
	}
	t := Template{text: text}
	rest := text
	for rest != "" {
		i := strings.IndexByte(rest, '{')
		if i < 0 {
			t.parts = append(t.parts, tmplPart{lit: rest})
			break
		}
		if i > 0 {
			t.parts = append(t.parts, tmplPart{lit: rest[:i]})
		}
		j := strings.IndexByte(rest[i:], '}')
		if j < 0 {
			return Template{}, fmt.Errorf("template %q: unclosed placeholder at %q (placeholders: {source}, {schema}, {table}, {action})", text, rest[i:])
		}
		name := rest[i+1 : i+j]
		if !tmplFields[name] {
			return Template{}, fmt.Errorf("template %q: unknown placeholder {%s} (placeholders: {source}, {schema}, {table}, {action})", text, name)
		}
		t.parts = append(t.parts, tmplPart{field: name})
		rest = rest[i+j+1:]
	}
	return t, nil
}

// MustParseTemplate is ParseTemplate for texts known to be valid; it
// panics on an error. Use it for constants only.
func MustParseTemplate(text string) Template {
	t, err := ParseTemplate(text)
	if err != nil {
		panic(err)
	}
	return t
}

// String returns the template's text.
func (t Template) String() string { return t.text }

// Static reports whether the template has no placeholder.
func (t Template) Static() bool {
	for _, p := range t.parts {
		if p.field != "" {
			return false
		}
	}
	return true
}

// Render fills the template from m. Each value is passed through escape
// (nil keeps it unchanged) so a sink can replace characters its broker
// does not allow in names.
func (t Template) Render(m *Message, escape func(string) string) string {
	if len(t.parts) == 1 && t.parts[0].field == "" {
		return t.parts[0].lit
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.field == "" {
			b.WriteString(p.lit)
			continue
		}
		var v string
		switch p.field {
		case "source":
			v = m.Source
			if v == "" {
				v = "default"
			}
		case "schema":
			v = m.Schema
		case "table":
			v = m.Table
		case "action":
			v = m.Action
		}
		if escape != nil {
			v = escape(v)
		}
		b.WriteString(v)
	}
	return b.String()
}
