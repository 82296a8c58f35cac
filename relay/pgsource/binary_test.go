package pgsource

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"
)

func be64(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }

func TestBinaryText(t *testing.T) {
	uuid := []byte{0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38, 0x0a, 0x11}
	tests := []struct {
		name    string
		oid     uint32
		in      []byte
		want    string
		wantErr string
	}{
		{"uuid", oidUUID, uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", ""},
		{"uuid short", oidUUID, uuid[:15], "", "uuid of 15 bytes"},
		{"timestamptz epoch", oidTimestamptz, be64(0), "2000-01-01 00:00:00+00", ""},
		{"timestamptz before the epoch", oidTimestamptz, be64(-1), "1999-12-31 23:59:59.999999+00", ""},
		{"timestamptz fraction trimmed", oidTimestamptz, be64(120000), "2000-01-01 00:00:00.12+00", ""},
		{"timestamptz 1 BC", oidTimestamptz, be64(-63082281600000000 - 1), "0001-12-31 23:59:59.999999+00 BC", ""},
		{"timestamptz year 10000", oidTimestamptz, be64(252455616000000000), "10000-01-01 00:00:00+00", ""},
		{"timestamptz infinity", oidTimestamptz, be64(math.MaxInt64), "infinity", ""},
		{"timestamptz -infinity", oidTimestamptz, be64(math.MinInt64), "-infinity", ""},
		{"timestamp", oidTimestamp, be64(1), "2000-01-01 00:00:00.000001", ""},
		{"timestamp short", oidTimestamp, []byte{1}, "", "timestamp of 1 bytes"},
		{"int2", oidInt2, []byte{0x80, 0}, "-32768", ""},
		{"int4", oidInt4, []byte{0x7f, 0xff, 0xff, 0xff}, "2147483647", ""},
		{"int8", oidInt8, be64(math.MinInt64), "-9223372036854775808", ""},
		{"int4 of 8 bytes", oidInt4, be64(1), "", "integer type 23 of 8 bytes"},
		{"bool", oidBool, []byte{1}, "t", ""},
		{"bool 2", oidBool, []byte{2}, "", "boolean 02"},
		{"bytea", oidBytea, []byte{0, 0xff, 'A'}, `\x00ff41`, ""},
		{"bytea empty", oidBytea, []byte{}, `\x`, ""},
		{"jsonb", oidJSONB, []byte("\x01{\"a\": 1}"), `{"a": 1}`, ""},
		{"jsonb version 2", oidJSONB, []byte("\x02{}"), "", "jsonb of version [2]"},
		{"jsonb empty", oidJSONB, []byte{}, "", "jsonb of version []"},
		{"text", oidText, []byte("ü"), "ü", ""},
		{"numeric", 1700, []byte{0, 0}, "", "no text form for type 1700"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf []byte
			got, err := binaryText(tt.oid, tt.in, &buf)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, errBinary) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("binaryText = %q, %v; want an error saying %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("binaryText = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
}

// TestBinaryTextDoesNotOverlap: the text of one value stays as it was
// while the next ones are appended, also when the buffer grows.
func TestBinaryTextDoesNotOverlap(t *testing.T) {
	buf := make([]byte, 0, 40)
	var got [][]byte
	for i := range 10 {
		v, err := binaryText(oidInt8, be64(int64(i)*1e15), &buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v)
	}
	for i, v := range got {
		if want := strconv.FormatInt(int64(i)*1e15, 10); string(v) != want {
			t.Errorf("value %d = %q, want %q", i, v, want)
		}
	}
}

// TestDecodeInsertBinary: a binary session's row is the event its text
// form makes, and a value the source cannot read ends the session.
func TestDecodeInsertBinary(t *testing.T) {
	textRels := map[uint32]*relation{1: mustRelation(t, standardTable(oidJSONB), StandardColumns)}
	binRel := mustRelation(t, standardTable(oidJSONB), StandardColumns)
	binRel.binary = true
	binRels := map[uint32]*relation{1: binRel}
	want, err := decodeInsert(benchRow(), map[uint32]*relation{16384: textRels[1]})
	if err != nil {
		t.Fatal(err)
	}
	data := benchRowBinary()
	binary.BigEndian.PutUint32(data[1:], 1)
	got, err := decodeInsert(data, binRels)
	if err != nil {
		t.Fatal(err)
	}
	checkEvent(t, got, want)
	if !bytes.Equal(bytes.Join(got.Row.Values, []byte{0}), bytes.Join(want.Row.Values, []byte{0})) || got.CreatedAt != want.CreatedAt {
		t.Errorf("binary row %q at %v, text row %q at %v", got.Row.Values, got.CreatedAt, want.Row.Values, want.CreatedAt)
	}

	// 'b' in a text session is a protocol error, not a value.
	if _, err := decodeInsert(data, map[uint32]*relation{1: textRels[1]}); err == nil || !strings.Contains(err.Error(), "in a text session") {
		t.Errorf("binary value in a text session: %v", err)
	}
	bad := insertMsg(1, binaryCol([]byte{1, 2}), binaryCol([]byte("order")), binaryCol([]byte("1")), binaryCol([]byte("x")), binaryCol([]byte("\x01{}")), null(), null(), null())
	if _, err := decodeInsert(bad, binRels); !errors.Is(err, errBinary) || errors.Is(err, errBadRow) {
		t.Errorf("a uuid of 2 bytes: %v, want an errBinary", err)
	}
}

func FuzzBinaryText(f *testing.F) {
	for _, s := range []struct {
		oid uint32
		v   []byte
	}{
		{oidUUID, make([]byte, 16)}, {oidTimestamptz, be64(0)}, {oidTimestamp, be64(-1)},
		{oidTimestamptz, be64(math.MaxInt64)}, {oidTimestamptz, be64(math.MinInt64)}, {oidTimestamptz, be64(math.MinInt64 + 1)},
		{oidTimestamptz, be64(-63082281600000000)}, {oidTimestamptz, be64(252455616000000000 - 1)},
		{oidInt2, []byte{1, 2}}, {oidInt4, []byte{1, 2, 3, 4}}, {oidInt8, be64(-5)}, {oidBool, []byte{0}},
		{oidBytea, []byte{0, 1}}, {oidJSONB, []byte("\x01{}")}, {oidJSON, []byte("[]")}, {oidText, []byte("x")},
	} {
		f.Add(s.oid, s.v)
	}
	f.Fuzz(func(t *testing.T, oid uint32, v []byte) {
		buf := []byte("prefix")
		text, err := binaryText(oid, v, &buf)
		if !binaryTypeOK(oid) {
			if err == nil {
				t.Fatalf("type %d rendered as %q", oid, text)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, errBinary) {
				t.Fatalf("error %v is no errBinary", err)
			}
			return
		}
		if !bytes.HasPrefix(buf, []byte("prefix")) {
			t.Fatalf("the buffer's start changed: %q", buf)
		}
		switch oid {
		case oidUUID:
			back, err := hexDecodeUUID(text)
			if err != nil || !bytes.Equal(back, v) {
				t.Fatalf("uuid %x as %q", v, text)
			}
		case oidInt2, oidInt4, oidInt8:
			n, _ := binaryInt(oid, v)
			if back, err := strconv.ParseInt(string(text), 10, 64); err != nil || back != n {
				t.Fatalf("integer %x as %q", v, text)
			}
		case oidBytea:
			if back, err := decodeBytea(text); err != nil || !bytes.Equal(back, v) {
				t.Fatalf("bytea %x as %q", v, text)
			}
		case oidTimestamptz, oidTimestamp:
			// created_at gets the same from either path.
			fromText, textErr := decodeTimestamp(text)
			direct, ok := binaryTime(v)
			if ok != (textErr == nil) || ok && direct != fromText {
				t.Fatalf("timestamp %x as %q: direct %v %v, from the text %v %v", v, text, direct, ok, fromText, textErr)
			}
			if ok && direct.Location() != time.UTC {
				t.Fatalf("timestamp %v not in UTC", direct)
			}
		}
	})
}

func hexDecodeUUID(s []byte) ([]byte, error) {
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' || strings.ToLower(string(s)) != string(s) {
		return nil, errors.New("not 8-4-4-4-12")
	}
	return decodeBytea([]byte(`\x` + strings.ReplaceAll(string(s), "-", "")))
}

func TestBinarySettings(t *testing.T) {
	for _, tt := range []struct {
		params map[string]string
		want   string
	}{
		{map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, MDY"}, ""},
		{map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, DMY"}, ""},
		{map[string]string{"TimeZone": "Europe/Paris", "DateStyle": "ISO, MDY"}, `TimeZone is "Europe/Paris", not UTC`},
		{map[string]string{"TimeZone": "Etc/UTC", "DateStyle": "ISO, MDY"}, `TimeZone is "Etc/UTC", not UTC`},
		{map[string]string{"TimeZone": "UTC", "DateStyle": "SQL, DMY"}, `DateStyle is "SQL, DMY", not ISO`},
		{map[string]string{}, `TimeZone is "", not UTC`},
	} {
		got := binarySettings(func(name string) string { return tt.params[name] })
		if tt.want == "" && got != "" || tt.want != "" && !strings.Contains(got, tt.want) {
			t.Errorf("binarySettings(%v) = %q, want %q", tt.params, got, tt.want)
		}
	}
}
