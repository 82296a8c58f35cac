//go:build linux

package rabbitmq_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/sinktest"
)

func TestConformance(t *testing.T) {
	ctx := testContext(t, time.Minute)
	// Above the default max_message_size of RabbitMQ 3.x (128 MiB) and 4.x
	// (16 MiB), for a foreign broker whose limit must not be changed.
	oversized := 128<<20 + 1
	if rabbit != nil {
		// Our own node gets a small limit, so the suite need not push
		// 128 MiB through the race detector. The broker reads it when a
		// channel opens, and every sink of the suite is opened after this.
		const limit = 4096
		old := rabbitctlEval(t, ctx, fmt.Sprintf(
			"V = application:get_env(rabbit, max_message_size), application:set_env(rabbit, max_message_size, %d), V.", limit))
		t.Cleanup(func() {
			restore := "application:unset_env(rabbit, max_message_size)."
			if v, ok := strings.CutPrefix(old, "{ok,"); ok {
				restore = fmt.Sprintf("application:set_env(rabbit, max_message_size, %s).", strings.TrimSuffix(v, "}"))
			}
			rabbitctlEval(t, context.Background(), restore)
		})
		oversized = 2 * limit
	}
	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) (relay.Sink, sinktest.Reader) {
			ctx := testContext(t, time.Minute)
			exchange := "relaytest.x." + suffix()
			// A window far below the suite's event counts, so Publish
			// also blocks on confirms.
			s := newSink(t, ctx, exchange, 64, nil)
			b := dialBroker(t)
			return s, &queueReader{b: b, queue: b.queue(exchange)}
		},
		OversizedPayload: oversized,
	})
}

// queueReader consumes a queue bound to the sink's exchange.
type queueReader struct {
	b          *broker
	queue      string
	deliveries <-chan amqp.Delivery
}

func (r *queueReader) Read(t *testing.T, n int, timeout time.Duration) []sinktest.Message {
	t.Helper()
	if r.deliveries == nil {
		if err := r.b.ch.Qos(1000, 0, false); err != nil {
			t.Fatalf("qos: %v", err)
		}
		d, err := r.b.ch.Consume(r.queue, "relaytest-"+suffix(), true, true, false, false, nil)
		if err != nil {
			t.Fatalf("consume %s: %v", r.queue, err)
		}
		r.deliveries = d
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var out []sinktest.Message
	for len(out) < n {
		select {
		case d, ok := <-r.deliveries:
			if !ok {
				t.Fatalf("consumer of %s closed after %d messages", r.queue, len(out))
			}
			headers := make(map[string]string, len(d.Headers))
			for k, v := range d.Headers {
				headers[k] = fmt.Sprint(v)
			}
			out = append(out, sinktest.Message{
				ID:      d.MessageId,
				Key:     headers["aggregate_id"],
				Body:    d.Body,
				Headers: headers,
			})
		case <-timer.C:
			return out
		}
	}
	return out
}
