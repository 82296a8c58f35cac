package kafka

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/relay"
)

// These tests run franz-go's kfake, a Kafka-protocol broker, in process;
// sinks/kafka/conformance_test.go and integration/ run it as a process
// that can be killed.

func cluster(t *testing.T, opts ...kfake.Opt) []string {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

func newSink(t *testing.T, cfg Config) *Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// outcome collects each event's Done.
type outcome struct {
	mu    sync.Mutex
	errs  map[string]error
	calls map[string]int
	all   chan struct{}
	want  int
}

func newOutcome(want int) *outcome {
	return &outcome{errs: map[string]error{}, calls: map[string]int{}, all: make(chan struct{}), want: want}
}

func (o *outcome) event(id, aggType, aggID string, payload []byte) *relay.Event {
	ev := &relay.Event{
		ID: id, Table: "public.outbox", AggregateType: aggType, AggregateID: aggID, EventType: "created",
		Payload: payload, ContentType: relay.ContentTypeJSON, CommitLSN: 0x16B3748,
		Headers:   []relay.Header{{Key: "id", Value: "forged"}, {Key: "tenant", Value: "acme"}},
		CreatedAt: time.Date(2026, 11, 23, 12, 0, 0, 123_000_000, time.UTC),
	}
	ev.OnDone(func(ev *relay.Event, err error) {
		o.mu.Lock()
		defer o.mu.Unlock()
		o.errs[ev.ID] = err
		o.calls[ev.ID]++
		if len(o.errs) == o.want {
			close(o.all)
		}
	})
	return ev
}

func (o *outcome) wait(t *testing.T) {
	t.Helper()
	select {
	case <-o.all:
	case <-time.After(30 * time.Second):
		t.Fatalf("only %d of %d events done", len(o.errs), o.want)
	}
}

func consume(t *testing.T, brokers []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var recs []*kgo.Record
	for len(recs) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records from %s", len(recs), n, topic)
		}
		recs = append(recs, fs.Records()...)
	}
	return recs
}

func header(r *kgo.Record, key string) (string, int) {
	var last string
	n := 0
	for _, h := range r.Headers {
		if h.Key == key {
			last, n = string(h.Value), n+1
		}
	}
	return last, n
}

func TestRecordCarriesTheEvent(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, DefaultTopic), CreateTopics: true, Partitions: 3, ReplicationFactor: -1})
	o := newOutcome(1)
	if err := s.Publish(t.Context(), o.event("e-1", "order", "o-42", []byte(`{"n":1}`))); err != nil {
		t.Fatal(err)
	}
	o.wait(t)
	if err := o.errs["e-1"]; err != nil {
		t.Fatal(err)
	}
	r := consume(t, brokers, "outbox.event.order", 1)[0]
	if string(r.Key) != "o-42" || string(r.Value) != `{"n":1}` {
		t.Errorf("key %q value %q", r.Key, r.Value)
	}
	if !r.Timestamp.Equal(time.Date(2026, 11, 23, 12, 0, 0, 123_000_000, time.UTC)) {
		t.Errorf("timestamp %s, want created_at", r.Timestamp)
	}
	for key, want := range map[string]string{"id": "e-1", "event_type": "created", "aggregate_type": "order", "x-relay-lsn": "0/16B3748", "tenant": "acme"} {
		if got, _ := header(r, key); got != want {
			t.Errorf("header %s = %q, want %q", key, got, want)
		}
	}
	if s.Connected() != true {
		t.Error("Connected is false after an acknowledged record")
	}
}

func TestCreatedTopicHasTheConfiguredPartitions(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, "t.{aggregate_type}"), CreateTopics: true, Partitions: 5, ReplicationFactor: 1})
	const n = 200
	o := newOutcome(n)
	for i := range n {
		if err := s.Publish(t.Context(), o.event(fmt.Sprint("e-", i), "order", fmt.Sprint("o-", i%20), []byte("{}"))); err != nil {
			t.Fatal(err)
		}
	}
	o.wait(t)
	parts := map[int32]map[string]bool{}
	keyPart := map[string]int32{}
	for _, r := range consume(t, brokers, "t.order", n) {
		if p, ok := keyPart[string(r.Key)]; ok && p != r.Partition {
			t.Fatalf("key %s in partitions %d and %d", r.Key, p, r.Partition)
		}
		keyPart[string(r.Key)] = r.Partition
		if parts[r.Partition] == nil {
			parts[r.Partition] = map[string]bool{}
		}
		parts[r.Partition][string(r.Key)] = true
		if r.Partition < 0 || r.Partition >= 5 {
			t.Fatalf("partition %d of a 5-partition topic", r.Partition)
		}
	}
	if len(parts) < 2 {
		t.Errorf("20 keys landed in %d partition(s) of 5", len(parts))
	}
}

func TestOversizedRecordIsAPermanentErrorNamingTheEvent(t *testing.T) {
	brokers := cluster(t)
	// The limit is a topic config, which the sink reads before producing.
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = "big", 1, -1
	c := kmsg.NewCreateTopicsRequestTopicConfig()
	c.Name, c.Value = "max.message.bytes", kmsg.StringPtr("10000")
	rt.Configs = append(rt.Configs, c)
	req.Topics = append(req.Topics, rt)
	if _, err := req.RequestWith(t.Context(), admin); err != nil {
		t.Fatal(err)
	}

	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, "big")})
	o := newOutcome(3)
	// Published back to back, the three would share a batch if the sink
	// did not cut batches at the topic's limit; the broker would then
	// reject all of them.
	s.Publish(t.Context(), o.event("small-1", "order", "o-1", []byte("{}")))
	s.Publish(t.Context(), o.event("huge-1", "order", "o-1", incompressible(50_000)))
	s.Publish(t.Context(), o.event("small-2", "order", "o-1", []byte("{}")))
	o.wait(t)
	for _, id := range []string{"small-1", "small-2"} {
		if err := o.errs[id]; err != nil {
			t.Errorf("%s: %v", id, err)
		}
	}
	err = o.errs["huge-1"]
	if err == nil || !relay.IsPermanent(err) || !strings.Contains(err.Error(), "huge-1") {
		t.Fatalf("oversized record: %v, want a permanent error naming huge-1", err)
	}
	if o.calls["huge-1"] != 1 {
		t.Errorf("Done called %d times", o.calls["huge-1"])
	}
}

func TestMissingTopicWithoutCreationIsAPermanentError(t *testing.T) {
	brokers := cluster(t) // kfake does not auto-create topics
	s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, "absent.{aggregate_type}")})
	o := newOutcome(1)
	if err := s.Publish(t.Context(), o.event("e-1", "order", "o-1", []byte("{}"))); err != nil {
		t.Fatal(err)
	}
	o.wait(t)
	err := o.errs["e-1"]
	if err == nil || !relay.IsPermanent(err) || !strings.Contains(err.Error(), "e-1") || !strings.Contains(err.Error(), "absent.order") {
		t.Fatalf("got %v, want a permanent error naming the event and the topic", err)
	}
}

func TestSASL(t *testing.T) {
	for _, mech := range SASLMechanisms {
		t.Run(mech, func(t *testing.T) {
			brokers := cluster(t, kfake.EnableSASL(), kfake.Superuser(mech, "relay", "pw-"+mech))
			m, err := SASLMechanism(strings.ToLower(mech), "relay", "pw-"+mech)
			if err != nil {
				t.Fatal(err)
			}
			s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, "t"), CreateTopics: true, Partitions: 1, ReplicationFactor: -1, SASL: m})
			o := newOutcome(1)
			s.Publish(t.Context(), o.event("e-1", "order", "o-1", []byte("{}")))
			o.wait(t)
			if err := o.errs["e-1"]; err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		brokers := cluster(t, kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "relay", "right"))
		m, _ := SASLMechanism("SCRAM-SHA-256", "relay", "wrong")
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		if _, err := New(ctx, Config{Brokers: brokers, Topic: tmpl(t, "t"), SASL: m}); err == nil {
			t.Fatal("New succeeded with a wrong password")
		}
	})
}

func TestCloseFlushes(t *testing.T) {
	brokers := cluster(t)
	s, err := New(t.Context(), Config{Brokers: brokers, Topic: tmpl(t, "flush"), CreateTopics: true, Partitions: 2, ReplicationFactor: -1})
	if err != nil {
		t.Fatal(err)
	}
	const n = 5000
	o := newOutcome(n)
	for i := range n {
		if err := s.Publish(t.Context(), o.event(fmt.Sprint("e-", i), "order", fmt.Sprint("o-", i%7), []byte("{}"))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o.mu.Lock()
	done := len(o.errs)
	o.mu.Unlock()
	if done != n {
		t.Fatalf("Close returned with %d of %d events done", done, n)
	}
	for id, err := range o.errs {
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if got := len(consume(t, brokers, "flush", n)); got < n {
		t.Fatalf("%d records after Close, want %d", got, n)
	}
}

// incompressible returns n bytes that compression cannot shrink below the
// broker's limit, which applies to the compressed batch.
func incompressible(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func tmpl(t *testing.T, s string) *relay.Template {
	t.Helper()
	tp, err := relay.ParseTemplate(s)
	if err != nil {
		t.Fatal(err)
	}
	return tp
}
