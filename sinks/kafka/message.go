package kafka

import (
	"fmt"
	"regexp"

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

// format is how the sink shapes records (Config.Format).
type format struct {
	mode   relay.Format
	source string
}

// topicNameRE is what Kafka accepts as a topic name.
var topicNameRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// routeTopic checks a topic a row named (Event.Route): a name Kafka would
// refuse fails the row rather than the producer.
func routeTopic(ev *relay.Event, topic string) (string, error) {
	if !topicNameRE.MatchString(topic) || topic == "." || topic == ".." {
		return "", relay.BadRow(ev, fmt.Errorf("destination %q is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')", topic))
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
	return nil, ev.Payload, nil
}
