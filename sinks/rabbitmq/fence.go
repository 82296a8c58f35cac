package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
)

// The fence keeps a dead publisher of the same stream from writing into the
// replay of its successor: RabbitMQ still routes what a dead relay left in
// its socket and channel process. The fence is an exclusive consumer, on the
// publishing channel itself, of a queue named after the stream: RabbitMQ
// removes it only once that channel's process has ended, after routing what
// it read. An exclusive queue would go with the connection, too early
// (docs/design.md).
const (
	// fenceRetry is how often a channel tries a fence that is held, after
	// a first quick retry: after a recovery on the same connection the
	// broker releases the old channel's hold within milliseconds.
	fenceRetry = 100 * time.Millisecond
	// fenceExpires removes a fence queue unused for a day, e.g. after its
	// stream was retired while the broker was down (auto-delete removes
	// it otherwise, once its consumer is gone).
	fenceExpires = 24 * time.Hour
	// fenceLogEvery repeats the wait's log line while it lasts.
	fenceLogEvery = 30 * time.Second
)

// FenceQueue is the name of the fence queue of a stream, identified by the
// database cluster's system identifier, the database and the slot: relays
// of one stream (one slot) share it, relays of different streams never do,
// whatever their slot names.
func FenceQueue(slot, systemID, database string) string {
	return "relay.fence." + slot + "." + database + "." + systemID
}

// errFenceHeld is a fence held by another channel.
var errFenceHeld = errors.New("held by another channel")

// takeFence makes ch the holder of the fence, waiting while an earlier
// channel of the stream still holds it. It returns the channel that holds
// it: a failed attempt closes its channel, so a new one replaces ch.
func (s *Sink) takeFence(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel) (*amqp.Channel, error) {
	start := time.Now()
	var logged time.Time
	wait := fenceRetry / 10
	for {
		deliveries, err := consumeFence(ch, s.fence)
		if err == nil {
			// Nothing is published to the queue; draining guards the
			// connection against someone who does.
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				for range deliveries {
				}
			}()
			if !logged.IsZero() {
				s.log.Info("the previous publisher's channel is gone; publishing", "fence", s.fence, "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return ch, nil
		}
		if !errors.Is(err, errFenceHeld) {
			_ = ch.Close()
			return nil, err
		}
		// A hold that the quick retry outlasts is a previous relay's
		// channel, worth a line; a recovery's own old channel is not.
		if time.Since(start) >= fenceRetry && time.Since(logged) >= fenceLogEvery {
			s.log.Info("waiting for the previous publisher's channel to close: RabbitMQ may still route its last messages", "fence", s.fence, "waited", time.Since(start).Round(time.Millisecond).String())
			logged = time.Now()
		}
		if !relay.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
		wait = fenceRetry
		if ch, err = conn.Channel(); err != nil {
			return nil, fmt.Errorf("open channel: %w", err)
		}
	}
}

// consumeFence declares the fence queue and consumes it exclusively on ch.
func consumeFence(ch *amqp.Channel, queue string) (<-chan amqp.Delivery, error) {
	// Durable, as RabbitMQ 4 deprecates transient shared queues; classic,
	// as a quorum queue cannot auto-delete.
	_, err := ch.QueueDeclare(queue, true, true, false, false, amqp.Table{
		"x-queue-type": "classic",
		"x-expires":    fenceExpires.Milliseconds(),
	})
	if err == nil {
		var deliveries <-chan amqp.Delivery
		deliveries, err = ch.Consume(queue, "relay-fence", true, true, false, false, nil)
		if err == nil {
			return deliveries, nil
		}
	}
	var aerr *amqp.Error
	switch {
	case errors.As(err, &aerr) && aerr.Code == amqp.AccessRefused && strings.Contains(aerr.Reason, "exclusive"):
		return nil, errFenceHeld
	case errors.As(err, &aerr) && aerr.Code == amqp.NotFound:
		// Auto-deleted between the declare and the consume, as its
		// previous holder left: declare it again.
		return nil, errFenceHeld
	case errors.As(err, &aerr) && aerr.Code == amqp.AccessRefused:
		return nil, relay.Permanent(fmt.Errorf("fence queue %q: %w (the relay's user needs configure and read permission on queues named relay.fence.*)", queue, err))
	}
	return nil, fmt.Errorf("fence queue %q: %w", queue, err)
}
