package pgsource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
)

// jsonString is s as a JSON string, and what decoding that gives back
// (invalid UTF-8 becomes U+FFFD on the way).
func jsonString(t *testing.T, s string) (encoded, decoded string) {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &decoded); err != nil {
		t.Fatal(err)
	}
	return string(b), decoded
}

// renderEnvelope writes ev back as an envelope, field by field as
// outbox_emit does, with the payload as the raw JSON it was.
func renderEnvelope(t *testing.T, ev *relay.Event) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for _, f := range [][2]string{{"id", ev.ID}, {"aggregate_type", ev.AggregateType}, {"aggregate_id", ev.AggregateID}, {"event_type", ev.EventType}} {
		v, _ := jsonString(t, f[1])
		fmt.Fprintf(&b, "%q: %s, ", f[0], v)
	}
	b.WriteString(`"payload": `)
	if ev.Payload == nil {
		b.WriteString("null")
	} else {
		b.Write(ev.Payload)
	}
	if ev.Headers != nil {
		b.WriteString(`, "headers": {`)
		for i, h := range ev.Headers {
			if i > 0 {
				b.WriteString(", ")
			}
			k, _ := jsonString(t, h.Key)
			v := h.Value // the JSON text of a value that is not a string
			if !h.JSON {
				v, _ = jsonString(t, h.Value)
			}
			fmt.Fprintf(&b, "%s: %s", k, v)
		}
		b.WriteByte('}')
	}
	b.WriteByte('}')
	return b.Bytes()
}

// checkMessageEvent checks what every call of messageEvent must give:
// an event named for /readyz and dead letters, and only bad-row errors.
func checkMessageEvent(t *testing.T, content []byte, ev *relay.Event, err error) {
	t.Helper()
	if ev == nil {
		t.Fatalf("messageEvent(%q) returned no event (error %v): a bad message must still be named", content, err)
	}
	if ev.Table != MessageTable {
		t.Errorf("Table = %q, want %q", ev.Table, MessageTable)
	}
	if ev.ID == "" {
		t.Errorf("messageEvent(%q) gave an empty id", content)
	}
	if err != nil {
		if !errors.Is(err, errBadRow) {
			t.Fatalf("messageEvent(%q) error %v is not a bad row: it would stop the stream for good", content, err)
		}
		if !strings.Contains(err.Error(), ev.ID) {
			t.Errorf("messageEvent(%q) error %q does not name the event %q", content, err, ev.ID)
		}
	}
}

var messageSeeds = []string{
	`{"id": "e-1", "aggregate_type": "account", "aggregate_id": "7", "event_type": "account.debited", "payload": {"amount": 10}, "headers": {"trace": "abc"}}`,
	// outbox_emit's jsonb text, with the defaults' nulls.
	`{"id": "0190a1b2-0000-7000-8000-000000000001", "payload": {"amount": 10}, "headers": null, "event_type": "account.debited", "aggregate_id": "7", "aggregate_type": "account"}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e"}`,
	`{"id": "", "aggregate_type": "", "aggregate_id": "", "event_type": "", "payload": ""}`,
	`{"id": null, "aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "payload": null}`,
	`{"aggregate_type": "a", "aggregate_id": "1"}`,
	`{"id": "x", "aggregate_type": null, "aggregate_id": "1", "event_type": "e"}`,
	`{"id": 42, "aggregate_type": "a", "aggregate_id": "1", "event_type": "e"}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "payload": [1, 2.5, true, null, "x"]}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "headers": {"n": 1, "b": true, "z": null, "arr": [1, 2], "obj": {"k": "<v&>"}}}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "headers": {"a": "1", "a": "2"}}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "headers": ["x"]}`,
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e", "headers": "x"}`,
	`{"aggregate_type": "注文", "aggregate_id": "Ωmega", "event_type": "Passée 🚀", "headers": {"ключ": "значение"}}`,
	`{"ID": "upper", "Aggregate_Type": "a", "AGGREGATE_ID": "1", "event_type": "e"}`,
	"{\"aggregate_type\": \"\xff\", \"aggregate_id\": \"1\", \"event_type\": \"e\"}",
	`{"aggregate_type": "a", "aggregate_id": "1", "event_type": "e"} trailing`,
	`[]`, `null`, `"x"`, ``, `{`, `not json`,
}

// FuzzMessageEvent: whatever the content of an outbox message, the relay
// gets an event it can name and either a bad-row error or an event that,
// written back as an envelope, reads as itself.
func FuzzMessageEvent(f *testing.F) {
	for i, s := range messageSeeds {
		f.Add([]byte(s), uint64(0x16B3748), uint16(i))
	}
	f.Fuzz(func(t *testing.T, content []byte, commit uint64, index uint16) {
		orig := bytes.Clone(content)
		ev, err := messageEvent(content, relay.LSN(commit), int(index))
		if !bytes.Equal(content, orig) {
			t.Fatalf("messageEvent modified its input")
		}
		checkMessageEvent(t, content, ev, err)
		if err != nil {
			return
		}
		if !json.Valid(content) {
			t.Fatalf("messageEvent accepted content that is not JSON: %q", content)
		}
		if ev.ContentType != "" && ev.ContentType != relay.ContentTypeJSON || (ev.ContentType == "") != (ev.Payload == nil) {
			t.Errorf("payload %q with content type %q", ev.Payload, ev.ContentType)
		}
		if ev.Payload != nil && !json.Valid(ev.Payload) {
			t.Errorf("payload %q is not JSON", ev.Payload)
		}
		wantRow := relay.Row{Names: []string{"id", "aggregate_type", "aggregate_id", "event_type"},
			Values: [][]byte{[]byte(ev.ID), []byte(ev.AggregateType), []byte(ev.AggregateID), []byte(ev.EventType)}}
		if !slices.Equal(ev.Row.Names, wantRow.Names) || !slices.EqualFunc(ev.Row.Values, wantRow.Values, bytes.Equal) {
			t.Errorf("Row = %q %q, want the envelope's fields %q", ev.Row.Names, ev.Row.Values, wantRow.Values)
		}

		// An event written back as an envelope is the same event, even
		// at another position: it has its id now.
		again := renderEnvelope(t, ev)
		ev2, err := messageEvent(again, relay.LSN(commit)+1, int(index)+1)
		if err != nil {
			t.Fatalf("messageEvent(%q) = %+v, written back as %q: %v", content, ev, again, err)
		}
		if ev2.ID != ev.ID || ev2.AggregateType != ev.AggregateType || ev2.AggregateID != ev.AggregateID || ev2.EventType != ev.EventType ||
			!bytes.Equal(ev2.Payload, ev.Payload) || ev2.ContentType != ev.ContentType || !slices.Equal(ev2.Headers, ev.Headers) {
			t.Fatalf("messageEvent(%q) = %+v, written back as %q reads as %+v", content, ev, again, ev2)
		}
	})
}

// FuzzMessageEnvelope builds envelopes field by field, each present,
// null, absent or of the wrong type, and checks the event against the
// fields: the envelope's id or the position, the three required fields,
// the payload byte for byte, and the headers exactly as a headers column
// holding the same JSON text gives them, so that a message and a row make
// the same message. A bad envelope still gives every well-formed field, so
// that its dead letter carries them.
func FuzzMessageEnvelope(f *testing.F) {
	// testdata/fuzz/FuzzMessageEnvelope holds the cases this found.
	f.Add("e-1", "account", "7", "account.debited", `{"amount": 10}`, `{"trace": "abc"}`, uint16(0))
	f.Add("", "", "", "", `""`, `{}`, uint16(0))
	f.Add("x", "a", "1", "e", `null`, `null`, uint16(0))
	f.Add("x", "a", "1", "e", ` [1, 2.5, true] `, `{"n": 1, "b": true, "z": null}`, uint16(0))
	f.Add("x", "a", "1", "e", `{}`, `{"a": "1", "a": "2"}`, uint16(0))
	f.Add("🆔", "注文", "Ωmega", "Passée", `{"m": "你好 🚀"}`, `{"ключ": "значение"}`, uint16(0))
	f.Add("\xff", "a\x00", "1", "e", `{}`, `{}`, uint16(0))
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<0))  // no id
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<8))  // null id
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<1))  // no aggregate_type
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<10)) // null aggregate_id
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<3))  // no event_type
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<4))  // no payload
	f.Add("x", "a", "1", "e", `{}`, `{}`, uint16(1<<5))  // no headers
	f.Fuzz(func(t *testing.T, id, aggType, aggID, evType, payload, headers string, shape uint16) {
		// Bit i of shape leaves field i out; bit 8+i makes it null, bit
		// 12+i a number (a hand-written aggregate_id: 42).
		absent := func(i int) bool { return shape&(1<<i) != 0 }
		null := func(i int) bool { return shape&(1<<(8+i)) != 0 }
		number := func(i int) bool { return i < 4 && shape&(1<<(12+i)) != 0 && !absent(i) && !null(i) }
		var parts []string
		decoded := make([]string, 4)
		for i, f := range [][2]string{{"id", id}, {"aggregate_type", aggType}, {"aggregate_id", aggID}, {"event_type", evType}} {
			var enc string
			enc, decoded[i] = jsonString(t, f[1])
			switch {
			case absent(i):
			case null(i):
				parts = append(parts, fmt.Sprintf("%q: null", f[0]))
			case number(i):
				parts = append(parts, fmt.Sprintf("%q: %d", f[0], len(f[1])))
			default:
				parts = append(parts, fmt.Sprintf("%q: %s", f[0], enc))
			}
		}
		hasPayload := !absent(4) && json.Valid([]byte(payload))
		if hasPayload {
			parts = append(parts, `"payload": `+payload)
		}
		hasHeaders := !absent(5) && json.Valid([]byte(headers))
		if hasHeaders {
			parts = append(parts, `"headers": `+headers)
		}
		content := []byte("{" + strings.Join(parts, ", ") + "}")
		commit, index := relay.LSN(0x16B3748), 3

		ev, err := messageEvent(content, commit, index)
		checkMessageEvent(t, content, ev, err)
		wantID := fmt.Sprintf("%s/%d", commit, index)
		if !absent(0) && !null(0) && !number(0) && decoded[0] != "" {
			wantID = decoded[0]
		}
		if ev.ID != wantID {
			t.Errorf("messageEvent(%s): ID = %q, want %q", content, ev.ID, wantID)
		}
		wantBad := number(0)
		for i, got := range []string{ev.AggregateType, ev.AggregateID, ev.EventType} {
			if absent(i+1) || null(i+1) || number(i+1) {
				wantBad = true
				continue
			}
			// Also for a bad envelope: its dead letter keeps what it can.
			if got != decoded[i+1] {
				t.Errorf("messageEvent(%s): field %d = %q, want %q", content, i+1, got, decoded[i+1])
			}
		}
		wantPayload := []byte(nil)
		if p := bytes.TrimSpace([]byte(payload)); hasPayload && string(p) != "null" {
			wantPayload = p
		}
		if !bytes.Equal(ev.Payload, wantPayload) || (ev.Payload == nil) != (wantPayload == nil) {
			t.Errorf("messageEvent(%s): payload %q, want %q as written", content, ev.Payload, wantPayload)
		}
		var wantHeaders []relay.Header
		if hasHeaders {
			var herr error
			if wantHeaders, herr = decodeHeaders([]byte(headers)); herr != nil {
				wantBad = true
			}
		}
		if !slices.Equal(ev.Headers, wantHeaders) || (ev.Headers == nil) != (wantHeaders == nil) {
			t.Errorf("messageEvent(%s): headers %+v; a headers column holding %s gives %+v", content, ev.Headers, headers, wantHeaders)
		}
		if wantBad {
			if err == nil {
				t.Fatalf("messageEvent(%s) accepted an envelope with a required field missing or not a string, or with headers no headers column may hold", content)
			}
			if strings.Contains(err.Error(), "not a JSON object") && !strings.Contains(err.Error(), "headers") {
				t.Errorf("messageEvent(%s): %q, but the content is a JSON object", content, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("messageEvent(%s): %v", content, err)
		}
	})
}
