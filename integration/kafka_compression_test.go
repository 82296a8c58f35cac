package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/integration/services"
)

// TestKafkaCompressionSettingReachesTheBatches: RELAY_KAFKA_COMPRESSION
// decides the codec of the batches the relay writes, gzip without it (the
// one every client reads without plugins), and librdkafka (kcat) reads
// every codec as franz-go does.
func TestKafkaCompressionSettingReachesTheBatches(t *testing.T) {
	t.Parallel()
	kcatBin(t)
	for _, tt := range []struct {
		value string
		codec uint8 // the record batch attribute: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd
	}{{"", 1}, {"none", 0}, {"gzip", 1}, {"snappy", 2}, {"lz4", 3}, {"zstd", 4}} {
		t.Run("RELAY_KAFKA_COMPRESSION="+tt.value, func(t *testing.T) {
			e := newKafkaEnv(t)
			if tt.value != "" {
				e.extraVars = map[string]string{"RELAY_KAFKA_COMPRESSION": tt.value}
			}
			e.startRelay()
			// kgo sends a batch uncompressed when the codec does not
			// shrink it, as with a lone short record: payloads every
			// codec shrinks keep each batch in the codec configured.
			const rows = 50
			e.exec(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
				SELECT 'order', 'agg-' || i % 5, 'created', jsonb_build_object('seq', i, 'pad', repeat('x', 1000))
				FROM generate_series(1, $1::int) AS i`, rows)
			cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaBrokers), kgo.ConsumeTopics("outbox.order."+e.name),
				kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			var recs []kafkaRecord
			for len(recs) < rows {
				fs := cl.PollFetches(ctx)
				if ctx.Err() != nil {
					t.Fatalf("read %d of %d records", len(recs), rows)
				}
				for _, r := range fs.Records() {
					if got := r.Attrs.CompressionType(); got != tt.codec {
						t.Fatalf("record at offset %d is in a batch of codec %d, want %d", r.Offset, got, tt.codec)
					}
					recs = append(recs, kafkaRecord{Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
						Key: r.Key, Value: r.Value, Headers: r.Headers, Timestamp: r.Timestamp})
				}
			}
			checkKcatAgrees(t, recs, kcatRead(t, kafkaBrokers, []string{"outbox.order." + e.name}, false))
		})
	}
}

// TestKafkaRetriesAreCountedInMetrics: records the producer sends again
// after the broker died under them count in relay_publish_retries_total,
// and arrive.
func TestKafkaRetriesAreCountedInMetrics(t *testing.T) {
	node := startOwnKafka(t, services.KafkaOptions{})
	e := newEnv(t)
	e.useKafka(node.Brokers(), "")
	c := e.consumeKafka()
	p := e.startRelay()
	w := e.startWriter(20, 13)
	eventually(t, time.Minute, func() error {
		if got := len(c.records()); got < 500 {
			return fmt.Errorf("%d records, waiting for 500", got)
		}
		return nil
	})
	if got, ok := p.metric("relay_publish_retries_total"); !ok || got != 0 {
		t.Fatalf("relay_publish_retries_total = %v (exported %v) before any failure, want 0", got, ok)
	}
	// Frozen, the broker takes requests and answers none; killed, it
	// drops them: what was in flight is sent again after the restart.
	crashWithRowsInFlight(t, e, w, node.Freeze, node.Kill)
	if err := node.Restart(t.Context()); err != nil {
		t.Fatalf("restart kafka: %v", err)
	}
	p.waitMetric(t, "relay_publish_retries_total", "above 0", func(v float64) bool { return v > 0 }, time.Minute)
	ids := w.finish()
	recs := c.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, asMessages(recs))
}
