// Package inboxamqp reads the dedup key of a RabbitMQ delivery for package
// inbox: the message_id property, which the relay sets to the outbox id.
package inboxamqp

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/inbox"
)

// MessageID returns d's message_id. A delivery without one yields an error
// matching inbox.ErrNoMessageID: do not process it (reject it, to a
// dead-letter exchange if one is set up), since its redeliveries could not
// be recognized.
func MessageID(d amqp.Delivery) (string, error) {
	if d.MessageId == "" {
		return "", fmt.Errorf("inboxamqp: delivery %d (routing key %q) has no message_id: %w", d.DeliveryTag, d.RoutingKey, inbox.ErrNoMessageID)
	}
	return d.MessageId, nil
}
