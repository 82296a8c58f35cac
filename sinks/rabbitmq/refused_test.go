//go:build linux

package rabbitmq_test

import (
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// TestAMessageTheBrokerRefusesIsABadRow: a message RabbitMQ refuses for
// what it is, in a way no check of the sink foresaw (here a CC header of
// the wrong type, sent past the checks), closes the channel. The sink does
// not republish it into the same refusal forever: it finds that message by
// republishing the unconfirmed ones one at a time, fails it as a bad row,
// and every other event is confirmed.
func TestAMessageTheBrokerRefusesIsABadRow(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	logs := &logRecords{}
	s := newSink(t, ctx, exchange, 16, logs)
	b := dialBroker(t)
	queue := b.queue(exchange)

	before, after := events("before", 10, 3), events("after", 10, 3)
	bad := events("bad", 1, 1)[0]
	rec := newRecorder()
	rec.track(before...)
	rec.track(bad)
	rec.track(after...)
	publishAll(t, ctx, s, before)
	msg := amqp.Publishing{MessageId: bad.ID, DeliveryMode: amqp.Persistent, Body: []byte("{}"), Headers: amqp.Table{"CC": "audit"}}
	if err := rabbitmq.SendRaw(ctx, s, bad, exchange, "order.created", msg); err != nil {
		t.Fatalf("SendRaw: %v", err)
	}
	publishAll(t, ctx, s, after)
	rec.waitDone(t, ctx, len(before)+1+len(after))

	rec.checkOnce(t, append(append(before[:len(before):len(before)], bad), after...), bad.ID)
	rec.mu.Lock()
	err := rec.errs[bad.ID]
	rec.mu.Unlock()
	if re, ok := relay.AsBadRow(err); !ok || re.ID != bad.ID || !strings.Contains(err.Error(), "CC") {
		t.Fatalf("the refused message's Done(%v), want a bad row naming it and the broker's reason", err)
	}
	got := b.drain(ctx, queue, len(before)+len(after))
	ids := map[string]bool{}
	for _, d := range got {
		ids[d.MessageId] = true
	}
	for _, ev := range append(before[:len(before):len(before)], after...) {
		if !ids[ev.ID] {
			t.Errorf("event %s is not in the queue", ev.ID)
		}
	}
	if ids[bad.ID] {
		t.Errorf("the refused message %s is in the queue", bad.ID)
	}
	if n := logs.count("RabbitMQ channel closed"); n > 2 {
		t.Errorf("the channel closed %d times: a loop, not a verdict", n)
	}
}
