// Command candimain / pgcdcmain runs proofsvc with a postgres_worker: the
// two programs are the same source except for the one import line of the
// worker package (TestOneImportApart checks it).
package main

import (
	"log"
	"os"
	"time"

	"github.com/golangid/candi/candiutils"
	"github.com/golangid/candi/codebase/app"
	"github.com/golangid/candi/config/env"
	"github.com/gomodule/redigo/redis"
	"github.com/pgcdc/pgcdc/candi/internal/proofsvc"

	// The one line that differs:
	postgresworker "github.com/pgcdc/pgcdc/candi/postgres_worker"
)

func main() {
	// What candi's env.Load would read from the environment.
	env.SetEnv(env.Env{DbSQLWriteDSN: os.Getenv("SQL_DB_WRITE_DSN"), UsePostgresListenerWorker: true})

	svc, err := proofsvc.New(os.Getenv("PROOF_OUT"), os.Getenv("PROOF_INSTANCE"))
	if err != nil {
		log.Fatal(err)
	}
	opts := []postgresworker.OptionFunc{postgresworker.SetDebugMode(false)}
	if addr := os.Getenv("PROOF_REDIS"); addr != "" {
		pool := &redis.Pool{Dial: func() (redis.Conn, error) { return redis.Dial("tcp", addr) }, MaxIdle: 4, IdleTimeout: time.Minute}
		opts = append(opts, postgresworker.SetLocker(candiutils.NewRedisLocker(pool)))
	}
	svc.AddApp(postgresworker.NewWorker(svc, opts...))
	app.New(svc, app.SetShutdownTimeout(20*time.Second)).Run()
}
