package kafka

import (
	"testing"

	"github.com/relay-dev/relay/relay"
)

// TestEachTableHasItsOwnTopic: events of a table with a topic template of
// its own go where it says; a row's destination still wins; other tables
// keep the global template.
func TestEachTableHasItsOwnTopic(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1,
		Topics: map[string]*relay.Template{"billing.outbox": tmpl(t, "billing.{aggregate_type}")}})
	o := newOutcome(3)
	global := o.event("t-1", "order", "o-1", []byte(`{}`))
	billing := o.event("t-2", "invoice", "i-1", []byte(`{}`))
	billing.Table = "billing.outbox"
	command := o.event("t-3", "invoice", "i-2", []byte(`{}`))
	command.Table, command.To = "billing.outbox", "billing.commands"
	publishAll(t, s, o, global, billing, command)

	for topic, key := range map[string]string{"outbox.event.order": "o-1", "billing.invoice": "i-1", "billing.commands": "i-2"} {
		if r := consume(t, brokers, topic, 1)[0]; string(r.Key) != key {
			t.Errorf("topic %s holds %q, want %q", topic, r.Key, key)
		}
	}
	if global.Destination != "outbox.event.order" || billing.Destination != "billing.invoice" {
		t.Errorf("destinations %q and %q", global.Destination, billing.Destination)
	}
}
