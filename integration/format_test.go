package integration

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const testTraceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// TestCloudEventsCommandWithTraceContextReachesItsQueue runs the relay
// binary with RELAY_FORMAT=cloudevents on an outbox table with a
// destination column: the row goes straight to the queue it names, as a
// CloudEvent in the AMQP binding, with its trace context and request/reply
// properties.
func TestCloudEventsCommandWithTraceContextReachesItsQueue(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec("ALTER TABLE outbox ADD COLUMN destination text")
	e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents", "RELAY_CLOUDEVENTS_SOURCE": "/orders"}
	// Bound with a key nothing matches: the message can only arrive
	// through the default exchange, by the queue's name.
	commands := bindQueueAt(t, e.amqpURL, e.exchange, "commands_"+e.name, "never.matches")
	p := e.startRelay()
	defer p.stop(10 * time.Second)

	var id string
	err := e.db.QueryRow(t.Context(), `
		INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, destination, headers)
		VALUES ('order', '42', 'invoice.create', '{"order_id": 42}', $1, $2) RETURNING id::text`,
		"/commands_"+e.name, `{"traceparent": "`+testTraceparent+`", "reply_to": "orders.replies", "correlation_id": "42-invoice"}`).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	m := commands.waitDistinct(1, 30*time.Second)[0]
	want := map[string]string{
		"cloudEvents:specversion": "1.0",
		"cloudEvents:id":          id,
		"cloudEvents:source":      "/orders",
		"cloudEvents:type":        "invoice.create",
		"cloudEvents:subject":     "42",
		"cloudEvents:traceparent": testTraceparent,
		"traceparent":             testTraceparent,
	}
	for k, v := range want {
		if got, _ := m.Headers[k].(string); got != v {
			t.Errorf("header %s = %#v, want %q", k, m.Headers[k], v)
		}
	}
	if tm, _ := m.Headers["cloudEvents:time"].(string); !strings.HasSuffix(tm, "Z") {
		t.Errorf("cloudEvents:time = %q, want RFC 3339 in UTC", tm)
	}
	if m.Exchange != "" || m.RoutingKey != "commands_"+e.name || m.ReplyTo != "orders.replies" || m.CorrelationId != "42-invoice" {
		t.Errorf("exchange %q key %q reply_to %q correlation_id %q", m.Exchange, m.RoutingKey, m.ReplyTo, m.CorrelationId)
	}
	if m.ContentType != "application/json" || m.MessageId != id {
		t.Errorf("content type %q message id %q", m.ContentType, m.MessageId)
	}
}

// TestKafkaStructuredCloudEventToTheNamedTopic does the same for Kafka in
// the structured mode, with the destination in the headers column.
func TestKafkaStructuredCloudEventToTheNamedTopic(t *testing.T) {
	t.Parallel()
	e := newKafkaEnv(t)
	e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents-structured", "RELAY_CLOUDEVENTS_SOURCE": "urn:acme:orders"}
	topic := "commands." + e.name
	c := consumeKafkaAt(t, e.kafkaBrokers, "^"+strings.ReplaceAll(topic, ".", `\.`)+"$")
	p := e.startRelay()
	defer p.stop(10 * time.Second)

	var id string
	err := e.db.QueryRow(t.Context(), `
		INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('order', '42', 'invoice.create', '{"order_id": 42}', $1) RETURNING id::text`,
		`{"traceparent": "`+testTraceparent+`", "destination": "`+topic+`"}`).Scan(&id)
	if err != nil {
		t.Fatal(err)
	}
	r := c.waitDistinct(1, 30*time.Second)[0]
	if ct, _ := r.header("content-type"); ct != "application/cloudevents+json" {
		t.Errorf("content-type = %q", ct)
	}
	if tp, _ := r.header("traceparent"); tp != testTraceparent {
		t.Errorf("traceparent = %q", tp)
	}
	if _, ok := r.header("destination"); ok {
		t.Error("the destination is a header")
	}
	var ev struct {
		ID, Source, Type, Subject, Traceparent string
		Data                                   map[string]any
	}
	if err := json.Unmarshal(r.Value, &ev); err != nil {
		t.Fatalf("value is not JSON: %v: %s", err, r.Value)
	}
	if ev.ID != id || ev.Source != "urn:acme:orders" || ev.Type != "invoice.create" || ev.Subject != "42" ||
		ev.Traceparent != testTraceparent || ev.Data["order_id"] != float64(42) {
		t.Errorf("event %+v", ev)
	}
}
