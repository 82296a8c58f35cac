//go:build linux

package integration

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/relay-dev/relay/integration/services"
)

// defaultKafkaTopic is the relay's RELAY_KAFKA_TOPIC default.
const defaultKafkaTopic = "outbox.event.{aggregate_type}"

// kafkaRecord is what a Kafka consumer received.
type kafkaRecord struct {
	Topic     string
	Partition int32
	Offset    int64
	Key       []byte
	Value     []byte
	Headers   []kgo.RecordHeader
	Timestamp time.Time
}

// header returns the last value of header key, as Java's
// Headers.lastHeader does.
func (r kafkaRecord) header(key string) (string, bool) {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key == key {
			return string(r.Headers[i].Value), true
		}
	}
	return "", false
}

// id is the record's dedup key, its "id" header.
func (r kafkaRecord) id() string {
	id, _ := r.header("id")
	return id
}

// kafkaConsumer reads every record of the topics matching a pattern, from
// the start, without a consumer group, across broker restarts.
type kafkaConsumer struct {
	t      *testing.T
	cl     *kgo.Client
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	recs    []kafkaRecord
	lastErr error
}

// consumeKafka consumes every topic the env's relay can produce to: each
// name its topic template can render. opts are added to the client's, for
// SASL for example.
func (e *env) consumeKafka(opts ...kgo.Opt) *kafkaConsumer {
	e.t.Helper()
	tmpl := e.kafkaTopic
	if tmpl == "" {
		tmpl = defaultKafkaTopic
	}
	return consumeKafkaAt(e.t, e.kafkaBrokers, topicPattern(tmpl), opts...)
}

var placeholderRE = regexp.MustCompile(`\\\{[a-z0-9_]+\\\}`)

// topicPattern is a regular expression matching every topic that tmpl
// renders, with each {placeholder} standing for any non-empty text.
func topicPattern(tmpl string) string {
	return "^" + placeholderRE.ReplaceAllString(regexp.QuoteMeta(tmpl), ".+") + "$"
}

func consumeKafkaAt(t *testing.T, brokers, pattern string, opts ...kgo.Opt) *kafkaConsumer {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ConsumeRegex(),
		kgo.ConsumeTopics(pattern),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// Topics matching the pattern are found by refreshing metadata:
		// refresh often, so the first records are not waited for.
		kgo.MetadataMinAge(100 * time.Millisecond),
		kgo.MetadataMaxAge(500 * time.Millisecond),
	}, opts...)...)
	if err != nil {
		t.Fatalf("kafka consumer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &kafkaConsumer{t: t, cl: cl, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	t.Cleanup(c.close)
	return c
}

func (c *kafkaConsumer) run(ctx context.Context) {
	defer close(c.done)
	for {
		fetches := c.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		var got []kafkaRecord
		fetches.EachRecord(func(r *kgo.Record) {
			got = append(got, kafkaRecord{
				Topic:     r.Topic,
				Partition: r.Partition,
				Offset:    r.Offset,
				Key:       r.Key,
				Value:     r.Value,
				Headers:   r.Headers,
				Timestamp: r.Timestamp,
			})
		})
		c.mu.Lock()
		c.recs = append(c.recs, got...)
		fetches.EachError(func(topic string, p int32, err error) {
			c.lastErr = fmt.Errorf("fetch %s/%d: %w", topic, p, err)
		})
		c.mu.Unlock()
	}
}

func (c *kafkaConsumer) close() {
	c.cancel()
	<-c.done
	c.cl.Close()
}

// records returns a copy of what was received so far, in the order of
// each partition.
func (c *kafkaConsumer) records() []kafkaRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]kafkaRecord(nil), c.recs...)
}

// waitDistinct waits until records with n distinct ids arrived.
func (c *kafkaConsumer) waitDistinct(n int, timeout time.Duration) []kafkaRecord {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		recs := c.records()
		ids := make(map[string]bool, len(recs))
		for _, r := range recs {
			ids[r.id()] = true
		}
		if len(ids) >= n {
			return recs
		}
		if time.Now().After(deadline) {
			c.mu.Lock()
			last := c.lastErr
			c.mu.Unlock()
			c.t.Fatalf("received %d distinct of %d records (%d in all) within %s; last fetch error: %v", len(ids), n, len(recs), timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *kafkaConsumer) ids() []string {
	recs := c.records()
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.id()
	}
	return ids
}

func (c *kafkaConsumer) waitDistinctMessages(n int, timeout time.Duration) []message {
	c.t.Helper()
	return asMessages(c.waitDistinct(n, timeout))
}

// checkBroker asserts checkKafkaRecords of everything received, on topics
// of the partitions the harness has the relay create.
func (c *kafkaConsumer) checkBroker(t *testing.T) {
	t.Helper()
	checkKafkaRecords(t, c.records(), kafkaPartitions)
}

// asMessages gives records the shape checkAll and checkOrder judge: the
// id header as message id, the value as body.
func asMessages(recs []kafkaRecord) []message {
	msgs := make([]message, len(recs))
	for i, r := range recs {
		msgs[i] = message{RoutingKey: r.Topic, Delivery: amqp.Delivery{MessageId: r.id(), Body: r.Value}}
	}
	return msgs
}

// checkKafkaRecords asserts what every sink delivery must satisfy on top
// of checkAll and checkOrder: a repeated id is the same record (topic, key
// and value), each key stays on the partition the Java client's hash
// gives it among partitions, and its commit LSNs never go back.
func checkKafkaRecords(t *testing.T, recs []kafkaRecord, partitions int32) {
	t.Helper()
	first := map[string]kafkaRecord{}
	lastLSN := map[string]uint64{}
	for _, r := range recs {
		id := r.id()
		if f, ok := first[id]; ok {
			if f.Topic != r.Topic || string(f.Key) != string(r.Key) || string(f.Value) != string(r.Value) {
				t.Fatalf("record %s delivered twice differently: %s/%s=%s, then %s/%s=%s", id, f.Topic, f.Key, f.Value, r.Topic, r.Key, r.Value)
			}
			continue
		}
		first[id] = r
		if want := javaPartition(r.Key, partitions); r.Partition != want {
			t.Fatalf("record %s with key %q on partition %d; murmur2 puts it on %d of %d", id, r.Key, r.Partition, want, partitions)
		}
		s, _ := r.header("x-relay-lsn")
		lsn, err := parseLSN(s)
		if err != nil {
			t.Fatalf("record %s: x-relay-lsn %q: %v", id, s, err)
		}
		k := r.Topic + "\x00" + string(r.Key)
		if lsn < lastLSN[k] {
			t.Fatalf("record %s with key %q: commit LSN %s after %X", id, r.Key, s, lastLSN[k])
		}
		lastLSN[k] = lsn
	}
}

func parseLSN(s string) (uint64, error) {
	if !lsnRE.MatchString(s) {
		return 0, fmt.Errorf("not an LSN")
	}
	hi, lo, _ := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("not an LSN")
	}
	return h<<32 | l, nil
}

// javaPartition is the partition the Java producer's default partitioner
// picks for a keyed record.
func javaPartition(key []byte, partitions int32) int32 {
	return (murmur2(key) & 0x7fffffff) % partitions
}

// murmur2 is Kafka's org.apache.kafka.common.utils.Utils.murmur2.
func murmur2(data []byte) int32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	n := len(data)
	h := seed ^ uint32(n)
	for i := 0; i+4 <= n; i += 4 {
		k := uint32(data[i]) | uint32(data[i+1])<<8 | uint32(data[i+2])<<16 | uint32(data[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	tail := data[n&^3:]
	switch len(tail) {
	case 3:
		h ^= uint32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(tail[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return int32(h)
}

// TestMurmur2MatchesJava pins the hash checkKafkaRecords relies on to the
// values of Kafka's own UtilsTest.
func TestMurmur2MatchesJava(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		if got := murmur2([]byte(in)); got != want {
			t.Errorf("murmur2(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestKafkaManyRowsArriveWithTheirProperties(t *testing.T) {
	t.Parallel()
	e := newKafkaEnv(t)
	c := e.consumeKafka()
	e.startRelay()
	const n = 20000
	t0 := time.Now()
	ids := e.insertEvents(n, 100, 37)
	recs := c.waitDistinct(n, 2*time.Minute)
	t.Logf("%d rows committed and consumed in %v", n, time.Since(t0).Round(time.Millisecond))
	checkAll(t, ids, asMessages(recs))
	checkOrder(t, asMessages(recs))
	checkKafkaRecords(t, recs, 3)

	createdAt := map[string]time.Time{}
	rows, err := e.db.Query(t.Context(), "SELECT id::text, created_at FROM outbox")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		var at time.Time
		if err := rows.Scan(&id, &at); err != nil {
			t.Fatal(err)
		}
		createdAt[id] = at
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	wantTopic := "outbox.order." + e.name
	partitions := map[int32]int{}
	for _, r := range recs {
		id := r.id()
		if r.Topic != wantTopic {
			t.Fatalf("record %s on topic %q, want %q", id, r.Topic, wantTopic)
		}
		partitions[r.Partition]++
		var p payload
		if err := json.Unmarshal(r.Value, &p); err != nil {
			t.Fatalf("record %s: value %q: %v", id, r.Value, err)
		}
		if string(r.Key) != p.Agg {
			t.Fatalf("record %s: key %q, want the aggregate id %q", id, r.Key, p.Agg)
		}
		if want := createdAt[id].Truncate(time.Millisecond); !r.Timestamp.Equal(want) {
			t.Fatalf("record %s: timestamp %s, want created_at %s", id, r.Timestamp, want)
		}
		for k, want := range map[string]string{
			"event_type":     "order.created",
			"aggregate_type": "order",
			"tenant":         "acme",
			"n":              strconv.Itoa(p.Seq),
		} {
			if got, ok := r.header(k); got != want {
				t.Fatalf("record %s: header %s = %q (present: %v), want %q", id, k, got, ok, want)
			}
		}
	}
	if len(partitions) != 3 {
		t.Errorf("records on partitions %v, want all of the 3 the relay created", partitions)
	}
	first := recs[0]
	for _, r := range recs {
		if r.id() == ids[0] {
			first = r
			break
		}
	}
	if string(first.Value) != `{"agg": "agg-0", "seq": 1}` {
		t.Errorf("first record's value %s: want the jsonb payload's text unchanged", first.Value)
	}
	t.Logf("first record: topic %s partition %d offset %d key %s headers %s value %s", first.Topic, first.Partition, first.Offset, first.Key, formatKafkaHeaders(first.Headers), first.Value)
}

func formatKafkaHeaders(hs []kgo.RecordHeader) string {
	parts := make([]string, len(hs))
	for i, h := range hs {
		parts[i] = h.Key + "=" + string(h.Value)
	}
	return strings.Join(parts, " ")
}

// TestKafkaRecordOverTheBrokerLimitBlocksThenDeadLetters: a row over the
// broker's limit, with no dead-letter topic, stops the stream before it
// without losing it or exiting: /readyz, the metrics and the log name it,
// and the slot stays before it. Restarted with RELAY_DEAD_LETTER, the relay
// sends the row there, without its payload, and the stream goes on.
func TestKafkaRecordOverTheBrokerLimitBlocksThenDeadLetters(t *testing.T) {
	t.Parallel()
	node := startOwnKafka(t, services.KafkaOptions{Configs: map[string]string{"message.max.bytes": "10000"}})
	e := newEnv(t)
	e.useKafka(node.Brokers(), "")
	e.extraVars = map[string]string{"RELAY_BLOCKED_RETRY_INTERVAL": "500ms"}
	c := e.consumeKafka()
	p := e.startRelay()
	ids := e.insertEvents(20, 5, 3)
	// The broker-wide limit is what the topic inherits: the relay must
	// cut batches at it, so that the oversized row, produced right after
	// the others, fails alone and is the one named.
	bigID := e.insertOversized("agg-0")
	committed := e.currentLSN() // the end of the oversized row's commit record
	reason := p.waitReady(t, http.StatusServiceUnavailable, bigID, 30*time.Second)
	if !strings.Contains(reason, "too large") {
		t.Errorf("/readyz says %q; want the reason (too large)", reason)
	}
	if v, _ := p.metric("relay_blocked"); v != 1 {
		t.Errorf("relay_blocked %v, want 1", v)
	}
	if v, _ := p.metric(`relay_publish_errors_total{sink="kafka",reason="too_large"`); v < 1 {
		t.Errorf(`relay_publish_errors_total{reason="too_large"} %v, want at least 1`, v)
	}
	// It keeps trying, and keeps the row: the slot never passes it. Each
	// retry is a new session that fails on the row again, after whatever
	// status updates it sent.
	restarts := p.waitMetric(t, "relay_session_restarts_total", "at least 1", func(v float64) bool { return v >= 1 }, 30*time.Second)
	tooLarge, _ := p.metric(`relay_publish_errors_total{sink="kafka",reason="too_large"`)
	p.waitMetric(t, "relay_session_restarts_total", fmt.Sprintf("at least %v", restarts+2), func(v float64) bool { return v >= restarts+2 }, 30*time.Second)
	p.waitMetric(t, `relay_publish_errors_total{sink="kafka",reason="too_large"`, fmt.Sprintf("at least %v", tooLarge+2), func(v float64) bool { return v >= tooLarge+2 }, 30*time.Second)
	if got := e.slotLSN(); got >= committed {
		t.Fatalf("slot at %X, past the oversized row's transaction (which ends at %X)", got, committed)
	}
	if log := p.log.String(); !strings.Contains(log, bigID) {
		t.Fatalf("the log does not name row %s; log:\n%s", bigID, log)
	}
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("SIGTERM while blocked: exit %d, want 0", code)
	}
	// Nothing before the oversized row is lost with it.
	c.waitDistinct(len(ids), 30*time.Second)

	const dlq = "relay.dead-letter"
	e.extraVars["RELAY_DEAD_LETTER"] = dlq
	dead := consumeKafkaAt(t, e.kafkaBrokers, "^"+regexp.QuoteMeta(dlq)+"$")
	p = e.startRelay()
	after := e.insertEvents(10, 5, 3)
	c.waitDistinct(len(ids)+len(after), 30*time.Second)
	eventually(t, 30*time.Second, func() error {
		if len(dead.records()) == 0 {
			return fmt.Errorf("nothing in %s yet", dlq)
		}
		return nil
	})
	dl := dead.records()
	if len(dl) != 1 || dl[0].id() != bigID {
		t.Fatalf("dead letters %v, want the one row %s", dl, bigID)
	}
	if why, _ := dl[0].header("x-relay-error"); !strings.Contains(why, "too large") {
		t.Errorf("dead letter's x-relay-error %q, want the reason", why)
	}
	if omitted, ok := dl[0].header("x-relay-payload-omitted"); !ok || len(dl[0].Value) != 0 {
		t.Errorf("dead letter carries %d payload bytes (x-relay-payload-omitted %q), want none: the broker refuses them", len(dl[0].Value), omitted)
	}
	if v, _ := p.metric("relay_dead_lettered_total"); v != 1 {
		t.Errorf("relay_dead_lettered_total %v, want 1", v)
	}
	for _, r := range c.records() {
		if r.id() == bigID {
			t.Fatalf("the oversized row %s reached its topic", bigID)
		}
	}
	recs := c.records()
	checkAll(t, append(ids, after...), asMessages(recs))
	// Each insertEvents numbers its aggregates' events from 1.
	checkOrder(t, asMessages(withIDs(recs, ids)))
	checkOrder(t, asMessages(withIDs(recs, after)))
	checkKafkaRecords(t, recs, 3)
	end := e.currentLSN()
	e.waitSlotAt(end, 30*time.Second)
}

// TestKafkaOversizedRowAmongOthersIsTheOneNamed commits an oversized row
// between normal rows of the same aggregate, in one transaction, to a
// topic whose own max.message.bytes is 10000. The relay must name that
// row, not a neighbour that shared its batch, and not move the slot.
func TestKafkaOversizedRowAmongOthersIsTheOneNamed(t *testing.T) {
	t.Parallel()
	node := startOwnKafka(t, services.KafkaOptions{})
	e := newEnv(t)
	e.useKafka(node.Brokers(), "")
	createTopic(t, node.Brokers(), "outbox.event.order", 3, map[string]string{"max.message.bytes": "10000"})
	c := e.consumeKafka()
	p := e.startRelay()

	tx, err := e.db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var small []string
	insert := func(payload string) string {
		var id string
		err := tx.QueryRow(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', 'agg-0', 'order.created', $1::jsonb) RETURNING id`, payload).Scan(&id)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	for i := range 5 {
		small = append(small, insert(fmt.Sprintf(`{"agg": "agg-0", "seq": %d}`, i+1)))
	}
	bigID := insert(oversizedPayload())
	for i := range 5 {
		insert(fmt.Sprintf(`{"agg": "agg-0", "seq": %d}`, i+7))
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	committed := e.currentLSN() // the end of its commit record

	p.waitReady(t, http.StatusServiceUnavailable, bigID, 30*time.Second)
	log := p.log.String()
	if !strings.Contains(log, bigID) {
		t.Fatalf("the log does not name the oversized row %s; log:\n%s", bigID, log)
	}
	for _, id := range small {
		if strings.Contains(log, id) {
			t.Fatalf("the log names row %s, a normal row committed before the oversized one; log:\n%s", id, log)
		}
	}
	if got := e.slotLSN(); got >= committed {
		t.Fatalf("slot at %X, past the oversized row's transaction (which ends at %X)", got, committed)
	}
	for _, r := range c.records() {
		if r.id() == bigID {
			t.Fatalf("the oversized row %s reached the topic", bigID)
		}
	}
}

// insertOversized commits one row, alone in its transaction, whose record
// is over 10000 bytes however it is compressed, and returns its id.
func (e *env) insertOversized(aggregate string) string {
	e.t.Helper()
	var id string
	err := e.db.QueryRow(e.t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		VALUES ('order', $1, 'order.created', $2::jsonb) RETURNING id`, aggregate, oversizedPayload()).Scan(&id)
	if err != nil {
		e.t.Fatal(err)
	}
	return id
}

// oversizedPayload is 50 kB of JSON around base64 random bytes, which
// compression cannot bring under 10000 bytes.
func oversizedPayload() string {
	blob := make([]byte, 37500)
	rand.Read(blob)
	return `{"blob": "` + base64.StdEncoding.EncodeToString(blob) + `"}`
}

// createTopic creates a topic with configs, as an operator would before
// the relay runs.
func createTopic(t *testing.T, brokers, topic string, partitions int32, configs map[string]string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrCreateTopicsRequest()
	rt := kmsg.NewCreateTopicsRequestTopic()
	rt.Topic, rt.NumPartitions, rt.ReplicationFactor = topic, partitions, -1
	for k, v := range configs {
		c := kmsg.NewCreateTopicsRequestTopicConfig()
		c.Name, c.Value = k, kmsg.StringPtr(v)
		rt.Configs = append(rt.Configs, c)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(t.Context(), cl)
	if err == nil {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// TestKafkaSASL runs the relay against a broker that requires SASL, with
// each mechanism the relay supports.
func TestKafkaSASL(t *testing.T) {
	t.Parallel()
	const user, password = "relay", "pa:ss w0rd"
	for _, tc := range []struct {
		mechanism string
		client    kgo.Opt
	}{
		{"PLAIN", kgo.SASL(plain.Auth{User: user, Pass: password}.AsMechanism())},
		{"SCRAM-SHA-256", kgo.SASL(scram.Auth{User: user, Pass: password}.AsSha256Mechanism())},
		{"SCRAM-SHA-512", kgo.SASL(scram.Auth{User: user, Pass: password}.AsSha512Mechanism())},
	} {
		t.Run(tc.mechanism, func(t *testing.T) {
			node := startOwnKafka(t, services.KafkaOptions{SASL: services.KafkaSASL{Mechanism: tc.mechanism, User: user, Password: password}})
			e := newEnv(t)
			e.useKafka(node.Brokers(), "")
			e.extraVars = map[string]string{
				"RELAY_KAFKA_SASL_MECHANISM": tc.mechanism,
				"RELAY_KAFKA_SASL_USERNAME":  user,
				"RELAY_KAFKA_SASL_PASSWORD":  password,
			}
			c := e.consumeKafka(tc.client)
			p := e.startRelay()
			ids := e.insertEvents(200, 20, 7)
			recs := c.waitDistinct(len(ids), 30*time.Second)
			checkAll(t, ids, asMessages(recs))
			checkOrder(t, asMessages(recs))
			if strings.Contains(p.log.String(), password) {
				t.Fatalf("the log shows the SASL password:\n%s", p.log.String())
			}
		})
	}
}

// TestKafkaAutoCreatedTopic leaves RELAY_KAFKA_CREATE_TOPICS at its
// default, false: a cluster that auto-creates topics gets the records.
func TestKafkaAutoCreatedTopic(t *testing.T) {
	t.Parallel()
	node := startOwnKafka(t, services.KafkaOptions{AutoCreateTopics: true, Partitions: 2})
	e := newEnv(t)
	e.useKafka(node.Brokers(), "")
	e.extraVars = map[string]string{"RELAY_KAFKA_CREATE_TOPICS": "false", "RELAY_KAFKA_PARTITIONS": "-1"}
	c := e.consumeKafka()
	e.startRelay()
	ids := e.insertEvents(200, 20, 7)
	recs := c.waitDistinct(len(ids), 30*time.Second)
	checkAll(t, ids, asMessages(recs))
	checkOrder(t, asMessages(recs))
	checkKafkaRecords(t, recs, 2)
}

func TestHelpListsKafkaVariables(t *testing.T) {
	t.Parallel()
	p := startRelayWith(t, nil, "--help")
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	out := p.log.String()
	for _, v := range []string{"RELAY_KAFKA_BROKERS", "RELAY_KAFKA_TOPIC", "RELAY_KAFKA_CREATE_TOPICS", "RELAY_KAFKA_PARTITIONS",
		"RELAY_KAFKA_REPLICATION_FACTOR", "RELAY_KAFKA_TLS", "RELAY_KAFKA_TLS_CA_FILE", "RELAY_KAFKA_TLS_CERT_FILE",
		"RELAY_KAFKA_TLS_KEY_FILE", "RELAY_KAFKA_SASL_MECHANISM", "RELAY_KAFKA_SASL_USERNAME", "RELAY_KAFKA_SASL_PASSWORD"} {
		if !strings.Contains(out, v) {
			t.Errorf("--help does not list %s", v)
		}
	}
}

// startOwnKafka starts a kfake for this test alone, for tests that kill
// the broker or need it configured their own way.
func startOwnKafka(t *testing.T, opts services.KafkaOptions) *services.Kafka {
	t.Helper()
	node, err := services.StartKafka(t.Context(), opts)
	if err != nil {
		t.Fatalf("start this test's own kfake: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(node.LogPath())
			t.Logf("kafka log:\n%s", b)
		}
		node.Close()
	})
	return node
}

// withIDs returns the records of recs whose id is one of ids.
func withIDs(recs []kafkaRecord, ids []string) []kafkaRecord {
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var out []kafkaRecord
	for _, r := range recs {
		if want[r.id()] {
			out = append(out, r)
		}
	}
	return out
}

// highestRelayLSN is the highest commit LSN (x-relay-lsn) that c received.
func (c *kafkaConsumer) highestRelayLSN() uint64 {
	var last uint64
	for _, r := range c.records() {
		s, _ := r.header("x-relay-lsn")
		if lsn, err := parseLSN(s); err == nil {
			last = max(last, lsn)
		}
	}
	return last
}
