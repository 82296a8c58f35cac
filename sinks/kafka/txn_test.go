package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

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

// readCommitted returns what a read_committed consumer sees of topic once
// no transaction is open on it (each partition's last stable offset equals
// its high watermark, so nothing more can become visible), reading every
// partition to that end rather than for a while: a slow machine cannot cut
// the read short, nor a fast one end it before a late commit.
func readCommitted(t *testing.T, brokers []string, topic string) []*kgo.Record {
	t.Helper()
	ends := settledTopicEnds(t, brokers, topic)
	offsets := map[int32]kgo.Offset{}
	for p, end := range ends {
		if end > 0 {
			offsets[p] = kgo.NewOffset().AtStart()
		}
	}
	if len(offsets) == 0 {
		return nil
	}
	// Control records (the commit and abort markers) are kept so that a
	// partition ending in one, or in aborted records, is read to its end.
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	next := map[int32]int64{}
	var recs []*kgo.Record
	for {
		var short []string
		for p, end := range ends {
			if next[p] < end {
				short = append(short, fmt.Sprintf("%s/%d at %d of %d", topic, p, next[p], end))
			}
		}
		if len(short) == 0 {
			return recs
		}
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s to its end: %s: %v", topic, strings.Join(short, ", "), ctx.Err())
		}
		fs.EachRecord(func(r *kgo.Record) {
			next[r.Partition] = r.Offset + 1
			if !r.Attrs.IsControl() && r.Offset < ends[r.Partition] {
				recs = append(recs, r)
			}
		})
	}
}

// inLog waits until topic holds at least n records, committed or not.
func inLog(t *testing.T, brokers []string, topic string, n int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var sum int64
		ends, err := endOffsets(t.Context(), cl, topic)
		for _, end := range ends {
			sum += end
		}
		if err == nil && sum >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d records, want %d (%v)", topic, sum, n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// settledTopicEnds waits until no transaction is open on any partition of
// topic and returns each partition's end; none when the topic does not
// exist.
func settledTopicEnds(t *testing.T, brokers []string, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ends, err := topicEnds(t.Context(), cl, topic)
		if err == nil {
			return ends
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", topic, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// topicEnds returns topic's high watermarks, or an error while a
// transaction is open on one of its partitions.
func topicEnds(ctx context.Context, cl *kgo.Client, topic string) (map[int32]int64, error) {
	meta := kmsg.NewPtrMetadataRequest()
	mt := kmsg.NewMetadataRequestTopic()
	mt.Topic = kmsg.StringPtr(topic)
	meta.Topics = append(meta.Topics, mt)
	mresp, err := meta.RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	if len(mresp.Topics) != 1 {
		return nil, fmt.Errorf("metadata: %d topics", len(mresp.Topics))
	}
	if err := kerr.ErrorForCode(mresp.Topics[0].ErrorCode); errors.Is(err, kerr.UnknownTopicOrPartition) {
		return map[int32]int64{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	end := func(isolation int8) (map[int32]int64, error) {
		req := kmsg.NewPtrListOffsetsRequest()
		req.IsolationLevel = isolation
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = topic
		for _, p := range mresp.Topics[0].Partitions {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition, rp.Timestamp = p.Partition, -1
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		ends := map[int32]int64{}
		for _, shard := range cl.RequestSharded(ctx, req) {
			if shard.Err != nil {
				return nil, fmt.Errorf("list offsets: %w", shard.Err)
			}
			for _, t := range shard.Resp.(*kmsg.ListOffsetsResponse).Topics {
				for _, p := range t.Partitions {
					if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
						return nil, fmt.Errorf("list offsets of partition %d: %w", p.Partition, err)
					}
					ends[p.Partition] = p.Offset
				}
			}
		}
		if len(ends) != len(mresp.Topics[0].Partitions) {
			return nil, fmt.Errorf("list offsets: %d of %d partitions answered", len(ends), len(mresp.Topics[0].Partitions))
		}
		return ends, nil
	}
	stable, err := end(1)
	if err != nil {
		return nil, err
	}
	hwm, err := end(0)
	if err != nil {
		return nil, err
	}
	for p, o := range hwm {
		if stable[p] != o {
			return nil, fmt.Errorf("partition %d: a transaction is open (last stable offset %d, high watermark %d)", p, stable[p], o)
		}
	}
	return hwm, nil
}

func TestExactlyOnceSkipsWhatACheckpointCovers(t *testing.T) {
	brokers := cluster(t)
	cfg := eosConfig(t, brokers)

	s1 := newSink(t, cfg)
	const first = 1001 // 143 whole transactions
	o1 := newOutcome(first)
	for i := range first {
		if err := s1.Publish(t.Context(), o1.positioned(i)); err != nil {
			t.Fatal(err)
		}
	}
	s1.Boundary(t.Context(), relay.Idle)
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
	const total = 1505
	o2 := newOutcome(total - 500)
	for i := 500; i < total; i++ {
		if err := s2.Publish(t.Context(), o2.positioned(i)); err != nil {
			t.Fatal(err)
		}
	}
	s2.Boundary(t.Context(), relay.Idle)
	if err := s2.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	o2.wait(t)

	recs := readCommitted(t, brokers, "eos.order")
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
	// The record is in the log, in the open transaction, before the
	// takeover: otherwise nothing could become visible, whatever the
	// sink did.
	inLog(t, brokers, "eos.order", 1)
	newSink(t, cfg) // takes over the transactional id
	s1.Publish(t.Context(), o.positioned(1))
	s1.Close(t.Context())
	o.wait(t)
	for id, err := range o.errs {
		if err == nil || !relay.IsPermanent(err) || !strings.Contains(err.Error(), "took over") {
			t.Fatalf("%s: %v, want a permanent error saying another relay took over", id, err)
		}
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != 0 {
		t.Fatalf("a fenced relay's %d records are visible to read_committed consumers", len(recs))
	}
}
