package rabbitmqstream

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"

	"github.com/relay-dev/relay/relay"
)

// Application properties the sink sets besides the AMQP sink's headers:
// an event's position and the publishing id it was stored under, which a
// restarted relay reads back from the stream's tail (tail.go).
const (
	propLSN          = relay.HeaderLSN
	propIndex        = relay.HeaderIndex
	propProducer     = "x-relay-producer"
	propPublishingID = "x-relay-publishing-id"
)

// cloudEventsPrefix names the CloudEvents attributes among the application
// properties in binary mode (the AMQP binding; docs/design.md).
const cloudEventsPrefix = "cloudEvents:"

// message builds the AMQP 1.0 message for ev, without its publishing id.
func (s *Sink) message(ev *relay.Event) (*amqp.AMQP10, error) {
	body, contentType := ev.Payload, ev.ContentType
	if s.format == relay.FormatCloudEventsStructured && ev.DeadLetter == "" {
		b, err := relay.StructuredCloudEvent(ev, s.ceSource)
		if err != nil {
			return nil, relay.BadRow(ev, err)
		}
		body, contentType = b, relay.ContentTypeCloudEventsJSON
	}
	msg := amqp.NewMessage(body)
	msg.Properties = &amqp.MessageProperties{
		MessageID:    ev.ID,
		Subject:      ev.EventType,
		ContentType:  contentType,
		CreationTime: ev.CreatedAt,
	}
	props := make(map[string]any, len(ev.Headers)+8)
	for _, h := range ev.Headers {
		if h.Key == relay.HeaderDestination && ev.DeadLetter == "" {
			continue // an instruction to the relay, carried out by routing
		}
		if s.guard.Drop(ev, h.Key) {
			continue
		}
		props[h.Key] = propertyValue(h)
	}
	if s.format == relay.FormatCloudEvents && ev.DeadLetter == "" {
		attrs, err := relay.CloudEventAttributes(ev, s.ceSource)
		if err != nil {
			return nil, relay.BadRow(ev, err)
		}
		for _, a := range attrs {
			props[cloudEventsPrefix+a.Key] = a.Value
		}
	}
	// The built-ins come last so a header column cannot forge them.
	props["aggregate_type"] = ev.AggregateType
	props["aggregate_id"] = ev.AggregateID
	// The subject again: RabbitMQ (3.10) drops subject when it hands a
	// stream message to an AMQP 0-9-1 consumer.
	props["event_type"] = ev.EventType
	var own [6]relay.Header
	for _, h := range relay.OwnHeaders(own[:0], ev) {
		props[h.Key] = propertyValue(h) // the index is a long
	}
	props[propProducer] = s.producer
	msg.ApplicationProperties = props
	return msg, nil
}

// propertyValue is h's value as an application property. AMQP 1.0 allows
// only simple types there, so a JSON scalar is typed (a long, a double, a
// boolean, null) and an array or object travels as its JSON text.
func propertyValue(h relay.Header) any {
	if !h.JSON {
		return h.Value
	}
	switch h.Value {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if strings.HasPrefix(h.Value, "[") || strings.HasPrefix(h.Value, "{") {
		return h.Value
	}
	if i, err := strconv.ParseInt(h.Value, 10, 64); err == nil {
		return i
	}
	var f float64
	if err := json.Unmarshal([]byte(h.Value), &f); err == nil {
		return f
	}
	return h.Value
}

// ownProperty reports whether key names a property the sink sets itself,
// besides the x-relay- ones: a headers-column key of that name would forge
// it.
func (s *Sink) ownProperty(key string) bool {
	switch key {
	case "aggregate_type", "aggregate_id", "event_type":
		return true
	}
	return s.format == relay.FormatCloudEvents && (strings.HasPrefix(key, cloudEventsPrefix) || strings.HasPrefix(key, "cloudEvents_"))
}

// position is an event's place in the replication stream.
type position struct {
	lsn   relay.LSN
	index int
}

func positionOf(ev *relay.Event) position { return position{ev.CommitLSN, ev.Index} }

func (p position) after(q position) bool {
	return p.lsn > q.lsn || p.lsn == q.lsn && p.index > q.index
}

// positionOfMessage reads the position and publishing id a message of
// producer carries; ok is false for another producer's message.
func positionOfMessage(m *amqp.Message, producer string) (pos position, id int64, ok bool) {
	props := m.ApplicationProperties
	if props == nil || props[propProducer] != producer {
		return position{}, 0, false
	}
	lsnText, _ := props[propLSN].(string)
	lsn, err := relay.ParseLSN(lsnText)
	if err != nil {
		return position{}, 0, false
	}
	index, ok1 := asInt64(props[propIndex])
	id, ok2 := asInt64(props[propPublishingID])
	if !ok1 || !ok2 {
		return position{}, 0, false
	}
	return position{lsn, int(index)}, id, true
}

func asInt64(v any) (int64, bool) {
	switch v := v.(type) {
	case int64:
		return v, true
	case int32:
		return int64(v), true
	case int:
		return int64(v), true
	case uint64:
		return int64(v), true
	case uint32:
		return int64(v), true
	}
	return 0, false
}

// encoded is a message as the sink sends it: encoded once, with its
// publishing id, and sent as it is on every retry.
type encoded struct {
	b  []byte
	id int64
}

func (e *encoded) MarshalBinary() ([]byte, error)                { return e.b, nil }
func (e *encoded) UnmarshalBinary([]byte) error                  { return errors.New("encoded message: read-only") }
func (e *encoded) SetPublishingId(id int64)                      { e.id = id }
func (e *encoded) GetPublishingId() int64                        { return e.id }
func (e *encoded) HasPublishingId() bool                         { return true }
func (e *encoded) GetData() [][]byte                             { return nil }
func (e *encoded) GetMessageProperties() *amqp.MessageProperties { return nil }
func (e *encoded) GetMessageAnnotations() amqp.Annotations       { return nil }
func (e *encoded) GetApplicationProperties() map[string]any      { return nil }
func (e *encoded) GetMessageHeader() *amqp.MessageHeader         { return nil }
func (e *encoded) GetAMQPValue() any                             { return nil }
