-- The claim query (see claimSQL in consume.go). Template fields:
-- .EventTable (its quoted name), .CommitTime (the expression of an event's
-- commit time). Parameters: $1, $2 the routed tables' schemas and names, $3
-- the batch size, $4 the claimer, $5 the claim's milliseconds, $6 the
-- batch's byte budget, $7 the client encoding the rows are read in.
WITH cand AS (
	SELECT e.id, e.row_key, e.action, e.schema_name, e.table_name,
		coalesce(pg_catalog.pg_column_size(e.old), 0) + coalesce(pg_catalog.pg_column_size(e.new), 0) AS size
	FROM {{.EventTable}} e
	WHERE (e.claimed_until IS NULL OR e.claimed_until < now())
		AND (e.schema_name, e.table_name) IN (SELECT * FROM unnest($1::text[], $2::text[]))
	ORDER BY e.id
	LIMIT $3
	FOR UPDATE SKIP LOCKED
), batch AS (
	-- A prefix of cand of at most $6 bytes (stored size), at least one event.
	SELECT id, row_key, action, schema_name, table_name FROM (
		SELECT *, sum(size) OVER (ORDER BY id) - size AS before FROM cand) sized
	WHERE before < $6
), earlier AS (
	-- Events before the batch's last one, outside the batch and not validly
	-- claimed by this session: each holds back the later events of its key,
	-- and a TRUNCATE the later events of its table.
	SELECT p.id, p.row_key, p.action, p.schema_name, p.table_name FROM {{.EventTable}} p
	WHERE p.id < (SELECT max(id) FROM batch)
		AND NOT EXISTS (SELECT 1 FROM batch c WHERE c.id = p.id)
		AND (p.claimed_by IS DISTINCT FROM $4 OR p.claimed_until IS NULL OR p.claimed_until < now())
), free AS (
	-- Batch events that no event outside the batch holds back.
	SELECT c.* FROM batch c
	WHERE c.action <> 'TRUNCATE'
		AND NOT EXISTS (SELECT 1 FROM earlier b WHERE b.row_key = c.row_key AND b.id < c.id)
		AND NOT EXISTS (SELECT 1 FROM earlier b WHERE b.action = 'TRUNCATE'
			AND b.schema_name = c.schema_name AND b.table_name = c.table_name AND b.id < c.id)
	UNION ALL
	SELECT c.* FROM batch c
	WHERE c.action = 'TRUNCATE'
		AND NOT EXISTS (SELECT 1 FROM earlier b
			WHERE b.schema_name = c.schema_name AND b.table_name = c.table_name AND b.id < c.id)
), stuck AS (
	SELECT c.* FROM batch c WHERE NOT EXISTS (SELECT 1 FROM free f WHERE f.id = c.id)
), blocked AS (
	-- TRUNCATEs of the batch that cannot be claimed now: held back, or
	-- after a held-back event of their table. They hold back every later
	-- event of their table, so none overtakes them.
	SELECT c.id, c.schema_name, c.table_name FROM batch c
	WHERE c.action = 'TRUNCATE' AND EXISTS (SELECT 1 FROM stuck s
		WHERE s.schema_name = c.schema_name AND s.table_name = c.table_name AND s.id <= c.id)
)
UPDATE {{.EventTable}} e SET claimed_until = now() + $5 * interval '1 millisecond', claimed_by = $4
FROM free c
WHERE e.id = c.id
	AND NOT EXISTS (SELECT 1 FROM blocked b
		WHERE b.schema_name = c.schema_name AND b.table_name = c.table_name AND b.id <= c.id)
RETURNING e.id, e.schema_name, e.table_name, e.action, e.row_key,
	pg_catalog.convert_to(e.old::text, $7), pg_catalog.convert_to(e.new::text, $7), e.xid::text, {{.CommitTime}},
	(SELECT count(*) FROM cand), pg_catalog.convert_to(e.context, $7)
