package trigger

import (
	"embed"
	"path"
	"strings"
	"text/template"
)

// The engine's longer SQL lives in sql/*.sql, as text/template files whose
// fields are already-quoted identifiers and expressions built in Go
// (pgident.Quote, quoteLiteral): the templates add no quoting of their own.
//
//go:embed sql/*.sql
var sqlFiles embed.FS

var (
	functionTmpl = parseSQL("sql/function.sql")
	tableTmpl    = parseSQL("sql/table.sql")
	claimTmpl    = parseSQL("sql/claim.sql")
)

func parseSQL(name string) *template.Template {
	base := path.Base(name) // ParseFS names a file's template by its base name
	return template.Must(template.New(base).Option("missingkey=error").ParseFS(sqlFiles, name))
}

// render fills a SQL template. The templates are fixed and their fields
// given by this package, so an error is a bug in the package: it panics at
// the first install, where every template is used (tested).
func render(t *template.Template, fields map[string]string) string {
	var b strings.Builder
	if err := t.Execute(&b, fields); err != nil {
		panic("pgcdc/internal/trigger: " + err.Error())
	}
	return b.String()
}
