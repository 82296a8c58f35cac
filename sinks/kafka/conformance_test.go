//go:build linux

package kafka_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/kafka"
	"github.com/relay-dev/relay/sinks/sinktest"
)

// TestConformance runs the sink suite against kfake run as a process, the
// broker integration/ uses. Failing to start it fails the test.
func TestConformance(t *testing.T) {
	const limit = 100000
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	k, err := services.StartKafka(ctx, services.KafkaOptions{
		Configs: map[string]string{"message.max.bytes": strconv.Itoa(limit)},
	})
	if err != nil {
		t.Fatalf("start kfake: %v", err)
	}
	t.Cleanup(func() { k.Close() })
	brokers := []string{k.Brokers()}

	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) (relay.Sink, sinktest.Reader) {
			topic := "relaytest." + randomSuffix()
			tmpl, err := relay.ParseTemplate(topic)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			s, err := kafka.New(ctx, kafka.Config{
				Brokers:      brokers,
				Topic:        tmpl,
				CreateTopics: true,
				// Several partitions, so that order per key is not just
				// the order of one log.
				Partitions:        4,
				ReplicationFactor: 1,
				Logger:            slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatalf("kafka.New: %v", err)
			}
			return s, &topicReader{brokers: brokers, topic: topic}
		},
		OversizedPayload: 2 * limit,
	})
}

func randomSuffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// topicReader consumes a topic from its start, across all partitions.
type topicReader struct {
	brokers []string
	topic   string
	cl      *kgo.Client
}

func (r *topicReader) Read(t *testing.T, n int, timeout time.Duration) []sinktest.Message {
	t.Helper()
	if r.cl == nil {
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(r.brokers...),
			kgo.ConsumeTopics(r.topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		)
		if err != nil {
			t.Fatalf("consumer: %v", err)
		}
		t.Cleanup(cl.Close)
		r.cl = cl
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out []sinktest.Message
	for len(out) < n {
		fs := r.cl.PollRecords(ctx, n-len(out))
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, context.DeadlineExceeded) && !errors.Is(fe.Err, context.Canceled) {
				t.Fatalf("consume %s partition %d: %v", fe.Topic, fe.Partition, fe.Err)
			}
		}
		fs.EachRecord(func(rec *kgo.Record) {
			headers := make(map[string]string, len(rec.Headers))
			for _, h := range rec.Headers {
				headers[h.Key] = string(h.Value)
			}
			out = append(out, sinktest.Message{
				ID:      headers["id"],
				Key:     string(rec.Key),
				Body:    rec.Value,
				Headers: headers,
			})
		})
		if ctx.Err() != nil {
			break
		}
	}
	return out
}
