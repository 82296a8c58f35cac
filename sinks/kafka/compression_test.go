package kafka

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// codecIDs are the record batch attribute's compression values.
var codecIDs = map[string]uint8{"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

// TestEachCompressionIsWrittenAndReadBack: records written with each codec
// read back unchanged, from batches that carry that codec, so a setting the
// producer ignored fails here.
func TestEachCompressionIsWrittenAndReadBack(t *testing.T) {
	t.Parallel()
	if len(codecIDs) != len(Compressions) {
		t.Fatalf("Compressions = %v; the test knows %d codecs", Compressions, len(codecIDs))
	}
	brokers := cluster(t)
	for _, name := range append([]string{""}, Compressions...) {
		want := name
		if name == "" {
			want = DefaultCompression
		}
		t.Run("compression="+name, func(t *testing.T) {
			topic := "c-" + want
			if name == "" {
				topic = "c-default"
			}
			s := newSink(t, Config{Brokers: brokers, Topic: tmpl(t, topic), CreateTopics: true, Partitions: 1, ReplicationFactor: -1, Compression: name})
			const n = 50
			o := newOutcome(n)
			// Repetitive JSON, as outbox payloads are: every codec shrinks it.
			payload := func(i int) []byte {
				return fmt.Appendf(nil, `{"order_id":%d,"note":"%s"}`, i, strings.Repeat("compress me ", 20))
			}
			for i := range n {
				if err := s.Publish(t.Context(), o.event(fmt.Sprint("e-", i), "order", "o-1", payload(i))); err != nil {
					t.Fatal(err)
				}
			}
			o.wait(t)
			for id, err := range o.errs {
				if err != nil {
					t.Fatalf("%s: %v", id, err)
				}
			}
			recs := consume(t, brokers, topic, n)
			for i, r := range recs {
				if got := r.Attrs.CompressionType(); got != codecIDs[want] {
					t.Fatalf("record %d is in a batch compressed with codec %d, want %d (%s)", i, got, codecIDs[want], want)
				}
				if !slices.Equal(r.Value, payload(i)) {
					t.Fatalf("record %d reads back as %q, want %q", i, r.Value, payload(i))
				}
			}
		})
	}
}

func TestUnknownCompressionIsRefused(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"brotli", "GZIP", " gzip"} {
		// No broker listens there: the setting is refused before connecting.
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := New(ctx, Config{Brokers: []string{"127.0.0.1:1"}, Topic: tmpl(t, "t"), Compression: name})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "compression") {
			t.Errorf("New with compression %q: %v, want an error naming the compression", name, err)
		}
	}
}

// The default is a codec every client reads without a plugin: kafkajs,
// the most used JavaScript client, reads gzip and nothing else.
func TestDefaultCompressionIsReadByEveryClient(t *testing.T) {
	if DefaultCompression != "gzip" && DefaultCompression != "none" {
		t.Errorf("DefaultCompression = %q; kafkajs cannot read it without a plugin", DefaultCompression)
	}
	if _, err := compressionCodec(DefaultCompression); err != nil {
		t.Error(err)
	}
}
