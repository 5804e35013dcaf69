package rowjson

import (
	"bytes"
	"encoding/json"
	"testing"
)

// fuzzOIDs are the types FuzzAppendValue renders; the fuzzed oid selects one.
var fuzzOIDs = []uint32{16, 20, 21, 22, 23, 25, 26, 30, 114, 700, 701, 1000, 1006, 1007, 1009, 1020, 1082,
	1114, 1115, 1184, 1185, 1186, 1231, 199, 3802, 3807, oidInner, oidOuter, oidInnerArr, oidNumDomain,
	oidArrDomain, oidDomDomain, oidEmpty, oidCast, oidHstore, oidDangling, 999999}

// hasJSON reports whether values of oid can inline json text (whose
// validity AppendValue does not check).
func hasJSON(types *Types, oid uint32, depth int) bool {
	ti, ok := types.Lookup(oid)
	if !ok || depth > 10 {
		return false
	}
	if ti.Base != 0 {
		return hasJSON(types, ti.Base, depth+1)
	}
	switch ti.Kind {
	case KindJSON:
		return true
	case KindArray, KindVector:
		return hasJSON(types, ti.Elem, depth+1)
	case KindComposite:
		for _, f := range ti.Fields {
			if hasJSON(types, f.Type, depth+1) {
				return true
			}
		}
	}
	return false
}

func FuzzAppendValue(f *testing.F) {
	seeds := []struct {
		oid  uint32
		text string
	}{
		{23, "123"}, {1700, "NaN"}, {16, "t"}, {25, "a\"b\\c\x01"}, {114, `{"a": 1}`},
		{1184, "2024-01-02 03:04:05.123+05:30"}, {1114, "0044-03-15 12:00:00 BC"}, {1082, "infinity"},
		{1007, "[0:1]={{1,2},{3,NULL}}"}, {1009, `{"a,b",NULL,"c\"d",e\ f}`}, {1020, "{(1,2),(3,4);(5,6),(7,8)}"},
		{1185, `{"2024-01-02 03:04:05+00",infinity}`}, {22, "1 2 3"}, {1006, `{"1 2",""}`},
		{oidInner, `(t,"a ""b"" \\ c")`}, {oidOuter, `(1,hello,"{1,2}","(t,""q"")","{""k"": [1]}")`},
		{oidInnerArr, `{"(t,x)",NULL,"(f,\"a \"\"b\"\"\")"}`}, {oidEmpty, "()"}, {oidArrDomain, "{a,NULL}"},
		{oidHstore, `"a"=>"1", "b c"=>NULL`}, {1007, "{{{{{{{{}}}}}}}}"}, {oidInner, "(,)"},
	}
	for _, s := range seeds {
		f.Add(s.oid, []byte(s.text))
	}
	types := testTypes()
	f.Fuzz(func(t *testing.T, oid uint32, text []byte) {
		if _, ok := types.Lookup(oid); !ok {
			oid = fuzzOIDs[oid%uint32(len(fuzzOIDs))]
		}
		orig := append([]byte(nil), text...)
		dst := []byte("x")
		out, err := types.AppendValue(dst, oid, text)
		if !bytes.Equal(text, orig) {
			t.Fatalf("input modified")
		}
		if err != nil {
			if string(out) != "x" {
				t.Fatalf("dst changed on error %v: %q", err, out)
			}
			return
		}
		if !hasJSON(types, oid, 0) && !json.Valid(out[1:]) {
			t.Fatalf("oid %d, text %q: invalid JSON %q", oid, text, out[1:])
		}
	})
}
