package kafka

import (
	"fmt"
	"regexp"
	"strings"

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

// topicNameRE is what Kafka accepts as a topic name.
var topicNameRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// checkTopic refuses a name a Kafka cluster would refuse to create or
// produce to (kfake accepts any): a row that renders one is a bad row,
// not a producer error that retrying repeats.
func checkTopic(topic string) error {
	if !topicNameRE.MatchString(topic) || topic == "." || topic == ".." {
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
	return nil, ev.Payload, nil
}
