// Package errs holds the sentinel errors shared by the engines and re-exported
// by the root package, so callers can test them with errors.Is.
package errs

import "errors"

var (
	// ErrConfig marks an error in the worker's configuration or routes.
	ErrConfig = errors.New("pgcdc: invalid configuration")
	// ErrWALLevel means the server does not run with wal_level=logical.
	ErrWALLevel = errors.New("pgcdc: wal_level is not logical")
	// ErrPrivilege means the role lacks a privilege pgcdc needs.
	ErrPrivilege = errors.New("pgcdc: missing privilege")
	// ErrTableNotFound means a route names a table that does not exist.
	ErrTableNotFound = errors.New("pgcdc: table not found")
	// ErrNoReplicaIdentity means a table has neither a primary key nor a
	// replica identity, so its UPDATEs and DELETEs cannot be captured.
	ErrNoReplicaIdentity = errors.New("pgcdc: table has no primary key or replica identity")
	// ErrSlotLost means the replication slot disappeared or lost WAL that had
	// not been confirmed: changes may have been missed.
	ErrSlotLost = errors.New("pgcdc: replication slot lost")
	// ErrDecode means a message of the replication stream cannot be
	// decoded; the server would send it again after a reconnect.
	ErrDecode = errors.New("pgcdc: cannot decode the replication stream")
)

// Fatal wraps an error that reconnecting cannot fix: the engine stops and
// Serve returns it.
type Fatal struct{ Err error }

func (f *Fatal) Error() string { return f.Err.Error() }
func (f *Fatal) Unwrap() error { return f.Err }

// IsFatal reports whether err is (or wraps) a Fatal error.
func IsFatal(err error) bool {
	var f *Fatal
	return errors.As(err, &f)
}

// Permanent wraps a handler error that retrying cannot fix: the event is
// dead-lettered at once instead of after the retries.
type Permanent struct{ Err error }

func (p *Permanent) Error() string { return p.Err.Error() }
func (p *Permanent) Unwrap() error { return p.Err }

// IsPermanent reports whether err is (or wraps) a Permanent error.
func IsPermanent(err error) bool {
	var p *Permanent
	return errors.As(err, &p)
}
