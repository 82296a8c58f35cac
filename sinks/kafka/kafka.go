// Package kafka is relay's Kafka sink, built on franz-go's kgo client.
//
// Records are produced by an idempotent producer with acks=all, batched and
// pipelined by kgo (up to five produce requests in flight per broker, which
// idempotence keeps in order). The record key is the aggregate id, so one
// aggregate's events land in one partition in commit order. kgo retries
// retriable errors without limit; an error that reaches a record's promise
// is one retrying cannot fix (a record over the broker's size limit, a
// missing authorization, a topic that does not exist) and is reported as a
// relay.Permanent error naming the event.
package kafka

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

// DefaultTopic is Debezium's outbox event router convention, so consumers
// of Debezium's outbox topics can switch without changes.
const DefaultTopic = "outbox.event.{aggregate_type}"

// Config configures a Sink.
type Config struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string
	// Topic renders each event's topic. Required.
	Topic *relay.Template
	// Topics replaces Topic for the events of the tables it names, keyed
	// by relay.Event.Table (schema.name).
	Topics map[string]*relay.Template
	// CreateTopics creates a topic the first time an event is routed to it,
	// with Partitions and ReplicationFactor (-1: the broker's default).
	// Without it the cluster must have the topic or create it itself
	// (auto.create.topics.enable).
	CreateTopics      bool
	Partitions        int32
	ReplicationFactor int16
	// TLS, when set, encrypts every broker connection.
	TLS *tls.Config
	// SASL, when set, authenticates every broker connection.
	SASL sasl.Mechanism
	// Compression is the codec of produced batches, one of Compressions;
	// empty: DefaultCompression. Every consumer of the topics must read it.
	Compression string
	// ExactlyOnce produces in Kafka transactions under TransactionalID,
	// each also writing its end position to CheckpointTopic (created
	// compacted when missing); see txn.go. A transaction ends only where a
	// database transaction ends (see Boundary), once it holds half of
	// TransactionMaxEvents or has lingered TransactionLinger (default
	// 100 ms), or at once when the stream is idle. It never holds more
	// than TransactionMaxEvents (default DefaultTransactionMaxEvents): a
	// database transaction that reaches it alone is split there, as it is
	// when the relay's in-flight window fills, which the caller should
	// keep at least as large.
	ExactlyOnce          bool
	TransactionalID      string
	CheckpointTopic      string
	TransactionMaxEvents int
	TransactionLinger    time.Duration
	// DeadLetter is the topic dead letters go to (relay.Event.DeadLetter),
	// with header x-relay-error the reason. Empty: none.
	DeadLetter string
	// Format shapes each record: relay.FormatRaw (the default) produces
	// the payload; the CloudEvents formats need CloudEventsSource, the
	// source attribute of every event.
	Format            relay.Format
	CloudEventsSource string
	// KeyFormat and ValueFormat encode the record key (the aggregate id)
	// and, in the raw format, the value (the payload): one of Encodings,
	// empty meaning EncodingRaw. EncodingJSONString writes them as Kafka
	// Connect's JsonConverter without schemas writes a string, so that a
	// topic Debezium wrote through it goes on with the same bytes, and the
	// same partition per aggregate. Dead letters are always raw.
	KeyFormat   string
	ValueFormat string
	// Metrics counts what the sink does beyond publishing (retries,
	// dropped headers); nil counts nothing.
	Metrics *metrics.Metrics
	// Logger receives connection trouble and data loss warnings. Default: discard.
	Logger *slog.Logger
}

// Sink produces events to Kafka. It implements relay.Sink.
type Sink struct {
	cl      *kgo.Client
	topic   *relay.Template
	topics  map[string]*relay.Template // Config.Topics
	create  bool
	parts   int32
	repl    int16
	log     *slog.Logger
	healthy atomic.Bool

	dlq    string
	format format
	txn    *txn // nil unless exactly-once
	// slots bounds the records produced and not yet acknowledged. kgo
	// bounds them too, but blocks on the context given to Produce and
	// fails that partition's buffered records when it ends; records are
	// therefore produced under life, and Publish waits here instead,
	// where giving up on the caller's context costs nothing.
	slots chan struct{}
	life  context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup

	mu     sync.Mutex
	known  map[string]bool  // topics prepared for producing
	limits map[string]int32 // each known topic's max.message.bytes
}

// defaultBatchMax is kgo's default batch limit, just under Kafka's default
// message.max.bytes; it applies when a topic's limit cannot be read.
const defaultBatchMax = 1000012

// DefaultTransactionMaxEvents is the most events of one Kafka transaction
// when Config.TransactionMaxEvents is not set: the relay's default
// in-flight window, which bounds it anyway.
const DefaultTransactionMaxEvents = 4096

// maxBuffered bounds the records produced and not yet acknowledged.
const maxBuffered = 10000

// New connects to the cluster and returns once one broker answered. While
// no broker is reachable it retries, logging each failure, until ctx ends.
// The sink lives until Close, not until ctx ends.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("kafka: no brokers")
	}
	if cfg.Topic == nil {
		return nil, errors.New("kafka: topic template is required")
	}
	for table, t := range cfg.Topics {
		if t == nil {
			return nil, fmt.Errorf("kafka: topic template of table %s is nil", table)
		}
	}
	if cfg.Format != relay.FormatRaw && cfg.CloudEventsSource == "" {
		return nil, fmt.Errorf("kafka: format %s needs a CloudEvents source", cfg.Format)
	}
	codec, err := compressionCodec(cfg.Compression)
	if err != nil {
		return nil, err
	}
	jsonKey, err := encoding("key", cfg.KeyFormat)
	if err != nil {
		return nil, err
	}
	jsonValue, err := encoding("value", cfg.ValueFormat)
	if err != nil {
		return nil, err
	}
	if jsonValue && cfg.Format != relay.FormatRaw {
		// The CloudEvents data (binary mode) or the whole event
		// (structured) would become a JSON string of itself.
		return nil, fmt.Errorf("kafka: value format %s needs the raw format, not %s", EncodingJSONString, cfg.Format)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{
		topic:  cfg.Topic,
		topics: cfg.Topics,
		create: cfg.CreateTopics,
		parts:  cfg.Partitions,
		repl:   cfg.ReplicationFactor,
		log:    log.With("component", "kafka"),
		known:  map[string]bool{},
		limits: map[string]int32{},
		slots:  make(chan struct{}, maxBuffered),
		dlq:    cfg.DeadLetter,
		format: format{mode: cfg.Format, source: cfg.CloudEventsSource, jsonKey: jsonKey, jsonValue: jsonValue},
	}
	s.format.guard = relay.NewHeaderGuard(s.format.own, cfg.Metrics, s.log)
	conn := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ClientID("relay"),
		kgo.WithLogger(logAdapter{s.log}),
	}
	var retried func(int)
	if cfg.Metrics != nil {
		retried = cfg.Metrics.Retried
	}
	// kgo has no hook that fires on a retry; the sink's own connections
	// count the records written again (resends.go).
	conn = append(conn, kgo.Dialer(dialer(cfg.TLS, retried)))
	if cfg.SASL != nil {
		conn = append(conn, kgo.SASL(cfg.SASL))
	}
	opts := append(slices.Clip(conn),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MaxBufferedRecords(maxBuffered+1), // +1: a checkpoint record
		kgo.ProducerLinger(2*time.Millisecond),
		kgo.ProducerBatchCompression(codec),
		// Batches never exceed the topic's max.message.bytes: the broker
		// rejects an oversized batch whole, failing every record in it,
		// while kgo fails a single record over the limit on its own, so the
		// error names the row that is too large and no other.
		kgo.ProducerBatchMaxBytesFn(s.batchMax),
		kgo.WithHooks(health{s}),
		// Data loss here means the broker lost records it had acknowledged
		// (an unclean leader election); the relay cannot bring them back,
		// as the slot has moved past them, so it says so loudly.
		kgo.ProducerOnDataLossDetected(func(topic string, partition int32) {
			s.log.Error("the broker lost acknowledged records (unclean leader election?); consumers may miss events", "topic", topic, "partition", partition)
		}),
	)
	if cfg.CreateTopics {
		// The topic was just created; give metadata time to propagate
		// across the cluster instead of failing after four lookups.
		opts = append(opts, kgo.UnknownTopicRetries(30))
	} else {
		// Let a cluster with auto.create.topics.enable create the topic on
		// the first metadata request, as the Java producer does.
		opts = append(opts, kgo.AllowAutoTopicCreation())
	}
	if cfg.ExactlyOnce && (cfg.TransactionalID == "" || cfg.CheckpointTopic == "") {
		return nil, errors.New("kafka: exactly-once needs a transactional id and a checkpoint topic")
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	s.cl = cl

	backoff := relay.NewBackoff(100*time.Millisecond, 10*time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := cl.Ping(pctx)
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			cl.Close()
			return nil, fmt.Errorf("kafka: connect to %s: %w", strings.Join(cfg.Brokers, ","), ctx.Err())
		}
		wait := backoff.Next()
		s.log.Warn("cannot reach a Kafka broker; retrying", "brokers", cfg.Brokers, "error", err, "retry_in", wait.String())
		relay.Sleep(ctx, wait)
	}
	s.healthy.Store(true)
	s.log.Info("connected to Kafka", "brokers", cfg.Brokers, "create_topics", cfg.CreateTopics, "exactly_once", cfg.ExactlyOnce)
	s.life, s.stop = context.WithCancel(context.Background())
	if cfg.ExactlyOnce {
		if err := s.startTxn(ctx, cfg, conn, opts); err != nil {
			s.stop()
			cl.Close()
			return nil, err
		}
	}
	return s, nil
}

// encoding reports whether name, the key's or the value's encoding, is
// EncodingJSONString.
func encoding(what, name string) (json bool, err error) {
	switch name {
	case "", EncodingRaw:
		return false, nil
	case EncodingJSONString:
		return true, nil
	}
	return false, fmt.Errorf("kafka: unknown %s format %q, want one of %s", what, name, strings.Join(Encodings, ", "))
}

// startTxn prepares exactly-once producing: the checkpoint topic, a
// transactional producer (whose initialisation fences any other relay with
// the same transactional id and aborts what it left open), the checkpoint,
// and this process's claim on it. Producing is a client of its own, s.cl
// serving the rest, so that a fenced producer can be replaced.
func (s *Sink) startTxn(ctx context.Context, cfg Config, conn, producer []kgo.Opt) error {
	if err := s.createTopic(ctx, cfg.CheckpointTopic, 1, s.repl, map[string]string{"cleanup.policy": "compact"}); err != nil {
		return err
	}
	host, _ := os.Hostname()
	t := &txn{
		s:  s,
		id: cfg.TransactionalID,
		// Valid UTF-8, so that the checkpoint's JSON gives it back as it
		// is and the relay recognises its own claim.
		owner:     strings.ToValidUTF8(fmt.Sprintf("%s/%d/%x", host, os.Getpid(), rand.Uint32()), "?"),
		topic:     cfg.CheckpointTopic,
		maxEvents: cmp.Or(cfg.TransactionMaxEvents, DefaultTransactionMaxEvents),
		linger:    cmp.Or(cfg.TransactionLinger, 100*time.Millisecond),
		split:     cfg.Metrics.TransactionSplit,
	}
	t.target = max(t.maxEvents/2, 1)
	producer = append(slices.Clip(producer), kgo.TransactionalID(cfg.TransactionalID))
	t.newClient = func() (*kgo.Client, error) { return kgo.NewClient(producer...) }
	t.readCommit = func(ctx context.Context) (position, string, bool, error) {
		return readCheckpoint(ctx, conn, s.cl, t.topic, t.id)
	}
	cl, err := t.newClient()
	if err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	if _, _, err := cl.ProducerID(ctx); err != nil {
		cl.Close()
		return fmt.Errorf("kafka: initialise transactional id %q: %w", cfg.TransactionalID, err)
	}
	t.cl = cl
	t.mu.Lock()
	err = t.reloadLocked(ctx)
	if err == nil {
		err = t.claimLocked(ctx)
	}
	t.mu.Unlock()
	if err != nil {
		cl.Close()
		return err
	}
	s.log.Info("exactly-once producing", "transactional_id", t.id, "max_transaction_events", t.maxEvents, "checkpoint_topic", t.topic, "checkpoint", t.committed.LSN.String(), "checkpoint_index", t.committed.Index)
	s.txn = t
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t.run(s.life)
	}()
	return nil
}

// Publish hands ev to the producer and returns; ev.Done reports the
// broker's acknowledgement. It blocks while the producer's buffer is full,
// until ctx ends. ctx bounds only the call: a record accepted is produced
// even if ctx ends right after.
func (s *Sink) Publish(ctx context.Context, ev *relay.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var topic string
	switch dest := ev.Route(); {
	case ev.DeadLetter != "":
		if s.dlq == "" {
			return relay.Permanent(fmt.Errorf("event %s: no dead-letter topic for: %s", ev.ID, ev.DeadLetter))
		}
		topic = s.dlq
	case dest != "":
		t, err := routeTopic(ev, dest)
		if err != nil {
			return err
		}
		topic = t
	default:
		t, err := s.topicOf(ev).Execute(ev)
		if err == nil {
			err = checkTopic(t)
		}
		if err != nil {
			return relay.BadRow(ev, fmt.Errorf("topic: %w", err))
		}
		topic = t
	}
	r, err := record(ev, topic, s.format)
	if err != nil {
		return err
	}
	if err := s.prepare(ctx, topic); err != nil {
		if relay.IsPermanent(err) {
			return relay.Permanent(fmt.Errorf("event %s: %w", ev.ID, err))
		}
		return err
	}
	ev.Destination = topic
	if s.txn != nil {
		return s.txn.publish(ctx, ev, r)
	}
	if err := s.acquire(ctx); err != nil {
		return err
	}
	s.cl.Produce(s.life, r, func(r *kgo.Record, err error) {
		s.release()
		if err != nil {
			ev.Done(produceError(ev, r.Topic, err))
			return
		}
		ev.Done(nil)
	})
	return nil
}

// Boundary implements relay.BoundarySink: in exactly-once mode a Kafka
// transaction ends only where the core says a database transaction ended,
// or where it must (txn.go). Otherwise each record stands alone and there
// is nothing to do.
func (s *Sink) Boundary(ctx context.Context, b relay.Boundary) {
	if s.txn != nil {
		s.txn.boundary(ctx, b)
	}
}

var _ relay.BoundarySink = (*Sink)(nil)

// topicOf is the topic template of ev's table.
func (s *Sink) topicOf(ev *relay.Event) *relay.Template {
	if t, ok := s.topics[ev.Table]; ok {
		return t
	}
	return s.topic
}

// acquire takes a slot for one record, waiting until ctx ends.
func (s *Sink) acquire(ctx context.Context) error {
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Sink) release() { <-s.slots }

// record builds the Kafka record of ev in format f. The header column's
// keys come first and the relay's own headers last, so that a consumer
// reading the last value of a header (as Java's Headers.lastHeader does)
// cannot be fooled by a header column forging them. The headers column's
// destination key is an instruction to the relay (Event.Route), not a
// header, except in a dead letter, which shows the row as it was.
func record(ev *relay.Event, topic string, f format) (*kgo.Record, error) {
	if ev.DeadLetter != "" {
		// A dead letter is the row as it was, whatever made it bad; the
		// format must not fail it a second time.
		f = format{}
	}
	fheaders, value, err := f.apply(ev)
	if err != nil {
		return nil, err
	}
	// The record with its headers, and every byte slice the sink makes,
	// are two allocations, not one per value: this runs for every event.
	var ownArr [6]relay.Header
	own := relay.OwnHeaders(ownArr[:0], ev)
	n := len(ev.Headers) + len(fheaders) + 3 + len(own)
	size := len(ev.AggregateID) + len(ev.ID) + len(ev.EventType) + len(ev.AggregateType)
	if f.jsonKey {
		size += 2 + len(ev.AggregateID)/8 // quotes, some escapes
	}
	for _, h := range ev.Headers {
		size += len(h.Value)
	}
	for _, h := range own {
		size += len(h.Value)
	}
	buf := make([]byte, 0, size)
	bytesOf := func(s string) []byte {
		start := len(buf)
		buf = append(buf, s...)
		return buf[start:len(buf):len(buf)]
	}
	r := &recordWithHeaders{}
	headers := r.headers[:0]
	if n > len(r.headers) {
		headers = make([]kgo.RecordHeader, 0, n)
	}
	for _, h := range ev.Headers {
		if h.Key == relay.HeaderDestination && ev.DeadLetter == "" {
			continue
		}
		if f.guard.Drop(ev, h.Key) {
			continue
		}
		headers = append(headers, kgo.RecordHeader{Key: h.Key, Value: bytesOf(h.Value)})
	}
	headers = append(headers, fheaders...)
	headers = append(headers,
		kgo.RecordHeader{Key: "id", Value: bytesOf(ev.ID)},
		kgo.RecordHeader{Key: "event_type", Value: bytesOf(ev.EventType)},
		kgo.RecordHeader{Key: "aggregate_type", Value: bytesOf(ev.AggregateType)},
	)
	for _, h := range own {
		// Text, as every other header: Kafka headers have no types.
		headers = append(headers, kgo.RecordHeader{Key: h.Key, Value: bytesOf(h.Value)})
	}
	var key []byte
	if f.jsonKey {
		start := len(buf)
		if buf, err = appendJSONString(buf, []byte(ev.AggregateID)); err != nil {
			return nil, relay.BadRow(ev, fmt.Errorf("aggregate id: %w, which RELAY_KAFKA_KEY_FORMAT=%s cannot write as a JSON string", err, EncodingJSONString))
		}
		key = buf[start:len(buf):len(buf)]
	} else {
		key = bytesOf(ev.AggregateID)
	}
	r.Record = kgo.Record{
		Topic:     topic,
		Key:       key,
		Value:     value,
		Headers:   headers,
		Timestamp: ev.CreatedAt,
	}
	return &r.Record, nil
}

// recordWithHeaders allocates a record together with room for the headers
// of a typical event: two of its own (traceparent, tracestate), the three
// the sink adds, and the position.
type recordWithHeaders struct {
	kgo.Record
	headers [7]kgo.RecordHeader
}

// produceError classifies a failed record. kgo retries retriable errors
// itself without limit, so what reaches a promise is final, except when the
// client is shutting down.
func produceError(ev *relay.Event, topic string, err error) error {
	if errors.Is(err, kerr.MessageTooLarge) {
		// kgo fails a record over the limit it knows on its own; a broker
		// rejects a whole batch, which happens only if the sink could not
		// read the limit, and then the culprit may be a neighbour.
		return relay.BadRow(ev, fmt.Errorf("%w: %d bytes to topic %s: %w (if this row is small, a larger row produced right after it exceeds the topic's max.message.bytes)", relay.ErrTooLarge, len(ev.Payload), topic, err))
	}
	err = fmt.Errorf("kafka: event %s (%d bytes) to topic %s: %w", ev.ID, len(ev.Payload), topic, err)
	if errors.Is(err, kgo.ErrClientClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return relay.Permanent(err)
}

// prepare readies topic before its first record: creates it when asked
// to and learns its size limit. kgo reads the limit once per partition, when
// it first sees the topic, so it must be known before the first Produce.
func (s *Sink) prepare(ctx context.Context, topic string) error {
	s.mu.Lock()
	known := s.known[topic]
	s.mu.Unlock()
	if known {
		return nil
	}
	if s.create {
		if err := s.createTopic(ctx, topic, s.parts, s.repl, nil); err != nil {
			return err
		}
	}
	limit := s.topicLimit(ctx, topic)
	s.mu.Lock()
	s.known[topic] = true
	if limit > 0 {
		s.limits[topic] = limit
	}
	s.mu.Unlock()
	return nil
}

// topicLimit returns the largest batch the broker accepts for topic: the
// topic's max.message.bytes when the topic sets it, else the broker's
// message.max.bytes, which topics inherit. It returns 0 when neither can be
// read (no DescribeConfigs permission, a topic the cluster creates on first
// use): kgo's default limit then applies.
func (s *Sink) topicLimit(ctx context.Context, topic string) int32 {
	v, src, err := s.describeConfig(ctx, kmsg.ConfigResourceTypeTopic, topic, "max.message.bytes")
	if err == nil && src != kmsg.ConfigSourceDefaultConfig {
		return v
	}
	// A default source means neither the topic nor the broker set it, as
	// far as the topic's description tells: some brokers (kfake) do not
	// report what topics inherit, so ask the broker itself.
	var bv int32
	mreq := kmsg.NewPtrMetadataRequest()
	mreq.Topics = []kmsg.MetadataRequestTopic{} // brokers only; nil would list every topic
	meta, berr := mreq.RequestWith(ctx, s.cl)
	if berr == nil && len(meta.Brokers) == 0 {
		berr = errors.New("no broker in the metadata")
	}
	if berr == nil {
		id := strconv.Itoa(int(meta.Brokers[0].NodeID))
		bv, _, berr = s.describeConfig(ctx, kmsg.ConfigResourceTypeBroker, id, "message.max.bytes")
	}
	switch {
	case berr == nil:
		return bv
	case err == nil:
		return v
	}
	s.log.Debug("cannot read the topic's size limit; using the default", "topic", topic, "error", errors.Join(err, berr))
	return 0
}

// describeConfig reads one config of one resource, clamped to the batch
// limits kgo accepts, [512, 1 GiB].
func (s *Sink) describeConfig(ctx context.Context, typ kmsg.ConfigResourceType, name, key string) (int32, kmsg.ConfigSource, error) {
	req := kmsg.NewPtrDescribeConfigsRequest()
	res := kmsg.NewDescribeConfigsRequestResource()
	res.ResourceType = typ
	res.ResourceName = name
	res.ConfigNames = []string{key}
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(ctx, s.cl)
	if err == nil && len(resp.Resources) != 1 {
		err = fmt.Errorf("%d resources in the response", len(resp.Resources))
	}
	if err == nil {
		err = kerr.ErrorForCode(resp.Resources[0].ErrorCode)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("describe %s %s: %w", typ, name, err)
	}
	for _, c := range resp.Resources[0].Configs {
		if c.Name != key || c.Value == nil {
			continue
		}
		n, err := strconv.ParseInt(*c.Value, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s of %s %s: %w", key, typ, name, err)
		}
		return int32(min(max(n, 512), 1<<30)), c.Source, nil
	}
	return 0, 0, fmt.Errorf("%s %s has no %s", typ, name, key)
}

func (s *Sink) batchMax(topic string) int32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, ok := s.limits[topic]; ok {
		return n
	}
	return defaultBatchMax
}

// createTopic creates topic, treating one that exists as created.
func (s *Sink) createTopic(ctx context.Context, topic string, parts int32, repl int16, configs map[string]string) error {
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic = topic
	rt.NumPartitions = parts
	rt.ReplicationFactor = repl
	for k, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, c)
	}
	req.Topics = append(req.Topics, rt)
	req.TimeoutMillis = 30000
	resp, err := req.RequestWith(ctx, s.cl)
	if err != nil {
		return fmt.Errorf("kafka: create topic %s: %w", topic, err)
	}
	if len(resp.Topics) != 1 {
		return fmt.Errorf("kafka: create topic %s: %d topics in the response", topic, len(resp.Topics))
	}
	t := resp.Topics[0]
	switch err := kerr.ErrorForCode(t.ErrorCode); {
	case err == nil:
		s.log.Info("created topic", "topic", topic, "partitions", t.NumPartitions, "replication_factor", t.ReplicationFactor)
	case errors.Is(err, kerr.TopicAlreadyExists):
	case kerr.IsRetriable(err):
		return fmt.Errorf("kafka: create topic %s: %w", topic, err)
	default:
		msg := ""
		if t.ErrorMessage != nil {
			msg = ": " + *t.ErrorMessage
		}
		return relay.Permanent(fmt.Errorf("kafka: create topic %s: %w%s", topic, err, msg))
	}
	return nil
}

// Close waits until every produced record is acknowledged or failed, or
// ctx ends, then closes the client. Records still buffered when ctx ends
// fail with an error that is not permanent.
func (s *Sink) Close(ctx context.Context) error {
	if s.txn != nil {
		s.txn.close(ctx)
	}
	err := s.cl.Flush(ctx)
	s.stop()
	s.wg.Wait()
	s.cl.Close()
	if err != nil {
		return fmt.Errorf("kafka: flush: %w", err)
	}
	return nil
}

// Connected reports whether the last request to a broker succeeded.
func (s *Sink) Connected() bool { return s.healthy.Load() }

// health tracks broker reachability from every request's outcome; idle
// connections that kgo closes do not count as failures.
type health struct{ s *Sink }

func (h health) OnBrokerE2E(_ kgo.BrokerMetadata, _ int16, e2e kgo.BrokerE2E) {
	h.s.healthy.Store(e2e.Err() == nil)
}

func (h health) OnBrokerConnect(meta kgo.BrokerMetadata, _ time.Duration, _ net.Conn, err error) {
	if err != nil {
		h.s.healthy.Store(false)
	}
}

// logAdapter sends kgo's warnings and errors to slog; its info and debug
// lines are per-request chatter.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (a logAdapter) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	switch level {
	case kgo.LogLevelError:
		a.l.Error(msg, keyvals...)
	case kgo.LogLevelWarn:
		a.l.Warn(msg, keyvals...)
	default:
		a.l.Debug(msg, keyvals...)
	}
}
