package rabbitmq

import (
	"github.com/relay-dev/relay/relay"
)

// cloudEventsPrefix names the CloudEvents attributes among the headers in
// binary mode. The AMQP binding allows "cloudEvents:" and, since 1.0.3,
// "cloudEvents_" (preferred there for JMS selectors). RabbitMQ and
// amqp091-go carry either in a header table, whose keys are any shortstr;
// the colon is what every CloudEvents AMQP reader understands (the Go, Java
// and .NET SDKs, RabbitMQ's AMQP 1.0 plugin passing headers through as
// application-properties), while only some read the underscore.
const cloudEventsPrefix = "cloudEvents:"

// body is the message body and content type in the sink's format. A dead
// letter is the row as it was, whatever made it bad: the format must not
// fail it a second time.
func (s *Sink) body(ev *relay.Event) ([]byte, string, error) {
	if s.format != relay.FormatCloudEventsStructured || ev.DeadLetter != "" {
		return ev.Payload, ev.ContentType, nil
	}
	b, err := relay.StructuredCloudEvent(ev, s.ceSource)
	if err != nil {
		return nil, "", err
	}
	return b, relay.ContentTypeCloudEventsJSON, nil
}
