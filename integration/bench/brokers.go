//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	amqp10 "github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The sinks the bench measures.
const (
	sinkKafka = "kafka"
	// sinkKafkaEOS is Kafka in exactly-once mode (RELAY_KAFKA_EXACTLY_ONCE),
	// counted by a read_committed consumer: only committed rows are there.
	sinkKafkaEOS = "kafka_eos"
	sinkClassic  = "rabbitmq_classic"
	sinkQuorum   = "rabbitmq_quorum"
	sinkStream   = "rabbitmq_stream"
	// sinkRawDecode stands for no sink at all in the live scenario: the
	// raw decoder receives the rows from a slot of its own, the floor of
	// any relay's latency.
	sinkRawDecode = "raw_decode"
	// sinkNone stands for no reader at all: the sessions commit as fast as
	// they can with no slot, the machine's insert ceiling that the live
	// scenario's maximum rates are judged against.
	sinkNone = "none"
)

// kafkaPartitions is the partition count of every bench topic.
const kafkaPartitions = 3

// amqpWindow is RELAY_AMQP_CONFIRM_WINDOW for every relay (-amqp-window;
// the relay's default unless set); the raw publisher uses the same.
var amqpWindow = 2048

// amqpWindowSet says -amqp-window was given.
var amqpWindowSet bool

// streamWindow is the stream sink's default bound on unconfirmed messages
// (RELAY_RABBITMQ_STREAM_WINDOW); the raw stream publisher uses the same.
const streamWindow = 4096

// kafkaMaxBuffered is the relay's Kafka sink bound on unacknowledged
// records; the raw producer uses the same.
const kafkaMaxBuffered = 10000

// lsnHeader stands in for the relay's x-relay-lsn header in raw publishes,
// so messages are the same size.
const lsnHeader = "0/1A2B3C4D"

// target is where one scenario's messages go and how the bench counts
// what the broker has acknowledged, without consuming: counting with a
// consumer would take CPU from the relay on a two-core machine.
type target struct {
	sink    string
	name    string // topic, or queue and exchange
	brokers string
	amqpURL string
	admin   *kgo.Client      // Kafka
	conn    *amqp.Connection // RabbitMQ
	ch      *amqp.Channel
	// streamURL and env: RabbitMQ streams. A stream's message count is
	// not cheap to read on RabbitMQ 3.10 (no stream stats, and a passive
	// declare says 0), so stream drains are timed to the slot's confirm
	// instead (bench.drain), and count runs rabbitmqctl once at the end.
	streamURL string
	env       *stream.Environment
	ctl       func(ctx context.Context, args ...string) (string, error)
	// committed counts what a read_committed consumer read (kafka_eos):
	// offsets count transaction markers and aborted records too.
	committed    atomic.Int64
	stopConsumer context.CancelFunc
	consumerDone chan struct{}
}

// isKafka reports whether sink is Kafka, in either mode.
func isKafka(sink string) bool { return sink == sinkKafka || sink == sinkKafkaEOS }

func newTarget(ctx context.Context, sink, name string, b *bench) (*target, error) {
	t := &target{sink: sink, name: name, brokers: b.kafka.Brokers(), amqpURL: b.rabbit.URL()}
	if sink == sinkStream {
		t.streamURL, t.ctl = b.rabbit.StreamURL(), b.rabbit.Ctl
		env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(t.streamURL))
		if err != nil {
			return nil, err
		}
		if err := env.DeclareStream(name, nil); err != nil {
			_ = env.Close()
			return nil, fmt.Errorf("declare stream %s: %w", name, err)
		}
		t.env = env
		return t, nil
	}
	if isKafka(sink) {
		cl, err := kgo.NewClient(kgo.SeedBrokers(t.brokers))
		if err != nil {
			return nil, err
		}
		t.admin = cl
		if err := t.createTopic(ctx); err != nil {
			cl.Close()
			return nil, err
		}
		if sink == sinkKafkaEOS {
			if err := t.countCommitted(); err != nil {
				cl.Close()
				return nil, err
			}
		}
		return t, nil
	}
	conn, err := amqp.Dial(t.amqpURL)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, err
	}
	t.conn, t.ch = conn, ch
	args := amqp.Table{}
	if sink == sinkQuorum {
		args["x-queue-type"] = "quorum"
	}
	err = ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil)
	if err == nil {
		_, err = ch.QueueDeclare(name, true, false, false, false, args)
	}
	if err == nil {
		err = ch.QueueBind(name, "#", name, false, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("declare %s: %w", name, err)
	}
	return t, nil
}

// countCommitted counts, in the background, the records a read_committed
// consumer of t's topic reads.
func (t *target) countCommitted() error {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(t.brokers),
		kgo.ConsumeTopics(t.name),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
	)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.stopConsumer, t.consumerDone = cancel, make(chan struct{})
	go func() {
		defer close(t.consumerDone)
		defer cl.Close()
		for {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				return
			}
			t.committed.Add(int64(fs.NumRecords()))
		}
	}()
	return nil
}

// vars are the relay's variables for publishing to t.
func (t *target) vars() []string {
	switch t.sink {
	case sinkKafka:
		return []string{"RELAY_SINK=kafka", "RELAY_KAFKA_BROKERS=" + t.brokers, "RELAY_KAFKA_TOPIC=" + t.name}
	case sinkKafkaEOS:
		return []string{"RELAY_SINK=kafka", "RELAY_KAFKA_BROKERS=" + t.brokers, "RELAY_KAFKA_TOPIC=" + t.name,
			"RELAY_KAFKA_EXACTLY_ONCE=true", "RELAY_KAFKA_TRANSACTIONAL_ID=" + t.name, "RELAY_KAFKA_CHECKPOINT_TOPIC=" + t.name + ".checkpoints"}
	case sinkStream:
		return []string{"RELAY_SINK=rabbitmq-stream", "RELAY_RABBITMQ_STREAM_URL=" + t.streamURL, "RELAY_RABBITMQ_STREAM=" + t.name}
	}
	vars := []string{"RELAY_SINK=rabbitmq", "RELAY_AMQP_URL=" + t.amqpURL, "RELAY_AMQP_EXCHANGE=" + t.name}
	if amqpWindowSet {
		vars = append(vars, "RELAY_AMQP_CONFIRM_WINDOW="+strconv.Itoa(amqpWindow))
	}
	return vars
}

// close deletes the topic or queue and exchange, so finished scenarios
// do not weigh on the next.
func (t *target) close(ctx context.Context) {
	if t.stopConsumer != nil {
		t.stopConsumer()
		<-t.consumerDone
	}
	if t.admin != nil {
		req := kmsg.NewPtrDeleteTopicsRequest()
		rt := kmsg.NewDeleteTopicsRequestTopic()
		rt.Topic = kmsg.StringPtr(t.name)
		req.Topics = append(req.Topics, rt)
		req.TopicNames = []string{t.name}
		req.TimeoutMillis = 30000
		_, _ = req.RequestWith(ctx, t.admin)
		t.admin.Close()
	}
	if t.env != nil {
		_ = t.env.DeleteStream(t.name)
		_ = t.env.Close()
	}
	if t.ch != nil {
		_, _ = t.ch.QueueDelete(t.name, false, false, false)
		_ = t.ch.ExchangeDelete(t.name, false, false)
		t.conn.Close()
	}
}

func (t *target) createTopic(ctx context.Context) error {
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = t.name
	rt.NumPartitions = kafkaPartitions
	rt.ReplicationFactor = 1
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30000
	resp, err := req.RequestWith(ctx, t.admin)
	if err != nil {
		return fmt.Errorf("create topic %s: %w", t.name, err)
	}
	if err := kerr.ErrorForCode(resp.Topics[0].ErrorCode); err != nil {
		return fmt.Errorf("create topic %s: %w", t.name, err)
	}
	return nil
}

// count returns how many messages the broker holds for t: the sum of the
// topic's high watermarks (acknowledged with acks=all), or the queue's
// message count.
func (t *target) count(ctx context.Context) (int64, error) {
	if t.env != nil {
		return t.streamCount(ctx)
	}
	if t.sink == sinkKafkaEOS {
		return t.committed.Load(), nil
	}
	if t.admin == nil {
		q, err := t.ch.QueueDeclarePassive(t.name, true, false, false, false, nil)
		return int64(q.Messages), err
	}
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = t.name
	for p := range int32(kafkaPartitions) {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p
		rp.Timestamp = -1 // the high watermark
		rp.CurrentLeaderEpoch = -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, t.admin)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if err := kerr.ErrorForCode(rp.ErrorCode); err != nil {
				return 0, err
			}
			n += rp.Offset
		}
	}
	return n, nil
}

// waitCount polls count until it reaches want and returns when it first
// saw it. It fails early when alive reports an error (the relay died).
func (t *target) waitCount(ctx context.Context, want int64, alive func() error) (time.Time, error) {
	deadline := time.Now().Add(2*time.Minute + time.Duration(want)*time.Millisecond)
	var last int64
	for {
		n, err := t.count(ctx)
		now := time.Now()
		if err == nil && n >= want {
			return now, nil
		}
		if err == nil {
			last = n
		}
		if alive != nil {
			if err := alive(); err != nil {
				return now, err
			}
		}
		if now.After(deadline) {
			return now, fmt.Errorf("%s: %d of %d messages before the deadline (last error: %v)", t.name, last, want, err)
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// rawPublish is the publish ceiling: msgs published straight from memory
// with the relay's client library and safety settings. It returns when the
// broker holds all of them, timed like a relay drain.
func (t *target) rawPublish(ctx context.Context, msgs []message) (time.Duration, error) {
	start := time.Now()
	var err error
	switch {
	case isKafka(t.sink):
		err = t.rawKafka(ctx, msgs)
	case t.sink == sinkStream:
		// Every message confirmed is every message stored.
		err = t.rawStream(ctx, msgs)
		return time.Since(start), err
	default:
		err = t.rawAMQP(ctx, msgs)
	}
	if err != nil {
		return 0, err
	}
	done, err := t.waitCount(ctx, int64(len(msgs)), nil)
	return done.Sub(start), err
}

// rawKafka produces with franz-go as the relay's sink does: idempotent,
// acks=all, the same bound on buffered records, kgo's default batching.
func (t *target) rawKafka(ctx context.Context, msgs []message) error {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(t.brokers),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MaxBufferedRecords(kafkaMaxBuffered),
	)
	if err != nil {
		return err
	}
	defer cl.Close()
	var failed atomic.Pointer[error]
	for i := range msgs {
		m := &msgs[i]
		r := &kgo.Record{
			Topic: t.name,
			Key:   []byte(m.aggregateID),
			Value: m.payload,
			Headers: []kgo.RecordHeader{
				{Key: m.headerKey, Value: []byte(m.headerValue)},
				{Key: "id", Value: []byte(m.id)},
				{Key: "event_type", Value: []byte(m.eventType)},
				{Key: "aggregate_type", Value: []byte(m.aggregateType)},
				{Key: "x-relay-lsn", Value: []byte(lsnHeader)},
			},
			Timestamp: m.createdAt,
		}
		cl.Produce(ctx, r, func(_ *kgo.Record, err error) {
			if err != nil {
				failed.CompareAndSwap(nil, &err)
			}
		})
	}
	if err := cl.Flush(ctx); err != nil {
		return err
	}
	if p := failed.Load(); p != nil {
		return *p
	}
	return nil
}

// rawAMQP publishes persistent and mandatory on a confirm-mode channel
// with the relay's window of unconfirmed publishes.
func (t *target) rawAMQP(ctx context.Context, msgs []message) error {
	conn, err := amqp.Dial(t.amqpURL)
	if err != nil {
		return err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, amqpWindow))
	returns := ch.NotifyReturn(make(chan amqp.Return, amqpWindow))
	if err := ch.Confirm(false); err != nil {
		return err
	}
	sem := make(chan struct{}, amqpWindow)
	var nacks, returned atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for c := range confirms {
			if !c.Ack {
				nacks.Add(1)
			}
			<-sem
		}
	}()
	go func() {
		defer wg.Done()
		for range returns {
			returned.Add(1)
		}
	}()
	for i := range msgs {
		m := &msgs[i]
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := ch.Publish(t.name, m.aggregateType+"."+m.eventType, true, false, amqp.Publishing{
			Headers: amqp.Table{
				m.headerKey:      m.headerValue,
				"aggregate_type": m.aggregateType,
				"aggregate_id":   m.aggregateID,
				"x-relay-lsn":    lsnHeader,
			},
			ContentType:  "application/json",
			DeliveryMode: amqp.Persistent,
			MessageId:    m.id,
			Type:         m.eventType,
			Timestamp:    m.createdAt,
			Body:         m.payload,
		})
		if err != nil {
			return err
		}
	}
	if err := ownWindow(ctx, sem); err != nil {
		return err
	}
	ch.Close()
	wg.Wait()
	if n, r := nacks.Load(), returned.Load(); n+r > 0 {
		return fmt.Errorf("raw publish: %d nacks, %d returns", n, r)
	}
	return nil
}

// rawStream publishes as the stream sink does: one named producer, every
// message an AMQP 1.0 message with the relay's properties and an explicit
// publishing id, the client's own batching, and the sink's window of
// unconfirmed messages.
func (t *target) rawStream(ctx context.Context, msgs []message) error {
	prod, err := t.env.NewProducer(t.name, stream.NewProducerOptions().
		SetProducerName("bench-raw").
		SetQueueSize(streamWindow))
	if err != nil {
		return err
	}
	defer prod.Close()
	confirms := prod.NotifyPublishConfirmation()
	sem := make(chan struct{}, streamWindow)
	var nacks atomic.Int64
	go func() {
		for statuses := range confirms {
			for _, st := range statuses {
				if !st.IsConfirmed() {
					nacks.Add(1)
				}
				<-sem
			}
		}
	}()
	for i := range msgs {
		m := &msgs[i]
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		msg := amqp10.NewMessage(m.payload)
		msg.Properties = &amqp10.MessageProperties{
			MessageID:    m.id,
			Subject:      m.eventType,
			ContentType:  "application/json",
			CreationTime: m.createdAt,
		}
		msg.ApplicationProperties = map[string]any{
			m.headerKey:             m.headerValue,
			"aggregate_type":        m.aggregateType,
			"aggregate_id":          m.aggregateID,
			"event_type":            m.eventType,
			"x-relay-lsn":           lsnHeader,
			"x-relay-index":         int64(i % 1000),
			"x-relay-producer":      "bench-raw",
			"x-relay-publishing-id": int64(i + 1),
		}
		msg.SetPublishingId(int64(i + 1))
		if err := prod.Send(msg); err != nil {
			return err
		}
	}
	if err := ownWindow(ctx, sem); err != nil {
		return err
	}
	if n := nacks.Load(); n > 0 {
		return fmt.Errorf("raw stream publish: %d messages not confirmed", n)
	}
	return nil
}

// ownWindow takes every token of sem, a window of unconfirmed publishes
// whose confirms give tokens back: owning them all means every publish was
// confirmed.
func ownWindow(ctx context.Context, sem chan struct{}) error {
	for range cap(sem) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// streamCount reads the stream's message count with rabbitmqctl: a second
// of CPU, so only for checks, not for polling. The node updates the count
// every few seconds, so it asks until the count stops changing.
func (t *target) streamCount(ctx context.Context) (int64, error) {
	last := int64(-1)
	for range 10 {
		out, err := t.ctl(ctx, "list_queues", "--no-table-headers", "--quiet", "name", "messages")
		if err != nil {
			return 0, err
		}
		n := int64(-1)
		for _, line := range strings.Split(out, "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == t.name {
				if n, err = strconv.ParseInt(f[1], 10, 64); err != nil {
					return 0, fmt.Errorf("rabbitmqctl: %q: %w", line, err)
				}
			}
		}
		if n < 0 {
			return 0, fmt.Errorf("stream %s not listed by rabbitmqctl: %q", t.name, out)
		}
		if n == last && n > 0 {
			return n, nil
		}
		last = n
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(3 * time.Second):
		}
	}
	return last, nil
}

// receiver consumes what reaches t and records each message's receipt.
type receiver struct {
	received atomic.Int64
	mu       sync.Mutex
	got      []receipt
	bad      atomic.Int64 // messages without ts or order_id
	stop     func()
	done     chan error
}

// receipt is one message received: its row number, the insert statement's
// clock (the payload's ts, microseconds) and when it arrived.
type receipt struct {
	n, ts int64
	at    time.Time
}

func (t *target) receive(ctx context.Context) (*receiver, error) {
	if t.sink == sinkStream {
		// The stream client reads a 3.10 stream at a few hundred messages
		// a second, too slow to time anything with.
		return nil, errors.New("the live scenario has no stream consumer; measure rabbitmq_stream with the drains")
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &receiver{stop: cancel, done: make(chan error, 1)}
	if isKafka(t.sink) {
		isolation := kgo.ReadUncommitted()
		if t.sink == sinkKafkaEOS {
			isolation = kgo.ReadCommitted()
		}
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(t.brokers),
			kgo.ConsumeTopics(t.name),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchIsolationLevel(isolation),
		)
		if err != nil {
			cancel()
			return nil, err
		}
		go func() {
			defer cl.Close()
			for {
				fs := cl.PollFetches(ctx)
				now := time.Now()
				if ctx.Err() != nil {
					r.done <- nil
					return
				}
				if err := fs.Err0(); err != nil && !errors.Is(err, context.Canceled) {
					r.done <- err
					return
				}
				fs.EachRecord(func(rec *kgo.Record) { r.add(now, rec.Value) })
			}
		}()
		return r, nil
	}
	ch, err := t.conn.Channel()
	if err != nil {
		cancel()
		return nil, err
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		cancel()
		return nil, err
	}
	deliveries, err := ch.Consume(t.name, "", false, false, false, false, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	go func() {
		defer ch.Close()
		n := 0
		for {
			select {
			case <-ctx.Done():
				r.done <- nil
				return
			case d, ok := <-deliveries:
				if !ok {
					r.done <- errors.New("consumer channel closed")
					return
				}
				r.add(time.Now(), d.Body)
				// Acknowledge in batches of up to 100, as a busy consumer would.
				if n++; n%100 == 0 || len(deliveries) == 0 {
					_ = d.Ack(true)
				}
			}
		}
	}()
	return r, nil
}

func (r *receiver) add(now time.Time, body []byte) {
	ts, ok1 := payloadInt(body, "ts")
	n, ok2 := payloadInt(body, "order_id")
	if !ok1 || !ok2 {
		r.bad.Add(1)
	} else {
		r.mu.Lock()
		r.got = append(r.got, receipt{n: n, ts: ts, at: now})
		r.mu.Unlock()
	}
	r.received.Add(1)
}

// take returns the receipts recorded so far and starts a new list.
func (r *receiver) take() []receipt {
	r.mu.Lock()
	defer r.mu.Unlock()
	l := r.got
	r.got = nil
	return l
}

func (r *receiver) close() error {
	r.stop()
	return <-r.done
}
