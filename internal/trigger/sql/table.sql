-- The event table (see tableSQL in install.go). Template fields:
-- .EventTable (its quoted name), .Tag (its COMMENT, a quoted literal).
CREATE TABLE IF NOT EXISTS {{.EventTable}} (
	id            bigint GENERATED ALWAYS AS IDENTITY (CACHE 1) PRIMARY KEY,
	schema_name   text NOT NULL,
	table_name    text NOT NULL,
	action        text NOT NULL,
	row_key       bigint NOT NULL,
	old           json,
	new           json,
	xid           xid8 NOT NULL,
	tx_time       timestamptz NOT NULL DEFAULT now(),
	context       text,
	claimed_until timestamptz,
	claimed_by    text
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
	autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 1000);
COMMENT ON TABLE {{.EventTable}} IS {{.Tag}}
