package kafka

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/relay"
)

func eosConfig(t *testing.T, brokers []string) Config {
	return Config{
		Brokers: brokers, Topic: tmpl(t, "eos.{aggregate_type}"), CreateTopics: true, Partitions: 3, ReplicationFactor: -1,
		ExactlyOnce: true, TransactionalID: "relay-test", CheckpointTopic: "relay.checkpoints",
		TransactionMaxEvents: 100, TransactionLinger: 20 * time.Millisecond,
	}
}

// positioned returns event i of a stream of transactions of 7 rows.
func (o *outcome) positioned(i int) *relay.Event {
	ev := o.event(fmt.Sprint("e-", i), "order", fmt.Sprint("o-", i%5), []byte(fmt.Sprintf(`{"i":%d}`, i)))
	ev.CommitLSN = relay.LSN(0x1000000 + (i/7)*0x100)
	ev.Index = i % 7
	return ev
}

func readCommitted(t *testing.T, brokers []string, topic string, wait time.Duration) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchIsolationLevel(kgo.ReadCommitted()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), wait)
	defer cancel()
	var recs []*kgo.Record
	for ctx.Err() == nil {
		recs = append(recs, cl.PollFetches(ctx).Records()...)
	}
	return recs
}

func TestExactlyOnceSkipsWhatACheckpointCovers(t *testing.T) {
	brokers := cluster(t)
	cfg := eosConfig(t, brokers)

	s1 := newSink(t, cfg)
	const first = 1000
	o1 := newOutcome(first)
	for i := range first {
		if err := s1.Publish(t.Context(), o1.positioned(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s1.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o1.wait(t)
	for id, err := range o1.errs {
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}

	// A restart replays from an older slot position: the covered events
	// are done without being produced again.
	s2 := newSink(t, cfg)
	const total = 1500
	o2 := newOutcome(total - 500)
	for i := 500; i < total; i++ {
		if err := s2.Publish(t.Context(), o2.positioned(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s2.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o2.wait(t)

	recs := readCommitted(t, brokers, "eos.order", 2*time.Second)
	seen := map[string]int{}
	for _, r := range recs {
		id, _ := header(r, "id")
		seen[id]++
	}
	for i := range total {
		if n := seen[fmt.Sprint("e-", i)]; n != 1 {
			t.Fatalf("e-%d read %d times by a read_committed consumer, want once", i, n)
		}
	}
	if len(recs) != total {
		t.Fatalf("%d records, want %d", len(recs), total)
	}
}

func TestSecondRelayWithTheSameTransactionalIDFencesTheFirst(t *testing.T) {
	brokers := cluster(t)
	cfg := eosConfig(t, brokers)
	cfg.TransactionLinger = time.Hour // commit only when asked

	s1 := newSink(t, cfg)
	o := newOutcome(2)
	if err := s1.Publish(t.Context(), o.positioned(0)); err != nil {
		t.Fatal(err)
	}
	newSink(t, cfg) // takes over the transactional id
	s1.Publish(t.Context(), o.positioned(1))
	s1.Close(t.Context())
	o.wait(t)
	for id, err := range o.errs {
		if err == nil || !relay.IsPermanent(err) || !strings.Contains(err.Error(), "took over") {
			t.Fatalf("%s: %v, want a permanent error saying another relay took over", id, err)
		}
	}
	if recs := readCommitted(t, brokers, "eos.order", time.Second); len(recs) != 0 {
		t.Fatalf("a fenced relay's %d records are visible to read_committed consumers", len(recs))
	}
}
