package pgcdc

import (
	"errors"

	"github.com/pgcdc/pgcdc/internal/dispatch"
	"github.com/pgcdc/pgcdc/internal/errs"
)

// Errors returned by NewWorker and Serve; test them with errors.Is.
var (
	// ErrConfig: the options or routes are invalid. The message says which.
	ErrConfig = errs.ErrConfig
	// ErrWALLevel: the server does not run with wal_level=logical.
	ErrWALLevel = errs.ErrWALLevel
	// ErrPrivilege: the role lacks REPLICATION or the right to create the
	// publication.
	ErrPrivilege = errs.ErrPrivilege
	// ErrTableNotFound: a route names a table that does not exist.
	ErrTableNotFound = errs.ErrTableNotFound
	// ErrNoReplicaIdentity: a routed table has no primary key and no replica
	// identity.
	ErrNoReplicaIdentity = errs.ErrNoReplicaIdentity
	// ErrSlotLost: the replication slot was dropped or lost WAL while in use,
	// so changes may have been missed. pgcdc never silently starts over.
	ErrSlotLost = errs.ErrSlotLost
	// ErrDecode: a message of the replication stream cannot be decoded.
	// The message names the source and the WAL position; nothing after it
	// was confirmed, so no change is lost once the cause is fixed.
	ErrDecode = errs.ErrDecode
	// ErrWorkerClosed: Serve was called after Shutdown, or twice.
	ErrWorkerClosed = errors.New("pgcdc: worker closed")
)

// HandlerError is the error stored with a dead-lettered event: which route
// failed on which event, wrapping the handler's last error. Its fields are
// Route (the route as registered), EventID (the event's event_id) and Err
// (the handler's last error, also returned by Unwrap); test for it with
// errors.As.
type HandlerError = dispatch.HandlerError

// PanicError is the error a panicking handler is turned into: Value is
// what the handler panicked with and Stack the goroutine's stack at the
// panic. A handler's panic never crashes the worker; it is retried and
// dead-lettered like a returned error.
type PanicError = dispatch.PanicError

// Permanent marks a handler error that retrying cannot fix (a rejected
// payload, a 4xx answer): the event is dead-lettered at once, without the
// retries of SetMaxRetries. Without a dead-letter store (DisableDeadLetter)
// it is retried like any other error, since nothing may be dropped.
// Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &errs.Permanent{Err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool { return errs.IsPermanent(err) }
