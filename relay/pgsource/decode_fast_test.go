package pgsource

import (
	"slices"
	"testing"
)

// The fast paths must agree with the general decoders wherever they
// answer; elsewhere the general decoders run, so behaviour is unchanged.

func FuzzFastHeaders(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `null`, `{"trace": "abc"}`, `{"b": "2", "a": "1", "C": "0", "aa": "3"}`,
		`{"k": "a\"b"}`, `{"a": "1", "a": "2"}`, `{"n": 42}`, "{\n  \"a\" :\t\"x\" ,\"b\":\"1\"\n}",
		`{"ключ": "значение", "🔑": "🚀"}`, "{\"a\": \"\xff\"}", "{\"a\": \"\x01\"}", `{"a": "b"} x`,
		`{"a": "b",}`, `{"a": "b"`, `{"a" "b"}`, `{"a": "b" "c": "d"}`, `[]`, ``,
		`{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := fastHeaders(b)
		if !ok {
			return
		}
		slow, err := decodeHeadersJSON(b)
		if err != nil {
			t.Fatalf("fastHeaders(%q) = %+v, general decoder fails: %v", b, fast, err)
		}
		if !slices.Equal(fast, slow) || (fast == nil) != (slow == nil) {
			t.Fatalf("fastHeaders(%q) = %#v, general decoder %#v", b, fast, slow)
		}
	})
}

func FuzzFastTimestamp(f *testing.F) {
	for _, s := range []string{
		"2024-03-05 12:34:56+00", "2024-03-05 12:34:56.123456+00", "2024-03-05 12:34:56.5+00",
		"2024-03-05 12:34:56.000000001+00", "2024-03-05 12:34:56.0000000001+00", "2024-03-05 04:34:56-08",
		"2024-03-05 18:04:56+05:30", "2024-03-05 18:04:56.75+05:30", "1890-01-01 00:00:00+00:19:32",
		"2024-02-29 00:00:00+00", "2023-02-29 12:34:56+00", "2024-03-05 12:34:56", "0001-01-01 00:00:00+00",
		"0000-01-01 00:00:00+00", "2024-13-05 12:34:56+00", "2024-03-05 24:00:00+00", "2024-03-05 12:34:60+00",
		"2024-03-05 12:34:56.+00", "2024-03-05 12:34:56+15", "2024-03-05 12:34:56+14:59:59", "2024-03-05 12:34:56Z",
		"2024-03-05 12:34:56+00 BC", "2024-03-05 12:34:56,5+00", "2024-03-05 12:34:56+0", "2024-03-05 12:34:56+00:",
		"12024-03-05 12:34:56+00", "2024-03-05T12:34:56+00", "infinity",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := fastTimestamp(b)
		if !ok {
			return
		}
		slow, err := decodeTimestampLayouts(b)
		if err != nil {
			t.Fatalf("fastTimestamp(%q) = %v, general decoder fails: %v", b, fast, err)
		}
		if !fast.Equal(slow) || fast.Location() != slow.Location() {
			t.Fatalf("fastTimestamp(%q) = %v, general decoder %v", b, fast, slow)
		}
	})
}
