//go:build linux

package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// These tests pin down what a consumer reads: the exact header names of
// the CloudEvents AMQP binding and W3C trace context, against the real
// broker.

const (
	traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tracestate  = "congo=t61rcWkgMzE"
)

// sinkWith starts a sink on exchange with cfg's format and routing.
func sinkWith(t *testing.T, ctx context.Context, exchange string, cfg rabbitmq.Config) *rabbitmq.Sink {
	t.Helper()
	if cfg.RoutingKey == nil {
		tmpl, err := relay.ParseTemplate("{aggregate_type}.{event_type}")
		if err != nil {
			t.Fatal(err)
		}
		cfg.RoutingKey = tmpl
	}
	cfg.URL, cfg.Exchange = amqpURL, exchange
	s, err := rabbitmq.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(cctx)
	})
	return s
}

// tracedEvent is one event whose headers column holds W3C trace context
// and a custom key.
func tracedEvent(id string) *relay.Event {
	ev := events(id, 1, 1)[0]
	ev.ID = id
	ev.Headers = []relay.Header{{Key: "tenant", Value: "acme"}, {Key: "traceparent", Value: traceparent}, {Key: "tracestate", Value: tracestate}}
	ev.CreatedAt = time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.UTC)
	return ev
}

// publishConfirmed publishes evs and waits for every confirm.
func publishConfirmed(t *testing.T, ctx context.Context, s *rabbitmq.Sink, evs ...*relay.Event) {
	t.Helper()
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)
	rec.waitDone(t, ctx, len(evs))
	rec.checkOnce(t, evs)
}

// checkHeaders compares a delivery's headers with want exactly: names,
// string type, values.
func checkHeaders(t *testing.T, d amqp.Delivery, want map[string]string) {
	t.Helper()
	for k, v := range want {
		got, ok := d.Headers[k].(string)
		if !ok || got != v {
			t.Errorf("header %q = %#v, want string %q", k, d.Headers[k], v)
		}
	}
	for k := range d.Headers {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected header %q = %#v", k, d.Headers[k])
		}
	}
}

func TestCloudEventsBinaryModeHeaderNames(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{Format: relay.FormatCloudEvents, CloudEventsSource: "/orders"})
	b := dialBroker(t)
	queue := b.queue(exchange)
	ev := tracedEvent("ce-binary-1")
	publishConfirmed(t, ctx, s, ev)

	d := b.drain(ctx, queue, 1)[0]
	checkHeaders(t, d, map[string]string{
		"cloudEvents:specversion": "1.0",
		"cloudEvents:id":          "ce-binary-1",
		"cloudEvents:source":      "/orders",
		"cloudEvents:type":        ev.EventType,
		"cloudEvents:subject":     ev.AggregateID,
		"cloudEvents:time":        "2026-03-04T05:06:07.123456Z",
		"cloudEvents:traceparent": traceparent,
		"cloudEvents:tracestate":  tracestate,
		// The protocol's own trace headers stay, for OpenTelemetry.
		"traceparent": traceparent,
		"tracestate":  tracestate,
		"tenant":      "acme",
		// The relay's own headers, as in the raw format.
		"aggregate_type": ev.AggregateType,
		"aggregate_id":   ev.AggregateID,
		"x-relay-lsn":    ev.CommitLSN.String(),
	})
	// datacontenttype is the AMQP content-type property; the body is the
	// payload unchanged.
	if d.ContentType != relay.ContentTypeJSON || string(d.Body) != string(ev.Payload) || d.MessageId != ev.ID || d.Type != ev.EventType {
		t.Errorf("content type %q, body %q, message_id %q, type %q", d.ContentType, d.Body, d.MessageId, d.Type)
	}
}

func TestCloudEventsStructuredModeBody(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{Format: relay.FormatCloudEventsStructured, CloudEventsSource: "urn:acme:orders"})
	b := dialBroker(t)
	queue := b.queue(exchange)
	ev := tracedEvent("ce-structured-1")
	ev.Payload = []byte(`{"n": 1}`)
	bin := tracedEvent("ce-structured-2")
	bin.Payload, bin.ContentType = []byte{0xff, 0x00, 0x7f}, ""
	publishConfirmed(t, ctx, s, ev, bin)

	got := b.drain(ctx, queue, 2)
	for i, want := range []map[string]any{
		{
			"specversion": "1.0", "id": "ce-structured-1", "source": "urn:acme:orders", "type": ev.EventType,
			"subject": ev.AggregateID, "time": "2026-03-04T05:06:07.123456Z", "datacontenttype": "application/json",
			"traceparent": traceparent, "tracestate": tracestate, "data": map[string]any{"n": float64(1)},
		},
		{
			"specversion": "1.0", "id": "ce-structured-2", "source": "urn:acme:orders", "type": bin.EventType,
			"subject": bin.AggregateID, "time": "2026-03-04T05:06:07.123456Z",
			"traceparent": traceparent, "tracestate": tracestate, "data_base64": "/wB/",
		},
	} {
		d := got[i]
		if d.ContentType != "application/cloudevents+json" {
			t.Errorf("message %d: content type %q, want application/cloudevents+json", i, d.ContentType)
		}
		var body map[string]any
		if err := json.Unmarshal(d.Body, &body); err != nil {
			t.Fatalf("message %d: body is not JSON: %v", i, err)
		}
		if !maps.EqualFunc(body, want, func(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) {
			t.Errorf("message %d: body %v, want %v", i, body, want)
		}
		for k := range d.Headers {
			if strings.HasPrefix(k, "cloudEvents") {
				t.Errorf("message %d: structured mode has header %q", i, k)
			}
		}
	}
}

// amqpCarrier reads trace context the way OpenTelemetry carriers over
// amqp091-go header tables do (a TextMapCarrier whose Get type-asserts the
// value to string): a []byte or any other type would be invisible to it.
type amqpCarrier amqp.Table

func (c amqpCarrier) Get(key string) string {
	v, _ := c[key].(string)
	return v
}

func TestTraceContextReachesTheConsumersPropagator(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)
	queue := b.queue(exchange)
	publishConfirmed(t, ctx, s, tracedEvent("traced-1"))

	d := b.drain(ctx, queue, 1)[0]
	// propagation.TraceContext reads exactly these two keys.
	c := amqpCarrier(d.Headers)
	if got := c.Get("traceparent"); got != traceparent {
		t.Errorf("traceparent = %q, want %q", got, traceparent)
	}
	if got := c.Get("tracestate"); got != tracestate {
		t.Errorf("tracestate = %q, want %q", got, tracestate)
	}
}

func TestNewRefusesCloudEventsWithoutASource(t *testing.T) {
	ctx := testContext(t, 10*time.Second)
	tmpl, _ := relay.ParseTemplate("x")
	_, err := rabbitmq.New(ctx, rabbitmq.Config{URL: amqpURL, RoutingKey: tmpl, Format: relay.FormatCloudEvents})
	if err == nil || !strings.Contains(err.Error(), "source") {
		t.Fatalf("New = %v, want an error about the CloudEvents source", err)
	}
}
