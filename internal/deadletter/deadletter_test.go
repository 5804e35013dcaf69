package deadletter

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/change"
	"github.com/pgcdc/pgcdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func poolAs(t *testing.T, dsn, role string) *pgxpool.Pool {
	t.Helper()
	if role != "" {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			t.Fatal(err)
		}
		dsn = strings.Replace(dsn, "://"+cfg.User+"@", "://"+role+"@", 1)
	}
	p, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func count(t *testing.T, p *pgxpool.Pool, sql string) int {
	t.Helper()
	var n int
	if err := p.QueryRow(context.Background(), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// TestDefaultLocation: dead_letters in pgcdc's schema by default; an
// existing public.pgcdc_dead_letters first; public for a role that may
// create there but not create a schema; the lsn is NULL without a WAL
// position.
func TestDefaultLocation(t *testing.T) {
	ctx := context.Background()
	dsn := pgtest.NewDatabase(t)
	admin := poolAs(t, dsn, "")
	st, err := OpenDefault(ctx, admin, "pgcdc", "wt")
	if err != nil {
		t.Fatal(err)
	}
	if st.Table() != `"pgcdc"."dead_letters"` {
		t.Errorf("default table %s", st.Table())
	}
	c := &change.Change{Source: "s", Schema: "public", Table: "t", Action: "INSERT", EventID: "e", Message: []byte(`{"event_id":"e"}`)}
	if err := st.Store(ctx, "t", c, 1, errors.New("boom")); err != nil {
		t.Fatal(err)
	}
	if n := count(t, admin, `SELECT count(*) FROM pgcdc.dead_letters WHERE lsn IS NULL AND payload::text = '{"event_id":"e"}'`); n != 1 {
		t.Errorf("%d rows with a NULL lsn, want 1", n)
	}

	// A role without CREATE on the database but with CREATE on public.
	if !pgtest.Shared(t).Owned() {
		return
	}
	role := "dl_" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "_"))
	pgtest.Exec(t, dsn, `DROP ROLE IF EXISTS `+role+`; CREATE ROLE `+role+` LOGIN; GRANT CREATE ON SCHEMA public TO `+role)
	t.Cleanup(func() { pgtest.Exec(t, dsn, `DROP OWNED BY `+role+` CASCADE; DROP ROLE `+role) })
	weak := poolAs(t, dsn, role)
	st, err = OpenDefault(ctx, weak, "pgcdc_other", "wt")
	if err != nil {
		t.Fatal(err)
	}
	if st.Table() != `"public"."pgcdc_dead_letters"` {
		t.Errorf("fallback table %s", st.Table())
	}
	// Now that it exists it is the default for everyone.
	if st, err = OpenDefault(ctx, admin, "pgcdc", "wt"); err != nil || st.Table() != `"public"."pgcdc_dead_letters"` {
		t.Errorf("with the legacy table: %v, %v", st, err)
	}
}
