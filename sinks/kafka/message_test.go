package kafka

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/relay"
)

// These tests pin down what a consumer reads: the exact header names of
// the CloudEvents Kafka binding and W3C trace context, against kfake.

const (
	traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tracestate  = "congo=t61rcWkgMzE"
)

func tracedEvent(o *outcome, id string) *relay.Event {
	ev := o.event(id, "order", "o-42", []byte(`{"n": 1}`))
	ev.EventType = "order.placed"
	ev.Headers = []relay.Header{{Key: "tenant", Value: "acme"}, {Key: "traceparent", Value: traceparent}, {Key: "tracestate", Value: tracestate}}
	return ev
}

func publishAll(t *testing.T, s *Sink, o *outcome, evs ...*relay.Event) {
	t.Helper()
	for _, ev := range evs {
		if err := s.Publish(t.Context(), ev); err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
	o.wait(t)
	for id, err := range o.errs {
		if err != nil {
			t.Fatalf("event %s: %v", id, err)
		}
	}
}

func headerList(r *kgo.Record) []string {
	var out []string
	for _, h := range r.Headers {
		out = append(out, h.Key+"="+string(h.Value))
	}
	return out
}

func TestCloudEventsBinaryModeHeaderNames(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1,
		Format: relay.FormatCloudEvents, CloudEventsSource: "/orders"})
	o := newOutcome(1)
	ev := tracedEvent(o, "ce-1")
	publishAll(t, s, o, ev)

	r := consume(t, brokers, "outbox.event.order", 1)[0]
	// Exactly these, in this order: the headers column, the binding's
	// attributes and content-type, the relay's own.
	want := []string{
		"tenant=acme", "traceparent=" + traceparent, "tracestate=" + tracestate,
		"ce_specversion=1.0", "ce_id=ce-1", "ce_source=/orders", "ce_type=order.placed", "ce_subject=o-42",
		"ce_time=2026-11-23T12:00:00.123Z", "ce_traceparent=" + traceparent, "ce_tracestate=" + tracestate,
		"content-type=application/json",
		"id=ce-1", "event_type=order.placed", "aggregate_type=order", "x-relay-lsn=0/16B3748",
	}
	if got := headerList(r); !slices.Equal(got, want) {
		t.Errorf("headers\n got %q\nwant %q", got, want)
	}
	if string(r.Value) != `{"n": 1}` || string(r.Key) != "o-42" {
		t.Errorf("key %q value %q: binary mode keeps both", r.Key, r.Value)
	}
}

func TestCloudEventsStructuredModeValue(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1,
		Format: relay.FormatCloudEventsStructured, CloudEventsSource: "/orders"})
	o := newOutcome(1)
	ev := tracedEvent(o, "ces-1")
	publishAll(t, s, o, ev)

	r := consume(t, brokers, "outbox.event.order", 1)[0]
	want := []string{
		"tenant=acme", "traceparent=" + traceparent, "tracestate=" + tracestate,
		"content-type=application/cloudevents+json",
		"id=ces-1", "event_type=order.placed", "aggregate_type=order", "x-relay-lsn=0/16B3748",
	}
	if got := headerList(r); !slices.Equal(got, want) {
		t.Errorf("headers\n got %q\nwant %q", got, want)
	}
	var body map[string]any
	if err := json.Unmarshal(r.Value, &body); err != nil {
		t.Fatalf("value is not JSON: %v", err)
	}
	wantBody := map[string]any{
		"specversion": "1.0", "id": "ces-1", "source": "/orders", "type": "order.placed", "subject": "o-42",
		"time": "2026-11-23T12:00:00.123Z", "datacontenttype": "application/json",
		"traceparent": traceparent, "tracestate": tracestate, "data": map[string]any{"n": float64(1)},
	}
	if !maps.EqualFunc(body, wantBody, func(a, b any) bool { return fmt.Sprint(a) == fmt.Sprint(b) }) {
		t.Errorf("value %v, want %v", body, wantBody)
	}
}

// recordCarrier reads trace context the way OpenTelemetry's Kafka carriers
// do (franz-go's kotel.RecordCarrier, the Java instrumentation's
// lastHeader): the last header with the key, as a string.
type recordCarrier struct{ r *kgo.Record }

func (c recordCarrier) Get(key string) string {
	v := ""
	for _, h := range c.r.Headers {
		if h.Key == key {
			v = string(h.Value)
		}
	}
	return v
}

func TestTraceContextReachesTheConsumersPropagator(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1})
	o := newOutcome(1)
	publishAll(t, s, o, tracedEvent(o, "traced-1"))

	r := consume(t, brokers, "outbox.event.order", 1)[0]
	// propagation.TraceContext reads exactly these two keys.
	c := recordCarrier{r}
	if got := c.Get("traceparent"); got != traceparent {
		t.Errorf("traceparent = %q, want %q", got, traceparent)
	}
	if got := c.Get("tracestate"); got != tracestate {
		t.Errorf("tracestate = %q, want %q", got, tracestate)
	}
}

func TestCloudEventsNeedASource(t *testing.T) {
	_, err := New(t.Context(), Config{Brokers: []string{"127.0.0.1:1"}, Topic: tmpl(t, DefaultTopic), Format: relay.FormatCloudEvents})
	if err == nil || !strings.Contains(err.Error(), "source") {
		t.Fatalf("New = %v, want an error about the CloudEvents source", err)
	}
}
