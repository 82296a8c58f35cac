package kafka

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/relay"
)

// cloudEventsPrefix names the CloudEvents attributes among the record
// headers in binary mode, as the Kafka protocol binding says; the binding's
// content type header is contentTypeHeader.
const (
	cloudEventsPrefix = "ce_"
	contentTypeHeader = "content-type"
)

// Encodings of the record key and value (Config.KeyFormat,
// Config.ValueFormat).
const (
	// EncodingRaw is the column's bytes, unchanged.
	EncodingRaw = "raw"
	// EncodingJSONString is the column's text as one JSON string, byte for
	// byte as Kafka Connect's JsonConverter with schemas.enable=false
	// writes a string: what a Debezium outbox topic written through that
	// converter holds (docs/migrating-from-debezium.md).
	EncodingJSONString = "json-string"
)

// Encodings lists the values Config.KeyFormat and Config.ValueFormat accept.
var Encodings = []string{EncodingRaw, EncodingJSONString}

// format is how the sink shapes records (Config.Format, Config.KeyFormat,
// Config.ValueFormat).
type format struct {
	mode   relay.Format
	source string
	// jsonKey and jsonValue encode the key and the raw format's value as
	// JSON strings (EncodingJSONString).
	jsonKey, jsonValue bool
	// guard leaves out headers-column keys that would forge the record's
	// own headers (own); nil in tests that build records alone.
	guard *relay.HeaderGuard
}

// own reports whether key names a header the sink sets itself in this
// format, besides the x-relay- ones: the dedup key, the event and
// aggregate type, and in the CloudEvents formats the ce_ attributes and
// the content type.
func (f format) own(key string) bool {
	switch key {
	case "id", "event_type", "aggregate_type":
		return true
	}
	switch f.mode {
	case relay.FormatCloudEvents:
		return key == contentTypeHeader || strings.HasPrefix(key, cloudEventsPrefix)
	case relay.FormatCloudEventsStructured:
		return key == contentTypeHeader
	}
	return false
}

// checkTopic refuses a name a Kafka cluster would refuse to create or
// produce to (kfake accepts any): a row that renders one is a bad row,
// not a producer error that retrying repeats. It runs for every record,
// so it loops over bytes rather than run a regular expression.
func checkTopic(topic string) error {
	ok := len(topic) >= 1 && len(topic) <= 249 && topic != "." && topic != ".."
	for i := 0; ok && i < len(topic); i++ {
		switch c := topic[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			ok = false
		}
	}
	if !ok {
		return fmt.Errorf("%q is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')", topic)
	}
	return nil
}

// routeTopic checks a topic a row named (Event.Route): a name Kafka would
// refuse fails the row rather than the producer.
func routeTopic(ev *relay.Event, topic string) (string, error) {
	if err := checkTopic(topic); err != nil {
		return "", relay.BadRow(ev, fmt.Errorf("destination %w", err))
	}
	return topic, nil
}

// apply returns the headers the format adds and the record value: the
// payload, or the whole event in structured mode.
func (f format) apply(ev *relay.Event) (headers []kgo.RecordHeader, value []byte, err error) {
	switch f.mode {
	case relay.FormatCloudEvents:
		attrs, err := relay.CloudEventAttributes(ev, f.source)
		if err != nil {
			return nil, nil, relay.BadRow(ev, err)
		}
		headers = make([]kgo.RecordHeader, 0, len(attrs)+1)
		for _, a := range attrs {
			headers = append(headers, kgo.RecordHeader{Key: cloudEventsPrefix + a.Key, Value: []byte(a.Value)})
		}
		if ev.ContentType != "" {
			headers = append(headers, kgo.RecordHeader{Key: contentTypeHeader, Value: []byte(ev.ContentType)})
		}
		return headers, ev.Payload, nil
	case relay.FormatCloudEventsStructured:
		b, err := relay.StructuredCloudEvent(ev, f.source)
		if err != nil {
			return nil, nil, relay.BadRow(ev, err)
		}
		return []kgo.RecordHeader{{Key: contentTypeHeader, Value: []byte(relay.ContentTypeCloudEventsJSON)}}, b, nil
	}
	if f.jsonValue {
		if ev.Payload == nil {
			// Debezium's payload schema is optional, and JsonConverter
			// writes a null value of an optional schema as JSON null, not
			// as a tombstone (unless route.tombstone.on.empty.payload).
			return nil, []byte("null"), nil
		}
		v, err := appendJSONString(make([]byte, 0, len(ev.Payload)+len(ev.Payload)/8+2), ev.Payload)
		if err != nil {
			return nil, nil, relay.BadRow(ev, fmt.Errorf("payload: %w, which RELAY_KAFKA_VALUE_FORMAT=%s cannot write as a JSON string", err, EncodingJSONString))
		}
		return nil, v, nil
	}
	return nil, ev.Payload, nil
}

// errNotUTF8 is a value a JSON string cannot hold.
var errNotUTF8 = errors.New("not UTF-8 text")

// appendJSONString appends s as a JSON string, escaped as Jackson (the
// JSON library of Kafka Connect's JsonConverter) escapes it by default:
// the quote and backslash, \b \t \n \f \r by name, the other control
// characters as \u00XX in upper-case hex, and nothing else (not '/', not
// DEL, not U+2028, no non-ASCII character), so that the bytes equal
// JsonConverter's. Go's encoding/json escapes differently (<, >, &,
// U+2028, lower-case hex).
func appendJSONString(b, s []byte) ([]byte, error) {
	if !utf8.Valid(s) {
		return b, errNotUTF8
	}
	const hex = "0123456789ABCDEF"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\t':
			b = append(b, '\\', 't')
		case '\n':
			b = append(b, '\\', 'n')
		case '\f':
			b = append(b, '\\', 'f')
		case '\r':
			b = append(b, '\\', 'r')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"'), nil
}
