//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/relay-dev/relay/integration/services"
)

// eosSeed replays TestKafkaExactlyOnceSurvivesSIGKILLs's workload and kill
// schedule: go test ./integration -run ExactlyOnceSurvives -args -eos-seed=N
// with the seed a failed run logged. (The schedule repeats; the timing of
// the relay and the broker against it cannot.)
var eosSeed = flag.Uint64("eos-seed", 0, "seed of TestKafkaExactlyOnceSurvivesSIGKILLs's workload and kill schedule; 0 picks one from the clock")

// readCommitted is what an exactly-once consumer sets.
var readCommitted = kgo.FetchIsolationLevel(kgo.ReadCommitted())

// useExactlyOnce turns on the relay's exactly-once mode. An empty id or
// topic leaves the relay's default (relay-<slot>, relay.checkpoints).
func (e *env) useExactlyOnce(txnID, checkpointTopic string) {
	if e.extraVars == nil {
		e.extraVars = map[string]string{}
	}
	e.extraVars["RELAY_KAFKA_EXACTLY_ONCE"] = "true"
	if txnID != "" {
		e.extraVars["RELAY_KAFKA_TRANSACTIONAL_ID"] = txnID
	}
	if checkpointTopic != "" {
		e.extraVars["RELAY_KAFKA_CHECKPOINT_TOPIC"] = checkpointTopic
	}
}

// newExactlyOnceEnv is a Kafka env on the shared cluster in exactly-once
// mode, with a transactional id, a checkpoint topic and event topics of
// this run alone: a real cluster (RELAY_TEST_KAFKA_BROKERS) keeps the
// checkpoints and records of earlier runs, whose database names repeat, and
// an old checkpoint under the same id would make the relay skip new rows.
func newExactlyOnceEnv(t *testing.T) (e *env, txnID, checkpointTopic string) {
	t.Helper()
	return newExactlyOnceEnvOn(t, kafkaBrokers)
}

// newExactlyOnceEnvOn is newExactlyOnceEnv on the Kafka at brokers.
func newExactlyOnceEnvOn(t *testing.T, brokers string) (e *env, txnID, checkpointTopic string) {
	t.Helper()
	e = newEnv(t)
	run := fmt.Sprintf("%s.%x", e.name, time.Now().UnixNano())
	e.useKafka(brokers, "outbox.{aggregate_type}."+run)
	txnID, checkpointTopic = "relay-test-"+run, "relay.checkpoints."+run
	e.useExactlyOnce(txnID, checkpointTopic)
	return e, txnID, checkpointTopic
}

// eosWorkload commits rows in transactions of mixed sizes (a single row to
// a couple of thousand), each row of a random aggregate among aggregates;
// even aggregates are orders and odd ones invoices, so transactions span
// two topics. Payloads carry the aggregate and its sequence number, as
// insertEvents's do, padded to varied sizes.
type eosWorkload struct {
	e          *env
	rng        *rand.Rand
	aggregates int
	seq        []int
}

func newWorkload(e *env, rng *rand.Rand, aggregates int) *eosWorkload {
	return &eosWorkload{e: e, rng: rng, aggregates: aggregates, seq: make([]int, aggregates)}
}

// txSize draws a transaction size: mostly small, sometimes large.
func (w *eosWorkload) txSize() int {
	switch r := w.rng.IntN(10); {
	case r < 4:
		return 1
	case r < 7:
		return 2 + w.rng.IntN(19)
	case r < 9:
		return 21 + w.rng.IntN(180)
	default:
		return 201 + w.rng.IntN(1800)
	}
}

// commit inserts size rows in one transaction and returns their ids.
func (w *eosWorkload) commit(ctx context.Context, size int) ([]string, error) {
	types, aggs, seqs, pads := make([]string, size), make([]string, size), make([]int32, size), make([]int32, size)
	for i := range size {
		a := w.rng.IntN(w.aggregates)
		w.seq[a]++
		types[i] = "order"
		if a%2 == 1 {
			types[i] = "invoice"
		}
		aggs[i], seqs[i], pads[i] = fmt.Sprintf("agg-%d", a), int32(w.seq[a]), int32(w.rng.IntN(400))
	}
	// INSERT … SELECT inserts in the SELECT's order, so each aggregate's
	// rows reach the WAL in sequence order.
	rows, err := w.e.db.Query(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		SELECT typ, agg, typ || '.created', jsonb_build_object('agg', agg, 'seq', seq, 'pad', repeat('x', pad)), jsonb_build_object('n', seq)
		FROM unnest($1::text[], $2::text[], $3::int[], $4::int[]) WITH ORDINALITY AS u(typ, agg, seq, pad, ord)
		ORDER BY ord
		RETURNING id::text`, types, aggs, seqs, pads)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	if len(ids) != size {
		return nil, fmt.Errorf("inserted %d rows, want %d", len(ids), size)
	}
	return ids, nil
}

// insertPaced commits n rows at about rate rows a second, so that they are
// still flowing while the test kills things. It runs outside the test's
// goroutine, so it returns its error instead of failing the test.
func (w *eosWorkload) insertPaced(ctx context.Context, n int, rate float64) (ids []string, txs int, err error) {
	start := time.Now()
	for len(ids) < n {
		size := min(w.txSize(), n-len(ids))
		got, err := w.commit(ctx, size)
		if err != nil {
			return ids, txs, fmt.Errorf("commit transaction %d (%d rows): %w", txs+1, size, err)
		}
		ids = append(ids, got...)
		txs++
		due := start.Add(time.Duration(float64(len(ids)) / rate * float64(time.Second)))
		select {
		case <-ctx.Done():
			return ids, txs, ctx.Err()
		case <-time.After(time.Until(due)):
		}
	}
	return ids, txs, nil
}

// insertUntil commits a transaction every interval until stop is closed,
// so that rows are still flowing at the last fault the test injects; the
// transaction under way then completes. Paced by transactions rather than
// rows, it leaves the relay no idle spell after a large one. It runs
// outside the test's goroutine, so it returns its error instead of
// failing the test.
func (w *eosWorkload) insertUntil(ctx context.Context, stop <-chan struct{}, interval time.Duration) (ids []string, txs int, err error) {
	next := time.Now()
	for {
		size := w.txSize()
		got, err := w.commit(ctx, size)
		if err != nil {
			return ids, txs, fmt.Errorf("commit transaction %d (%d rows): %w", txs+1, size, err)
		}
		ids = append(ids, got...)
		txs++
		next = next.Add(interval)
		select {
		case <-stop:
			return ids, txs, nil
		case <-ctx.Done():
			return ids, txs, ctx.Err()
		case <-time.After(time.Until(next)):
		}
	}
}

type topicPartition struct {
	topic     string
	partition int32
}

func (tp topicPartition) String() string { return fmt.Sprintf("%s/%d", tp.topic, tp.partition) }

// partitionsMatching lists the partitions of every topic matching pattern.
func partitionsMatching(ctx context.Context, cl *kgo.Client, pattern string) ([]topicPartition, error) {
	re, err := regexp.Compile(pattern)
	if err != nil {
		return nil, err
	}
	resp, err := kmsg.NewPtrMetadataRequest().RequestWith(ctx, cl) // nil Topics: all of them
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	var tps []topicPartition
	for _, t := range resp.Topics {
		if t.Topic == nil || !re.MatchString(*t.Topic) {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return nil, fmt.Errorf("metadata of %s: %w", *t.Topic, err)
		}
		for _, p := range t.Partitions {
			tps = append(tps, topicPartition{*t.Topic, p.Partition})
		}
	}
	return tps, nil
}

// endOffsets returns each partition's last stable offset (isolation 1) or
// high watermark (isolation 0).
func endOffsets(ctx context.Context, cl *kgo.Client, tps []topicPartition, isolation int8) (map[topicPartition]int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.IsolationLevel = isolation
	byTopic := map[string]*kmsg.ListOffsetsRequestTopic{}
	for _, tp := range tps {
		rt, ok := byTopic[tp.topic]
		if !ok {
			nt := kmsg.NewListOffsetsRequestTopic()
			nt.Topic = tp.topic
			rt = &nt
			byTopic[tp.topic] = rt
		}
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition, rp.Timestamp = tp.partition, -1
		rt.Partitions = append(rt.Partitions, rp)
	}
	for _, rt := range byTopic {
		req.Topics = append(req.Topics, *rt)
	}
	ends := map[topicPartition]int64{}
	for _, shard := range cl.RequestSharded(ctx, req) {
		if shard.Err != nil {
			return nil, fmt.Errorf("list offsets: %w", shard.Err)
		}
		for _, t := range shard.Resp.(*kmsg.ListOffsetsResponse).Topics {
			for _, p := range t.Partitions {
				tp := topicPartition{t.Topic, p.Partition}
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
					return nil, fmt.Errorf("list offsets of %s: %w", tp, err)
				}
				ends[tp] = p.Offset
			}
		}
	}
	if len(ends) != len(tps) {
		return nil, fmt.Errorf("list offsets: %d partitions answered of %d", len(ends), len(tps))
	}
	return ends, nil
}

// settledEnds waits until no transaction is open on any partition of the
// topics matching pattern (each last stable offset equals its high
// watermark) and returns those ends. Only then is a read_committed
// snapshot final: an open transaction could still commit more.
func settledEnds(t *testing.T, brokers, pattern string, timeout time.Duration) map[topicPartition]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var ends map[topicPartition]int64
	eventually(t, timeout, func() error {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		tps, err := partitionsMatching(ctx, cl, pattern)
		if err != nil {
			return err
		}
		if len(tps) == 0 {
			return fmt.Errorf("no topic matches %s", pattern)
		}
		lso, err := endOffsets(ctx, cl, tps, 1)
		if err != nil {
			return err
		}
		hwm, err := endOffsets(ctx, cl, tps, 0)
		if err != nil {
			return err
		}
		for _, tp := range tps {
			if lso[tp] != hwm[tp] {
				return fmt.Errorf("%s: a transaction is open (last stable offset %d, high watermark %d)", tp, lso[tp], hwm[tp])
			}
		}
		ends = hwm
		return nil
	})
	return ends
}

// readUpTo reads every partition of ends from its start to its end with a
// fresh client of the given isolation level, and returns the data records
// in each partition's order.
func readUpTo(t *testing.T, brokers string, ends map[topicPartition]int64, level kgo.IsolationLevel, timeout time.Duration) []kafkaRecord {
	t.Helper()
	return asKafkaRecords(readUpToRaw(t, brokers, ends, level, timeout))
}

// asKafkaRecords converts the data records of recs, in order.
func asKafkaRecords(recs []*kgo.Record) []kafkaRecord {
	var out []kafkaRecord
	for _, r := range recs {
		if r.Attrs.IsControl() {
			continue
		}
		out = append(out, kafkaRecord{
			Topic: r.Topic, Partition: r.Partition, Offset: r.Offset,
			Key: r.Key, Value: r.Value, Headers: r.Headers, Timestamp: r.Timestamp,
		})
	}
	return out
}

// committedByMarkers returns the records of recs (read_uncommitted, with
// control records) of the transactions that were committed, in log order
// per partition. A transaction is committed when a commit marker of its
// producer and epoch is in any partition: the coordinator decided to
// commit and, were it Kafka's, would write the markers it had not
// written yet when it died. A transaction whose producer moved on to
// another epoch in a partition without a marker there and without one
// elsewhere was never committed.
func committedByMarkers(recs []*kgo.Record) []*kgo.Record {
	type key struct {
		tp  topicPartition
		pid int64
	}
	type txnID struct {
		pid   int64
		epoch int16
	}
	type open struct {
		epoch int16
		recs  []*kgo.Record
	}
	isCommit := func(r *kgo.Record) bool {
		// The key is a version and a type: 0 abort, 1 commit.
		return r.Attrs.IsControl() && len(r.Key) >= 4 && r.Key[3] == 1
	}
	decided := map[txnID]bool{}
	for _, r := range recs {
		if isCommit(r) {
			decided[txnID{r.ProducerID, r.ProducerEpoch}] = true
		}
	}
	var out []*kgo.Record
	pending := map[key]*open{}
	flush := func(k key, o *open) {
		if o != nil && decided[txnID{k.pid, o.epoch}] {
			out = append(out, o.recs...)
		}
	}
	for _, r := range recs {
		k := key{topicPartition{r.Topic, r.Partition}, r.ProducerID}
		switch {
		case r.Attrs.IsControl():
			if o := pending[k]; o != nil && isCommit(r) {
				out = append(out, o.recs...)
			}
			delete(pending, k)
		case !r.Attrs.IsTransactional():
			out = append(out, r)
		default:
			o := pending[k]
			if o == nil || o.epoch != r.ProducerEpoch {
				flush(k, o)
				o = &open{epoch: r.ProducerEpoch}
				pending[k] = o
			}
			o.recs = append(o.recs, r)
		}
	}
	for k, o := range pending {
		flush(k, o)
	}
	return out
}

// undecidedByMarkers returns the data records of transactions that have
// neither a commit nor an abort marker in any partition: what kfake leaves
// when it is killed after acknowledging a commit and before writing its
// markers (it keeps no transaction log to finish them from, as Kafka
// does).
func undecidedByMarkers(recs []*kgo.Record) []*kgo.Record {
	type txnID struct {
		pid   int64
		epoch int16
	}
	decided := map[txnID]bool{}
	for _, r := range recs {
		if r.Attrs.IsControl() {
			decided[txnID{r.ProducerID, r.ProducerEpoch}] = true
		}
	}
	var out []*kgo.Record
	for _, r := range recs {
		if r.Attrs.IsTransactional() && !r.Attrs.IsControl() && !decided[txnID{r.ProducerID, r.ProducerEpoch}] {
			out = append(out, r)
		}
	}
	return out
}

// readUpToRaw is readUpTo returning kgo's records, transaction markers
// (control records) included.
func readUpToRaw(t *testing.T, brokers string, ends map[topicPartition]int64, level kgo.IsolationLevel, timeout time.Duration) []*kgo.Record {
	t.Helper()
	offsets := map[string]map[int32]kgo.Offset{}
	for tp, end := range ends {
		if end == 0 {
			continue
		}
		if offsets[tp.topic] == nil {
			offsets[tp.topic] = map[int32]kgo.Offset{}
		}
		offsets[tp.topic][tp.partition] = kgo.NewOffset().AtStart()
	}
	if len(offsets) == 0 {
		return nil
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(brokers, ",")...),
		kgo.ConsumePartitions(offsets),
		kgo.FetchIsolationLevel(level),
		kgo.KeepControlRecords(),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(timeout)
	next := map[topicPartition]int64{}
	var recs []*kgo.Record
	quiet := 0
	for {
		var short []string
		for tp, end := range ends {
			if next[tp] < end {
				short = append(short, fmt.Sprintf("%s at %d of %d", tp, next[tp], end))
			}
		}
		if len(short) == 0 {
			return recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("reading to the end after %s: %s", timeout, strings.Join(short, ", "))
		}
		// The tail of a partition can be out of a read_committed
		// consumer's sight (aborted records whose marker the broker
		// lost): quiet seconds mean there is nothing more to see.
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		fs := cl.PollFetches(ctx)
		cancel()
		if len(fs) == 0 || errors.Is(fs.Err0(), context.DeadlineExceeded) {
			if quiet++; (len(recs) > 0 && quiet >= 2) || quiet >= 5 {
				t.Logf("%s reader: nothing more to see, short of the end: %s", isolationName(level), strings.Join(short, ", "))
				return recs
			}
			continue
		}
		quiet = 0
		fs.EachError(func(topic string, p int32, err error) {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Logf("fetch %s/%d: %v (retrying)", topic, p, err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			tp := topicPartition{r.Topic, r.Partition}
			next[tp] = r.Offset + 1
			if r.Offset < ends[tp] {
				recs = append(recs, r)
			}
		})
	}
}

func isolationName(level kgo.IsolationLevel) string {
	if level == kgo.ReadCommitted() {
		return "read_committed"
	}
	return "read_uncommitted"
}

// unterminatedTransactions reads every partition of ends, markers
// included, and describes each transaction that no commit or abort marker
// ends: one whose producer's next record is of a later epoch (a new
// transaction) or that runs to the end of the log. A read_committed
// consumer filters aborted records by their marker; without one it shows
// them, or, told by the broker that the transaction aborted, drops the
// producer's records until an abort marker that never comes.
func unterminatedTransactions(t *testing.T, brokers string, ends map[topicPartition]int64) []string {
	t.Helper()
	type txn struct {
		epoch       int16
		first, last int64
	}
	var found []string
	open := map[topicPartition]map[int64]*txn{}
	for _, r := range readUpToRaw(t, brokers, ends, kgo.ReadUncommitted(), 30*time.Second) {
		tp := topicPartition{r.Topic, r.Partition}
		if open[tp] == nil {
			open[tp] = map[int64]*txn{}
		}
		cur := open[tp][r.ProducerID]
		switch {
		case r.Attrs.IsControl():
			delete(open[tp], r.ProducerID)
		case !r.Attrs.IsTransactional():
		case cur == nil:
			open[tp][r.ProducerID] = &txn{r.ProducerEpoch, r.Offset, r.Offset}
		case cur.epoch != r.ProducerEpoch:
			found = append(found, fmt.Sprintf("%s offsets %d-%d (producer %d epoch %d), followed by epoch %d at %d", tp, cur.first, cur.last, r.ProducerID, cur.epoch, r.ProducerEpoch, r.Offset))
			open[tp][r.ProducerID] = &txn{r.ProducerEpoch, r.Offset, r.Offset}
		default:
			cur.last = r.Offset
		}
	}
	for tp, txns := range open {
		for pid, cur := range txns {
			found = append(found, fmt.Sprintf("%s offsets %d-%d (producer %d epoch %d), at the end of the log", tp, cur.first, cur.last, pid, cur.epoch))
		}
	}
	return found
}

// deliveries counts what a consumer saw: records, distinct ids, and the
// records beyond the first of their id.
type deliveries struct{ records, distinct, duplicates int }

func countDeliveries(recs []kafkaRecord) deliveries {
	seen := make(map[string]bool, len(recs))
	d := deliveries{records: len(recs)}
	for _, r := range recs {
		if seen[r.id()] {
			d.duplicates++
			continue
		}
		seen[r.id()] = true
	}
	d.distinct = len(seen)
	return d
}

// firstDuplicates describes up to n ids delivered more than once, with
// where each copy is, for a failure message.
func firstDuplicates(recs []kafkaRecord, n int) string {
	where := map[string][]string{}
	var order []string
	for _, r := range recs {
		id := r.id()
		if len(where[id]) == 1 {
			order = append(order, id)
		}
		lsn, _ := r.header("x-relay-lsn")
		where[id] = append(where[id], fmt.Sprintf("%s/%d@%d(lsn %s)", r.Topic, r.Partition, r.Offset, lsn))
	}
	var b strings.Builder
	for _, id := range order[:min(n, len(order))] {
		fmt.Fprintf(&b, "\n  %s at %s", id, strings.Join(where[id], ", "))
	}
	return b.String()
}

// checkExactlyOnce reads the event topics of e to their settled end as a
// read_committed consumer would, and asserts that it sees each of ids
// exactly once, nothing else, in order per aggregate, with the properties
// checkKafkaRecords judges. It returns those records and, for the log, the
// counts a read_uncommitted consumer sees over the same offsets.
func checkExactlyOnce(t *testing.T, e *env, ids []string) (committed []kafkaRecord, committedCount, uncommittedCount deliveries) {
	t.Helper()
	return checkExactlyOnceAs(t, e, ids, false)
}

// checkExactlyOnceAs is checkExactlyOnce; byMarkers judges the log as a
// broker that honours the protocol would serve it to read_committed
// consumers, for a kfake that was SIGKILLed: kfake forgets the
// transactions open when it dies, writing no abort marker, where Kafka's
// coordinator would abort them on its transaction timeout. The records of
// a transaction count when its commit marker follows them, and a
// transaction its producer abandoned for a later epoch counts as aborted.
// What the relay wrote is judged exactly; the broker's lapse is logged.
func checkExactlyOnceAs(t *testing.T, e *env, ids []string, byMarkers bool) (committed []kafkaRecord, committedCount, uncommittedCount deliveries) {
	t.Helper()
	tmpl := e.kafkaTopic
	if tmpl == "" {
		tmpl = defaultKafkaTopic
	}
	ends := settledEnds(t, e.kafkaBrokers, topicPattern(tmpl), 30*time.Second)
	raw := readUpToRaw(t, e.kafkaBrokers, ends, kgo.ReadUncommitted(), 30*time.Second)
	if byMarkers {
		committed = asKafkaRecords(committedByMarkers(raw))
	} else {
		committed = readUpTo(t, e.kafkaBrokers, ends, kgo.ReadCommitted(), 30*time.Second)
	}
	uncommitted := asKafkaRecords(raw)
	committedCount, uncommittedCount = countDeliveries(committed), countDeliveries(uncommitted)
	lapse := false
	if open := unterminatedTransactions(t, e.kafkaBrokers, ends); len(open) > 0 {
		report := t.Errorf
		if byMarkers {
			report, lapse = t.Logf, true
		}
		report("the broker's log holds %d transactions with neither a commit nor an abort marker, so read_committed consumers cannot filter them (kfake, for one, aborts the transactions open when it is killed without writing their markers):\n  %s",
			len(open), strings.Join(open[:min(10, len(open))], "\n  "))
	}
	if committedCount.duplicates != 0 {
		report := t.Errorf
		cpTopic := e.extraVars["RELAY_KAFKA_CHECKPOINT_TOPIC"]
		if cpTopic == "" {
			cpTopic = "relay.checkpoints"
		}
		if byMarkers {
			// A commit whose marker kfake lost in the checkpoint's
			// partition alone looks uncommitted to the relay, which then
			// rightly produces its events again: only then are
			// duplicates the broker's.
			cpEnds := settledEnds(t, e.kafkaBrokers, "^"+regexp.QuoteMeta(cpTopic)+"$", 30*time.Second)
			if open := unterminatedTransactions(t, e.kafkaBrokers, cpEnds); len(open) > 0 {
				t.Logf("the checkpoint topic holds %d transactions with no marker (kfake's lapse):\n  %s", len(open), strings.Join(open[:min(10, len(open))], "\n  "))
				lapse = true
			}
		}
		if lapse {
			report = t.Logf
		}
		report("read_committed: %d duplicates among %d records (%d distinct ids, %d inserted):%s",
			committedCount.duplicates, committedCount.records, committedCount.distinct, len(ids), firstDuplicates(committed, 10))
	}
	arrived := committed
	if lapse {
		// The relay confirms a row to the slot only once its transaction
		// committed, so rows in a transaction kfake never decided, below
		// the slot, were acknowledged and then lost by kfake: counted as
		// arrived, and said. A row in no transaction at all still fails.
		seen := map[string]bool{}
		for _, r := range committed {
			seen[r.id()] = true
		}
		lost := 0
		for _, r := range asKafkaRecords(undecidedByMarkers(raw)) {
			if !seen[r.id()] {
				seen[r.id()] = true
				arrived = append(arrived, r)
				lost++
			}
		}
		if lost > 0 {
			t.Logf("%d rows are only in transactions without markers (kfake's lapse): counted as arrived", lost)
		}
	}
	checkAll(t, ids, asMessages(arrived))
	checkOrder(t, asMessages(committed))
	checkKafkaRecords(t, committed, 3)
	return committed, committedCount, uncommittedCount
}

// checkCheckpoint asserts that the last committed checkpoint of txnID in
// topic is the position of the last event: the commit LSN of the last
// transaction and the index of its last row, as JSON {"lsn","index"}; and
// that the topic is compacted.
func checkCheckpoint(t *testing.T, brokers, topic, txnID string, recs []kafkaRecord) {
	t.Helper()
	var lastLSN uint64
	var lastLSNText string
	rowsAtLast := 0
	for _, r := range recs {
		s, _ := r.header("x-relay-lsn")
		lsn, err := parseLSN(s)
		if err != nil {
			t.Fatalf("record %s: x-relay-lsn %q: %v", r.id(), s, err)
		}
		switch {
		case lsn > lastLSN:
			lastLSN, lastLSNText, rowsAtLast = lsn, s, 1
		case lsn == lastLSN:
			rowsAtLast++
		}
	}
	ends := settledEnds(t, brokers, "^"+regexp.QuoteMeta(topic)+"$", 30*time.Second)
	var got []byte
	// Judged by markers, as checkExactlyOnceAs does, which is what
	// read_committed means on a broker that keeps them.
	for _, r := range committedByMarkers(readUpToRaw(t, brokers, ends, kgo.ReadUncommitted(), 30*time.Second)) {
		if string(r.Key) == txnID {
			got = r.Value
		}
	}
	if got == nil {
		t.Fatalf("checkpoint topic %s has no committed record keyed %q", topic, txnID)
	}
	var cp struct {
		LSN   *string `json:"lsn"`
		Index *int    `json:"index"`
	}
	if err := json.Unmarshal(got, &cp); err != nil || cp.LSN == nil || cp.Index == nil {
		t.Fatalf("checkpoint %s: want JSON {\"lsn\":\"0/…\",\"index\":N} (%v)", got, err)
	}
	if *cp.LSN != lastLSNText || *cp.Index != rowsAtLast-1 {
		t.Errorf("last checkpoint %s; the last event is row %d of the transaction committed at %s", got, rowsAtLast-1, lastLSNText)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(brokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDescribeConfigsRequest()
	res := kmsg.NewDescribeConfigsRequestResource()
	res.ResourceType, res.ResourceName, res.ConfigNames = kmsg.ConfigResourceTypeTopic, topic, []string{"cleanup.policy"}
	req.Resources = append(req.Resources, res)
	resp, err := req.RequestWith(t.Context(), cl)
	if err == nil && len(resp.Resources) == 1 {
		err = kerr.ErrorForCode(resp.Resources[0].ErrorCode)
	}
	if err != nil {
		t.Fatalf("describe checkpoint topic %s: %v", topic, err)
	}
	policy := ""
	for _, c := range resp.Resources[0].Configs {
		if c.Name == "cleanup.policy" && c.Value != nil {
			policy = *c.Value
		}
	}
	if policy != "compact" {
		t.Errorf("checkpoint topic %s has cleanup.policy %q, want compact", topic, policy)
	}
	t.Logf("last checkpoint %s = %s", txnID, got)
}

// TestKafkaExactlyOnceSurvivesSIGKILLs commits rows in transactions of
// mixed sizes, until after the last kill, while SIGKILLing the
// exactly-once relay again and again and restarting it each time. Each
// kill lands with work in flight: the relay is frozen first, and killed
// only once it has produced a row that the slot does not cover, in an open
// transaction (its successor must abort it and produce the row again) or a
// committed one (its successor must skip the row, which the slot replays).
// Some relays are frozen right after a status update moved the slot; some
// frozen relays get a successor that fences them, claims the checkpoint
// and is killed in turn before it can stream, the slot still held by the
// frozen relay's walsender. A read_committed consumer must see every row
// exactly once, in order per aggregate, and the slot must reach the WAL
// end.
func TestKafkaExactlyOnceSurvivesSIGKILLs(t *testing.T) {
	seed := *eosSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay with -args -eos-seed=%d)", seed, seed)
	workRNG, killRNG := rand.New(rand.NewPCG(seed, 1)), rand.New(rand.NewPCG(seed, 2))

	e, txnID, checkpointTopic := newExactlyOnceEnv(t)
	live := e.consumeKafka(readCommitted)
	produced := e.consumeKafka() // read_uncommitted: open transactions too
	s := &supervisor{t: t, e: e, p: e.startRelay()}

	const rounds = 12
	type result struct {
		ids []string
		txs int
		err error
	}
	inserted := make(chan result, 1)
	stop := make(chan struct{})
	stopInserting := sync.OnceFunc(func() { close(stop) })
	t.Cleanup(stopInserting)
	w := newWorkload(e, workRNG, 17)
	go func() {
		ids, txs, err := w.insertUntil(t.Context(), stop, 50*time.Millisecond)
		inserted <- result{ids, txs, err}
	}()

	admin, err := kgo.NewClient(kgo.SeedBrokers(strings.Split(e.kafkaBrokers, ",")...))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// What the relay under test produced is past the ends of the log as
	// of when it streams: the relays before it are dead by then.
	topics := topicPattern(e.kafkaTopic)
	since := partitionEnds(t, admin, topics)

	t0 := time.Now()
	kills := 0
	var schedule []string
	for round := range rounds {
		atStatus := killRNG.IntN(3) == 0
		succession := killRNG.IntN(4) == 0
		delay := time.Duration(100+killRNG.IntN(1400)) * time.Millisecond
		when, beyond := freezeWithRowsBeyondSlot(s, produced, since, atStatus, delay)
		what := fmt.Sprintf("round %d: frozen %s, with %d of its rows beyond the slot (%d seen committed)", round+1, when, beyond, rowsBeyond(live.records(), since, e.slotLSN()))
		if succession {
			// The frozen relay's walsender keeps the slot, so a successor
			// given the lock gets as far as fencing it and claiming the
			// checkpoint, and no further.
			lock := e.lockHolder()
			_, walsender := e.slotActive()
			if lock == 0 || walsender == 0 {
				t.Fatalf("round %d: the frozen relay holds no lock (backend %d) or no slot (walsender %d)", round+1, lock, walsender)
			}
			e.exec("SELECT pg_terminate_backend($1)", lock)
			q := startRelayWith(t, e.vars())
			eventually(t, 30*time.Second, func() error {
				if q.exited() {
					t.Fatalf("round %d: the successor exited (%v); log:\n%s", round+1, q.err, q.log.String())
				}
				if !strings.Contains(q.log.String(), "exactly-once producing") {
					return errors.New("the successor has not claimed the checkpoint yet")
				}
				return nil
			})
			if active, pid := e.slotActive(); !active || pid != walsender {
				t.Fatalf("round %d: slot active %v (walsender %d), want it still held by the frozen relay's walsender %d", round+1, active, pid, walsender)
			}
			q.kill()
			kills++
			what += "; its successor fenced it, claimed the checkpoint and was killed before streaming"
		}
		// Frozen, the relay cannot confirm what it produced, nor a
		// successor stream: the slot must still be behind those rows.
		delivered := func() uint64 { return highestCommitLSN(produced.records()) }
		if !e.killWithReplayDue(s.p, delivered) {
			t.Fatalf("%s, but the slot moved past them: a frozen relay confirmed", what)
		}
		kills++
		schedule = append(schedule, what)
		s.p = e.startRelay()
		since = partitionEnds(t, admin, topics)
	}
	stopInserting()
	res := <-inserted
	if res.err != nil {
		t.Fatalf("insert: %v", res.err)
	}
	t.Logf("%d rows in %d transactions over %v; %d SIGKILLs:\n  %s", len(res.ids), res.txs, time.Since(t0).Round(time.Millisecond), kills, strings.Join(schedule, "\n  "))

	s.waitSlotAtWALEnd(45 * time.Second)
	recs, rc, ru := checkExactlyOnce(t, e, res.ids)
	s.checkLive(live, len(res.ids))
	checkCheckpoint(t, e.kafkaBrokers, checkpointTopic, txnID, recs)
	t.Logf("read_committed: %d records, %d distinct, %d duplicates; read_uncommitted over the same offsets: %d records, %d distinct, %d duplicates (aborted transactions)",
		rc.records, rc.distinct, rc.duplicates, ru.records, ru.distinct, ru.duplicates)
	// librdkafka's read_committed consumer, under most non-Java clients,
	// must see the same: each row once, the aborted copies filtered.
	checkKcatSeesEachOnce(t, e.kafkaBrokers, topics, res.ids, recs)
	t.Logf("total %v", time.Since(t0).Round(time.Millisecond))
}

// freezeWithRowsBeyondSlot freezes the supervised relay once it has
// produced rows that the slot does not cover, as a read_uncommitted
// consumer of its topics (produced) sees them: records past since, the
// ends of the log when it started streaming. It returns when it froze it
// and how many such rows there are. Once the relay has produced rows of
// its own, it freezes it after delay, or right after the slot next moves
// if atStatus; a relay frozen with nothing beyond the slot (it had just
// confirmed all it produced) is thawed and frozen again a moment later.
func freezeWithRowsBeyondSlot(s *supervisor, produced *kafkaConsumer, since map[topicPartition]int64, atStatus bool, delay time.Duration) (when string, beyond int) {
	s.t.Helper()
	s.waitFor(30*time.Second, func() error {
		if rowsBeyond(produced.records(), since, 0) == 0 {
			return errors.New("the relay has produced nothing yet")
		}
		return nil
	})
	first := time.Now()
	const attempts = 20
	for attempt := 1; attempt <= attempts; attempt++ {
		if atStatus {
			from, start := s.e.slotLSN(), time.Now()
			for s.e.slotLSN() == from {
				if time.Since(start) > 10*time.Second {
					s.p.quit()
					s.t.Fatalf("the slot stayed at %X for %s while rows were committed (the relay got SIGQUIT: its log shows its goroutines)", from, time.Since(start).Round(time.Millisecond))
				}
				s.check()
				time.Sleep(2 * time.Millisecond)
			}
			when = "as the slot moved, "
		} else {
			time.Sleep(delay)
			when = ""
		}
		when += fmt.Sprintf("%v after it first produced", time.Since(first).Round(time.Millisecond))
		if attempt > 1 {
			when += fmt.Sprintf(" (try %d)", attempt)
		}
		s.check()
		s.p.freeze()
		// The consumer may lag what the frozen relay produced: give it
		// time to catch up.
		deadline := time.Now().Add(time.Second)
		var slot uint64
		for {
			slot = s.e.slotLSN()
			if n := rowsBeyond(produced.records(), since, slot); n > 0 {
				return when, n
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		s.t.Logf("frozen %s, the relay had produced no row beyond the slot at %X; thawed", when, slot)
		s.p.thaw()
		delay = 50 * time.Millisecond
	}
	s.t.Fatalf("in %d tries the relay never had produced a row that the slot did not cover", attempts)
	return "", 0
}

// rowsBeyond counts the records of recs at or after offset since in their
// partition whose commit LSN (x-relay-lsn) is at or after lsn: rows of
// transactions that a slot confirmed up to lsn replays.
func rowsBeyond(recs []kafkaRecord, since map[topicPartition]int64, lsn uint64) int {
	n := 0
	for _, r := range recs {
		if r.Offset < since[topicPartition{r.Topic, r.Partition}] {
			continue
		}
		s, _ := r.header("x-relay-lsn")
		if l, err := parseLSN(s); err == nil && l >= lsn {
			n++
		}
	}
	return n
}

// partitionEnds returns the high watermark of each partition of the topics
// matching pattern; a partition of a topic created later is missing, at 0.
func partitionEnds(t *testing.T, cl *kgo.Client, pattern string) map[topicPartition]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tps, err := partitionsMatching(ctx, cl, pattern)
	if err != nil {
		t.Fatal(err)
	}
	if len(tps) == 0 {
		return nil
	}
	ends, err := endOffsets(ctx, cl, tps, 0)
	if err != nil {
		t.Fatal(err)
	}
	return ends
}

// highestCommitLSN is the highest commit LSN (x-relay-lsn) among recs.
func highestCommitLSN(recs []kafkaRecord) uint64 {
	var last uint64
	for _, r := range recs {
		s, _ := r.header("x-relay-lsn")
		if l, err := parseLSN(s); err == nil {
			last = max(last, l)
		}
	}
	return last
}

// TestKafkaExactlyOnceSecondRelayFencesTheFirst makes the first relay a
// zombie: a standby waits on the leader lock; the leader is frozen
// (SIGSTOP) holding rows it cannot have committed to Kafka, and PostgreSQL
// drops its connections, as its timeouts would for a paused or partitioned
// process. The standby takes the lock and the slot, and its producer's
// initialisation fences the zombie's. Woken (SIGCONT), the zombie tries to
// commit those rows and must be refused: it exits 1 saying another relay
// took over, or, if it notices the lost lock first, stands by with the
// rows of its refused transaction counted as failed for good. Either way
// a read_committed consumer sees every row exactly once, and the second
// relay carries on, never fenced itself.
func TestKafkaExactlyOnceSecondRelayFencesTheFirst(t *testing.T) {
	// Its own broker, to freeze it.
	node := startOwnKafka(t, services.KafkaOptions{})
	e, txnID, checkpointTopic := newExactlyOnceEnvOn(t, node.Brokers())
	live := e.consumeKafka(readCommitted)
	first := e.startRelay()

	// Rows keep flowing, so that the zombie has rows to publish when it
	// wakes and the second relay has rows to carry on with.
	ctx, stopInserting := context.WithCancel(t.Context())
	defer stopInserting()
	type result struct {
		ids []string
		err error
	}
	inserted := make(chan result, 1)
	w := newWorkload(e, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3)), 11)
	go func() {
		var ids []string
		for ctx.Err() == nil {
			got, err := w.commit(context.WithoutCancel(ctx), 1+w.rng.IntN(40))
			if err != nil {
				inserted <- result{ids, err}
				return
			}
			ids = append(ids, got...)
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
		inserted <- result{ids, nil}
	}()
	eventually(t, 30*time.Second, func() error {
		if got := len(live.records()); got < 2000 {
			return fmt.Errorf("%d records, waiting for 2000", got)
		}
		return nil
	})

	second := startRelayWith(t, e.vars())
	second.waitReady(t, http.StatusServiceUnavailable, "standby", 30*time.Second)

	// With the broker frozen the first relay can end no transaction:
	// ending one waits for the broker's answers to its records. Once it
	// has decoded two source transactions since the freeze, the rows of
	// the second, begun after the freeze, are in its hands and cannot
	// have been committed.
	if err := node.Freeze(); err != nil {
		t.Fatal(err)
	}
	from := decodedTransactions(t, first)
	eventually(t, 30*time.Second, func() error {
		if got := decodedTransactions(t, first); got < from+2 {
			return fmt.Errorf("the first relay decoded %v source transactions since the broker froze, waiting for 2", got-from)
		}
		return nil
	})
	// Freeze the leader with those rows, thaw the broker, and let
	// PostgreSQL drop the leader's sessions: its lock and its walsender.
	first.freeze()
	if err := node.Thaw(); err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE pid <> pg_backend_pid() AND datname = current_database() AND application_name = 'relay'`)
	// Streaming, the second relay has initialised its producer, fencing
	// the zombie's epoch and aborting its open transaction, and committed
	// its claim on the checkpoint.
	second.waitReady(t, http.StatusOK, "streaming", 30*time.Second)
	first.thaw()

	// Whether the zombie learns first that it was fenced or that it lost
	// the lock is a race inside it, and both are right. Fenced first, it
	// exits saying so. Standing by, it logs only the lost lock, but the
	// events of its refused transaction have failed for good: here, with
	// its topics created and no dead-letter destination, being fenced by
	// another relay is the only permanent failure an event can meet.
	const refused = `relay_publish_errors_total{reason="permanent"`
	eventually(t, 30*time.Second, func() error {
		if first.exited() {
			return nil
		}
		// It may exit under a request: an error is retried.
		code, reason, err := first.get("/readyz")
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(reason, "standby") {
			return fmt.Errorf("the zombie neither exited nor stood by: /readyz %d %q (%v)", code, strings.TrimSpace(reason), err)
		}
		if n, _ := first.metric(refused); n == 0 {
			return fmt.Errorf("the zombie stands by, and %s} is 0: its transaction was not refused (yet)", refused)
		}
		return nil
	})
	if first.exited() {
		firstLog := first.log.String()
		if code := first.cmd.ProcessState.ExitCode(); code != 1 {
			t.Fatalf("the fenced relay exited with %d, want 1; its log:\n%s", code, firstLog)
		}
		fenced := first.lastWords()
		if !strings.Contains(fenced, "took over") || !strings.Contains(fenced, txnID) {
			t.Fatalf("the fenced relay's last words do not say another relay with transactional id %q took over: %q; its log:\n%s", txnID, fenced, firstLog)
		}
		t.Logf("the fenced relay: %s", fenced)
	} else {
		n, _ := first.metric(refused)
		t.Logf("the zombie noticed it lost the leader lock first and stands by; %v events of its refused transaction failed for good", n)
	}

	// The second relay keeps the slot and goes on.
	before := len(live.records())
	eventually(t, 30*time.Second, func() error {
		if second.exited() {
			t.Fatalf("the second relay exited (%v); log:\n%s", second.err, second.log.String())
		}
		if got := len(live.records()); got < before+1000 {
			return fmt.Errorf("%d records since the zombie woke, waiting for 1000", got-before)
		}
		return nil
	})
	stopInserting()
	res := <-inserted
	if res.err != nil {
		t.Fatalf("insert: %v", res.err)
	}
	s := &supervisor{t: t, e: e, p: second}
	s.waitSlotAtWALEnd(45 * time.Second)
	recs, rc, ru := checkExactlyOnce(t, e, res.ids)
	s.checkLive(live, len(res.ids))
	checkCheckpoint(t, e.kafkaBrokers, checkpointTopic, txnID, recs)
	// A zombie that got a new producer after being fenced would fence
	// the second relay in turn, which would take that for the
	// coordinator's doing.
	if log := s.p.log.String(); strings.Contains(log, "took over") || strings.Contains(log, "fenced this producer") {
		t.Errorf("the second relay was fenced; log:\n%s", log)
	}
	if code := s.p.stop(30 * time.Second); code != 0 {
		t.Errorf("the second relay exited with %d on SIGTERM, want 0", code)
	}
	t.Logf("%d rows; read_committed: %d records, %d duplicates; read_uncommitted: %d records, %d duplicates", len(res.ids), rc.records, rc.duplicates, ru.records, ru.duplicates)
}

// decodedTransactions is the relay's count of source transactions with
// rows that it decoded.
func decodedTransactions(t *testing.T, p *relayProc) float64 {
	t.Helper()
	if p.exited() {
		t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
	}
	n, _ := p.metric("relay_transactions_total")
	return n
}

// lastWords is the relay's "relay stopped" log line, which carries the
// error it exited with.
func (p *relayProc) lastWords() string {
	last := ""
	for _, line := range strings.Split(p.log.String(), "\n") {
		if strings.Contains(line, "relay stopped") {
			last = line
		}
	}
	return last
}

// quit sends SIGQUIT, on which a Go program prints every goroutine's
// stack and exits, and waits for it: the log of a stuck relay then shows
// where it is stuck.
func (p *relayProc) quit() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// supervisor keeps an env's relay running for a test that expects it to
// survive what the test does: a relay that exits is an error, reported
// with its last words, and is started again so that what consumers see can
// still be judged.
type supervisor struct {
	t     *testing.T
	e     *env
	p     *relayProc
	exits int
}

func (s *supervisor) check() {
	s.t.Helper()
	if !s.p.exited() {
		return
	}
	s.exits++
	s.t.Errorf("the relay exited with %d, instead of retrying; starting it again. Its last words: %s", s.p.cmd.ProcessState.ExitCode(), s.p.lastWords())
	s.p = s.e.startRelay()
}

// waitFor polls cond until it returns nil. At the deadline it SIGQUITs a
// running relay, so that its log shows where it is stuck, and fails.
func (s *supervisor) waitFor(timeout time.Duration, cond func() error) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s.check()
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.p.quit()
			s.t.Fatalf("after %s: %v (the relay got SIGQUIT: its log shows its goroutines)", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitDistinct waits until c saw n distinct ids.
func (s *supervisor) waitDistinct(c *kafkaConsumer, n int, timeout time.Duration) {
	s.t.Helper()
	s.waitFor(timeout, func() error {
		if d := countDeliveries(c.records()); d.distinct < n {
			return fmt.Errorf("%d distinct of %d records (%d in all)", d.distinct, n, d.records)
		}
		return nil
	})
}

// checkLive asserts that a read_committed consumer that read while
// everything happened also ends with n distinct ids and no duplicate.
func (s *supervisor) checkLive(c *kafkaConsumer, n int) {
	s.t.Helper()
	s.waitDistinct(c, n, 15*time.Second)
	if d := countDeliveries(c.records()); d.duplicates != 0 {
		s.t.Errorf("the live read_committed consumer saw %d duplicates among %d records:%s", d.duplicates, d.records, firstDuplicates(c.records(), 10))
	}
}

// waitSlotAtWALEnd waits until the slot confirms the WAL end as of now:
// then every row was committed to Kafka, and the topics hold all that they
// ever will.
func (s *supervisor) waitSlotAtWALEnd(timeout time.Duration) {
	s.t.Helper()
	end := s.e.currentLSN()
	s.waitFor(timeout, func() error {
		if got := s.e.slotLSN(); got < end {
			return fmt.Errorf("slot at %X, WAL end %X", got, end)
		}
		return nil
	})
}

// TestKafkaExactlyOnceBrokerKilled SIGKILLs the broker (its own kfake,
// fsyncing every batch) twice while rows flow through an exactly-once relay
// with the default transactional id and checkpoint topic, and restarts it.
// The relay must ride it out, as it does in at-least-once mode, and a
// read_committed consumer see every row exactly once. A relay that exits
// fails the test, but is started again so that what consumers see is still
// judged.
func TestKafkaExactlyOnceBrokerKilled(t *testing.T) {
	node := startOwnKafka(t, services.KafkaOptions{SyncWrites: true})
	e := newEnv(t)
	e.useKafka(node.Brokers(), "")
	e.useExactlyOnce("", "")
	live := e.consumeKafka() // only to pace the kills
	s := &supervisor{t: t, e: e, p: e.startRelay()}

	const n = 20000
	type result struct {
		ids []string
		err error
	}
	inserted := make(chan result, 1)
	w := newWorkload(e, rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4)), 13)
	go func() {
		ids, _, err := w.insertPaced(t.Context(), n, 2500)
		inserted <- result{ids, err}
	}()
	for round, at := range []int{2000, 9000} {
		s.waitFor(30*time.Second, func() error {
			if got := len(live.records()); got < at {
				return fmt.Errorf("round %d: %d records, waiting for %d", round, got, at)
			}
			return nil
		})
		if err := node.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if err := node.Restart(t.Context()); err != nil {
			t.Fatalf("restart kafka: %v", err)
		}
	}
	res := <-inserted
	if res.err != nil {
		t.Fatalf("insert: %v", res.err)
	}
	s.waitSlotAtWALEnd(45 * time.Second)
	// No live read_committed consumer: kfake's lapse (see
	// checkExactlyOnceAs) makes one drop committed records.
	recs, rc, ru := checkExactlyOnceAs(t, e, res.ids, true)
	checkCheckpoint(t, e.kafkaBrokers, "relay.checkpoints", "relay-"+e.slot, recs)
	t.Logf("%d rows, 2 broker kills, %d relay exits; read_committed: %d records, %d duplicates; read_uncommitted: %d records, %d duplicates", n, s.exits, rc.records, rc.duplicates, ru.records, ru.duplicates)
}
