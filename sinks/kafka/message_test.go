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
// the CloudEvents Kafka binding, W3C trace context, and routing by a row's
// destination, against kfake.

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
	ev.Index = 3
	publishAll(t, s, o, ev)

	r := consume(t, brokers, "outbox.event.order", 1)[0]
	// Exactly these, in this order: the headers column, the binding's
	// attributes and content-type, the relay's own.
	want := []string{
		"tenant=acme", "traceparent=" + traceparent, "tracestate=" + tracestate,
		"ce_specversion=1.0", "ce_id=ce-1", "ce_source=/orders", "ce_type=order.placed", "ce_subject=o-42",
		"ce_time=2026-11-23T12:00:00.123Z", "ce_traceparent=" + traceparent, "ce_tracestate=" + tracestate,
		"ce_relaylsn=0/16B3748", "ce_relayindex=3",
		"content-type=application/json",
		"id=ce-1", "event_type=order.placed", "aggregate_type=order", "x-relay-lsn=0/16B3748", "x-relay-index=3",
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
	ev.Index = 3
	publishAll(t, s, o, ev)

	r := consume(t, brokers, "outbox.event.order", 1)[0]
	want := []string{
		"tenant=acme", "traceparent=" + traceparent, "tracestate=" + tracestate,
		"content-type=application/cloudevents+json",
		"id=ces-1", "event_type=order.placed", "aggregate_type=order", "x-relay-lsn=0/16B3748", "x-relay-index=3",
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
		"relaylsn": "0/16B3748", "relayindex": float64(3),
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

func TestDestinationNamesTheTopic(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1})
	o := newOutcome(3)
	column := o.event("to-1", "order", "o-1", []byte(`{}`))
	column.To = "billing.commands"
	viaHeader := o.event("to-2", "order", "o-2", []byte(`{}`))
	viaHeader.Headers = []relay.Header{
		{Key: "correlation_id", Value: "corr-7"}, {Key: "destination", Value: "billing.commands"},
		{Key: "expiration", Value: "60000"}, {Key: "priority", Value: "5"}, {Key: "reply_to", Value: "orders.replies"},
	}
	templated := o.event("to-3", "order", "o-3", []byte(`{}`))
	publishAll(t, s, o, column, viaHeader, templated)

	recs := consume(t, brokers, "billing.commands", 2)
	var ids []string
	for _, r := range recs {
		ids = append(ids, string(r.Key))
	}
	if !slices.Equal(ids, []string{"o-1", "o-2"}) {
		t.Fatalf("billing.commands holds %v, want o-1, o-2", ids)
	}
	// The well-known keys stay headers under their own names; the
	// destination is not a header.
	got := strings.Join(headerList(recs[1]), " ")
	for _, want := range []string{"correlation_id=corr-7", "reply_to=orders.replies", "expiration=60000", "priority=5"} {
		if !strings.Contains(got, want) {
			t.Errorf("headers %s lack %s", got, want)
		}
	}
	if _, n := header(recs[1], "destination"); n != 0 {
		t.Errorf("the destination is a header: %s", got)
	}
	if r := consume(t, brokers, "outbox.event.order", 1)[0]; string(r.Key) != "o-3" {
		t.Errorf("templated topic holds %q, want o-3", r.Key)
	}
}

func TestDestinationThatIsNoTopicNameIsABadRow(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1})
	o := newOutcome(1)
	for _, dest := range []string{"/queue", "a b", "..", strings.Repeat("t", 250)} {
		ev := o.event("bad-"+dest[:1], "order", "o", nil)
		ev.To = dest
		err := s.Publish(t.Context(), ev)
		if _, ok := relay.AsBadRow(err); !ok {
			t.Errorf("destination %.20q: Publish = %v, want a bad row", dest, err)
		}
	}
}

func TestCloudEventsNeedASource(t *testing.T) {
	_, err := New(t.Context(), Config{Brokers: []string{"127.0.0.1:1"}, Topic: tmpl(t, DefaultTopic), Format: relay.FormatCloudEvents})
	if err == nil || !strings.Contains(err.Error(), "source") {
		t.Fatalf("New = %v, want an error about the CloudEvents source", err)
	}
}
