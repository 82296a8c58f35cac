package pgsource

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/relay-dev/relay/relay"
)

// Type OIDs the decoder gives meaning to; any other type is passed on as
// its text form.
const (
	oidBytea       = 17
	oidText        = 25
	oidJSON        = 114
	oidBpchar      = 1042
	oidVarchar     = 1043
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidUUID        = 2950
	oidJSONB       = 3802
)

// relation is a published table as the stream describes it, with the
// positions of the outbox fields among its columns (-1 when absent).
type relation struct {
	table                               string // schema.name
	names                               []string
	types                               []uint32
	id, aggType, aggID, evType, payload int
	headers, createdAt, destination     int
	// binary: the session asked for pgoutput's binary format, so values
	// may arrive in it (binary.go).
	binary bool
}

// newRelation maps a Relation message onto the configured columns. A
// missing required column is an error: the table changed under the relay.
func newRelation(namespace, name string, cols []column, m Columns) (*relation, error) {
	r := &relation{table: namespace + "." + name}
	if m.ID == "" || m.AggregateType == "" || m.AggregateID == "" || m.EventType == "" || m.Payload == "" {
		// event indexes these columns unconditionally.
		return nil, fmt.Errorf("table %s: the id, aggregate type, aggregate id, event type and payload columns must all be named", r.table)
	}
	for _, c := range cols {
		r.names = append(r.names, c.name)
		r.types = append(r.types, c.typ)
	}
	var missing []string
	find := func(col string, required bool) int {
		if col == "" {
			return -1
		}
		if i := slices.Index(r.names, col); i >= 0 {
			return i
		}
		if required {
			missing = append(missing, col)
		}
		return -1
	}
	r.id = find(m.ID, true)
	r.aggType = find(m.AggregateType, true)
	r.aggID = find(m.AggregateID, true)
	r.evType = find(m.EventType, true)
	r.payload = find(m.Payload, true)
	r.headers = find(m.Headers, false)
	r.createdAt = find(m.CreatedAt, false)
	r.destination = find(m.Destination, false)
	if len(missing) > 0 {
		return nil, fmt.Errorf("table %s has no column %s", r.table, strings.Join(missing, ", "))
	}
	if r.payload >= 0 && !payloadTypeOK(r.types[r.payload]) {
		return nil, fmt.Errorf("table %s: payload column %s must be jsonb, json, text, varchar or bytea", r.table, m.Payload)
	}
	return r, nil
}

type column struct {
	name string
	typ  uint32
}

func payloadTypeOK(oid uint32) bool {
	switch oid {
	case oidJSONB, oidJSON, oidText, oidVarchar, oidBpchar, oidBytea:
		return true
	}
	return false
}

// errBadRow is wrapped by errors that describe an outbox row the relay
// cannot turn into a message.
var errBadRow = errors.New("bad outbox row")

// decodeInsert turns an Insert message (data starts at its 'I' byte) into
// an event. The event's values and strings alias data (see aliasString),
// which the caller hands over: it must neither reuse nor modify it.
func decodeInsert(data []byte, rels map[uint32]*relation) (*relay.Event, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("insert message of %d bytes", len(data))
	}
	relID := binary.BigEndian.Uint32(data[1:])
	rel := rels[relID]
	if rel == nil {
		return nil, fmt.Errorf("insert for relation %d before its relation message", relID)
	}
	if data[5] != 'N' {
		return nil, fmt.Errorf("insert into %s: tuple kind %q, want 'N'", rel.table, data[5])
	}
	n := int(binary.BigEndian.Uint16(data[6:]))
	if n != len(rel.names) {
		return nil, fmt.Errorf("insert into %s: %d columns, relation has %d", rel.table, n, len(rel.names))
	}
	// One allocation for the event and, for a typical outbox, its values
	// and the text of its binary ones.
	var r *row
	var text []byte
	if rel.binary {
		br := &binaryRow{}
		r, text = &br.row, br.text[:0]
	} else {
		r = &row{}
	}
	var values [][]byte
	if n <= len(r.values) {
		values = r.values[:n:n]
	} else {
		values = make([][]byte, n)
	}
	p := 8
	for i := range n {
		if p >= len(data) {
			return nil, fmt.Errorf("insert into %s: truncated tuple", rel.table)
		}
		kind := data[p]
		p++
		switch kind {
		case 'n':
			// NULL: values[i] stays nil.
		case 't':
			v, next, ok := lengthPrefixed(data, p)
			if !ok {
				return nil, fmt.Errorf("insert into %s: truncated tuple", rel.table)
			}
			values[i], p = v, next
		case 'b':
			if !rel.binary {
				return nil, fmt.Errorf("insert into %s: column %s has tuple data kind 'b' in a text session", rel.table, rel.names[i])
			}
			v, next, ok := lengthPrefixed(data, p)
			if !ok {
				return nil, fmt.Errorf("insert into %s: truncated tuple", rel.table)
			}
			p = next
			typ := rel.types[i]
			if i == rel.createdAt && (typ == oidTimestamptz || typ == oidTimestamp) {
				// fill leaves a created_at already set alone: the
				// parse of the text below is what this saves.
				r.CreatedAt, _ = binaryTime(v)
			}
			t, err := binaryText(typ, v, &text)
			if err != nil {
				return nil, fmt.Errorf("insert into %s: column %s: %w", rel.table, rel.names[i], err)
			}
			values[i] = t
		default:
			// 'u' (unchanged TOAST) only occurs in updates.
			return nil, fmt.Errorf("insert into %s: column %s has tuple data kind %q", rel.table, rel.names[i], kind)
		}
	}
	return rel.fill(&r.Event, values)
}

// row is an event allocated together with room for the values of a
// typical outbox row.
type row struct {
	relay.Event
	values [8][]byte
}

// binaryRow is a row with room for the text of the binary values of a
// typical outbox row: a uuid (36 bytes) and a timestamptz (29).
type binaryRow struct {
	row
	text [80]byte
}

// event builds the event for one row of rel from values it takes over, as
// decodeInsert does. For a bad row it returns the event as far as it got,
// with an error wrapping errBadRow.
func (rel *relation) event(values [][]byte) (*relay.Event, error) {
	return rel.fill(&relay.Event{}, values)
}

// fill reads every field it can before it reports the first problem, so
// that a bad row's dead letter carries all of the row that could be read,
// the same whichever path read it.
func (rel *relation) fill(ev *relay.Event, values [][]byte) (*relay.Event, error) {
	ev.Table, ev.Row = rel.table, relay.Row{Names: rel.names, Values: values}
	if values[rel.id] == nil {
		return ev, fmt.Errorf("%w in %s: id column %s is null", errBadRow, rel.table, rel.names[rel.id])
	}
	ev.ID = aliasString(values[rel.id])
	var first error
	bad := func(format string, args ...any) {
		if first == nil {
			first = fmt.Errorf("%w %s in %s: %s", errBadRow, ev.ID, rel.table, fmt.Sprintf(format, args...))
		}
	}
	for _, f := range []struct {
		i   int
		dst *string
	}{{rel.aggType, &ev.AggregateType}, {rel.aggID, &ev.AggregateID}, {rel.evType, &ev.EventType}} {
		if values[f.i] == nil {
			bad("column %s is null", rel.names[f.i])
			continue
		}
		*f.dst = aliasString(values[f.i])
	}
	// A NULL payload is an empty body (a tombstone in Kafka), as with
	// Debezium's outbox router.
	payload := values[rel.payload]
	switch {
	case payload == nil:
	case rel.types[rel.payload] == oidBytea:
		b, err := decodeBytea(payload)
		if err != nil {
			bad("payload column %s: %v", rel.names[rel.payload], err)
			break
		}
		ev.Payload = b
	case rel.types[rel.payload] == oidJSON || rel.types[rel.payload] == oidJSONB:
		ev.Payload = payload
		ev.ContentType = relay.ContentTypeJSON
	default:
		ev.Payload = payload
	}
	if rel.headers >= 0 && values[rel.headers] != nil {
		h, err := decodeHeaders(values[rel.headers])
		if err != nil {
			bad("headers column %s: %v", rel.names[rel.headers], err)
		} else {
			ev.Headers = h
		}
	}
	if rel.destination >= 0 && values[rel.destination] != nil {
		ev.To = aliasString(values[rel.destination])
	}
	// decodeInsert may have read created_at from its binary form already.
	if rel.createdAt >= 0 && values[rel.createdAt] != nil && ev.CreatedAt.IsZero() {
		t, err := decodeTimestamp(values[rel.createdAt])
		if err != nil {
			bad("created_at column %s: %v", rel.names[rel.createdAt], err)
		} else {
			ev.CreatedAt = t
		}
	}
	return ev, first
}

// aliasString returns b as a string without copying it. The source owns
// every buffer it decodes from (a copy of the message, never the receive
// buffer) and writes none after decoding, so the string cannot change: a
// row's id, aggregate, event type and headers cost no allocation of their
// own. They keep the row's buffer alive, which the event does anyway.
func aliasString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// decodeBytea decodes bytea's hex output format (\x…), which the relay
// requests with bytea_output=hex.
func decodeBytea(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != '\\' || b[1] != 'x' {
		return nil, errors.New("bytea not in hex format")
	}
	out := make([]byte, hex.DecodedLen(len(b)-2))
	if _, err := hex.Decode(out, b[2:]); err != nil {
		return nil, err
	}
	return out, nil
}

// decodeHeaders reads a JSON object into headers sorted by key. String
// values are taken as they are; any other value as its compact JSON text,
// marked JSON, so that a header never silently disappears, keeps its type
// for the brokers that have typed headers, and reads the same from a jsonb
// column (which puts spaces after commas), a json one or an envelope. The
// headers may alias b, which must not be modified afterwards.
func decodeHeaders(b []byte) ([]relay.Header, error) {
	if hs, ok := fastHeaders(b); ok {
		return hs, nil
	}
	return decodeHeadersJSON(b)
}

// decodeHeadersJSON is decodeHeaders for any JSON.
func decodeHeadersJSON(b []byte) ([]relay.Header, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("not a JSON object: %w", err)
	}
	if m == nil {
		return nil, nil // JSON null
	}
	hs := make([]relay.Header, 0, len(m))
	var compact bytes.Buffer
	for k, v := range m {
		if len(v) > 0 && v[0] == '"' {
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return nil, fmt.Errorf("header %q: %w", k, err)
			}
			hs = append(hs, relay.Header{Key: k, Value: s})
			continue
		}
		compact.Reset()
		if err := json.Compact(&compact, v); err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		hs = append(hs, relay.Header{Key: k, Value: compact.String(), JSON: true})
	}
	slices.SortFunc(hs, func(a, b relay.Header) int { return strings.Compare(a.Key, b.Key) })
	return hs, nil
}

// decodeTimestamp parses timestamptz and timestamp text in the ISO DateStyle
// with TimeZone=UTC, both of which the replication session sets; a
// timestamp without time zone is taken as UTC.
func decodeTimestamp(b []byte) (time.Time, error) {
	if t, ok := fastTimestamp(b); ok {
		return t, nil
	}
	return decodeTimestampLayouts(b)
}

// decodeTimestampLayouts is decodeTimestamp for every form it accepts.
func decodeTimestampLayouts(b []byte) (time.Time, error) {
	s := string(b)
	if strings.HasSuffix(s, " BC") {
		return time.Time{}, fmt.Errorf("timestamp %q before the common era", s)
	}
	for _, layout := range []string{"2006-01-02 15:04:05.999999999Z07:00:00", "2006-01-02 15:04:05.999999999Z07:00", "2006-01-02 15:04:05.999999999Z07", "2006-01-02 15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("cannot parse timestamp %q", s)
}

// lengthPrefixed reads the value at data[p:], a 4-byte length and that
// many bytes, and returns it (capped, so appending copies) and the offset
// after it; ok is false when data ends first.
func lengthPrefixed(data []byte, p int) (v []byte, next int, ok bool) {
	if p+4 > len(data) {
		return nil, p, false
	}
	l := int(binary.BigEndian.Uint32(data[p:]))
	p += 4
	if l < 0 || p+l > len(data) {
		return nil, p, false
	}
	return data[p : p+l : p+l], p + l, true
}
