package postgresworker

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/golangid/candi/candihelper"
	"github.com/jackc/pgx/v5"
)

// PostgresSource is one database the worker streams from: the default one
// (SetPostgresDSN, or candi's SQL_DB_WRITE_DSN) or a named one
// (AddPostgresDSN).
type PostgresSource struct {
	dsn  string
	name string
}

func (p *PostgresSource) getLogForSourceName() (sourceNameLog string) {
	if p.name != "" {
		sourceNameLog = fmt.Sprintf(" (source name: '%s')", p.name)
	}
	return
}

// normDSN reads a DSN the way candi does ("postgres://user:pass@host/db",
// where user and password may hold unescaped special characters); any other
// form (key=value, postgresql://) is passed to pgx unchanged.
func normDSN(source string) string {
	driver, conn, ok := strings.Cut(source, "://")
	if !ok || driver != "postgres" {
		return source
	}
	if i := strings.LastIndex(conn, "@"); i > 0 {
		if username, password, ok := strings.Cut(conn[:i], ":"); ok {
			if u, err := url.QueryUnescape(username); err == nil {
				username = u
			}
			if p, err := url.QueryUnescape(password); err == nil {
				password = p
			}
			conn = fmt.Sprintf("%s:%s@%s", url.QueryEscape(username), url.QueryEscape(password), conn[i+1:])
		}
	}
	return driver + "://" + conn
}

// pgxConfig parses a candi DSN.
func pgxConfig(dsn string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(normDSN(dsn))
	if err != nil {
		return nil, fmt.Errorf("postgres listener: the DSN %s cannot be parsed (want postgres://user:password@host:port/database): %w",
			candihelper.MaskingPasswordURL(dsn), err)
	}
	return cfg, nil
}
