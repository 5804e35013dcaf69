package rowjson

import "testing"

func benchValue(b *testing.B, oid uint32, text string) {
	types := NewTypes()
	in := []byte(text)
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var err error
		if dst, err = types.AppendValue(dst[:0], oid, in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendValueInt(b *testing.B) { benchValue(b, 23, "1234567") }

func BenchmarkAppendValueText(b *testing.B) {
	benchValue(b, 25, `Lorem ipsum dolor sit amet, "consectetur" adipiscing elit; café`)
}

func BenchmarkAppendValueTimestamptz(b *testing.B) {
	benchValue(b, 1184, "2024-01-02 03:04:05.123456+00")
}

func BenchmarkAppendValueNumericArray(b *testing.B) {
	benchValue(b, 1231, "{1.50,2.25,NaN,12345678901234567890.123,NULL,-0.0001,42,7,8,9}")
}

func BenchmarkAppendValueCompositeArray(b *testing.B) {
	types := testTypes()
	in := []byte(`{"(t,x)",NULL,"(f,\"a \"\"b\"\"\")","(t,\"hello world\")"}`)
	dst := make([]byte, 0, 1024)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		var err error
		if dst, err = types.AppendValue(dst[:0], oidInnerArr, in); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendValueLongText(b *testing.B) {
	s := make([]byte, 4096)
	for i := range s {
		s[i] = "abcdefgh ijklmnop, é"[i%20]
	}
	benchValue(b, 25, string(s))
}
