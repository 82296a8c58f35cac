package rabbitmq

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
)

// SendRaw publishes msg as ev's message, skipping every check Publish
// makes, so that a test can have the broker refuse a message in a way no
// check here foresees.
func SendRaw(ctx context.Context, s *Sink, ev *relay.Event, exchange, key string, msg amqp.Publishing) error {
	return s.send(ctx, &pending{ev: ev, exchange: exchange, key: key, msg: msg})
}
