//go:build linux

package services

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

func TestKafka(t *testing.T) {
	ctx := testContext(t)

	t0 := time.Now()
	k, err := StartKafka(ctx, KafkaOptions{})
	if err != nil {
		t.Fatalf("StartKafka: %v", err)
	}
	t.Logf("StartKafka took %v (port %d, dir %s)", time.Since(t0).Round(time.Millisecond), k.Port, k.Dir)
	t.Cleanup(func() { dumpLogOnFailure(t, k.LogPath()); k.Close() })
	if k.Port == 9092 {
		t.Fatal("private broker must not use the system port 9092")
	}

	const topic, n = "survivors", 100
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()), kgo.DefaultProduceTopic(topic))
	if err != nil {
		t.Fatal(err)
	}
	// Created explicitly: kfake does not persist auto-created topics.
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, 3, 1
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("create topic: %v", err)
	}
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, &kgo.Record{Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "v%d", i)})
	}
	// Acknowledged with acks=all (kgo's default): these must survive.
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	cl.Close()
	checkRecords(ctx, t, k, topic, n)

	pids := treePids(k.proc)
	if err := k.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	assertGone(t, "kafka after Kill", pids)
	if c, err := net.DialTimeout("tcp", k.Brokers(), 2*time.Second); err == nil {
		c.Close()
		t.Fatal("connected after Kill")
	}

	t0 = time.Now()
	if err := k.Restart(ctx); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	t.Logf("Restart after Kill took %v", time.Since(t0).Round(time.Millisecond))
	checkRecords(ctx, t, k, topic, n)

	if err := k.Restart(ctx); err != nil {
		t.Fatalf("Restart of a running broker: %v", err)
	}
	checkRecords(ctx, t, k, topic, n)

	pids = treePids(k.proc)
	if err := k.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertGone(t, "kafka after Close", pids)
	if _, err := os.Stat(k.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir still exists after Close: %v", err)
	}
	if err := k.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// checkRecords reads topic from the start and expects the n records
// produced by TestKafka, each key on one partition of three.
func checkRecords(ctx context.Context, t *testing.T, k *Kafka, topic string, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	got := map[string]string{}
	parts := map[int32]bool{}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for len(got) < n {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %d of %d records: %v", len(got), n, ctx.Err())
		}
		fetches.EachError(func(topic string, p int32, err error) { t.Logf("fetch %s/%d: %v", topic, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			got[string(r.Key)] = string(r.Value)
			parts[r.Partition] = true
		})
	}
	for i := range n {
		if key, v := fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i); got[key] != v {
			t.Fatalf("key %s: value %q, want %q", key, got[key], v)
		}
	}
	if len(got) != n {
		t.Fatalf("%d distinct keys, want %d", len(got), n)
	}
	for p := range parts {
		if p < 0 || p > 2 {
			t.Fatalf("record on partition %d of a topic created with 3", p)
		}
	}
}

func TestKafkaOptions(t *testing.T) {
	ctx := testContext(t)
	sasl := KafkaSASL{Mechanism: "SCRAM-SHA-256", User: "relay", Password: "s3cr:et"}
	k, err := StartKafka(ctx, KafkaOptions{
		Configs:          map[string]string{"message.max.bytes": "1000"},
		AutoCreateTopics: true,
		SASL:             sasl,
	})
	if err != nil {
		t.Fatalf("StartKafka: %v", err)
	}
	t.Cleanup(func() { dumpLogOnFailure(t, k.LogPath()); k.Close() })

	anon, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()))
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	err = anon.Ping(pctx)
	cancel()
	anon.Close()
	if err == nil {
		t.Fatal("a client without SASL was served")
	}

	mech := scram.Auth{User: sasl.User, Pass: sasl.Password}.AsSha256Mechanism()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.Brokers()), kgo.SASL(mech), kgo.DefaultProduceTopic("limits"),
		kgo.AllowAutoTopicCreation(), kgo.ProducerBatchCompression(kgo.NoCompression()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(ctx, &kgo.Record{Value: []byte("small")}).FirstErr(); err != nil {
		t.Fatalf("produce as the SASL user: %v", err)
	}
	big := make([]byte, 5000)
	rand.Read(big)
	err = cl.ProduceSync(ctx, &kgo.Record{Value: big}).FirstErr()
	if !errors.Is(err, kerr.MessageTooLarge) {
		t.Fatalf("5000-byte record with message.max.bytes=1000: %v, want MESSAGE_TOO_LARGE", err)
	}
}
