// Package postgresworker is a drop-in replacement for candi's
// postgres_worker (github.com/golangid/candi/codebase/app/postgres_worker,
// v1.17.16) that runs pgcdc underneath. A candi service switches by
// changing one import:
//
//	postgresworker "github.com/golangid/candi/codebase/app/postgres_worker"
//
// becomes
//
//	postgresworker "github.com/pgcdc/pgcdc/candi/postgres_worker"
//
// The exported names and signatures are candi's (NewWorker, the options,
// EventPayload, CreateHandlerRoute, ...). Handlers stay candi's own: every
// module's WorkerHandler(types.PostgresListener) mounts its tables on a
// *types.WorkerHandlerGroup, and each handler gets a
// *candishared.EventContext whose Message() is candi's event JSON.
//
// What changes underneath: changes are read from logical replication (or,
// where it is not allowed, pgcdc's durable trigger table), not from
// pg_notify, so nothing is lost while no worker runs, rows have no size
// limit, and an event is acknowledged only after its handlers succeeded
// (a failing handler is retried, then the event is dead-lettered). See
// docs/candi.md in the pgcdc repository for every difference a handler can
// notice and for the migration steps.
package postgresworker
