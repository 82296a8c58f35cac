//go:build linux

package rabbitmq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// These tests pin down what a consumer reads: the exact header and
// property names of the CloudEvents AMQP binding, W3C trace context, and the
// outbox's commands and request/reply, against the real broker.

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
// string type, values; and x-relay-index, a long, with index.
func checkHeaders(t *testing.T, d amqp.Delivery, want map[string]string, index int) {
	t.Helper()
	for k, v := range want {
		got, ok := d.Headers[k].(string)
		if !ok || got != v {
			t.Errorf("header %q = %#v, want string %q", k, d.Headers[k], v)
		}
	}
	if got, ok := d.Headers[relay.HeaderIndex].(int64); !ok || got != int64(index) {
		t.Errorf("header %s = %#v, want int64 %d", relay.HeaderIndex, d.Headers[relay.HeaderIndex], index)
	}
	for k := range d.Headers {
		if _, ok := want[k]; !ok && k != relay.HeaderIndex {
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
	ev.Index = 3
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
		"cloudEvents:relaylsn":    ev.CommitLSN.String(),
		"cloudEvents:relayindex":  "3",
		// The protocol's own trace headers stay, for OpenTelemetry.
		"traceparent": traceparent,
		"tracestate":  tracestate,
		"tenant":      "acme",
		// The relay's own headers, as in the raw format.
		"aggregate_type": ev.AggregateType,
		"aggregate_id":   ev.AggregateID,
		"x-relay-lsn":    ev.CommitLSN.String(),
	}, 3)
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
			"relaylsn": ev.CommitLSN.String(), "relayindex": float64(ev.Index),
		},
		{
			"specversion": "1.0", "id": "ce-structured-2", "source": "urn:acme:orders", "type": bin.EventType,
			"subject": bin.AggregateID, "time": "2026-03-04T05:06:07.123456Z",
			"traceparent": traceparent, "tracestate": tracestate, "data_base64": "/wB/",
			"relaylsn": bin.CommitLSN.String(), "relayindex": float64(bin.Index),
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

// commandEvents are n events whose destination column names queue through
// the default exchange.
func commandEvents(prefix, dest string, n int) []*relay.Event {
	evs := events(prefix, n, 3)
	for _, ev := range evs {
		ev.To = dest
	}
	return evs
}

// declareQueue declares a durable queue with args, deleted at the end.
func (b *broker) declareQueue(args amqp.Table) string {
	b.t.Helper()
	name := "relaytest.q." + suffix()
	if _, err := b.ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		b.t.Fatalf("declare queue: %v", err)
	}
	b.t.Cleanup(func() {
		if c, err := amqp.Dial(amqpURL); err == nil {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(name, false, false, false)
			}
			c.Close()
		}
	})
	return name
}

func (b *broker) depth(queue string) int {
	b.t.Helper()
	q, err := b.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		b.t.Fatalf("inspect queue: %v", err)
	}
	return q.Messages
}

func TestCommandGoesToOneQueueAndEachCompetingConsumerGetsItOnce(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)
	events := b.queue(exchange) // bound with # to the events exchange
	commands := b.declareQueue(nil)

	// Two consumers compete on the command queue, one message at a time
	// each, acknowledging as they go.
	const n = 200
	var mu sync.Mutex
	byConsumer := map[string][]string{}
	var wg sync.WaitGroup
	for _, name := range []string{"worker-a", "worker-b"} {
		conn, err := amqp.Dial(amqpURL)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Qos(1, 0, false); err != nil {
			t.Fatal(err)
		}
		deliveries, err := ch.Consume(commands, name, false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range deliveries {
				mu.Lock()
				byConsumer[name] = append(byConsumer[name], d.MessageId)
				mu.Unlock()
				_ = d.Ack(false)
			}
		}()
		defer func() { _ = ch.Cancel(name, false) }()
	}

	evs := commandEvents("cmd", "/"+commands, n)
	publishConfirmed(t, ctx, s, evs...)
	waitFor(t, ctx, "every command consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(byConsumer["worker-a"])+len(byConsumer["worker-b"]) >= n
	})

	mu.Lock()
	all := append(slices.Clone(byConsumer["worker-a"]), byConsumer["worker-b"]...)
	na, nb := len(byConsumer["worker-a"]), len(byConsumer["worker-b"])
	mu.Unlock()
	slices.Sort(all)
	var want []string
	for _, ev := range evs {
		want = append(want, ev.ID)
	}
	slices.Sort(want)
	if !slices.Equal(all, want) {
		t.Fatalf("consumers got %d messages (%d distinct), want each of %d exactly once", len(all), len(slices.Compact(slices.Clone(all))), n)
	}
	if na == 0 || nb == 0 {
		t.Errorf("worker-a got %d, worker-b %d: the queue's consumers did not compete", na, nb)
	}
	// The destination replaced the routing template: nothing reached the
	// events exchange.
	if got := b.depth(events); got != 0 {
		t.Errorf("the events exchange's queue holds %d messages, want 0", got)
	}
}

func TestEventFansOutToEveryQueueOfTheNamedExchange(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)
	fanout := "relaytest.fanout." + suffix()
	if err := b.ch.ExchangeDeclare(fanout, amqp.ExchangeFanout, false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	var queues []string
	for range 3 {
		q := b.declareQueue(nil)
		if err := b.ch.QueueBind(q, "", fanout, false, nil); err != nil {
			t.Fatal(err)
		}
		queues = append(queues, q)
	}

	// The headers column names the destination this time: exchange/key.
	evs := events("fan", 20, 4)
	for _, ev := range evs {
		ev.Headers = append(ev.Headers, relay.Header{Key: "destination", Value: fanout + "/ignored.by.fanout"})
	}
	publishConfirmed(t, ctx, s, evs...)
	for _, q := range queues {
		got := b.drain(ctx, q, len(evs))
		var ids []string
		for _, d := range got {
			ids = append(ids, d.MessageId)
			if d.Exchange != fanout || d.RoutingKey != "ignored.by.fanout" {
				t.Errorf("queue %s: message %s from exchange %q key %q", q, d.MessageId, d.Exchange, d.RoutingKey)
			}
			if _, ok := d.Headers["destination"]; ok {
				t.Errorf("queue %s: message %s carries the destination header", q, d.MessageId)
			}
		}
		var want []string
		for _, ev := range evs {
			want = append(want, ev.ID)
		}
		if !slices.Equal(ids, want) {
			t.Errorf("queue %s holds %v, want %v", q, ids, want)
		}
	}
}

func TestRequestReplyThroughTheOutbox(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)
	requests := b.declareQueue(nil)
	replies := b.declareQueue(nil)

	// The requesting service writes its command to the outbox with
	// reply_to and correlation_id in the headers column.
	ev := commandEvents("req", "/"+requests, 1)[0]
	ev.Headers = []relay.Header{{Key: "correlation_id", Value: "corr-7"}, {Key: "reply_to", Value: replies}, {Key: "tenant", Value: "acme"}}
	publishConfirmed(t, ctx, s, ev)

	// The responder sees them as AMQP properties, not headers, and answers
	// the way any AMQP RPC server does.
	d := b.drain(ctx, requests, 1)[0]
	if d.ReplyTo != replies || d.CorrelationId != "corr-7" {
		t.Fatalf("reply_to %q correlation_id %q, want %q %q", d.ReplyTo, d.CorrelationId, replies, "corr-7")
	}
	for _, k := range []string{"reply_to", "correlation_id"} {
		if _, ok := d.Headers[k]; ok {
			t.Errorf("header %s is still a header", k)
		}
	}
	if err := b.ch.PublishWithContext(ctx, "", d.ReplyTo, true, false, amqp.Publishing{CorrelationId: d.CorrelationId, Body: []byte("done")}); err != nil {
		t.Fatal(err)
	}
	reply := b.drain(ctx, replies, 1)[0]
	if reply.CorrelationId != "corr-7" || string(reply.Body) != "done" {
		t.Errorf("reply correlation_id %q body %q", reply.CorrelationId, reply.Body)
	}
}

func TestPriorityAndExpirationAreProperties(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)

	// Priority: with no consumer yet, the broker orders the queue by it.
	prio := b.declareQueue(amqp.Table{"x-max-priority": int32(10)})
	evs := commandEvents("prio", "/"+prio, 4)
	for i, p := range []string{"1", "9", "", "5"} {
		if p != "" {
			evs[i].Headers = append(evs[i].Headers, relay.Header{Key: "priority", Value: p})
		}
	}
	publishConfirmed(t, ctx, s, evs...)
	var order []string
	for _, d := range b.drain(ctx, prio, 4) {
		order = append(order, fmt.Sprintf("%s:%d", d.MessageId, d.Priority))
		if _, ok := d.Headers["priority"]; ok {
			t.Errorf("message %s still has a priority header", d.MessageId)
		}
	}
	want := []string{evs[1].ID + ":9", evs[3].ID + ":5", evs[0].ID + ":1", evs[2].ID + ":0"}
	if !slices.Equal(order, want) {
		t.Errorf("delivered %v, want %v (highest priority first)", order, want)
	}

	// Expiration: a message whose TTL ran out in a queue without
	// consumers is dead-lettered with the reason "expired".
	expired := b.declareQueue(nil)
	ttl := b.declareQueue(amqp.Table{"x-dead-letter-exchange": "", "x-dead-letter-routing-key": expired})
	ev := commandEvents("ttl", "/"+ttl, 1)[0]
	ev.Headers = append(ev.Headers, relay.Header{Key: "expiration", Value: "0"})
	publishConfirmed(t, ctx, s, ev)
	d := b.drain(ctx, expired, 1)[0]
	deaths, _ := d.Headers["x-death"].([]any)
	if d.MessageId != ev.ID || len(deaths) == 0 {
		t.Fatalf("dead letter %s with x-death %#v", d.MessageId, d.Headers["x-death"])
	}
	death, _ := deaths[0].(amqp.Table)
	if death["reason"] != "expired" || death["original-expiration"] != "0" {
		t.Errorf("x-death %v, want reason expired and original-expiration 0", death)
	}
}

func TestPropertyValuesTheBrokerWouldRefuseAreBadRows(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := sinkWith(t, ctx, exchange, rabbitmq.Config{})
	b := dialBroker(t)
	queue := b.queue(exchange)
	for _, h := range []relay.Header{
		{Key: "priority", Value: "high"},
		{Key: "priority", Value: "256"},
		{Key: "expiration", Value: "-1"},
		{Key: "expiration", Value: "1.5"},
		{Key: "correlation_id", Value: strings.Repeat("c", 256)},
		{Key: "destination", Value: "relaytest.missing." + suffix() + "/key"},
	} {
		ev := events("bad-"+h.Key, 1, 1)[0]
		ev.Headers = []relay.Header{h}
		err := s.Publish(ctx, ev)
		if _, ok := relay.AsBadRow(err); !ok || !strings.Contains(err.Error(), ev.ID) {
			t.Errorf("%s=%.20q: Publish = %v, want a bad row naming %s", h.Key, h.Value, err, ev.ID)
		}
	}
	// The sink is unharmed: the next event goes through.
	ok := events("after-bad", 1, 1)
	publishConfirmed(t, ctx, s, ok...)
	if d := b.drain(ctx, queue, 1); d[0].MessageId != ok[0].ID {
		t.Errorf("got %s, want %s", d[0].MessageId, ok[0].ID)
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
