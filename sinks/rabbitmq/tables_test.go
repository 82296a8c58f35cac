//go:build linux

package rabbitmq_test

import (
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// TestEachTableHasItsOwnExchangeAndRoutingKey: events of a table with
// settings of its own go to its exchange, which the sink declares, with
// its routing key; a destination without an exchange stays on the table's
// exchange; other tables keep the global ones.
func TestEachTableHasItsOwnExchangeAndRoutingKey(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	billingExchange := "relaytest.billing." + suffix()
	key, err := relay.ParseTemplate("billing.{event_type}")
	if err != nil {
		t.Fatal(err)
	}
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{
		Exchanges:   map[string]string{"billing.outbox": billingExchange},
		RoutingKeys: map[string]*relay.Template{"billing.outbox": key},
	})
	b := dialBroker(t)
	// Bound only now: the sink declared both exchanges.
	global, billing := b.queue(exchange), b.queue(billingExchange)

	evs := events("tbl", 8, 2)
	for _, ev := range evs[4:] {
		ev.Table = "billing.outbox"
	}
	evs[7].Headers = append(evs[7].Headers, relay.Header{Key: "destination", Value: "billing.command"})
	publishConfirmed(t, ctx, s, evs...)

	for _, d := range b.drain(ctx, global, 4) {
		if d.Exchange != exchange || d.RoutingKey != "order."+d.Type {
			t.Errorf("public.outbox event %s: exchange %q routing key %q", d.MessageId, d.Exchange, d.RoutingKey)
		}
	}
	got := b.drain(ctx, billing, 4)
	for i, d := range got {
		want := "billing." + d.Type
		if i == 3 {
			want = "billing.command"
		}
		if d.MessageId != evs[4+i].ID || d.Exchange != billingExchange || d.RoutingKey != want {
			t.Errorf("billing event %d: %s exchange %q routing key %q, want %s %q %q", i, d.MessageId, d.Exchange, d.RoutingKey, evs[4+i].ID, billingExchange, want)
		}
	}
}
