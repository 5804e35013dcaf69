-- The trigger function of one key (see functionSQL in install.go).
-- Template fields: .Function, .EventTable (quoted names), .OldKey, .NewKey
-- (PL/pgSQL expressions of the row key), .TableSchema, .TableName
-- (TG_TABLE_SCHEMA/TG_TABLE_NAME, or a partitioned table's quoted name).
CREATE OR REPLACE FUNCTION {{.Function}}() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, public
SET timezone = 'UTC'
SET datestyle = 'ISO'
SET intervalstyle = 'postgres'
SET extra_float_digits = 1
SET bytea_output = 'hex'
AS $pgcdc$
DECLARE
	o json;
	n json;
	k text;
BEGIN
	IF TG_OP = 'DELETE' THEN
		o := pg_catalog.row_to_json(OLD);
		k := {{.OldKey}};
	ELSIF TG_OP = 'UPDATE' THEN
		o := pg_catalog.row_to_json(OLD);
		n := pg_catalog.row_to_json(NEW);
		k := {{.NewKey}};
	ELSIF TG_OP = 'INSERT' THEN
		n := pg_catalog.row_to_json(NEW);
		k := {{.NewKey}};
	ELSE
		k := '';
	END IF;
	INSERT INTO {{.EventTable}} (schema_name, table_name, action, row_key, old, new, xid, context)
	VALUES ({{.TableSchema}}, {{.TableName}}, TG_OP,
		pg_catalog.hashtextextended({{.TableSchema}} || chr(31) || {{.TableName}} || chr(31) || k, 0),
		o, n, pg_catalog.pg_current_xact_id(),
		NULLIF(pg_catalog.current_setting('pgcdc.context', true), ''));
	RETURN NULL;
END
$pgcdc$
