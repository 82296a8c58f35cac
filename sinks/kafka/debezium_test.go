package kafka

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/relay"
)

// These tests hold the relay's records to what Debezium's outbox event
// router writes for the row of its documentation, under each converter
// setting (testdata/debezium/README.md says where each fixture comes from),
// and docs/migrating-from-debezium.md's table of converters to what they
// find.

// migrationGuide is the page that tells consumers which bytes to expect.
const migrationGuide = "../../docs/migrating-from-debezium.md"

// converterRow is the row of the migration guide's converter table whose
// first cell starts with prefix.
func converterRow(t *testing.T, prefix string) string {
	t.Helper()
	b, err := os.ReadFile(migrationGuide)
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "| "+prefix) {
			rows = append(rows, line)
		}
	}
	if len(rows) != 1 {
		t.Fatalf("%s: %d rows of the converter table start with %q, want 1", migrationGuide, len(rows), prefix)
	}
	return rows[0]
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "debezium", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// debeziumRow is the documentation's example row as the relay reads it
// with RELAY_COLUMN_PRESET=debezium.
func debeziumRow(t *testing.T) *relay.Event {
	return &relay.Event{
		ID: string(fixture(t, "id.header")), Table: "public.outboxevent", AggregateType: "order", AggregateID: "1",
		EventType: "OrderCreated", Payload: fixture(t, "payload.json"), ContentType: relay.ContentTypeJSON, CommitLSN: 0x16B3748,
	}
}

func TestDebeziumFixtures(t *testing.T) {
	jsonString := format{jsonKey: true, jsonValue: true}
	for _, tt := range []struct {
		name       string
		f          format
		key, value string // fixtures the record must equal
	}{
		{"StringConverter", format{}, "string-converter.key", "string-converter.value"},
		{"JsonConverter schemas.enable=false", jsonString, "json-converter.key", "json-converter.value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			row := converterRow(t, map[string]string{
				"StringConverter":                    "`org.apache.kafka.connect.storage.StringConverter` |",
				"JsonConverter schemas.enable=false": "`org.apache.kafka.connect.json.JsonConverter` with `schemas.enable=false` |",
			}[tt.name])
			if strings.Contains(row, "not byte-identical") {
				t.Errorf("%s says the relay's bytes differ, which this test finds identical:\n%s", migrationGuide, row)
			}
			r, err := record(debeziumRow(t), "outbox.event.order", tt.f)
			if err != nil {
				t.Fatal(err)
			}
			if want := fixture(t, tt.key); !bytes.Equal(r.Key, want) {
				t.Errorf("key %s, Debezium's %s", r.Key, want)
			}
			if want := fixture(t, tt.value); !bytes.Equal(r.Value, want) {
				t.Errorf("value\n%s\nDebezium's\n%s", r.Value, want)
			}
			// The header converter, not the key or value converter, writes
			// Debezium's headers: the id is the same in every setting.
			if got, want := lastHeader(r.Headers, "id"), string(fixture(t, "id.header")); got != want {
				t.Errorf("header id %q, Debezium's %q", got, want)
			}
		})
	}

	// With schemas enabled JsonConverter wraps key and value in an
	// envelope the relay does not write; inside it, the payload member is
	// byte for byte what json-string writes, which the migration guide
	// tells consumers.
	t.Run("JsonConverter schemas.enable=true", func(t *testing.T) {
		row := converterRow(t, "`JsonConverter` with `schemas.enable=true`")
		if strings.Count(row, "**not byte-identical**") != 2 || !strings.Contains(row, "none writes the envelope") {
			t.Errorf("%s does not say that neither key nor value is byte-identical and the relay writes no envelope:\n%s", migrationGuide, row)
		}
		if key := string(fixture(t, "json-converter-schemas.key")); !strings.Contains(row, "`"+key+"`") {
			t.Errorf("%s does not show Debezium's key envelope %s:\n%s", migrationGuide, key, row)
		}
		r, err := record(debeziumRow(t), "outbox.event.order", jsonString)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			got                 []byte
			fixture, schemaJSON string
		}{
			{r.Key, "json-converter-schemas.key", `{"type":"string","optional":false}`},
			{r.Value, "json-converter-schemas.value", `{"type":"string","optional":true,"name":"io.debezium.data.Json","version":1}`},
		} {
			want := fixture(t, c.fixture)
			if bytes.Equal(c.got, want) {
				t.Errorf("%s: the relay wrote the envelope, which %s says it does not", c.fixture, migrationGuide)
			}
			if envelope := `{"schema":` + c.schemaJSON + `,"payload":` + string(c.got) + `}`; envelope != string(want) {
				t.Errorf("%s: its payload member is not the relay's json-string bytes:\n%s\n%s", c.fixture, envelope, want)
			}
		}
	})

	// table.expand.json.payload=true: Debezium re-serialises the payload
	// compactly; the relay's raw value is PostgreSQL's text of the same
	// document.
	t.Run("JsonConverter table.expand.json.payload=true", func(t *testing.T) {
		row := converterRow(t, "`JsonConverter` with `schemas.enable=false` and the router's `table.expand.json.payload=true`")
		if strings.Count(row, "**not byte-identical**") != 1 || !strings.Contains(row, "`RELAY_KAFKA_VALUE_FORMAT=raw`") {
			t.Errorf("%s does not say the value is not byte-identical and is written raw:\n%s", migrationGuide, row)
		}
		r, err := record(debeziumRow(t), "outbox.event.order", format{jsonKey: true})
		if err != nil {
			t.Fatal(err)
		}
		if want := fixture(t, "json-converter.key"); !bytes.Equal(r.Key, want) {
			t.Errorf("key %s, Debezium's %s", r.Key, want)
		}
		var got, want any
		if err := json.Unmarshal(r.Value, &got); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(fixture(t, "expanded-example.json"), &want); err != nil {
			t.Fatal(err)
		}
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		if !bytes.Equal(gb, wb) {
			t.Errorf("value is not the JSON document Debezium expands:\n%s\n%s", r.Value, fixture(t, "expanded-example.json"))
		}
		var compact bytes.Buffer
		json.Compact(&compact, r.Value)
		if bytes.Equal(compact.Bytes(), r.Value) {
			t.Errorf("the raw value has no whitespace, so %s's 'not byte-identical' is wrong", migrationGuide)
		}
	})
}

func lastHeader(hs []kgo.RecordHeader, key string) string {
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].Key == key {
			return string(hs[i].Value)
		}
	}
	return ""
}

// TestJSONStringEscapesAsJackson: json-string escapes exactly what
// Jackson, the JSON library of Kafka Connect's JsonConverter, escapes, so
// any text becomes the bytes Debezium wrote; encoding/json would differ on
// <, >, &, U+2028 and the hex case.
func TestJSONStringEscapesAsJackson(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"", `""`},
		{"42", `"42"`},
		{`say "hi"`, `"say \"hi\""`},
		{`C:\dir`, `"C:\\dir"`},
		{"a\bb\tc\nd\fe\rf", `"a\bb\tc\nd\fe\rf"`},
		{"\x00\x01\x1f\x0b", `"\u0000\u0001\u001F\u000B"`},
		{"</script>&<", `"</script>&<"`},
		{"\x7f", "\"\x7f\""},
		{"a/b", `"a/b"`},
		{"line\u2028sep\u2029", "\"line\u2028sep\u2029\""},
		{"Grüße, 東京 🚀", `"Grüße, 東京 🚀"`},
	} {
		got, err := appendJSONString(nil, []byte(tt.in))
		if err != nil || string(got) != tt.want {
			t.Errorf("appendJSONString(%q) = %s, %v; want %s", tt.in, got, err, tt.want)
		}
		// And it is JSON that reads back as the text.
		var back string
		if err := json.Unmarshal(got, &back); err != nil || back != tt.in {
			t.Errorf("%s reads back as %q, %v", got, back, err)
		}
	}
	if _, err := appendJSONString(nil, []byte{'a', 0xff}); err == nil {
		t.Error("invalid UTF-8 was written as a JSON string")
	}
}

// TestJSONStringValues: a NULL payload is JSON null, as JsonConverter
// writes Debezium's optional payload (a tombstone only with the router's
// route.tombstone.on.empty.payload); an empty one the empty string; a
// payload that is not UTF-8 is a bad row; a dead letter stays raw.
func TestJSONStringValues(t *testing.T) {
	f := format{jsonKey: true, jsonValue: true}
	ev := debeziumRow(t)
	ev.Payload = nil
	if r, err := record(ev, "t", f); err != nil || string(r.Value) != "null" {
		t.Errorf("NULL payload: value %q, %v; want null", r.Value, err)
	}
	ev.Payload = []byte{}
	if r, err := record(ev, "t", f); err != nil || string(r.Value) != `""` {
		t.Errorf("empty payload: value %q, %v; want \"\"", r.Value, err)
	}
	ev.Payload = []byte{0xde, 0xad, 0xbe, 0xef}
	_, err := record(ev, "t", f)
	if _, bad := relay.AsBadRow(err); !bad || !strings.Contains(err.Error(), "RELAY_KAFKA_VALUE_FORMAT") {
		t.Errorf("binary payload: %v; want a bad row naming RELAY_KAFKA_VALUE_FORMAT", err)
	}
	ev.AggregateID = "\xff"
	ev.Payload = []byte("{}")
	_, err = record(ev, "t", f)
	if _, bad := relay.AsBadRow(err); !bad || !strings.Contains(err.Error(), "RELAY_KAFKA_KEY_FORMAT") {
		t.Errorf("binary aggregate id: %v; want a bad row naming RELAY_KAFKA_KEY_FORMAT", err)
	}

	dead := debeziumRow(t)
	dead.DeadLetter = "json-string: not UTF-8"
	r, err := record(dead, "dlq", f)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Key, []byte(dead.AggregateID)) || !bytes.Equal(r.Value, dead.Payload) {
		t.Errorf("dead letter key %q value %q: want the raw column bytes", r.Key, r.Value)
	}
}

// TestNewRefusesAJSONStringValueWithCloudEvents: the CloudEvents formats
// carry the payload (binary mode) or are the value (structured), which a
// JSON string would turn into a different value.
func TestNewRefusesAJSONStringValueWithCloudEvents(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  Config
	}{
		{"cloudevents", Config{Format: relay.FormatCloudEvents, CloudEventsSource: "/o", ValueFormat: EncodingJSONString}},
		{"cloudevents-structured", Config{Format: relay.FormatCloudEventsStructured, CloudEventsSource: "/o", ValueFormat: EncodingJSONString}},
		{"unknown key format", Config{KeyFormat: "json"}},
		{"unknown value format", Config{ValueFormat: "string"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Brokers, tt.cfg.Topic = []string{"127.0.0.1:1"}, tmpl(t, DefaultTopic)
			// Refused before connecting: no broker listens there, and a
			// sink that tried would wait for one until the deadline.
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			defer cancel()
			if s, err := New(ctx, tt.cfg); err == nil {
				s.Close(t.Context())
				t.Fatal("New accepted it")
			}
		})
	}
}
