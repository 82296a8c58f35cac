package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/integration/services"
)

// Whole database transactions in Kafka's exactly-once mode: a
// read_committed consumer sees all of a transaction's events, on every
// topic, or none of them.

// txnWorkload commits transactions of 1 to 50 rows of random aggregates of
// three aggregate types (three topics), each row carrying its transaction's size in the
// header txsize, and its aggregate and sequence number in its payload, as
// checkOrder reads them.
type txnWorkload struct {
	e   *env
	rng *rand.Rand
	seq []int
}

var txnTypes = []string{"order", "stock", "payment"}

func (w *txnWorkload) commit(ctx context.Context) ([]string, error) {
	size := 1 + w.rng.IntN(50)
	types, aggs, seqs := make([]string, size), make([]string, size), make([]int32, size)
	for i := range size {
		a := w.rng.IntN(len(w.seq))
		w.seq[a]++
		types[i] = txnTypes[a%len(txnTypes)] // an aggregate keeps to one topic, where its order holds
		aggs[i], seqs[i] = fmt.Sprintf("agg-%d", a), int32(w.seq[a])
	}
	rows, err := w.e.db.Query(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		SELECT typ, agg, typ || '.created', jsonb_build_object('agg', agg, 'seq', seq), jsonb_build_object('txsize', $4::int)
		FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS u(typ, agg, seq, ord)
		ORDER BY ord
		RETURNING id::text`, types, aggs, seqs, size)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// txnWatcher is a read_committed consumer that checks at every poll that
// no database transaction is partly visible: when it holds part of one
// and, by a fresh read of every partition's last stable offset, nothing
// more is visible to fetch, the rest of it is not committed while the
// part it holds is.
type txnWatcher struct {
	t       *testing.T
	cl      *kgo.Client
	admin   *kgo.Client
	pattern string
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	have    map[string]map[string]bool // commit LSN → ids
	size    map[string]int             // commit LSN → rows of its transaction
	next    map[topicPartition]int64   // next offset to read, control records included
	polls   int
	checks  int                 // polls after which nothing more was visible: judged
	partial map[string][]string // commit LSN → what was seen of it, with nothing more visible
}

func watchTransactions(t *testing.T, brokers, pattern string) *txnWatcher {
	t.Helper()
	seeds := strings.Split(brokers, ",")
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(seeds...),
		kgo.ConsumeRegex(), kgo.ConsumeTopics(pattern),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		// Markers too, so that a partition read to its end is read to
		// its last stable offset, whatever was aborted before it.
		kgo.KeepControlRecords(),
		kgo.MetadataMinAge(100*time.Millisecond), kgo.MetadataMaxAge(500*time.Millisecond),
	)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &txnWatcher{t: t, cl: cl, admin: admin, pattern: pattern, cancel: cancel, done: make(chan struct{}),
		have: map[string]map[string]bool{}, size: map[string]int{}, next: map[topicPartition]int64{}, partial: map[string][]string{}}
	go w.run(ctx)
	t.Cleanup(w.close)
	return w
}

func (w *txnWatcher) run(ctx context.Context) {
	defer close(w.done)
	for {
		fs := w.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		w.polls++
		fs.EachRecord(func(r *kgo.Record) {
			w.next[topicPartition{r.Topic, r.Partition}] = r.Offset + 1
			if r.Attrs.IsControl() {
				return
			}
			rec := asKafkaRecords([]*kgo.Record{r})[0]
			lsn, _ := rec.header("x-relay-lsn")
			size, _ := rec.header("txsize")
			if w.have[lsn] == nil {
				w.have[lsn] = map[string]bool{}
			}
			w.have[lsn][rec.id()] = true
			w.size[lsn], _ = strconv.Atoi(size)
		})
		var partial []string
		for lsn, ids := range w.have {
			if len(ids) < w.size[lsn] {
				partial = append(partial, lsn)
			}
		}
		next := make(map[topicPartition]int64, len(w.next))
		for tp, o := range w.next {
			next[tp] = o
		}
		w.mu.Unlock()
		// Read after the poll: a last stable offset only grows, so one
		// the consumer has reached now held nothing more when it
		// fetched.
		tps, err := partitionsMatching(ctx, w.admin, w.pattern)
		if err != nil {
			continue
		}
		lso, err := endOffsets(ctx, w.admin, tps, 1)
		if err != nil {
			continue
		}
		caughtUp := true
		for _, tp := range tps {
			if next[tp] < lso[tp] {
				caughtUp = false
			}
		}
		if !caughtUp {
			continue // more is visible: the consumer is still reading
		}
		w.mu.Lock()
		w.checks++ // caught up: every transaction it holds must be whole
		for _, lsn := range partial {
			if n := len(w.have[lsn]); n < w.size[lsn] {
				w.partial[lsn] = append(w.partial[lsn], fmt.Sprintf("%d of %d", n, w.size[lsn]))
			}
		}
		w.mu.Unlock()
	}
}

func (w *txnWatcher) close() {
	w.cancel()
	<-w.done
	w.cl.Close()
	w.admin.Close()
}

// TestKafkaReadCommittedSeesWholeDatabaseTransactions: sessions commit
// database transactions of 1 to 50 rows spread over three topics, while
// the exactly-once relay is SIGKILLed 20 times and the broker (kfake) is
// SIGKILLed and restarted once. A read_committed consumer never holds part
// of a transaction with nothing more to fetch; every row arrives once, in
// order; and every Kafka transaction the relay committed ends at the last
// row of a database transaction (its checkpoint says where it ends).
func TestKafkaReadCommittedSeesWholeDatabaseTransactions(t *testing.T) {
	node := startOwnKafka(t, services.KafkaOptions{SyncWrites: true})
	e, txnID, checkpointTopic := newExactlyOnceEnvOn(t, node.Brokers())
	pattern := topicPattern(e.kafkaTopic)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	watch := watchTransactions(t, e.kafkaBrokers, pattern)
	live := e.consumeKafka() // read_uncommitted, only to pace the kills
	s := &supervisor{t: t, e: e, p: e.startRelay()}

	work := &txnWorkload{e: e, rng: rand.New(rand.NewPCG(seed, 8)), seq: make([]int, 40)}
	wr := e.startWriterFunc(func(ctx context.Context) ([]string, error) {
		ids, err := work.commit(ctx)
		time.Sleep(5 * time.Millisecond) // about 2,000 rows a second: rows flow at every kill
		return ids, err
	})

	const kills = 20
	for round := range kills {
		// Each relay produces before it dies, so that kills land in the
		// middle of its transactions rather than during its start.
		seen := len(live.records())
		s.waitFor(60*time.Second, func() error {
			if got := len(live.records()); got < seen+300 {
				return fmt.Errorf("round %d: %d records, waiting for %d", round+1, got, seen+300)
			}
			return nil
		})
		if round == kills/2 {
			if err := node.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := node.Restart(t.Context()); err != nil {
				t.Fatalf("restart kafka: %v", err)
			}
			seen = len(live.records())
			s.waitFor(60*time.Second, func() error {
				if got := len(live.records()); got < seen+300 {
					return fmt.Errorf("after the broker restart: %d records, waiting for %d", got, seen+300)
				}
				return nil
			})
		}
		// A random moment in the stream of transactions.
		time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		s.p.kill()
		s.p = e.startRelay()
	}
	ids := wr.finish()
	s.waitSlotAtWALEnd(60 * time.Second)

	// kfake, SIGKILLed, can lose the markers of a transaction it
	// acknowledged; judged by markers as Kafka would serve the log (see
	// checkExactlyOnceAs), with its lapses logged.
	recs, rc, ru := checkExactlyOnceAs(t, e, ids, true)
	sizes := map[string]int{}
	for _, r := range recs {
		lsn, _ := r.header("x-relay-lsn")
		sizes[lsn], _ = strconv.Atoi(func() string { v, _ := r.header("txsize"); return v }())
	}

	// Every committed Kafka transaction ends at a database transaction's
	// last row: its checkpoint is that row's position (claims repeat the
	// position before them).
	cpEnds := settledEnds(t, e.kafkaBrokers, "^"+regexp.QuoteMeta(checkpointTopic)+"$", 30*time.Second)
	cps := committedByMarkers(readUpToRaw(t, e.kafkaBrokers, cpEnds, kgo.ReadUncommitted(), 30*time.Second))
	cut, ends := 0, 0
	for _, r := range cps {
		if string(r.Key) != txnID {
			continue
		}
		var cp struct {
			LSN   string `json:"lsn"`
			Index int    `json:"index"`
		}
		if err := json.Unmarshal(r.Value, &cp); err != nil {
			t.Fatalf("checkpoint %s: %v", r.Value, err)
		}
		size, ok := sizes[cp.LSN]
		if !ok {
			continue // the position before the first row
		}
		ends++
		if cp.Index != size-1 {
			cut++
			if cut <= 10 {
				t.Errorf("a Kafka transaction committed at row %d of the %d of database transaction %s", cp.Index, size, cp.LSN)
			}
		}
	}

	watch.mu.Lock()
	polls, checks, partial := watch.polls, watch.checks, len(watch.partial)
	var examples []string
	for lsn, seen := range watch.partial {
		examples = append(examples, lsn+": "+strings.Join(seen, ", "))
	}
	watch.mu.Unlock()
	sort.Strings(examples)
	if partial > 0 {
		// Only kfake's lost markers may leave a transaction partly
		// readable: a transaction whose markers it lost is neither
		// committed nor aborted to a read_committed consumer.
		t.Errorf("the read_committed consumer held %d database transactions partly with nothing more visible:\n  %s", partial, strings.Join(examples[:min(10, len(examples))], "\n  "))
	}
	t.Logf("%d rows in %d database transactions; %d relay SIGKILLs, 1 broker SIGKILL and restart, %d relay exits; read_committed consumer: %d polls, %d of them judged (nothing more visible to fetch), %d partial transactions then; %d committed Kafka transactions with checkpoints, %d ending inside a database transaction; read_committed (by markers) %d records, %d duplicates; read_uncommitted %d records",
		len(ids), len(sizes), kills, s.exits, polls, checks, partial, ends, cut, rc.records, rc.duplicates, ru.records)
}

// TestKafkaOversizedDatabaseTransactionIsSplitAtTheBound: a transaction of
// 200,000 rows, over RELAY_KAFKA_MAX_TRANSACTION_EVENTS (its default,
// 4,096), goes out in Kafka transactions of exactly the bound, the last
// holding the rest; every row arrives once, in order; the split is logged
// with the transaction's commit LSN and parts, and counted.
func TestKafkaOversizedDatabaseTransactionIsSplitAtTheBound(t *testing.T) {
	e, txnID, checkpointTopic := newExactlyOnceEnv(t)
	p := e.startRelay() // streaming: the rows below are not a backfill

	const n, bound = 200000, 4096
	ids := queryStrings(t, e.db, oneBigTransaction, n)
	end := e.currentLSN()
	e.waitSlotAt(end, 120*time.Second)

	recs, rc, _ := checkExactlyOnce(t, e, ids)
	lsn, _ := recs[0].header("x-relay-lsn")

	// Where the Kafka transactions ended: their checkpoints.
	cpEnds := settledEnds(t, e.kafkaBrokers, "^"+regexp.QuoteMeta(checkpointTopic)+"$", 30*time.Second)
	var cuts []int
	for _, r := range committedByMarkers(readUpToRaw(t, e.kafkaBrokers, cpEnds, kgo.ReadUncommitted(), 30*time.Second)) {
		var cp struct {
			LSN   string `json:"lsn"`
			Index int    `json:"index"`
		}
		if string(r.Key) == txnID && json.Unmarshal(r.Value, &cp) == nil && cp.LSN == lsn {
			cuts = append(cuts, cp.Index)
		}
	}
	parts := (n + bound - 1) / bound
	if len(cuts) != parts {
		t.Errorf("%d Kafka transactions of %s, want %d: %v", len(cuts), lsn, parts, cuts)
	}
	for i, c := range cuts {
		if want := min((i+1)*bound, n) - 1; c != want {
			t.Errorf("part %d ends at row %d, want %d (the bound)", i+1, c, want)
		}
	}
	if v, ok := p.metric("relay_transactions_split_total"); !ok || v != 1 {
		t.Errorf("relay_transactions_split_total = %v (present %v), want 1", v, ok)
	}
	want := fmt.Sprintf("commit_lsn=%s parts=%d", lsn, parts) // the tests' relays log text
	eventually(t, 10*time.Second, func() error {
		if !strings.Contains(p.log.String(), want) {
			return fmt.Errorf("the log lacks %s", want)
		}
		return nil
	})
	t.Logf("%d rows in one transaction (%s): %d Kafka transactions of at most %d; read_committed %d records, %d duplicates", n, lsn, len(cuts), bound, rc.records, rc.duplicates)
}

// oneBigTransaction inserts $1 rows of 50 aggregates in one statement, each
// payload {agg, seq} as checkOrder reads it, and returns their ids.
const oneBigTransaction = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
	SELECT 'order', 'agg-' || (g % 50), 'order.created', jsonb_build_object('agg', 'agg-' || (g % 50), 'seq', g / 50 + 1)
	FROM generate_series(0, $1 - 1) AS g ORDER BY g
	RETURNING id::text`

// TestKafkaSIGTERMInsideADatabaseTransactionStopsAtOnce: SIGTERMed while
// its open Kafka transaction holds part of a database transaction, an
// exactly-once relay aborts that part at once and exits, rather than wait
// out RELAY_SHUTDOWN_TIMEOUT for an end the stopped source never sends;
// the next relay publishes the rest, and every row is there once.
func TestKafkaSIGTERMInsideADatabaseTransactionStopsAtOnce(t *testing.T) {
	e, _, _ := newExactlyOnceEnv(t)
	e.extraVars["RELAY_SHUTDOWN_TIMEOUT"] = "10m"
	p := e.startRelay()
	const n = 100000
	ids := queryStrings(t, e.db, oneBigTransaction, n)
	// The first parts are committed (the window splits the transaction):
	// the relay is inside it.
	eventually(t, time.Minute, func() error {
		if v, ok := p.metric("relay_events_published_total"); !ok || v == 0 {
			return errors.New("nothing published yet")
		}
		return nil
	})
	if code := p.stop(2 * time.Minute); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0; log:\n%s", code, p.log.String())
	}
	ends := settledEnds(t, e.kafkaBrokers, topicPattern(e.kafkaTopic), 30*time.Second)
	if got := len(readUpTo(t, e.kafkaBrokers, ends, kgo.ReadCommitted(), 30*time.Second)); got >= n {
		t.Fatalf("the relay committed all %d rows before SIGTERM: the test did not stop it inside the transaction", got)
	} else {
		t.Logf("stopped with %d of %d rows committed", got, n)
	}
	e.startRelay()
	e.waitSlotAtWALEnd(2 * time.Minute)
	checkExactlyOnce(t, e, ids)
}
