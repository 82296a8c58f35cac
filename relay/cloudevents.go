package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Format is how an event becomes a message: its body and the headers the
// format adds. Routing, the relay's own headers and the headers column are
// the same in every format.
type Format int

const (
	// FormatRaw: the body is the payload, unchanged.
	FormatRaw Format = iota
	// FormatCloudEvents is the CloudEvents 1.0 binary content mode: the body
	// is the payload and the context attributes travel as headers, named by
	// each broker's protocol binding (ce_ for Kafka, cloudEvents: for AMQP).
	FormatCloudEvents
	// FormatCloudEventsStructured is the CloudEvents 1.0 structured content
	// mode with the JSON event format: the body is the whole event.
	FormatCloudEventsStructured
)

var formatNames = map[Format]string{
	FormatRaw:                   "raw",
	FormatCloudEvents:           "cloudevents",
	FormatCloudEventsStructured: "cloudevents-structured",
}

// ParseFormat reads a format by its name: raw, cloudevents or
// cloudevents-structured.
func ParseFormat(s string) (Format, error) {
	for f, name := range formatNames {
		if name == s {
			return f, nil
		}
	}
	return 0, fmt.Errorf("%q: want raw, cloudevents or cloudevents-structured", s)
}

func (f Format) String() string { return formatNames[f] }

// CloudEvents names fixed by the specification.
const (
	CloudEventsSpecVersion = "1.0"
	// ContentTypeCloudEventsJSON is the media type of the JSON event format,
	// the body's content type in structured mode.
	ContentTypeCloudEventsJSON = "application/cloudevents+json"
)

// The relay's CloudEvents extension attributes: the row's position, as
// HeaderLSN and HeaderIndex carry it (extension names are a-z and 0-9,
// at most 20 characters).
const (
	CloudEventsLSN   = "relaylsn"
	CloudEventsIndex = "relayindex"
)

// Keys of the headers column with a meaning beyond "copy me into a header".
const (
	// HeaderTraceparent and HeaderTracestate are W3C Trace Context, which
	// the CloudEvents formats also carry as the distributed tracing
	// extension's attributes of the same names.
	HeaderTraceparent = "traceparent"
	HeaderTracestate  = "tracestate"
	// HeaderDestination overrides the routing template (Event.Route).
	HeaderDestination = "destination"
)

// Header returns the value of the headers column's key.
func (e *Event) Header(key string) (string, bool) {
	for _, h := range e.Headers {
		if h.Key == key {
			return h.Value, true
		}
	}
	return "", false
}

// CloudEventAttributes returns ev's CloudEvents context attributes by their
// spec names, for the binary content mode: specversion, id, source, type,
// subject (the aggregate id), time (created_at, RFC 3339 in UTC), the
// distributed tracing extension (traceparent, tracestate) when the headers
// column has those keys, and the relay's extension: relaylsn and
// relayindex, the row's position, by which consumers group the events of
// one database transaction (HeaderLSN, HeaderIndex). datacontenttype is left out: both bindings carry
// it in the message's own content type. An event CloudEvents cannot
// express (an empty id or event type) is an error.
func CloudEventAttributes(ev *Event, source string) ([]Header, error) {
	if err := cloudEventValid(ev, source); err != nil {
		return nil, err
	}
	attrs := make([]Header, 0, 8)
	attrs = append(attrs,
		Header{Key: "specversion", Value: CloudEventsSpecVersion},
		Header{Key: "id", Value: ev.ID},
		Header{Key: "source", Value: source},
		Header{Key: "type", Value: ev.EventType},
	)
	// The spec requires a present subject to be non-empty.
	if ev.AggregateID != "" {
		attrs = append(attrs, Header{Key: "subject", Value: ev.AggregateID})
	}
	if !ev.CreatedAt.IsZero() {
		attrs = append(attrs, Header{Key: "time", Value: cloudEventTime(ev.CreatedAt)})
	}
	for _, k := range []string{HeaderTraceparent, HeaderTracestate} {
		if v, ok := ev.Header(k); ok && v != "" {
			attrs = append(attrs, Header{Key: k, Value: v})
		}
	}
	attrs = append(attrs,
		Header{Key: CloudEventsLSN, Value: ev.CommitLSN.String()},
		Header{Key: CloudEventsIndex, Value: strconv.Itoa(ev.Index)},
	)
	return attrs, nil
}

// StructuredCloudEvent renders ev in the CloudEvents JSON event format: the
// attributes of CloudEventAttributes, datacontenttype, and the payload as
// data when it is JSON, else base64-encoded as data_base64. A NULL payload
// leaves both out.
func StructuredCloudEvent(ev *Event, source string) ([]byte, error) {
	attrs, err := CloudEventAttributes(ev, source)
	if err != nil {
		return nil, err
	}
	// A struct keeps the attributes in a readable order; the extensions
	// are the only optional strings among them.
	var env struct {
		SpecVersion     string          `json:"specversion"`
		ID              string          `json:"id"`
		Source          string          `json:"source"`
		Type            string          `json:"type"`
		Subject         string          `json:"subject,omitempty"`
		Time            string          `json:"time,omitempty"`
		DataContentType string          `json:"datacontenttype,omitempty"`
		Traceparent     string          `json:"traceparent,omitempty"`
		Tracestate      string          `json:"tracestate,omitempty"`
		RelayLSN        string          `json:"relaylsn"`
		RelayIndex      int             `json:"relayindex"`
		Data            json.RawMessage `json:"data,omitempty"`
		DataBase64      []byte          `json:"data_base64,omitempty"`
	}
	for _, a := range attrs {
		switch a.Key {
		case "specversion":
			env.SpecVersion = a.Value
		case "id":
			env.ID = a.Value
		case "source":
			env.Source = a.Value
		case "type":
			env.Type = a.Value
		case "subject":
			env.Subject = a.Value
		case "time":
			env.Time = a.Value
		case HeaderTraceparent:
			env.Traceparent = a.Value
		case HeaderTracestate:
			env.Tracestate = a.Value
		case CloudEventsLSN:
			env.RelayLSN = a.Value
		}
	}
	env.RelayIndex = ev.Index // an Integer in the JSON format
	env.DataContentType = ev.ContentType
	switch {
	case len(ev.Payload) == 0:
	case ev.ContentType == ContentTypeJSON:
		env.Data = ev.Payload
	default:
		env.DataBase64 = ev.Payload
	}
	// Without HTML escaping, so that strings in the payload keep their
	// bytes (json.Marshal would turn < into \u003c).
	var buf bytes.Buffer
	buf.Grow(len(ev.Payload)*4/3 + 512)
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(&env); err != nil {
		return nil, fmt.Errorf("cloudevents: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func cloudEventValid(ev *Event, source string) error {
	switch {
	case source == "":
		// Configuration makes this unreachable; a sink built without it
		// must not publish events without their identity.
		return errors.New("cloudevents: no source configured")
	case ev.ID == "":
		return errors.New("cloudevents: the id is empty; the spec requires a non-empty id")
	case ev.EventType == "":
		return errors.New("cloudevents: the event type is empty; the spec requires a non-empty type")
	}
	return nil
}

// cloudEventTime is t in RFC 3339, UTC, with as many fractional digits as
// it has: created_at keeps microseconds, which consumers may order by.
func cloudEventTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}
