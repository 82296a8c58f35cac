//go:build linux

package rabbitmq_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

func newFencedSink(ctx context.Context, exchange, fence string, logs *logRecords) (*rabbitmq.Sink, error) {
	tmpl, err := relay.ParseTemplate("{aggregate_type}.{event_type}")
	if err != nil {
		return nil, err
	}
	return rabbitmq.New(ctx, rabbitmq.Config{
		URL:        amqpURL,
		Exchange:   exchange,
		RoutingKey: tmpl,
		Fence:      fence,
		Logger:     slog.New(logs),
	})
}

// TestFenceWaitsForThePreviousPublisher: a sink of a stream whose fence
// another sink holds does not publish until that sink's channel is gone;
// then it publishes at once. A sink of another stream never waits.
func TestFenceWaitsForThePreviousPublisher(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	fence := rabbitmq.FenceQueue("slot", "7000000000000000001", "db_"+suffix())
	first, err := newFencedSink(ctx, exchange, fence, &logRecords{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b := dialBroker(t)
	queue := b.queue(exchange)
	evs := events("first", 10, 2)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, first, evs)
	rec.waitDone(t, ctx, len(evs))

	other, err := newFencedSink(ctx, exchange, rabbitmq.FenceQueue("slot", "7000000000000000001", "db_"+suffix()), &logRecords{})
	if err != nil {
		t.Fatalf("New with another stream's fence: %v", err)
	}
	closeSink(t, other)

	logs := &logRecords{}
	type result struct {
		s   *rabbitmq.Sink
		err error
	}
	second := make(chan result, 1)
	go func() {
		s, err := newFencedSink(ctx, exchange, fence, logs)
		second <- result{s, err}
	}()
	waitFor(t, ctx, "the second sink to wait for the fence", func() bool {
		return logs.count("waiting for the previous publisher's channel") > 0
	})
	select {
	case r := <-second:
		t.Fatalf("the second sink connected while the first held the fence (err %v)", r.err)
	default:
	}

	closeSink(t, first)
	var r result
	select {
	case r = <-second:
	case <-ctx.Done():
		t.Fatal("the second sink did not take the fence after the first closed")
	}
	if r.err != nil {
		t.Fatalf("New: %v", r.err)
	}
	defer closeSink(t, r.s)
	more := events("second", 10, 2)
	rec.track(more...)
	publishAll(t, ctx, r.s, more)
	rec.waitDone(t, ctx, len(evs)+len(more))
	if got := b.drain(ctx, queue, len(evs)+len(more)); len(got) != len(evs)+len(more) {
		t.Fatalf("queue holds %d messages, want %d", len(got), len(evs)+len(more))
	}
}

func closeSink(t *testing.T, s *rabbitmq.Sink) {
	t.Helper()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(cctx); err != nil {
		t.Errorf("Close: %v", err)
	}
}
