package rowjson

import (
	"errors"
	"testing"
)

// OIDs of the test-only types added by testTypes.
const (
	oidInner     = 900001 // (x bool, y text)
	oidOuter     = 900002 // (a int4, b text, c int4[], d inner, "k\"ey" json)
	oidInnerArr  = 900003 // inner[]
	oidNumDomain = 900004 // domain over numeric
	oidArrDomain = 900005 // domain over text[]
	oidDomDomain = 900006 // domain over oidNumDomain
	oidEmpty     = 900007 // ()
	oidCast      = 900008 // a type with a user-defined cast to json
	oidHstore    = 900009
	oidDangling  = 900010 // domain over a type that is not known
)

// testTypes returns a cache with some user-defined types, without a server.
func testTypes() *Types {
	t := NewTypes()
	m := map[uint32]*TypeInfo{
		oidInner: compositeInfo(oidInner, "inner", []Field{{"x", 16}, {"y", 25}}),
		oidOuter: compositeInfo(oidOuter, "outer", []Field{{"a", 23}, {"b", 25}, {"c", 1007},
			{"d", oidInner}, {`k"ey`, 114}}),
		oidInnerArr:  {OID: oidInnerArr, Name: "_inner", Kind: KindArray, Elem: oidInner, Delim: ','},
		oidNumDomain: {OID: oidNumDomain, Name: "num", Kind: KindNumber, Base: 1700},
		oidArrDomain: {OID: oidArrDomain, Name: "tags", Kind: KindArray, Base: 1009},
		oidDomDomain: {OID: oidDomDomain, Name: "num2", Kind: KindNumber, Base: oidNumDomain},
		oidEmpty:     compositeInfo(oidEmpty, "empty", nil),
		oidCast:      {OID: oidCast, Name: "casty", Kind: KindCast},
		oidHstore:    {OID: oidHstore, Name: "hstore", Kind: KindHstore},
		oidDangling:  {OID: oidDangling, Name: "dangling", Kind: KindArray, Base: 12345678},
	}
	t.user.Store(&m)
	return t
}

func TestAppendValue(t *testing.T) {
	types := testTypes()
	tests := []struct {
		oid        uint32
		text, want string
	}{
		// scalars
		{23, "123", "123"},
		{20, "-9223372036854775808", "-9223372036854775808"},
		{1700, "NaN", `"NaN"`},
		{1700, "-Infinity", `"-Infinity"`},
		{701, "Infinity", `"Infinity"`},
		{701, "-0", "-0"},
		{701, "1e+300", "1e+300"},
		{700, "1.5e-07", "1.5e-07"},
		{26, "12345", `"12345"`},
		{16, "t", "true"},
		{16, "f", "false"},
		{25, "a\"b\\c\x01\x1f\x7f\té", `"a\"b\\c\u0001\u001f` + "\x7f" + `\té"`},
		{114, `  {"a": [1, 2]}  `, `  {"a": [1, 2]}  `},
		{1082, "0044-03-15 BC", `"0044-03-15 BC"`},
		{1082, "infinity", `"infinity"`},
		{1114, "2024-01-02 03:04:05", `"2024-01-02T03:04:05"`},
		{1114, "10000-01-02 03:04:05.5 BC", `"10000-01-02T03:04:05.5 BC"`},
		{1184, "2024-01-02 03:04:05.123+00", `"2024-01-02T03:04:05.123+00:00"`},
		{1184, "2024-01-02 03:04:05-03:30", `"2024-01-02T03:04:05-03:30"`},
		{1184, "1800-01-01 05:53:28+05:53:28", `"1800-01-01T05:53:28+05:53:28"`},
		{1184, "0044-03-15 12:00:00+00 BC", `"0044-03-15T12:00:00+00:00 BC"`},
		{1184, "-infinity", `"-infinity"`},
		{1184, "2026-11-27 06:29:51.77015-20", `"2026-11-27T06:29:51.77015-20:00"`},
		{1186, "1 day 02:03:04", `"1 day 02:03:04"`},
		// arrays
		{1007, "{}", "[]"},
		{1007, "{1,2,3}", "[1,2,3]"},
		{1007, "{{1,2},{3,4}}", "[[1,2],[3,4]]"},
		{1007, "{{{1}},{{NULL}}}", "[[[1]],[[null]]]"},
		{1007, "[0:1]={1,2}", "[1,2]"},
		{1007, " [0:1] = { 1 , 2 } ", "[1,2]"},
		{1007, "[-2:-1][3:4]={{1,2},{3,4}}", "[[1,2],[3,4]]"},
		{1009, `{NULL,null,"NULL",nuLL}`, `[null,null,"NULL",null]`},
		{1009, `{"a,b","c\"d","e\\f","{}"," x ",""}`, `["a,b","c\"d","e\\f","{}"," x ",""]`},
		{1009, `{a\ b, c\ ,  d  }`, `["a b","c ","d"]`},
		{1009, `{a"b c"d}`, `["ab cd"]`},
		{1009, `{"\\\"\t"}`, `["\\\"t"]`},
		{1009, "{\"a\nb\"}", `["a\nb"]`},
		{1009, `{"é€😀"}`, `["é€😀"]`},
		{1020, "{(1,2),(3,4);(5,6),(7,8)}", `["(1,2),(3,4)","(5,6),(7,8)"]`},
		{199, `{"{\"a\": 1}","[1, 2]",null}`, `[{"a": 1},[1, 2],null]`},
		{1185, `{"2024-01-02 03:04:05+00",infinity,NULL}`, `["2024-01-02T03:04:05+00:00","infinity",null]`},
		{1000, "{t,f,NULL}", "[true,false,null]"},
		{1231, "{1.5,NaN,-Infinity,Infinity}", `[1.5,"NaN","-Infinity","Infinity"]`},
		{1028, "{1,2}", `["1","2"]`},
		{22, "1 2 3", "[1,2,3]"},
		{22, "", "[]"},
		{30, "1 2", `["1","2"]`},
		{1006, `{"1 2",""}`, "[[1,2],[]]"},
		// composites
		{oidInner, "(t,abc)", `{"x":true,"y":"abc"}`},
		{oidInner, "(,)", `{"x":null,"y":null}`},
		{oidInner, `(f,"")`, `{"x":false,"y":""}`},
		{oidInner, `(f,"a ""b"" \\ c")`, `{"x":false,"y":"a \"b\" \\ c"}`},
		{oidInner, `(f,a\,b)`, `{"x":false,"y":"a,b"}`},
		{oidInner, `(f,  x  )`, `{"x":false,"y":"  x  "}`},
		{oidOuter, `(1,hello,"{1,2}","(t,""q"")","{""k"": [1]}")`,
			`{"a":1,"b":"hello","c":[1,2],"d":{"x":true,"y":"q"},"k\"ey":{"k": [1]}}`},
		{oidOuter, `(,,,,)`, `{"a":null,"b":null,"c":null,"d":null,"k\"ey":null}`},
		{oidInnerArr, `{"(t,x)",NULL,"(f,\"a \"\"b\"\"\")"}`, `[{"x":true,"y":"x"},null,{"x":false,"y":"a \"b\""}]`},
		{oidEmpty, "()", "{}"},
		{oidNumDomain, "12.50", "12.50"},
		{oidDomDomain, "NaN", `"NaN"`},
		{oidArrDomain, `{a,NULL}`, `["a",null]`},
		{oidHstore, `"a"=>"1", "b c"=>NULL, "q\"x"=>"\\\\"`, `{"a": "1", "b c": null, "q\"x": "\\\\"}`},
		{oidHstore, ``, `{}`},
	}
	for _, tc := range tests {
		prefix := []byte("prefix:")
		got, err := types.AppendValue(prefix, tc.oid, []byte(tc.text))
		if err != nil {
			t.Errorf("AppendValue(%d, %q): %v", tc.oid, tc.text, err)
			continue
		}
		if string(got) != "prefix:"+tc.want {
			t.Errorf("AppendValue(%d, %q)\n got %s\nwant %s", tc.oid, tc.text, got[len(prefix):], tc.want)
		}
	}
}

func TestAppendValueErrors(t *testing.T) {
	types := testTypes()
	tests := []struct {
		oid  uint32
		text string
		want error
	}{
		{999999, "1", ErrUnknownType},
		{oidDangling, "1", ErrUnknownType},
		{oidCast, "1", ErrUnsupported},
		{16, "", ErrMalformed},
		{16, "true", ErrMalformed},
		{114, "", ErrMalformed},
		{1184, "2024-01-02", ErrMalformed},
		{1184, "2024-01-02 03:04:05", ErrMalformed},
		{1184, "2024-01-02T03:04:05+00", ErrMalformed},
		{1184, "2024-01-02 03:04:05+0", ErrMalformed},
		{1184, "2024-01-02 03:04:05.+00", ErrMalformed},
		{1184, "2024-01-02 03:04:05+00 AD", ErrMalformed},
		{1184, "2024-01-02 03:04:05+00:", ErrMalformed},
		{1184, "2024-01-02 03:04:05+00:3", ErrMalformed},
		{1184, "24-01-02 03:04:05+00", ErrMalformed},
		{1184, "", ErrMalformed},
		{1114, "2024-01-02 03:04:05+00", ErrMalformed},
		{1114, "2024-01-02 3:04:05", ErrMalformed},
		{1007, "", ErrMalformed},
		{1007, "{", ErrMalformed},
		{1007, "}", ErrMalformed},
		{1007, "{1,2", ErrMalformed},
		{1007, "{1,,2}", ErrMalformed},
		{1007, "{,}", ErrMalformed},
		{1007, "{1,2}}", ErrMalformed},
		{1007, "{{1},2}", ErrMalformed},
		{1007, "{1,{2}}", ErrMalformed},
		{1007, "[1:2]{1,2}", ErrMalformed},
		{1007, "[1:2", ErrMalformed},
		{1007, "[]={}", ErrMalformed},
		{1007, "[x]={1}", ErrMalformed},
		{1009, `{"abc}`, ErrMalformed},
		{1009, `{abc\}`, ErrMalformed},
		{1009, `{abc\`, ErrMalformed},
		{1009, `{a{b}`, ErrMalformed},
		{1007, "{1}x", ErrMalformed},
		{1007, "x{1}", ErrMalformed},
		{1000, "{t,x}", ErrMalformed},
		{1185, "{2024}", ErrMalformed},
		{oidInner, "", ErrMalformed},
		{oidInner, "(", ErrMalformed},
		{oidInner, "(t", ErrMalformed},
		{oidInner, "t,x)", ErrMalformed},
		{oidInner, `(t,"x)`, ErrMalformed},
		{oidInner, `(t,x\`, ErrMalformed},
		{oidInner, "(t,x) y", ErrMalformed},
		{oidInner, "(x,y)", ErrMalformed},
		{oidInner, "(t,x,y)", ErrTypeChanged},
		{oidInner, "(t)", ErrTypeChanged},
		{oidEmpty, "(1)", ErrTypeChanged},
		{oidOuter, `(1,b,"{1,2",,)`, ErrMalformed},
		{oidInnerArr, `{"(t,x,z)"}`, ErrTypeChanged},
		{oidHstore, `"a"=>`, ErrMalformed},
		{oidHstore, `a=>"1"`, ErrMalformed},
		{oidHstore, `"a"=>"1",`, ErrMalformed},
		{oidHstore, `"a"=>"1" "b"=>"2"`, ErrMalformed},
		{oidHstore, `"a\`, ErrMalformed},
	}
	for _, tc := range tests {
		dst := []byte("keep")
		got, err := types.AppendValue(dst, tc.oid, []byte(tc.text))
		if !errors.Is(err, tc.want) {
			t.Errorf("AppendValue(%d, %q) = %s, %v; want error %v", tc.oid, tc.text, got, err, tc.want)
		}
		if string(got) != "keep" {
			t.Errorf("AppendValue(%d, %q) changed dst on error: %q", tc.oid, tc.text, got)
		}
	}
}

func TestDeepNesting(t *testing.T) {
	types := NewTypes()
	deep := make([]byte, 0, 2*10000)
	for i := 0; i < 10000; i++ {
		deep = append(deep, '{')
	}
	for i := 0; i < 10000; i++ {
		deep = append(deep, '}')
	}
	if _, err := types.AppendValue(nil, 1007, deep); !errors.Is(err, ErrMalformed) {
		t.Errorf("deep array: %v", err)
	}
}

func TestValidNumber(t *testing.T) {
	for s, want := range map[string]bool{
		"0": true, "-0": true, "12": true, "1.5": true, "1e5": true, "1E+5": true, "1.5e-07": true,
		"": false, "-": false, "01": false, "1.": false, ".5": false, "1e": false, "1e+": false,
		"NaN": false, "Infinity": false, "-Infinity": false, " 1": false, "1 ": false, "+1": false,
		"--1": false, "0x1": false, "1.5.5": false,
	} {
		if got := validNumber([]byte(s)); got != want {
			t.Errorf("validNumber(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestAppendString(t *testing.T) {
	for s, want := range map[string]string{
		"":                 `""`,
		"plain":            `"plain"`,
		"\"\\/":            `"\"\\/"`,
		"\b\f\n\r\t":       `"\b\f\n\r\t"`,
		"\x00\x01\x1a\x1f": `"\u0000\u0001\u001a\u001f"`,
		"\x7f<>&\u2028é😀":  "\"\x7f<>&\u2028é😀\"",
	} {
		if got := string(AppendString(nil, s)); got != want {
			t.Errorf("AppendString(%q) = %s, want %s", s, got, want)
		}
		if got := string(AppendStringBytes([]byte("x"), []byte(s))); got != "x"+want {
			t.Errorf("AppendStringBytes(%q) = %s, want x%s", s, got, want)
		}
	}
}

func TestSessionParams(t *testing.T) {
	p := SessionParams()
	p["TimeZone"] = "changed"
	if SessionParams()["TimeZone"] != "UTC" || SessionParams()["DateStyle"] != "ISO" {
		t.Error("SessionParams is shared or wrong")
	}
}

// naiveEscape is escape_json written byte by byte.
func naiveEscape(s []byte) string {
	out := []byte{'"'}
	for _, c := range s {
		out = appendEscapedByte(out, c)
	}
	return string(append(out, '"'))
}

func TestAppendStringAllBytes(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 20; pos++ {
			s := []byte("abcdefghijklmnopqrstuvwxyz")[:20]
			s[pos] = byte(c)
			if got, want := string(AppendStringBytes(nil, s)), naiveEscape(s); got != want {
				t.Fatalf("byte %#x at %d: got %s want %s", c, pos, got, want)
			}
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	types := testTypes()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 200; i++ {
			types.Forget(oidCast)
		}
	}()
	in := []byte(`{"(t,x)",NULL,"(f,\"a \"\"b\"\"\")"}`)
	for i := 0; i < 2000; i++ {
		if _, err := types.AppendValue(nil, oidInnerArr, in); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}
