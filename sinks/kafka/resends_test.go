package kafka

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

// retriesTotal reads relay_publish_retries_total from reg.
func retriesTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "relay_publish_retries_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no relay_publish_retries_total")
	return 0
}

// refusal answers a produce request with err for every partition in it.
func refusal(req kmsg.Request, err *kerr.Error) kmsg.Response {
	preq := req.(*kmsg.ProduceRequest)
	resp := preq.ResponseKind().(*kmsg.ProduceResponse)
	resp.Version = preq.Version
	for _, rt := range preq.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition, sp.ErrorCode = rp.Partition, err.Code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}

// TestKafkaRetriesAreCounted: every record kgo sends again after a
// retriable error counts in relay_publish_retries_total, once per time it
// is sent again, and records sent once do not count.
func TestKafkaRetriesAreCounted(t *testing.T) {
	for _, tt := range []struct {
		name    string
		fail    func(kmsg.Request) (kmsg.Response, error, bool)
		refused int // kgo waits for fresh metadata after some errors: few of those
	}{
		{"partition not led by the broker", func(req kmsg.Request) (kmsg.Response, error, bool) {
			return refusal(req, kerr.NotLeaderForPartition), nil, true
		}, 1},
		{"request timed out", func(req kmsg.Request) (kmsg.Response, error, bool) {
			return refusal(req, kerr.RequestTimedOut), nil, true
		}, 5},
		{"connection lost", func(kmsg.Request) (kmsg.Response, error, bool) {
			return nil, errors.New("drop the connection"), true
		}, 3},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := kfake.NewCluster(kfake.NumBrokers(1))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.Close)
			reg := prometheus.NewRegistry()
			s := newSink(t, Config{
				Brokers: c.ListenAddrs(), Topic: tmpl(t, "retried"), CreateTopics: true, Partitions: 2, ReplicationFactor: -1,
				Metrics: metrics.New(reg, "kafka"),
			})

			// One event at a time, so that each refused request holds
			// exactly that event.
			refused := tt.refused
			for i := range refused {
				c.ControlKey(kmsg.Produce.Int16(), tt.fail)
				o := newOutcome(1)
				if err := s.Publish(t.Context(), o.event(fmt.Sprint("r-", i), "order", fmt.Sprint("o-", i), []byte("{}"))); err != nil {
					t.Fatal(err)
				}
				o.wait(t)
				if err := o.errs[fmt.Sprint("r-", i)]; err != nil {
					t.Fatalf("event r-%d: %v", i, err)
				}
				if got := retriesTotal(t, reg); got != float64(i+1) {
					t.Fatalf("after %d refused requests, relay_publish_retries_total = %v", i+1, got)
				}
			}

			// Many records in pipelined batches, none refused.
			const n = 3000
			o := newOutcome(n)
			for i := range n {
				if err := s.Publish(t.Context(), o.event(fmt.Sprint("e-", i), "order", fmt.Sprint("o-", i%50), []byte(`{"n":1}`))); err != nil {
					t.Fatal(err)
				}
			}
			o.wait(t)
			if got := retriesTotal(t, reg); got != float64(refused) {
				t.Errorf("relay_publish_retries_total = %v after %d records sent once, want %d", got, n, refused)
			}
			if recs := consume(t, c.ListenAddrs(), "retried", refused+n); len(recs) != refused+n {
				t.Errorf("%d records, want %d", len(recs), refused+n)
			}
		})
	}
}

// TestKafkaRetriesInTransactionsAreCounted: the exactly-once producer's
// retries count too.
func TestKafkaRetriesInTransactionsAreCounted(t *testing.T) {
	t.Parallel()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	reg := prometheus.NewRegistry()
	cfg := eosConfig(t, c.ListenAddrs())
	cfg.Metrics = metrics.New(reg, "kafka")
	s := newSink(t, cfg)
	c.ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		return refusal(req, kerr.NotEnoughReplicas), nil, true
	})
	o := newOutcome(7)
	for i := range 7 {
		if err := s.Publish(t.Context(), o.positioned(i)); err != nil {
			t.Fatal(err)
		}
	}
	s.Boundary(t.Context(), relay.Idle)
	o.wait(t)
	for id, err := range o.errs {
		if err != nil {
			t.Fatalf("%s: %v", id, err)
		}
	}
	if got := retriesTotal(t, reg); got < 1 {
		t.Errorf("relay_publish_retries_total = %v after a refused transactional produce", got)
	}
}

// TestResendArithmetic: which records of a batch were written before, with
// sequences that wrap from MaxInt32 to 0.
func TestResendArithmetic(t *testing.T) {
	k := sequenced{producer: 1, topic: "t"}
	for _, tt := range []struct {
		name   string
		writes [][3]int32 // epoch, base sequence, records
		want   []int
	}{
		{"in order", [][3]int32{{0, 0, 10}, {0, 10, 5}, {0, 15, 1}}, []int{0, 0, 0}},
		{"a batch again", [][3]int32{{0, 0, 10}, {0, 10, 5}, {0, 10, 5}, {0, 15, 1}}, []int{0, 0, 5, 0}},
		{"two in flight, both again", [][3]int32{{0, 0, 10}, {0, 10, 5}, {0, 0, 10}, {0, 10, 5}}, []int{0, 0, 10, 5}},
		{"again and extended", [][3]int32{{0, 0, 10}, {0, 5, 10}}, []int{0, 5}},
		{"after a gap", [][3]int32{{0, 0, 10}, {0, 20, 5}, {0, 20, 5}}, []int{0, 0, 5}},
		{"a new epoch starts over", [][3]int32{{0, 0, 10}, {1, 0, 10}, {1, 0, 10}}, []int{0, 0, 10}},
		{"wrapping", [][3]int32{{0, math.MaxInt32 - 4, 10}, {0, 5, 3}, {0, 5, 3}, {0, math.MaxInt32 - 4, 10}}, []int{0, 0, 3, 10}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &resends{next: map[sequenced]*sequence{}}
			for i, w := range tt.writes {
				if got := r.written(k, int16(w[0]), w[1], w[2]); got != tt.want[i] {
					t.Errorf("write %d %v: %d records again, want %d", i, w, got, tt.want[i])
				}
			}
		})
	}
}
