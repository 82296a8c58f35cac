package rabbitmqstream

import (
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"

	"github.com/relay-dev/relay/relay"
)

type relayEvent = relay.Event

// MessageAs builds the message the sink sends for ev under publishing id
// id, as a relay that numbered ev id would send it.
func (s *Sink) MessageAs(ev *relayEvent, id int64) (*amqp.AMQP10, error) {
	msg, err := s.message(ev)
	if err != nil {
		return nil, err
	}
	msg.ApplicationProperties[propPublishingID] = id
	msg.SetPublishingId(id)
	return msg, nil
}
