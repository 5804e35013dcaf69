package pgtest

import (
	"fmt"
	"strings"
)

// scalarCol is a column of the oracle table: SQL literals (NULL where
// empty) for its rows. Unless noArray, an array column of the same type
// holds all values (1-D), a 2-D array, an array with lower bound 0, '{}'.
type scalarCol struct {
	name, typ string
	vals      []string
	noArray   bool
}

var oracleCols = []scalarCol{
	{"int2", "int2", []string{"0", "-32768", "32767"}, false},
	{"int4", "int4", []string{"0", "-2147483648", "2147483647", "42"}, false},
	{"int8", "int8", []string{"9007199254740993", "-9223372036854775808", "9223372036854775807", "0"}, false},
	{"numeric", "numeric", []string{"'123456789012345678901234567890.12345678901234567890123'", "'NaN'", "'Infinity'", "'-Infinity'", "'-0'",
		"'1e-300'", "'12.50'", "'1e20'", "'-0.000001'", "0"}, false},
	{"float4", "float4", []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'1.5e-7'", "'3.4028235e38'", "'0.1'", "'1e-45'", "'100'"}, false},
	{"float8", "float8", []string{"'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "'1e-300'", "'1e300'", "'0.1'", "'5e-324'",
		"'1.7976931348623157e308'", "'123456789012345678'", "'1e22'", "'1e21'", "'123.456'"}, false},
	{"money", "money", []string{"'1234.56'", "'-0.01'", "'92233720368547758.07'"}, false},
	{"text", "text", []string{`'plain'`, `''`, `'NULL'`, `'null'`, `' spaced '`, `'{a,b}'`, `'(x,y)'`, `'a"b'`, `E'a\\b'`,
		`E'\x01\t\n\r\b\f\x1f\x7f'`, `'é€😀 ñ'`, `'a,b;c'`, `E'\\"{}'`, `'"'`, `' '`, `'[0:1]={1}'`}, false},
	{"bpchar", "char(5)", []string{"'ab'", "''", "'a\"b'"}, false},
	{"varchar", "varchar(10)", []string{"'hello'", "'with, comma'"}, false},
	{"qchar", `"char"`, []string{"'a'", `E'\\200'`, `'"'`, `E'\\\\'`}, false},
	{"name", "name", []string{"'pg_class'", "'Mixed Case'"}, false},
	{"bytea", "bytea", []string{`'\xdeadbeef'`, `''`, `'\x00'`}, false},
	{"bool", "bool", []string{"true", "false"}, false},
	{"date", "date", []string{"'2024-01-02'", "'infinity'", "'-infinity'", "'0044-03-15 BC'", "'5874897-12-31'", "'4713-01-01 BC'", "'0001-01-01'"}, false},
	{"time", "time", []string{"'03:04:05.123456'", "'24:00:00'", "'00:00:00'"}, false},
	{"timetz", "timetz", []string{"'03:04:05+05:30'", "'00:00:00-12:34:56'", "'12:00:00.5+00'"}, false},
	{"timestamp", "timestamp", []string{"'2024-01-02 03:04:05.123'", "'infinity'", "'-infinity'", "'0044-03-15 12:00:00 BC'",
		"'294276-12-31 23:59:59.999999'", "'4713-01-01 00:00:00 BC'", "'10000-01-01 00:00:00'", "'2000-02-29 00:00:00.000001'"}, false},
	{"timestamptz", "timestamptz", []string{"'2024-01-02 03:04:05.123+00'", "'infinity'", "'-infinity'", "'0044-03-15 12:00:00+00 BC'",
		"'294276-12-31 23:59:59.999999+00'", "'4713-01-01 00:00:00+00 BC'", "'2024-06-01 12:00:00+05:30'", "'12345-06-07 08:09:10.5-03:30'",
		"'1800-01-01 00:00:00+00'"}, false},
	{"interval", "interval", []string{"'1 year 2 mons 3 days 04:05:06.789'", "'-1 day'", "'0'", "'-178956970 years -8 mons'"}, false},
	{"uuid", "uuid", []string{"'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"}, false},
	{"json", "json", []string{`'{"a": [1, 2.50, "x\u00e9"], "b": null}'`, `'123456789012345678901234567890'`, `'"str"'`,
		`'  [1, 2]  '`, `'{"k":"\ud83d\ude00","k":2}'`, `'null'`, `'1e400'`}, false},
	{"jsonb", "jsonb", []string{`'{"a": [1, 2.50, "x\u00e9"], "b": null}'`, `'123456789012345678901234567890'`, `'"str"'`,
		`'  [1, 2]  '`, `'{"k":"\ud83d\ude00","n":{"m":[true,false]}}'`, `'null'`, `'1e400'`}, false},
	{"xml", "xml", []string{`'<a b="c">d&amp;e</a>'`, `'text, "only"'`}, false},
	{"inet", "inet", []string{"'192.168.0.1/24'", "'::1'"}, false},
	{"cidr", "cidr", []string{"'10.0.0.0/8'"}, false},
	{"macaddr", "macaddr", []string{"'08:00:2b:01:02:03'"}, false},
	{"macaddr8", "macaddr8", []string{"'08:00:2b:01:02:03:04:05'"}, false},
	{"bit", "bit(3)", []string{"B'101'"}, false},
	{"varbit", "varbit", []string{"B'1101'", "B''"}, false},
	{"tsvector", "tsvector", []string{"'a fat cat'", `$$'a b' c:1A 'it''s'$$`}, false},
	{"tsquery", "tsquery", []string{"'fat & (rat | !cat)'"}, false},
	{"point", "point", []string{"'(1,2)'", "'(1.5,-2e-300)'"}, false},
	{"line", "line", []string{"'{1,2,3}'"}, false},
	{"lseg", "lseg", []string{"'[(1,2),(3,4)]'"}, false},
	{"box", "box", []string{"'(1,2),(3,4)'", "'(0,0),(0,0)'"}, false},
	{"path", "path", []string{"'[(1,2),(3,4)]'", "'((1,2),(3,4))'"}, false},
	{"polygon", "polygon", []string{"'((1,2),(3,4),(5,6))'"}, false},
	{"circle", "circle", []string{"'<(1,2),3>'"}, false},
	{"int4range", "int4range", []string{"'[1,10)'", "'empty'", "'(,5]'"}, false},
	{"numrange", "numrange", []string{"'[1.5,2.5]'"}, false},
	{"tsrange", "tsrange", []string{`'["2024-01-01 00:00:00","2024-02-01 00:00:00")'`}, false},
	{"tstzrange", "tstzrange", []string{`'["2024-01-01 00:00:00+00",infinity)'`}, false},
	{"daterange", "daterange", []string{"'[2024-01-01,2024-02-01)'"}, false},
	{"int4multirange", "int4multirange", []string{"'{[1,3),[5,7)}'", "'{}'"}, false},
	{"oid", "oid", []string{"12345", "4294967295", "0"}, false},
	{"regclass", "regclass", []string{"'pg_class'"}, false},
	{"regtype", "regtype", []string{"'integer'", "'character varying'"}, false},
	{"regproc", "regproc", []string{"'now'"}, false},
	{"pg_lsn", "pg_lsn", []string{"'16/B374D848'"}, false},
	{"xid", "xid", []string{"'123'"}, false},
	{"xid8", "xid8", []string{"'18446744073709551615'"}, false},
	{"cid", "cid", []string{"'7'"}, false},
	{"tid", "tid", []string{"'(1,2)'"}, false},
	{"int2vector", "int2vector", []string{"'1 2 3'", "''", "'-5'"}, true},
	{"oidvector", "oidvector", []string{"'1 2'", "''"}, true},
	{"snapshot", "pg_snapshot", []string{"'10:20:10,14,15'"}, false},
	{"jsonpath", "jsonpath", []string{`'$.a[*] ? (@ > 1)'`}, false},
	{"refcursor", "refcursor", []string{"'abc'"}, false},
	{"regconfig", "regconfig", []string{"'english'"}, false},
	{"aclitem", "aclitem", []string{"'postgres=arwdDxt/postgres'"}, false},
	// user-defined types (see oracleDDL)
	{"mood", "mood", []string{"'sad'", `'with "quote", and comma'`, "'happy'"}, false},
	{"posint", "posint", []string{"'42'", "'123456789012345678901234567890'", "'NaN'"}, false},
	{"dd", "dd", []string{"'7'"}, false},
	{"tags", "tags", []string{`'{a,"b c",NULL}'`, "'{}'", `'{{x,y},{"\"","\\"}}'`}, true},
	{"ints", "ints", []string{"'{1,2,NULL}'", "'[0:1]={3,4}'"}, true},
	{"inner", "inner_t", []string{`ROW(1, 'a b')`, `ROW(NULL, NULL)`, `ROW(-2, E'q"u,o(t)e\\s')`, `ROW(3, '')`}, false},
	{"outer", "outer_t", []string{
		`ROW(1, ROW(2, 'x'), ARRAY['a','b c',NULL], '2024-01-02 03:04:05+00', '{"j": [1]}', 1.50, true, 'happy', '{"(1,y)","(2,\"z z\")"}', '{1,2}', '[1,2)')`,
		`ROW(NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`,
		`ROW(2, ROW(NULL, E'\\"()'), '{}', 'infinity', 'null', 'NaN', false, 'sad', '{}', '{}', 'empty')`}, false},
	{"dbox", "dbox", []string{"'(1,2),(3,4)'", "'(5,6),(7,8)'"}, false},
	{"ecomp", "ecomp", []string{"ROW()"}, false},
	{"dcomp", "dcomp", []string{"ROW(5, 'five')"}, false},
	{"hstore", "hstore", []string{`'a=>1, "b c"=>NULL, "q\"x"=>"\\\\"'`, "''", `'"é"=>"\\n"'`}, false},
}

const oracleDDL = `
CREATE EXTENSION hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'with "quote", and comma');
CREATE DOMAIN posint AS numeric;
CREATE DOMAIN dd AS posint CHECK (VALUE > 0);
CREATE DOMAIN tags AS text[];
CREATE DOMAIN ints AS int4[];
CREATE TYPE inner_t AS (x int, y text);
CREATE TYPE outer_t AS (id int, dropme int, "inner" inner_t, tags text[], ts timestamptz, j jsonb, n posint, b bool, m mood,
  inners inner_t[], "weird ""key""" ints, r int4range);
ALTER TYPE outer_t DROP ATTRIBUTE dropme;
ALTER TYPE outer_t ADD ATTRIBUTE "late" int;
ALTER TYPE outer_t DROP ATTRIBUTE "late";
CREATE TYPE ecomp AS ();
CREATE DOMAIN dcomp AS inner_t;
CREATE DOMAIN dbox AS box;
`

// AllTypes returns SQL that creates table t with a column of nearly every
// built-in and several user-defined types (enum, domains, nested composites,
// hstore) and their arrays (ddl), and SQL that fills it with edge-case values,
// NULLs and a 1.3 MB value (dml). It is the oracle data set: each row must
// render as row_to_json renders it.
func AllTypes() (ddl, dml string) {
	var cols, arrays []string
	cols = append(cols, "id int PRIMARY KEY", `"weird ""col"" \ name" text`, `"ñame" int`, "big text")
	nrows := 0
	for _, c := range oracleCols {
		cols = append(cols, fmt.Sprintf("c_%s %s", c.name, c.typ))
		if !c.noArray {
			cols = append(cols, fmt.Sprintf("a_%s %s[]", c.name, c.typ))
		}
		nrows = max(nrows, len(c.vals)+1)
	}
	cols = append(cols, "a_int2vector int2vector[]", "a_oidvector oidvector[]", "a_tags tags[]", "a_ints ints[]")
	var sql strings.Builder
	ddl = oracleDDL + fmt.Sprintf("CREATE TABLE t (%s);\n", strings.Join(cols, ", "))
	for r := 0; r < nrows; r++ {
		names := []string{"id"}
		vals := []string{fmt.Sprint(r + 1)}
		for _, c := range oracleCols {
			if r < len(c.vals) {
				names = append(names, "c_"+c.name)
				vals = append(vals, fmt.Sprintf("(%s)::%s", c.vals[r], c.typ))
			}
		}
		fmt.Fprintf(&sql, "INSERT INTO t (%s) VALUES (%s);\n", strings.Join(names, ", "), strings.Join(vals, ", "))
	}
	for _, c := range oracleCols {
		if c.noArray {
			continue
		}
		lits := make([]string, 0, len(c.vals)+1)
		for _, v := range c.vals {
			lits = append(lits, fmt.Sprintf("(%s)::%s", v, c.typ))
		}
		lits = append(lits, "NULL")
		one := fmt.Sprintf("ARRAY[%s]::%s[]", strings.Join(lits, ", "), c.typ)
		two := fmt.Sprintf("ARRAY[ARRAY[%s, NULL], ARRAY[NULL, %s]]::%s[]", lits[0], lits[len(lits)-2], c.typ)
		arrays = append(arrays,
			fmt.Sprintf("UPDATE t SET a_%s = %s WHERE id IN (1, 3);", c.name, one),
			fmt.Sprintf("UPDATE t SET a_%s[0] = %s WHERE id = 3;", c.name, lits[0]),
			fmt.Sprintf("UPDATE t SET a_%s = %s WHERE id = 2;", c.name, two),
			fmt.Sprintf("UPDATE t SET a_%s = '{}' WHERE id = 4;", c.name))
	}
	sql.WriteString(strings.Join(arrays, "\n"))
	sql.WriteString(`
UPDATE t SET "weird ""col"" \ name" = 'w', "ñame" = 1 WHERE id = 1;
UPDATE t SET big = repeat(E'x\\"é\t', 1 << 18) WHERE id = 2;
UPDATE t SET a_tags = '{"{a,\"b c\"}","{}",NULL,"{{x},{NULL}}"}', a_ints = '{"[0:1]={1,2}",NULL}' WHERE id = 1;
UPDATE t SET a_int2vector = ARRAY['1 2'::int2vector, ''::int2vector, NULL], a_oidvector = ARRAY['3 4'::oidvector] WHERE id = 1;
UPDATE t SET a_text = '[-2:-1][3:4]={{"a b",NULL},{"\"",x}}', a_box = '{(1,2),(3,4);(5,6),(7,8);NULL}' WHERE id = 5;
`)
	return ddl, sql.String()
}
