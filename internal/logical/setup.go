package logical

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcdc/pgcdc/internal/errs"
	"github.com/pgcdc/pgcdc/internal/pgident"
)

// tableInfo is what the checks learn of a routed table.
type tableInfo struct {
	oid      uint32
	identity byte // relreplident: d, f, i, n
	hasPK    bool
	columns  string // the publication's column list, " (a, b)", or ""
}

// columnList is the publication column list that keeps a route's filtered
// columns on the server: only for a table whose replica identity is its
// primary key on PostgreSQL 15 or later (the list must cover the replica
// identity, or PostgreSQL would reject the table's UPDATEs and DELETEs).
// Elsewhere it is "" and pgcdc filters the columns itself.
func (s *Source) columnList(ctx context.Context, pool *pgxpool.Pool, t Table, ti tableInfo) (string, error) {
	qname := pgident.Qualified(t.Schema, t.Table)
	rows, err := pool.Query(ctx, `SELECT a.attname, EXISTS (SELECT 1 FROM pg_index i
			WHERE i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey))
		FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
			AND a.attgenerated = '' ORDER BY a.attnum`, ti.oid)
	if err != nil {
		return "", fmt.Errorf("source %s: reading the columns of %s: %w", s.label(), qname, err)
	}
	var keep []string
	for rows.Next() {
		var name string
		var pk bool
		if err := rows.Scan(&name, &pk); err != nil {
			rows.Close()
			return "", fmt.Errorf("source %s: reading the columns of %s: %w", s.label(), qname, err)
		}
		kept := slices.Contains(t.Columns, name) || (len(t.Columns) == 0 && !slices.Contains(t.Exclude, name))
		if pk && !kept {
			rows.Close()
			return "", fatalf(errs.ErrConfig, "source %s: route %q leaves out column %q of %s, which is part of its primary key: the key identifies the row in every event, so it cannot be filtered out", s.label(), t.Route.Name, name, qname)
		}
		if kept {
			keep = append(keep, pgident.Quote(name))
		}
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("source %s: reading the columns of %s: %w", s.label(), qname, err)
	}
	if ti.identity != 'd' || !ti.hasPK || s.serverVersion < 150000 {
		s.cfg.Logger.Info("pgcdc: the server sends every column of this table (no publication column list with its replica identity); pgcdc leaves the filtered columns out before the handler",
			"source", s.cfg.Name, "table", qname)
		return "", nil
	}
	return " (" + strings.Join(keep, ", ") + ")", nil
}

func fatalf(sentinel error, format string, args ...any) error {
	return &errs.Fatal{Err: fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)}
}

// check verifies, before anything is created, that the server and the
// tables allow logical capture, and says what to change when they do not.
// A routed table that existed in an earlier session of this Run and is gone
// now is reported (logged, and passed to OnError) and left out, so the
// other tables keep streaming; at the first session it is an error.
func (s *Source) check(ctx context.Context, pool *pgxpool.Pool) error {
	var walLevel, user, db, encoding string
	var canReplicate bool
	err := pool.QueryRow(ctx, `SELECT current_setting('wal_level'), current_user, current_database(),
		(SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user),
		current_setting('server_encoding'), current_setting('server_version_num')::int`).
		Scan(&walLevel, &user, &db, &canReplicate, &encoding, &s.serverVersion)
	if err != nil {
		return fmt.Errorf("source %s: checking server settings: %w", s.label(), err)
	}
	s.database = db
	s.sqlASCII = encoding == "SQL_ASCII"
	if walLevel != "logical" {
		return fatalf(errs.ErrWALLevel, "source %s: the server runs with wal_level=%s; logical replication needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (or use the trigger capture mode)", s.label(), walLevel)
	}
	if !canReplicate {
		return fatalf(errs.ErrPrivilege, "source %s: role %q has no REPLICATION privilege: run ALTER ROLE %s WITH REPLICATION as a superuser", s.label(), user, pgident.Quote(user))
	}
	var problems []error
	prev := s.tables
	s.tables = map[string]tableInfo{}
	s.live = s.live[:0]
	for _, t := range s.cfg.Tables {
		qname := pgident.Qualified(t.Schema, t.Table)
		if reason := catalogSchema(t.Schema); reason != "" {
			problems = append(problems, fatalf(errs.ErrConfig, "source %s: route %q: %s is %s: only user tables can be captured", s.label(), t.Route.Name, qname, reason))
			continue
		}
		var ti tableInfo
		var ident, kind string
		err := pool.QueryRow(ctx, `SELECT c.oid, c.relreplident::text, c.relkind::text,
				EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = $2`, t.Schema, t.Table).
			Scan(&ti.oid, &ident, &kind, &ti.hasPK)
		if errors.Is(err, pgx.ErrNoRows) {
			if _, had := prev[t.Schema+"."+t.Table]; had {
				gone := fmt.Errorf("%w: source %s: route %q: table %s was dropped (or renamed) while pgcdc streamed it; the other tables keep streaming; remove the route, or recreate the table and restart", errs.ErrTableNotFound, s.label(), t.Route.Name, qname)
				s.cfg.Logger.Error("pgcdc: routed table is gone; streaming the others", "source", s.cfg.Name, "route", t.Route.Name, "error", gone)
				if s.cfg.OnError != nil {
					s.cfg.OnError(gone)
				}
				continue
			}
			problems = append(problems, fatalf(errs.ErrTableNotFound, "source %s: route %q: table %s does not exist in database %q (names are case-sensitive, as stored in the catalog)", s.label(), t.Route.Name, qname, db))
			continue
		}
		if err != nil {
			return fmt.Errorf("source %s: looking up table %s: %w", s.label(), qname, err)
		}
		if kind != "r" && kind != "p" {
			problems = append(problems, fatalf(errs.ErrConfig, "source %s: route %q: %s is %s, not a table: only tables (plain or partitioned) can be captured", s.label(), t.Route.Name, qname, relkindName(kind)))
			continue
		}
		ti.identity = ident[0]
		if ti.identity == 'n' || (ti.identity == 'd' && !ti.hasPK) {
			problems = append(problems, fatalf(errs.ErrNoReplicaIdentity, "source %s: table %s has no primary key and no replica identity, so PostgreSQL would reject its UPDATEs and DELETEs once it is published: add a primary key or run ALTER TABLE %s REPLICA IDENTITY FULL", s.label(), qname, qname))
			continue
		}
		if t.Snapshot && !ti.hasPK {
			problems = append(problems, fatalf(errs.ErrConfig, "source %s: route %q asks for a snapshot, but %s has no primary key: snapshots read tables in primary key order, in chunks; add a primary key or drop WithSnapshot", s.label(), t.Route.Name, qname))
			continue
		}
		if t.NeedOld && ti.identity != 'f' {
			problems = append(problems, fatalf(errs.ErrConfig, "source %s: route %q filters UPDATEs by changed columns (WithChangedColumns), which needs the old row: run ALTER TABLE %s REPLICA IDENTITY FULL", s.label(), t.Route.Name, qname))
			continue
		}
		if len(t.Columns) > 0 || len(t.Exclude) > 0 {
			spec, err := s.columnList(ctx, pool, t, ti)
			if err != nil {
				problems = append(problems, err)
				continue
			}
			ti.columns = spec
		}
		s.tables[t.Schema+"."+t.Table] = ti
		s.live = append(s.live, t)
	}
	if len(problems) == 0 {
		problems = append(problems, s.checkPartitions(ctx, pool))
	}
	if len(problems) == 0 && len(s.live) == 0 {
		return fatalf(errs.ErrTableNotFound, "source %s: every routed table is gone", s.label())
	}
	return errors.Join(problems...)
}

// checkPartitions refuses routes to a partitioned table and one of its
// partitions at once: the publication publishes partitions through their
// root (publish_via_partition_root), so the partition's route would get
// nothing.
func (s *Source) checkPartitions(ctx context.Context, pool *pgxpool.Pool) error {
	byOID := map[uint32]string{}
	for key, ti := range s.tables {
		byOID[ti.oid] = key
	}
	var problems []error
	for key, ti := range s.tables {
		rows, err := pool.Query(ctx, `SELECT relid::oid FROM pg_partition_ancestors($1::oid) WHERE relid <> $1::oid`, ti.oid)
		if err != nil {
			return fmt.Errorf("source %s: reading partition ancestors of %s: %w", s.label(), key, err)
		}
		anc, err := pgx.CollectRows(rows, pgx.RowTo[uint32])
		if err != nil {
			return fmt.Errorf("source %s: reading partition ancestors of %s: %w", s.label(), key, err)
		}
		for _, a := range anc {
			if parent, ok := byOID[a]; ok {
				problems = append(problems, fatalf(errs.ErrConfig, "source %s: %s is a partition of %s and both are routed: the changes of a partition are delivered to its partitioned table's route (with \"table\" naming the partitioned table); route only one of them", s.label(), key, parent))
			}
		}
	}
	return errors.Join(problems...)
}

// catalogSchema says why a schema cannot hold capturable tables ("" if it
// can).
func catalogSchema(schema string) string {
	switch {
	case schema == "pg_catalog" || schema == "information_schema":
		return "a system catalog"
	case strings.HasPrefix(schema, "pg_toast"), strings.HasPrefix(schema, "pg_temp"):
		return "an internal table"
	}
	return ""
}

// relkindName names a pg_class.relkind for error messages.
func relkindName(kind string) string {
	switch kind {
	case "v":
		return "a view"
	case "m":
		return "a materialized view"
	case "S":
		return "a sequence"
	case "c":
		return "a composite type"
	case "f":
		return "a foreign table"
	case "i", "I":
		return "an index"
	case "t":
		return "a TOAST table"
	}
	return fmt.Sprintf("a relation of kind %q", kind)
}

// ensurePublication creates the publication for the routed tables, or
// brings an existing one to exactly that set. Partitioned tables publish
// their partitions' changes under their own name (publish_via_partition_root),
// so partitions attached later are followed. While another process streams
// the slot, a publication with other tables belongs to another worker of
// the same type: that is refused rather than changed under it.
func (s *Source) ensurePublication(ctx context.Context, pool *pgxpool.Pool) error {
	want := make([]string, 0, len(s.live))
	for _, t := range s.live {
		want = append(want, pgident.Qualified(t.Schema, t.Table)+s.tables[t.Schema+"."+t.Table].columns)
	}
	slices.Sort(want)
	list := strings.Join(want, ", ")
	name := pgident.Quote(s.cfg.Publication)

	var exists, viaRoot bool
	err := pool.QueryRow(ctx, `SELECT true, pubviaroot FROM pg_publication WHERE pubname = $1`, s.cfg.Publication).Scan(&exists, &viaRoot)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("source %s: looking up publication: %w", s.label(), err)
	}
	with := " WITH (publish_via_partition_root = true)"
	if s.serverVersion >= 180000 {
		// Generated columns are published, as row_to_json shows them.
		with = " WITH (publish_via_partition_root = true, publish_generated_columns = stored)"
	}
	if !exists {
		if _, err := pool.Exec(ctx, "CREATE PUBLICATION "+name+" FOR TABLE "+list+with); err != nil {
			return s.privilegeHint(fmt.Errorf("source %s: creating publication %s: %w", s.label(), name, err))
		}
		s.cfg.Logger.Info("pgcdc: created publication", "source", s.cfg.Name, "publication", s.cfg.Publication, "tables", list)
		return nil
	}
	cols := `'{}'::text[]`
	if s.serverVersion >= 150000 {
		cols = `coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum = ANY (pr.prattrs)), '{}')`
	}
	rows, err := pool.Query(ctx, `SELECT n.nspname, c.relname, `+cols+` FROM pg_publication_rel pr
		JOIN pg_publication p ON p.oid = pr.prpubid
		JOIN pg_class c ON c.oid = pr.prrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1`, s.cfg.Publication)
	if err != nil {
		return fmt.Errorf("source %s: reading publication: %w", s.label(), err)
	}
	have, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var sch, tab string
		var attrs []string
		err := r.Scan(&sch, &tab, &attrs)
		spec := pgident.Qualified(sch, tab)
		if len(attrs) > 0 {
			for i := range attrs {
				attrs[i] = pgident.Quote(attrs[i])
			}
			spec += " (" + strings.Join(attrs, ", ") + ")"
		}
		return spec, err
	})
	if err != nil {
		return fmt.Errorf("source %s: reading publication: %w", s.label(), err)
	}
	slices.Sort(have)
	if !viaRoot || s.serverVersion >= 180000 {
		if _, err := pool.Exec(ctx, "ALTER PUBLICATION "+name+" SET"+strings.TrimPrefix(with, " WITH")); err != nil {
			return s.privilegeHint(fmt.Errorf("source %s: updating publication %s: %w", s.label(), name, err))
		}
	}
	if slices.Equal(have, want) {
		return nil
	}
	var active bool
	err = pool.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&active)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("source %s: reading replication slot: %w", s.label(), err)
	}
	if active {
		return fatalf(errs.ErrConfig, "source %s: another process streams slot %q for a worker of the same type with other routes (its publication %s has tables %s; this worker routes %s): give each set of routes its own SetWorkerType, or stop the other worker first when its routes are being changed", s.label(), s.cfg.Slot, name, strings.Join(have, ", "), list)
	}
	if _, err := pool.Exec(ctx, "ALTER PUBLICATION "+name+" SET TABLE "+list); err != nil {
		return s.privilegeHint(fmt.Errorf("source %s: updating publication %s: %w", s.label(), name, err))
	}
	s.cfg.Logger.Info("pgcdc: updated publication", "source", s.cfg.Name, "publication", s.cfg.Publication, "tables", list)
	return nil
}

func (s *Source) privilegeHint(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return fatalf(errs.ErrPrivilege, "%v (creating a publication needs CREATE on the database and ownership of the tables; a superuser can create it once: CREATE PUBLICATION %s FOR TABLE ...)", err, pgident.Quote(s.cfg.Publication))
	}
	return err
}

// slotState is what pg_replication_slots says of our slot.
type slotState struct {
	exists    bool
	plugin    string
	database  string
	walStatus string
	confirmed pglogrepl.LSN
}

func (s *Source) readSlot(ctx context.Context, pool *pgxpool.Pool) (slotState, error) {
	var st slotState
	var plugin, database, walStatus *string
	var confirmed *string
	err := pool.QueryRow(ctx, `SELECT plugin, database, wal_status, confirmed_flush_lsn::text
		FROM pg_replication_slots WHERE slot_name = $1`, s.cfg.Slot).Scan(&plugin, &database, &walStatus, &confirmed)
	if errors.Is(err, pgx.ErrNoRows) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("source %s: reading replication slot: %w", s.label(), err)
	}
	st.exists = true
	st.plugin, st.database, st.walStatus = deref(plugin), deref(database), deref(walStatus)
	if confirmed != nil {
		st.confirmed, _ = pglogrepl.ParseLSN(*confirmed)
	}
	return st, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// ensureSlot creates the slot when missing. A slot that existed before and
// is gone now, or that lost WAL, is an error: changes may have been missed.
func (s *Source) ensureSlot(ctx context.Context, pool *pgxpool.Pool, conn *pgconn.PgConn) error {
	st, err := s.readSlot(ctx, pool)
	if err != nil {
		return err
	}
	if st.exists && st.walStatus == "lost" && s.cfg.RecreateLostSlot {
		s.cfg.Logger.Error("pgcdc: replication slot lost WAL; dropping it and creating a new one from now: changes in between are missed", "source", s.cfg.Name, "slot", s.cfg.Slot)
		if _, err := pool.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.cfg.Slot); err != nil {
			return fmt.Errorf("source %s: dropping lost slot %q: %w", s.label(), s.cfg.Slot, err)
		}
		st.exists = false
		s.hadSlot = false
	}
	switch {
	case st.exists && st.walStatus == "lost":
		return fatalf(errs.ErrSlotLost, "source %s: replication slot %q has wal_status 'lost': the server removed WAL it had not yet delivered, so changes were missed; to start again from now, accept the gap with SetRecreateLostSlot(true) (or drop the slot), and raise max_slot_wal_keep_size", s.label(), s.cfg.Slot)
	case st.exists && (st.plugin != "pgoutput" || st.database != s.database):
		return fatalf(errs.ErrConfig, "source %s: replication slot %q exists but belongs to plugin %q in database %q, not pgoutput in %q: choose another worker type or drop that slot", s.label(), s.cfg.Slot, st.plugin, st.database, s.database)
	case st.exists:
		s.hadSlot = true
		return nil
	case s.hadSlot && !s.cfg.RecreateLostSlot:
		return fatalf(errs.ErrSlotLost, "source %s: replication slot %q was dropped while pgcdc used it: changes made since then were not captured; to start again from now, accept the gap with SetRecreateLostSlot(true)", s.label(), s.cfg.Slot)
	}
	if mark, err := s.slotMark(ctx, pool); err != nil {
		return err
	} else if mark != "" {
		if !s.cfg.RecreateLostSlot {
			return fatalf(errs.ErrSlotLost, "source %s: replication slot %q is gone (%s): changes made since its last confirmed position were not captured; to start again from now, accept the gap with SetRecreateLostSlot(true)", s.label(), s.cfg.Slot, mark)
		}
		s.cfg.Logger.Error("pgcdc: replication slot was lost; creating a new one from now: changes in between are missed", "source", s.cfg.Name, "slot", s.cfg.Slot, "was", mark)
	}
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, s.cfg.Slot, "pgoutput",
		pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "NOEXPORT_SNAPSHOT"})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42710" { // created by a racing instance
			s.hadSlot = true
			return nil
		}
		return fmt.Errorf("source %s: creating replication slot %q: %w", s.label(), s.cfg.Slot, err)
	}
	s.hadSlot = true
	// Remember on the publication that the slot existed, so a slot dropped
	// while no pgcdc ran is noticed instead of silently re-created.
	comment := fmt.Sprintf("pgcdc: slot %s created at %s", s.cfg.Slot, res.ConsistentPoint)
	if _, err := pool.Exec(ctx, "COMMENT ON PUBLICATION "+pgident.Quote(s.cfg.Publication)+" IS "+pgident.Literal(comment)); err != nil {
		s.cfg.Logger.Warn("pgcdc: cannot record the slot on the publication; a slot dropped while pgcdc is down will not be detected", "source", s.cfg.Name, "error", err)
	}
	s.cfg.Logger.Info("pgcdc: created replication slot", "source", s.cfg.Name, "slot", s.cfg.Slot, "consistent_point", res.ConsistentPoint)
	return nil
}

// slotMark returns the publication's record of a slot pgcdc created ("" if
// none): if the slot is missing now, it was lost.
func (s *Source) slotMark(ctx context.Context, pool *pgxpool.Pool) (string, error) {
	var comment *string
	err := pool.QueryRow(ctx, `SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = $1`, s.cfg.Publication).Scan(&comment)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return "", fmt.Errorf("source %s: reading publication comment: %w", s.label(), err)
	}
	if c := deref(comment); strings.HasPrefix(c, "pgcdc: slot "+s.cfg.Slot+" created") {
		return c, nil
	}
	return "", nil
}
