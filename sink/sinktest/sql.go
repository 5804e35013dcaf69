package sinktest

import (
	"testing"

	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func execSQL(t *testing.T, dsn, sql string) {
	t.Helper()
	pgtest.Exec(t, dsn, sql)
}
