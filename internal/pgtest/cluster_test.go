package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { Main(m) }

func TestClusterLifecycle(t *testing.T) {
	c := Shared(t)
	dsn := NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	query := func() string {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var level string
		if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
			t.Fatal(err)
		}
		return level
	}
	if got := query(); got != "logical" {
		t.Fatalf("wal_level = %q, want logical", got)
	}
	if !c.Owned() {
		t.Skip("external server: stop/start/kill not tested")
	}
	if err := c.Restart(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	query()
	if err := c.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	query()
}
