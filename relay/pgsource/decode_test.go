package pgsource

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/relay-dev/relay/relay"
)

// tupleCol is one column of a pgoutput TupleData: its kind byte and, for
// 't' and 'b', its value.
type tupleCol struct {
	kind byte
	val  []byte
}

func txt(s string) tupleCol       { return tupleCol{kind: 't', val: []byte(s)} }
func null() tupleCol              { return tupleCol{kind: 'n'} }
func unchanged() tupleCol         { return tupleCol{kind: 'u'} }
func binaryCol(b []byte) tupleCol { return tupleCol{kind: 'b', val: b} }
func rawKind(k byte) tupleCol     { return tupleCol{kind: k} }
func insertMsg(relID uint32, cols ...tupleCol) []byte {
	return insertMsgN(relID, len(cols), cols...)
}

// insertMsgN builds an Insert message whose column count field says n,
// whatever the number of columns that follow.
func insertMsgN(relID uint32, n int, cols ...tupleCol) []byte {
	b := []byte{'I'}
	b = binary.BigEndian.AppendUint32(b, relID)
	b = append(b, 'N')
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	for _, c := range cols {
		b = append(b, c.kind)
		if c.kind == 't' || c.kind == 'b' {
			b = binary.BigEndian.AppendUint32(b, uint32(len(c.val)))
			b = append(b, c.val...)
		}
	}
	return b
}

// standardTable is schema/outbox.sql's column layout with the payload of
// the given type, plus an extra column routing templates may use.
func standardTable(payloadType uint32) []column {
	return []column{
		{"id", oidUUID},
		{"aggregate_type", oidText},
		{"aggregate_id", oidText},
		{"event_type", oidText},
		{"payload", payloadType},
		{"headers", oidJSONB},
		{"created_at", oidTimestamptz},
		{"tenant", oidText},
	}
}

func debeziumTable(payloadType uint32) []column {
	return []column{
		{"id", oidUUID},
		{"aggregatetype", oidVarchar},
		{"aggregateid", oidVarchar},
		{"type", oidVarchar},
		{"payload", payloadType},
	}
}

func mustRelation(t testing.TB, cols []column, m Columns) *relation {
	t.Helper()
	r, err := newRelation("public", "outbox", cols, m)
	if err != nil {
		t.Fatalf("newRelation: %v", err)
	}
	return r
}

func TestNewRelation(t *testing.T) {
	type idx struct{ id, aggType, aggID, evType, payload, headers, createdAt int }
	tests := []struct {
		name      string
		cols      []column
		m         Columns
		want      idx
		wantErr   []string // substrings of the error
		wantTypes []uint32
	}{
		{
			name: "standard layout",
			cols: standardTable(oidJSONB),
			m:    StandardColumns,
			want: idx{0, 1, 2, 3, 4, 5, 6},
		},
		{
			name: "standard layout in another column order",
			cols: []column{
				{"created_at", oidTimestamptz}, {"payload", oidJSONB}, {"headers", oidJSONB},
				{"event_type", oidText}, {"aggregate_id", oidText}, {"aggregate_type", oidText}, {"id", oidInt8},
			},
			m:    StandardColumns,
			want: idx{6, 5, 4, 3, 1, 2, 0},
		},
		{
			name: "one column mapped to every field",
			cols: []column{{"id", oidText}},
			m:    Columns{ID: "id", AggregateType: "id", AggregateID: "id", EventType: "id", Payload: "id", Headers: "headers", CreatedAt: "created_at"},
			want: idx{0, 0, 0, 0, 0, -1, -1},
		},
		{
			name: "optional columns absent",
			cols: standardTable(oidJSONB)[:5],
			m:    StandardColumns,
			want: idx{0, 1, 2, 3, 4, -1, -1},
		},
		{
			name: "debezium layout",
			cols: debeziumTable(oidJSONB),
			m:    DebeziumColumns,
			want: idx{0, 1, 2, 3, 4, -1, -1},
		},
		{
			name: "debezium preset ignores columns named headers and created_at",
			cols: append(debeziumTable(oidJSONB), column{"headers", oidJSONB}, column{"created_at", oidTimestamptz}),
			m:    DebeziumColumns,
			want: idx{0, 1, 2, 3, 4, -1, -1},
		},
		{
			name: "custom mapping",
			cols: []column{{"event_id", oidUUID}, {"kind", oidText}, {"key", oidText}, {"name", oidText}, {"body", oidBytea}, {"meta", oidJSON}, {"ts", oidTimestamp}},
			m:    Columns{ID: "event_id", AggregateType: "kind", AggregateID: "key", EventType: "name", Payload: "body", Headers: "meta", CreatedAt: "ts"},
			want: idx{0, 1, 2, 3, 4, 5, 6},
		},
		{
			name:    "one required column missing",
			cols:    standardTable(oidJSONB)[1:],
			m:       StandardColumns,
			wantErr: []string{"table public.outbox has no column id"},
		},
		{
			name:    "every missing required column is named",
			cols:    []column{{"id", oidUUID}, {"payload", oidJSONB}},
			m:       StandardColumns,
			wantErr: []string{"public.outbox", "aggregate_type, aggregate_id, event_type"},
		},
		{
			name:    "standard table with the debezium preset",
			cols:    standardTable(oidJSONB),
			m:       DebeziumColumns,
			wantErr: []string{"aggregatetype, aggregateid, type"},
		},
		{
			name:    "column names are case-sensitive",
			cols:    []column{{"ID", oidUUID}, {"aggregate_type", oidText}, {"aggregate_id", oidText}, {"event_type", oidText}, {"payload", oidJSONB}},
			m:       StandardColumns,
			wantErr: []string{"has no column id"},
		},
		{
			name:    "no columns at all",
			cols:    nil,
			m:       StandardColumns,
			wantErr: []string{"id, aggregate_type, aggregate_id, event_type, payload"},
		},
		{
			name:    "integer payload",
			cols:    standardTable(oidInt4),
			m:       StandardColumns,
			wantErr: []string{"public.outbox", "payload column payload must be jsonb, json, text, varchar or bytea"},
		},
		{
			name:    "timestamptz payload",
			cols:    standardTable(oidTimestamptz),
			m:       StandardColumns,
			wantErr: []string{"payload column payload"},
		},
		{
			name:    "missing column reported before the payload type",
			cols:    standardTable(oidInt4)[1:],
			m:       StandardColumns,
			wantErr: []string{"has no column id"},
		},
	}
	for _, oid := range []uint32{oidJSONB, oidJSON, oidText, oidVarchar, oidBpchar, oidBytea} {
		tests = append(tests, struct {
			name      string
			cols      []column
			m         Columns
			want      idx
			wantErr   []string
			wantTypes []uint32
		}{
			name: "payload type " + oidName(oid),
			cols: standardTable(oid),
			m:    StandardColumns,
			want: idx{0, 1, 2, 3, 4, 5, 6},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := newRelation("public", "outbox", tt.cols, tt.m)
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("newRelation() = %+v, want error containing %q", r, tt.wantErr)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("newRelation: %v", err)
			}
			got := idx{r.id, r.aggType, r.aggID, r.evType, r.payload, r.headers, r.createdAt}
			if got != tt.want {
				t.Errorf("indexes = %+v, want %+v", got, tt.want)
			}
			if r.table != "public.outbox" {
				t.Errorf("table = %q, want public.outbox", r.table)
			}
			if len(r.names) != len(tt.cols) || len(r.types) != len(tt.cols) {
				t.Fatalf("names %v types %v, want %d columns", r.names, r.types, len(tt.cols))
			}
			for i, c := range tt.cols {
				if r.names[i] != c.name || r.types[i] != c.typ {
					t.Errorf("column %d = %s/%d, want %s/%d", i, r.names[i], r.types[i], c.name, c.typ)
				}
			}
		})
	}
}

func oidName(oid uint32) string {
	switch oid {
	case oidJSONB:
		return "jsonb"
	case oidJSON:
		return "json"
	case oidText:
		return "text"
	case oidVarchar:
		return "varchar"
	case oidBpchar:
		return "bpchar"
	case oidBytea:
		return "bytea"
	}
	return "other"
}

func TestNewRelationNamespace(t *testing.T) {
	r, err := newRelation("sales", "Outbox", standardTable(oidJSONB), StandardColumns)
	if err != nil {
		t.Fatal(err)
	}
	if r.table != "sales.Outbox" {
		t.Errorf("table = %q, want sales.Outbox", r.table)
	}
	_, err = newRelation("sales", "Outbox", nil, StandardColumns)
	if err == nil || !strings.Contains(err.Error(), "sales.Outbox") {
		t.Errorf("error %v does not name sales.Outbox", err)
	}
}

// A required column configured with an empty name cannot be mapped; it must
// not produce a relation whose rows then index column -1.
func TestNewRelationEmptyRequiredColumn(t *testing.T) {
	for _, m := range []Columns{
		{AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload"},
		{ID: "id", AggregateID: "aggregate_id", EventType: "event_type", Payload: "payload"},
		{ID: "id", AggregateType: "aggregate_type", EventType: "event_type", Payload: "payload"},
		{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", Payload: "payload"},
		{ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type"},
	} {
		r, err := newRelation("public", "outbox", standardTable(oidJSONB), m)
		if err == nil {
			t.Errorf("newRelation(%+v) = %+v, want an error", m, r)
		}
	}
}

func TestDecodeInsert(t *testing.T) {
	rels := map[uint32]*relation{
		16384: mustRelation(t, standardTable(oidJSONB), StandardColumns),
		16390: mustRelation(t, debeziumTable(oidBytea), DebeziumColumns),
	}
	created := time.Date(2024, 3, 5, 12, 34, 56, 123456000, time.UTC)
	tests := []struct {
		name    string
		data    []byte
		want    *relay.Event
		wantErr []string // substrings; errBadRow when wantBad
		wantBad bool
	}{
		{
			name: "standard row",
			data: insertMsg(16384,
				txt("0190a6a0-0000-7000-8000-000000000001"), txt("order"), txt("42"), txt("OrderPlaced"),
				txt(`{"total": 10}`), txt(`{"trace": "abc"}`), txt("2024-03-05 12:34:56.123456+00"), txt("acme")),
			want: &relay.Event{
				ID: "0190a6a0-0000-7000-8000-000000000001", Table: "public.outbox",
				AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced",
				Payload: []byte(`{"total": 10}`), ContentType: relay.ContentTypeJSON,
				Headers:   []relay.Header{{Key: "trace", Value: "abc"}},
				CreatedAt: created,
			},
		},
		{
			name: "optional columns null, extra column null",
			data: insertMsg(16384, txt("1"), txt("order"), txt("42"), txt("OrderPlaced"), txt(`{}`), null(), null(), null()),
			want: &relay.Event{
				ID: "1", Table: "public.outbox", AggregateType: "order", AggregateID: "42", EventType: "OrderPlaced",
				Payload: []byte(`{}`), ContentType: relay.ContentTypeJSON,
			},
		},
		{
			name: "empty strings are values, not nulls",
			data: insertMsg(16384, txt(""), txt(""), txt(""), txt(""), txt(""), null(), null(), txt("")),
			want: &relay.Event{Table: "public.outbox", Payload: []byte{}, ContentType: relay.ContentTypeJSON},
		},
		{
			name: "debezium row with bytea payload",
			data: insertMsg(16390, txt("7"), txt("customer"), txt("c-1"), txt("Created"), txt(`\x68656c6c6f00ff`)),
			want: &relay.Event{
				ID: "7", Table: "public.outbox", AggregateType: "customer", AggregateID: "c-1", EventType: "Created",
				Payload: []byte("hello\x00\xff"),
			},
		},
		{
			name: "null payload",
			data: insertMsg(16390, txt("8"), txt("customer"), txt("c-1"), txt("Deleted"), null()),
			want: &relay.Event{ID: "8", Table: "public.outbox", AggregateType: "customer", AggregateID: "c-1", EventType: "Deleted"},
		},
		{
			name: "trailing bytes after the tuple are ignored",
			data: append(insertMsg(16390, txt("9"), txt("a"), txt("b"), txt("c"), null()), "junk"...),
			want: &relay.Event{ID: "9", Table: "public.outbox", AggregateType: "a", AggregateID: "b", EventType: "c"},
		},
		{name: "empty message", data: nil, wantErr: []string{"insert message of 0 bytes"}},
		{name: "seven bytes", data: insertMsg(16390)[:7], wantErr: []string{"insert message of 7 bytes"}},
		{name: "unknown relation", data: insertMsg(99, txt("1")), wantErr: []string{"relation 99 before its relation message"}},
		{
			name: "key tuple kind",
			data: func() []byte {
				b := insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), null())
				b[5] = 'K'
				return b
			}(),
			wantErr: []string{"public.outbox", `tuple kind 'K'`},
		},
		{
			name: "old tuple kind",
			data: func() []byte {
				b := insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), null())
				b[5] = 'O'
				return b
			}(),
			wantErr: []string{`tuple kind 'O'`},
		},
		{
			name:    "fewer columns than the relation",
			data:    insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c")),
			wantErr: []string{"4 columns, relation has 5"},
		},
		{
			name:    "more columns than the relation",
			data:    insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), null(), null()),
			wantErr: []string{"6 columns, relation has 5"},
		},
		{
			name:    "column count 65535",
			data:    insertMsgN(16390, 65535, txt("1")),
			wantErr: []string{"65535 columns, relation has 5"},
		},
		{
			name:    "truncated before a column kind",
			data:    insertMsgN(16390, 5, txt("1"), txt("a")),
			wantErr: []string{"truncated tuple"},
		},
		{
			name:    "truncated in a length",
			data:    insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), txt("x"))[:8+4*6+3],
			wantErr: []string{"truncated tuple"},
		},
		{
			name: "truncated in a value",
			data: func() []byte {
				b := insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), txt("xyz"))
				return b[:len(b)-1]
			}(),
			wantErr: []string{"truncated tuple"},
		},
		{
			name:    "length larger than the message",
			data:    append(insertMsgN(16390, 5, txt("1"), txt("a"), txt("b"), txt("c")), 't', 0xff, 0xff, 0xff, 0xff, 'x'),
			wantErr: []string{"truncated tuple"},
		},
		{
			name:    "unchanged toast value",
			data:    insertMsg(16390, txt("1"), txt("a"), txt("b"), txt("c"), unchanged()),
			wantErr: []string{"column payload has tuple data kind 'u'"},
		},
		{
			name:    "binary value",
			data:    insertMsg(16390, binaryCol([]byte{0, 0, 0, 1}), txt("a"), txt("b"), txt("c"), null()),
			wantErr: []string{"column id has tuple data kind 'b'"},
		},
		{
			name:    "unknown kind",
			data:    insertMsg(16390, txt("1"), rawKind('z'), txt("b"), txt("c"), null()),
			wantErr: []string{"column aggregatetype has tuple data kind 'z'"},
		},
		{
			name:    "null id",
			data:    insertMsg(16390, null(), txt("a"), txt("b"), txt("c"), null()),
			wantErr: []string{"id column id is null"},
			wantBad: true,
		},
		{
			name:    "bad bytea payload",
			data:    insertMsg(16390, txt("id-5"), txt("a"), txt("b"), txt("c"), txt("plain")),
			wantErr: []string{"id-5", "payload column payload"},
			wantBad: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev, err := decodeInsert(tt.data, rels)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("decodeInsert() = %+v, want error", ev)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				if got := errors.Is(err, errBadRow); got != tt.wantBad {
					t.Errorf("errors.Is(%q, errBadRow) = %v, want %v", err, got, tt.wantBad)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeInsert: %v", err)
			}
			checkEvent(t, ev, tt.want)
		})
	}
}

// checkEvent compares the fields decodeInsert sets.
func checkEvent(t *testing.T, got, want *relay.Event) {
	t.Helper()
	if got.ID != want.ID || got.Table != want.Table || got.AggregateType != want.AggregateType ||
		got.AggregateID != want.AggregateID || got.EventType != want.EventType || got.ContentType != want.ContentType {
		t.Errorf("event = {ID:%q Table:%q AggregateType:%q AggregateID:%q EventType:%q ContentType:%q}, want {ID:%q Table:%q AggregateType:%q AggregateID:%q EventType:%q ContentType:%q}",
			got.ID, got.Table, got.AggregateType, got.AggregateID, got.EventType, got.ContentType,
			want.ID, want.Table, want.AggregateType, want.AggregateID, want.EventType, want.ContentType)
	}
	if !bytes.Equal(got.Payload, want.Payload) || (got.Payload == nil) != (want.Payload == nil) {
		t.Errorf("Payload = %q (nil %v), want %q (nil %v)", got.Payload, got.Payload == nil, want.Payload, want.Payload == nil)
	}
	if !slices.Equal(got.Headers, want.Headers) {
		t.Errorf("Headers = %+v, want %+v", got.Headers, want.Headers)
	}
	if !got.CreatedAt.Equal(want.CreatedAt) {
		t.Errorf("CreatedAt = %v, want %v", got.CreatedAt, want.CreatedAt)
	}
	if !got.CreatedAt.IsZero() && got.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt location = %v, want UTC", got.CreatedAt.Location())
	}
	if got.CommitLSN != 0 || !got.CommitTime.IsZero() || got.Index != 0 {
		t.Errorf("commit fields set by the decoder: %v %v %d", got.CommitLSN, got.CommitTime, got.Index)
	}
}

func TestDecodeInsertRow(t *testing.T) {
	rel := mustRelation(t, standardTable(oidJSONB), StandardColumns)
	rels := map[uint32]*relation{1: rel}
	data := insertMsg(1, txt("1"), txt("order"), txt("42"), txt("Placed"), txt(`{"a": 1}`), null(), null(), txt("acme"))
	ev, err := decodeInsert(data, rels)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ev.Row.Names, rel.names) {
		t.Errorf("Row.Names = %q, want %q", ev.Row.Names, rel.names)
	}
	want := [][]byte{[]byte("1"), []byte("order"), []byte("42"), []byte("Placed"), []byte(`{"a": 1}`), nil, nil, []byte("acme")}
	if len(ev.Row.Values) != len(want) {
		t.Fatalf("Row.Values = %q, want %q", ev.Row.Values, want)
	}
	for i := range want {
		if !bytes.Equal(ev.Row.Values[i], want[i]) || (ev.Row.Values[i] == nil) != (want[i] == nil) {
			t.Errorf("Row.Values[%d] = %q, want %q", i, ev.Row.Values[i], want[i])
		}
	}
	if v, ok := ev.Field("tenant"); !ok || v != "acme" {
		t.Errorf(`Field("tenant") = %q, %v; want "acme", true`, v, ok)
	}
	if _, ok := ev.Field("headers"); ok {
		t.Error(`Field("headers") found a NULL column`)
	}

	// Values are capped slices of the message: appending to one must not
	// overwrite the bytes of the next column.
	_ = append(ev.Row.Values[0], "XXXXXXXX"...)
	_ = append(ev.Payload, "XXXXXXXX"...)
	if ev.AggregateType != "order" || string(ev.Row.Values[1]) != "order" || string(ev.Row.Values[7]) != "acme" {
		t.Errorf("append to a value overwrote the message: %q", data)
	}
}

func TestEvent(t *testing.T) {
	v := func(s string) []byte { return []byte(s) }
	std := func(payload, headers, created []byte) [][]byte {
		return [][]byte{v("e-1"), v("order"), v("42"), v("Placed"), payload, headers, created, nil}
	}
	tests := []struct {
		name        string
		payloadType uint32
		values      [][]byte
		want        *relay.Event
		wantErr     []string
	}{
		{
			name: "jsonb payload", payloadType: oidJSONB,
			values: std(v(`{"a": [1, 2]}`), nil, nil),
			want:   &relay.Event{Payload: v(`{"a": [1, 2]}`), ContentType: relay.ContentTypeJSON},
		},
		{
			name: "json payload kept byte for byte", payloadType: oidJSON,
			values: std(v("{ \"b\":1,\n \"a\" : 2 }"), nil, nil),
			want:   &relay.Event{Payload: v("{ \"b\":1,\n \"a\" : 2 }"), ContentType: relay.ContentTypeJSON},
		},
		{
			name: "text payload unchanged", payloadType: oidText,
			values: std(v(`\x41 plain text`), nil, nil),
			want:   &relay.Event{Payload: v(`\x41 plain text`)},
		},
		{
			name: "varchar payload", payloadType: oidVarchar,
			values: std(v("hello"), nil, nil),
			want:   &relay.Event{Payload: v("hello")},
		},
		{
			name: "bpchar payload keeps its padding", payloadType: oidBpchar,
			values: std(v("ab   "), nil, nil),
			want:   &relay.Event{Payload: v("ab   ")},
		},
		{
			name: "bytea payload decoded", payloadType: oidBytea,
			values: std(v(`\x00010203fffe`), nil, nil),
			want:   &relay.Event{Payload: []byte{0, 1, 2, 3, 0xff, 0xfe}},
		},
		{
			name: "empty bytea payload", payloadType: oidBytea,
			values: std(v(`\x`), nil, nil),
			want:   &relay.Event{Payload: []byte{}},
		},
		{
			name: "null jsonb payload", payloadType: oidJSONB,
			values: std(nil, nil, nil),
			want:   &relay.Event{},
		},
		{
			name: "null bytea payload", payloadType: oidBytea,
			values: std(nil, nil, nil),
			want:   &relay.Event{},
		},
		{
			name: "null text payload", payloadType: oidText,
			values: std(nil, nil, nil),
			want:   &relay.Event{},
		},
		{
			name: "bytea in escape format", payloadType: oidBytea,
			values:  std(v(`\001abc`), nil, nil),
			wantErr: []string{"e-1", "public.outbox", "payload column payload", "hex format"},
		},
		{
			name: "bytea odd length", payloadType: oidBytea,
			values:  std(v(`\x123`), nil, nil),
			wantErr: []string{"e-1", "payload column payload"},
		},
		{
			name: "bytea bad digit", payloadType: oidBytea,
			values:  std(v(`\x0g`), nil, nil),
			wantErr: []string{"e-1", "payload column payload"},
		},
		{
			name: "headers sorted, strings unquoted, others as JSON", payloadType: oidJSONB,
			values: std(v(`{}`), v(`{"z": "last", "a": "first", "n": 12.5, "b": true, "o": {"k": [1, "x"]}, "nul": null}`), nil),
			want: &relay.Event{Payload: v(`{}`), ContentType: relay.ContentTypeJSON, Headers: []relay.Header{
				{Key: "a", Value: "first"}, {Key: "b", Value: "true", JSON: true}, {Key: "n", Value: "12.5", JSON: true},
				{Key: "nul", Value: "null", JSON: true}, {Key: "o", Value: `{"k":[1,"x"]}`, JSON: true}, {Key: "z", Value: "last"},
			}},
		},
		{
			name: "headers JSON null", payloadType: oidJSONB,
			values: std(v(`{}`), v(`null`), nil),
			want:   &relay.Event{Payload: v(`{}`), ContentType: relay.ContentTypeJSON},
		},
		{
			name: "headers array", payloadType: oidJSONB,
			values:  std(v(`{}`), v(`["a"]`), nil),
			wantErr: []string{"e-1", "headers column headers", "not a JSON object"},
		},
		{
			name: "headers string", payloadType: oidJSONB,
			values:  std(v(`{}`), v(`"a=b"`), nil),
			wantErr: []string{"e-1", "headers column headers"},
		},
		{
			name: "headers number", payloadType: oidJSONB,
			values:  std(v(`{}`), v(`1`), nil),
			wantErr: []string{"e-1", "headers column headers"},
		},
		{
			name: "headers not JSON", payloadType: oidJSONB,
			values:  std(v(`{}`), v(`trace=abc`), nil),
			wantErr: []string{"e-1", "headers column headers"},
		},
		{
			name: "created_at UTC", payloadType: oidJSONB,
			values: std(v(`{}`), nil, v("2024-03-05 12:34:56+00")),
			want:   &relay.Event{Payload: v(`{}`), ContentType: relay.ContentTypeJSON, CreatedAt: time.Date(2024, 3, 5, 12, 34, 56, 0, time.UTC)},
		},
		{
			name: "created_at with offset and fraction", payloadType: oidJSONB,
			values: std(v(`{}`), nil, v("2024-03-05 18:04:56.25+05:30")),
			want:   &relay.Event{Payload: v(`{}`), ContentType: relay.ContentTypeJSON, CreatedAt: time.Date(2024, 3, 5, 12, 34, 56, 250000000, time.UTC)},
		},
		{
			name: "created_at unparseable", payloadType: oidJSONB,
			values:  std(v(`{}`), nil, v("yesterday")),
			wantErr: []string{"e-1", "created_at column created_at", "yesterday"},
		},
		{
			name: "created_at infinity", payloadType: oidJSONB,
			values:  std(v(`{}`), nil, v("infinity")),
			wantErr: []string{"e-1", "created_at column created_at"},
		},
		{
			name: "null id", payloadType: oidJSONB,
			values:  [][]byte{nil, v("order"), v("42"), v("Placed"), v(`{}`), nil, nil, nil},
			wantErr: []string{"public.outbox", "id column id is null"},
		},
		{
			name: "null aggregate_type", payloadType: oidJSONB,
			values:  [][]byte{v("e-1"), nil, v("42"), v("Placed"), v(`{}`), nil, nil, nil},
			wantErr: []string{"e-1", "public.outbox", "column aggregate_type is null"},
		},
		{
			name: "null aggregate_id", payloadType: oidJSONB,
			values:  [][]byte{v("e-1"), v("order"), nil, v("Placed"), v(`{}`), nil, nil, nil},
			wantErr: []string{"e-1", "column aggregate_id is null"},
		},
		{
			name: "null event_type", payloadType: oidJSONB,
			values:  [][]byte{v("e-1"), v("order"), v("42"), nil, v(`{}`), nil, nil, nil},
			wantErr: []string{"e-1", "column event_type is null"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rel := mustRelation(t, standardTable(tt.payloadType), StandardColumns)
			ev, err := rel.event(tt.values)
			if tt.wantErr != nil {
				if err == nil {
					t.Fatalf("event() = %+v, want error", ev)
				}
				if !errors.Is(err, errBadRow) {
					t.Errorf("error %q does not wrap errBadRow", err)
				}
				for _, s := range tt.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("event: %v", err)
			}
			want := *tt.want
			want.ID, want.Table, want.AggregateType, want.AggregateID, want.EventType = "e-1", "public.outbox", "order", "42", "Placed"
			checkEvent(t, ev, &want)
		})
	}
}

// Multi-byte text in every field arrives byte for byte.
func TestDecodeInsertUnicode(t *testing.T) {
	const (
		id      = "идентификатор-🆔-1"
		aggType = "注文"
		aggID   = "Ĳssel-Ωmega-👩‍👩‍👧‍👦"
		evType  = "Commande_Passée_🎉"
		payload = `{"message": "héllo wörld 你好 🚀", "flag": "🇯🇵", "nbsp": "a b", "combining": "é"}`
		headers = `{"ключ": "значение 😀", "emoji🔑": "\ud83d\ude80", "zh": "中文"}`
		tenant  = "テナント"
	)
	rels := map[uint32]*relation{
		1: mustRelation(t, standardTable(oidJSONB), StandardColumns),
		2: mustRelation(t, standardTable(oidText), StandardColumns),
		3: mustRelation(t, standardTable(oidBytea), StandardColumns),
	}
	for _, tc := range []struct {
		name     string
		relID    uint32
		payload  string
		wantBody string
	}{
		{"jsonb", 1, payload, payload},
		{"text", 2, "plain ✓ テキスト 🐹", "plain ✓ テキスト 🐹"},
		{"bytea", 3, `\x` + hex.EncodeToString([]byte("bytes 🦀 ∑")), "bytes 🦀 ∑"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := insertMsg(tc.relID, txt(id), txt(aggType), txt(aggID), txt(evType), txt(tc.payload), txt(headers), txt("2024-02-29 23:59:59.999999+00"), txt(tenant))
			ev, err := decodeInsert(data, rels)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []struct{ got, want string }{
				{ev.ID, id}, {ev.AggregateType, aggType}, {ev.AggregateID, aggID}, {ev.EventType, evType},
				{string(ev.Payload), tc.wantBody},
			} {
				if f.got != f.want {
					t.Errorf("got % x, want % x", f.got, f.want)
				}
			}
			if v, _ := ev.Field("tenant"); v != tenant {
				t.Errorf("tenant = %q, want %q", v, tenant)
			}
			wantHeaders := []relay.Header{{Key: "emoji🔑", Value: "🚀"}, {Key: "zh", Value: "中文"}, {Key: "ключ", Value: "значение 😀"}}
			if !slices.Equal(ev.Headers, wantHeaders) {
				t.Errorf("Headers = %+v, want %+v", ev.Headers, wantHeaders)
			}
			if want := time.Date(2024, 2, 29, 23, 59, 59, 999999000, time.UTC); !ev.CreatedAt.Equal(want) {
				t.Errorf("CreatedAt = %v, want %v", ev.CreatedAt, want)
			}
		})
	}
}

func TestDecodeBytea(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []byte
		wantErr bool
	}{
		{name: "empty value", in: `\x`, want: []byte{}},
		{name: "bytes", in: `\x000102ff`, want: []byte{0, 1, 2, 0xff}},
		{name: "upper-case digits", in: `\xDEADBEEF`, want: []byte{0xde, 0xad, 0xbe, 0xef}},
		{name: "mixed case", in: `\xDeAdbEeF`, want: []byte{0xde, 0xad, 0xbe, 0xef}},
		{name: "utf-8 text", in: `\x` + hex.EncodeToString([]byte("ß🚀")), want: []byte("ß🚀")},
		{name: "empty string", in: ``, wantErr: true},
		{name: "backslash only", in: `\`, wantErr: true},
		{name: "x only", in: `x00`, wantErr: true},
		{name: "upper-case X prefix", in: `\X00`, wantErr: true},
		{name: "escape format", in: `\000\001abc`, wantErr: true},
		{name: "raw text", in: `hello`, wantErr: true},
		{name: "odd digits", in: `\x0`, wantErr: true},
		{name: "bad digit", in: `\xzz`, wantErr: true},
		{name: "space", in: `\x00 01`, wantErr: true},
		{name: "second prefix", in: `\x\x00`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeBytea([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("decodeBytea(%q) = %q, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeBytea(%q): %v", tt.in, err)
			}
			if !bytes.Equal(got, tt.want) || got == nil {
				t.Errorf("decodeBytea(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecodeHeaders(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []relay.Header
		wantErr bool
	}{
		{name: "JSON null", in: `null`, want: nil},
		{name: "JSON null with spaces", in: " null\n", want: nil},
		{name: "empty object", in: `{}`, want: []relay.Header{}},
		{name: "one string", in: `{"trace": "abc"}`, want: []relay.Header{{Key: "trace", Value: "abc"}}},
		{
			name: "sorted by key",
			in:   `{"b": "2", "a": "1", "C": "0", "aa": "3"}`,
			want: []relay.Header{{Key: "C", Value: "0"}, {Key: "a", Value: "1"}, {Key: "aa", Value: "3"}, {Key: "b", Value: "2"}},
		},
		{
			name: "string escapes decoded",
			in:   `{"k": "a\"b\\c\/d\n\t\u00e9\ud83d\ude00"}`,
			want: []relay.Header{{Key: "k", Value: "a\"b\\c/d\n\té😀"}},
		},
		{name: "escaped key", in: `{"a\u0062": "x"}`, want: []relay.Header{{Key: "ab", Value: "x"}}},
		{name: "empty string value", in: `{"k": ""}`, want: []relay.Header{{Key: "k", Value: ""}}},
		{name: "empty key", in: `{"": "v"}`, want: []relay.Header{{Key: "", Value: "v"}}},
		{name: "integer", in: `{"n": 42}`, want: []relay.Header{{Key: "n", Value: "42", JSON: true}}},
		{name: "number text kept", in: `{"n": 1.50e+3}`, want: []relay.Header{{Key: "n", Value: "1.50e+3", JSON: true}}},
		{name: "negative", in: `{"n": -0.5}`, want: []relay.Header{{Key: "n", Value: "-0.5", JSON: true}}},
		{name: "booleans", in: `{"t": true, "f": false}`, want: []relay.Header{{Key: "f", Value: "false", JSON: true}, {Key: "t", Value: "true", JSON: true}}},
		{name: "null value kept as null", in: `{"k": null}`, want: []relay.Header{{Key: "k", Value: "null", JSON: true}}},
		{name: "nested object as compact JSON text", in: `{"o": {"x": [1, 2], "y": "z"}}`, want: []relay.Header{{Key: "o", Value: `{"x":[1,2],"y":"z"}`, JSON: true}}},
		{name: "array as compact JSON text", in: `{"a": ["x", 1]}`, want: []relay.Header{{Key: "a", Value: `["x",1]`, JSON: true}}},
		{name: "json column whitespace", in: "{\n  \"a\" :\t\"x\" ,\"b\":1\n}", want: []relay.Header{{Key: "a", Value: "x"}, {Key: "b", Value: "1", JSON: true}}},
		{name: "duplicate keys in json keep the last", in: `{"a": "1", "a": "2"}`, want: []relay.Header{{Key: "a", Value: "2"}}},
		{
			name: "unicode",
			in:   `{"ключ": "значение", "🔑": "🚀", "日本": "語"}`,
			want: []relay.Header{{Key: "ключ", Value: "значение"}, {Key: "日本", Value: "語"}, {Key: "🔑", Value: "🚀"}},
		},
		{name: "array", in: `[]`, wantErr: true},
		{name: "array of objects", in: `[{"a": "b"}]`, wantErr: true},
		{name: "string", in: `"a"`, wantErr: true},
		{name: "number", in: `1`, wantErr: true},
		{name: "boolean", in: `true`, wantErr: true},
		{name: "empty input", in: ``, wantErr: true},
		{name: "not JSON", in: `a=b`, wantErr: true},
		{name: "unterminated", in: `{"a": "b"`, wantErr: true},
		{name: "trailing garbage", in: `{"a": "b"} x`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeHeaders([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("decodeHeaders(%q) = %+v, want error", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeHeaders(%q): %v", tt.in, err)
			}
			if !slices.Equal(got, tt.want) || (got == nil) != (tt.want == nil) {
				t.Errorf("decodeHeaders(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
		})
	}
}

func TestDecodeTimestamp(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+30*60)
	tests := []struct {
		name    string
		in      string
		want    time.Time
		wantErr bool
	}{
		{name: "utc", in: "2024-03-05 12:34:56+00", want: time.Date(2024, 3, 5, 12, 34, 56, 0, time.UTC)},
		{name: "microseconds", in: "2024-03-05 12:34:56.123456+00", want: time.Date(2024, 3, 5, 12, 34, 56, 123456000, time.UTC)},
		{name: "one fractional digit", in: "2024-03-05 12:34:56.5+00", want: time.Date(2024, 3, 5, 12, 34, 56, 500000000, time.UTC)},
		{name: "nanoseconds", in: "2024-03-05 12:34:56.000000001+00", want: time.Date(2024, 3, 5, 12, 34, 56, 1, time.UTC)},
		{name: "hour offset", in: "2024-03-05 04:34:56-08", want: time.Date(2024, 3, 5, 12, 34, 56, 0, time.UTC)},
		{name: "half-hour offset", in: "2024-03-05 18:04:56+05:30", want: time.Date(2024, 3, 5, 18, 4, 56, 0, ist)},
		{name: "offset with fraction", in: "2024-03-05 18:04:56.75+05:30", want: time.Date(2024, 3, 5, 12, 34, 56, 750000000, time.UTC)},
		{name: "offset with seconds", in: "1890-01-01 00:00:00+00:19:32", want: time.Date(1889, 12, 31, 23, 40, 28, 0, time.UTC)},
		{name: "crosses midnight", in: "2024-01-01 02:00:00+05", want: time.Date(2023, 12, 31, 21, 0, 0, 0, time.UTC)},
		{name: "leap day", in: "2024-02-29 00:00:00+00", want: time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC)},
		{name: "timestamp without time zone", in: "2024-03-05 12:34:56", want: time.Date(2024, 3, 5, 12, 34, 56, 0, time.UTC)},
		{name: "timestamp without time zone, fraction", in: "2024-03-05 12:34:56.000001", want: time.Date(2024, 3, 5, 12, 34, 56, 1000, time.UTC)},
		{name: "year 1", in: "0001-01-01 00:00:00+00", want: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC)},
		{name: "empty", in: "", wantErr: true},
		{name: "date only", in: "2024-03-05", wantErr: true},
		{name: "infinity", in: "infinity", wantErr: true},
		{name: "minus infinity", in: "-infinity", wantErr: true},
		{name: "before the common era", in: "0044-03-15 12:00:00+00 BC", wantErr: true},
		{name: "before the common era without zone", in: "0044-03-15 12:00:00 BC", wantErr: true},
		{name: "postgres DateStyle", in: "Tue Mar 05 12:34:56 2024 UTC", wantErr: true},
		{name: "invalid month", in: "2024-13-05 12:34:56+00", wantErr: true},
		{name: "invalid day", in: "2023-02-29 12:34:56+00", wantErr: true},
		{name: "trailing text", in: "2024-03-05 12:34:56+00 UTC", wantErr: true},
		{name: "unicode digits", in: "２０２４-03-05 12:34:56+00", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := decodeTimestamp([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("decodeTimestamp(%q) = %v, want error", tt.in, got)
				}
				if !strings.Contains(err.Error(), tt.in) {
					t.Errorf("error %q does not quote the input", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeTimestamp(%q): %v", tt.in, err)
			}
			if !got.Equal(tt.want) {
				t.Errorf("decodeTimestamp(%q) = %v, want %v", tt.in, got, tt.want.UTC())
			}
			if got.Location() != time.UTC {
				t.Errorf("decodeTimestamp(%q) location = %v, want UTC", tt.in, got.Location())
			}
		})
	}
}

// fuzzRels is the fixed relation map FuzzDecodeInsert decodes against: one
// relation per payload type the decoder treats differently.
func fuzzRels(t testing.TB) map[uint32]*relation {
	return map[uint32]*relation{
		1: mustRelation(t, standardTable(oidJSONB), StandardColumns),
		2: mustRelation(t, debeziumTable(oidBytea), DebeziumColumns),
		3: mustRelation(t, standardTable(oidText)[:5], StandardColumns),
		4: mustRelation(t, []column{{"payload", oidJSON}, {"event_type", oidText}, {"id", oidInt8}, {"aggregate_id", oidText}, {"aggregate_type", oidText}, {"created_at", oidTimestamp}, {"headers", oidJSON}}, StandardColumns),
	}
}

// parseTuple is an independent reading of an Insert message's tuple: the
// column values (nil for NULL), or ok false when the message is malformed
// for an insert of a relation with n columns.
func parseTuple(data []byte, n int) (values [][]byte, ok bool) {
	if len(data) < 8 || data[5] != 'N' || int(binary.BigEndian.Uint16(data[6:8])) != n {
		return nil, false
	}
	rest := data[8:]
	for range n {
		if len(rest) == 0 {
			return nil, false
		}
		kind := rest[0]
		rest = rest[1:]
		switch kind {
		case 'n':
			values = append(values, nil)
		case 't':
			if len(rest) < 4 {
				return nil, false
			}
			l := binary.BigEndian.Uint32(rest)
			rest = rest[4:]
			if uint64(l) > uint64(len(rest)) {
				return nil, false
			}
			values = append(values, rest[:l])
			rest = rest[l:]
		default:
			return nil, false
		}
	}
	return values, true
}

func FuzzDecodeInsert(f *testing.F) {
	created := txt("2024-03-05 12:34:56.123456+05:30")
	f.Add(insertMsg(1, txt("1"), txt("order"), txt("42"), txt("Placed"), txt(`{"a": 1}`), txt(`{"k": "v", "n": 1}`), created, txt("acme")))
	f.Add(insertMsg(1, txt("1"), txt("order"), txt("42"), txt("Placed"), null(), null(), null(), null()))
	f.Add(insertMsg(1, txt("🆔"), txt("注文"), txt("Ωmega"), txt("Passée"), txt(`{"m": "你好 🚀"}`), txt(`{"ключ": "значение"}`), created, txt("")))
	f.Add(insertMsg(1, null(), txt("order"), txt("42"), txt("Placed"), null(), null(), null(), null()))
	f.Add(insertMsg(1, txt("1"), txt("order"), txt("42"), txt("Placed"), txt(`{}`), txt(`[1]`), txt("bad"), null()))
	f.Add(insertMsg(2, txt("7"), txt("customer"), txt("c-1"), txt("Created"), txt(`\x68656c6c6f`)))
	f.Add(insertMsg(2, txt("7"), txt("customer"), txt("c-1"), txt("Created"), txt(`\x`)))
	f.Add(insertMsg(2, txt("7"), txt("customer"), txt("c-1"), txt("Created"), txt(`\x6`)))
	f.Add(insertMsg(2, txt("7"), txt("customer"), txt("c-1"), txt("Created"), unchanged()))
	f.Add(insertMsg(3, txt("x"), txt("a"), txt("b"), txt("c"), txt(`\x41`)))
	f.Add(insertMsg(4, txt(`{"p": true}`), txt("t"), txt("9"), txt("b"), txt("a"), txt("2024-03-05 12:34:56"), txt(`null`)))
	f.Add(insertMsg(4, txt(`{}`), txt("t"), txt("9"), txt("b"), txt("a"), txt("2024-03-05 12:34:56 BC"), txt(`{"a": {"b": null}}`)))
	f.Add(insertMsgN(2, 5, txt("1"), txt("a")))
	f.Add(insertMsgN(1, 65535))
	f.Add(append(insertMsgN(2, 5, txt("1"), txt("a"), txt("b"), txt("c")), 't', 0xff, 0xff, 0xff, 0xff))
	f.Add(insertMsg(9))
	f.Add([]byte{})
	f.Add([]byte("I"))
	f.Add([]byte{'I', 0, 0, 0, 2, 'K', 0, 5})
	f.Add(insertMsg(2, binaryCol([]byte{0, 0, 0, 1}), txt("a"), txt("b"), txt("c"), null()))

	rels := fuzzRels(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := bytes.Clone(data)
		ev, err := decodeInsert(data, rels)
		if !bytes.Equal(data, orig) {
			t.Fatalf("decodeInsert modified its input")
		}
		var rel *relation
		if len(data) >= 8 {
			rel = rels[binary.BigEndian.Uint32(data[1:5])]
		}
		var values [][]byte
		ok := rel != nil
		if ok {
			values, ok = parseTuple(data, len(rel.names))
		}
		if err != nil {
			if ev != nil && !errors.Is(err, errBadRow) {
				t.Fatalf("decodeInsert returned an event and error %v", err)
			}
			if ok && !errors.Is(err, errBadRow) {
				t.Fatalf("well-formed tuple %q rejected with %v, which is not a bad row", values, err)
			}
			return
		}
		if !ok {
			t.Fatalf("malformed message %q decoded to %+v", data, ev)
		}
		if ev == nil {
			t.Fatal("decodeInsert returned neither event nor error")
		}
		if ev.Table != rel.table {
			t.Errorf("Table = %q, want %q", ev.Table, rel.table)
		}
		if values[rel.id] == nil || ev.ID != string(values[rel.id]) {
			t.Errorf("ID = %q, want %q", ev.ID, values[rel.id])
		}
		for _, f := range []struct {
			got string
			i   int
		}{{ev.AggregateType, rel.aggType}, {ev.AggregateID, rel.aggID}, {ev.EventType, rel.evType}} {
			if values[f.i] == nil || f.got != string(values[f.i]) {
				t.Errorf("column %s = %q, want %q", rel.names[f.i], f.got, values[f.i])
			}
		}
		raw := values[rel.payload]
		switch {
		case raw == nil:
			if ev.Payload != nil || ev.ContentType != "" {
				t.Errorf("NULL payload gave %q (%q)", ev.Payload, ev.ContentType)
			}
		case rel.types[rel.payload] == oidBytea:
			want, err := hex.DecodeString(strings.TrimPrefix(string(raw), `\x`))
			if err != nil || !bytes.HasPrefix(raw, []byte(`\x`)) {
				t.Errorf("bytea %q accepted", raw)
			}
			if !bytes.Equal(ev.Payload, want) || ev.ContentType != "" {
				t.Errorf("bytea payload %q decoded to %q (%q), want %q", raw, ev.Payload, ev.ContentType, want)
			}
		case rel.types[rel.payload] == oidJSON || rel.types[rel.payload] == oidJSONB:
			if !bytes.Equal(ev.Payload, raw) || ev.Payload == nil || ev.ContentType != relay.ContentTypeJSON {
				t.Errorf("json payload %q gave %q (%q)", raw, ev.Payload, ev.ContentType)
			}
		default:
			if !bytes.Equal(ev.Payload, raw) || ev.Payload == nil || ev.ContentType != "" {
				t.Errorf("text payload %q gave %q (%q)", raw, ev.Payload, ev.ContentType)
			}
		}
		if len(ev.Row.Values) != len(values) {
			t.Fatalf("Row has %d values, want %d", len(ev.Row.Values), len(values))
		}
		for i := range values {
			if !bytes.Equal(ev.Row.Values[i], values[i]) || (ev.Row.Values[i] == nil) != (values[i] == nil) {
				t.Errorf("Row.Values[%d] = %q, want %q", i, ev.Row.Values[i], values[i])
			}
		}
		if rel.headers < 0 || values[rel.headers] == nil {
			if ev.Headers != nil {
				t.Errorf("Headers = %+v without a headers value", ev.Headers)
			}
		} else if !slices.IsSortedFunc(ev.Headers, func(a, b relay.Header) int { return strings.Compare(a.Key, b.Key) }) {
			t.Errorf("Headers not sorted: %+v", ev.Headers)
		}
		if rel.createdAt < 0 || values[rel.createdAt] == nil {
			if !ev.CreatedAt.IsZero() {
				t.Errorf("CreatedAt = %v without a created_at value", ev.CreatedAt)
			}
		} else if want, err := decodeTimestamp(values[rel.createdAt]); err != nil || !ev.CreatedAt.Equal(want) {
			t.Errorf("created_at %q gave %v, decodeTimestamp gives %v, %v", values[rel.createdAt], ev.CreatedAt, want, err)
		} else if ev.CreatedAt.Location() != time.UTC {
			t.Errorf("CreatedAt %v not in UTC", ev.CreatedAt)
		}
	})
}

func TestDestinationColumn(t *testing.T) {
	withDest := append(standardTable(oidJSONB), column{"destination", oidText})
	row := func(dest tupleCol) []byte {
		return insertMsg(1, txt("7f0c6b6e-5b2a-4d47-9a0e-1c2d3e4f5a6b"), txt("order"), txt("42"), txt("ship"),
			txt(`{}`), txt(`{"destination":"from-header"}`), txt("2024-05-06 07:08:09+00"), txt("acme"), dest)
	}
	tests := []struct {
		name      string
		cols      []column
		m         Columns
		msg       []byte
		wantTo    string
		wantRoute string
	}{
		{name: "column set", cols: withDest, m: StandardColumns, msg: row(txt("/orders.commands")), wantTo: "/orders.commands", wantRoute: "/orders.commands"},
		{name: "column null falls back to the header", cols: withDest, m: StandardColumns, msg: row(null()), wantRoute: "from-header"},
		{name: "column absent", cols: standardTable(oidJSONB), m: StandardColumns,
			msg: insertMsg(1, txt("7f0c6b6e-5b2a-4d47-9a0e-1c2d3e4f5a6b"), txt("order"), txt("42"), txt("ship"),
				txt(`{}`), txt(`{}`), txt("2024-05-06 07:08:09+00"), txt("acme")), wantRoute: ""},
		{name: "unmapped column ignored", cols: withDest, m: func() Columns { c := StandardColumns; c.Destination = ""; return c }(),
			msg: row(txt("/orders.commands")), wantRoute: "from-header"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rels := map[uint32]*relation{1: mustRelation(t, tt.cols, tt.m)}
			ev, err := decodeInsert(tt.msg, rels)
			if err != nil {
				t.Fatal(err)
			}
			if ev.To != tt.wantTo || ev.Route() != tt.wantRoute {
				t.Errorf("To %q Route %q, want %q %q", ev.To, ev.Route(), tt.wantTo, tt.wantRoute)
			}
		})
	}
}

// TestBoundaryMatchesPglogrepl: Begin and Commit, parsed in place, give
// what pglogrepl.Parse gives, and the commit's end LSN becomes the mark
// that goes with the next row or tick.
func TestBoundaryMatchesPglogrepl(t *testing.T) {
	be := binary.BigEndian
	for _, us := range []int64{0, 786_000_000_123_456, -1_500_000} {
		begin := be.AppendUint32(be.AppendUint64(be.AppendUint64([]byte{'B'}, 0x1_0000_2000), uint64(us)), 4242)
		commit := be.AppendUint64(be.AppendUint64(be.AppendUint64([]byte{'C', 0}, 0x1_0000_2000), 0x1_0000_2040), uint64(us))
		out := make(chan relay.Item, 1)
		st := &stream{src: &Source{cfg: Config{Metrics: nopObserver{}}}, out: out}
		if err := st.boundary(t.Context(), begin, 0); err != nil {
			t.Fatal(err)
		}
		m, err := pglogrepl.Parse(begin)
		if err != nil {
			t.Fatal(err)
		}
		b := m.(*pglogrepl.BeginMessage)
		if !st.inTxn || st.commitLSN != relay.LSN(b.FinalLSN) || !st.commitTime.Equal(b.CommitTime) {
			t.Fatalf("begin at %d µs: in txn %v, lsn %s, time %s; pglogrepl: %s, %s", us, st.inTxn, st.commitLSN, st.commitTime, b.FinalLSN, b.CommitTime)
		}
		if err := st.boundary(t.Context(), commit, 0); err != nil {
			t.Fatal(err)
		}
		m, err = pglogrepl.Parse(commit)
		if err != nil {
			t.Fatal(err)
		}
		c := m.(*pglogrepl.CommitMessage)
		if st.inTxn || st.pending != relay.LSN(c.TransactionEndLSN) {
			t.Fatalf("commit: in txn %v, pending mark %s; pglogrepl end %s", st.inTxn, st.pending, c.TransactionEndLSN)
		}
		if err := st.flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if mark := <-out; mark.Event != nil || mark.Mark != relay.LSN(c.TransactionEndLSN) || st.pending != 0 {
			t.Fatalf("flushed %+v, pending %s; want the mark %s alone", mark, st.pending, c.TransactionEndLSN)
		}
		if err := st.boundary(t.Context(), commit, 0); err == nil {
			t.Fatal("a second commit outside a transaction was accepted")
		}
		if err := st.boundary(t.Context(), begin[:20], 0); err == nil {
			t.Fatal("a truncated begin was accepted")
		}
	}
}
