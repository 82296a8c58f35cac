//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
)

// The RabbitMQ streams sink's tests: each runs its own node with the
// rabbitmq_stream plugin, and reads what the relay stored with the stream
// protocol from the first offset, so that every copy of a row in the
// stream counts.

// useStream makes e's relay publish to stream name on node.
func (e *env) useStream(node *services.Rabbit, name string) {
	e.sink = "rabbitmq-stream"
	if e.extraVars == nil {
		e.extraVars = map[string]string{}
	}
	e.extraVars["RELAY_SINK"] = "rabbitmq-stream"
	e.extraVars["RELAY_RABBITMQ_STREAM_URL"] = node.StreamURL()
	e.extraVars["RELAY_RABBITMQ_STREAM"] = name
}

// newStreamEnv is an env publishing to a stream of its own on a node of
// the test's own. The stream is declared, and the node restarted
// gracefully, before the relay starts, so that the stream's declaration
// is on disk when a test kills the node (see services.Rabbit.Kill).
func newStreamEnv(t *testing.T) (*env, *services.Rabbit, string) {
	t.Helper()
	node := startOwnRabbit(t, services.RabbitOptions{Stream: true})
	e := newEnv(t)
	name := "outbox." + e.name
	env := streamEnv(t, node)
	if err := env.DeclareStream(name, stream.NewStreamOptions()); err != nil {
		t.Fatalf("declare stream %s: %v", name, err)
	}
	env.Close()
	if err := node.Restart(t.Context()); err != nil {
		t.Fatalf("restart the node: %v", err)
	}
	e.useStream(node, name)
	return e, node, name
}

func streamEnv(t *testing.T, node *services.Rabbit) *stream.Environment {
	t.Helper()
	var env *stream.Environment
	eventually(t, time.Minute, func() error {
		var err error
		env, err = stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(node.StreamURL()))
		return err
	})
	return env
}

// streamMessage is one message read from a stream.
type streamMessage struct {
	offset int64
	id     string
	agg    string
	seq    int
	lsn    string
	index  any // x-relay-index as it arrived
}

// streamReader consumes a stream from its first offset through AMQP 0-9-1
// (x-stream-offset): the Go stream client reads a 3.10 node's streams at a
// few hundred messages a second, AMQP 0-9-1 at tens of thousands
// (docs/benchmarks.md); TestStreamFieldsSameOverBothProtocols holds the
// two to the same content.
type streamReader struct {
	mu   sync.Mutex
	msgs []streamMessage
	// highest is the highest commit LSN read so far.
	highest atomic.Uint64
}

func readStream(t *testing.T, node *services.Rabbit, name string) *streamReader {
	t.Helper()
	r := &streamReader{}
	conn, err := amqp091.Dial(node.URL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	// After a restart the node serves the stream only once its leader
	// has started: a failed consume closes the channel, so each try
	// opens one.
	var deliveries <-chan amqp091.Delivery
	eventually(t, time.Minute, func() error {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := ch.Qos(2000, 0, false); err != nil {
			t.Fatal(err)
		}
		deliveries, err = ch.Consume(name, "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
		if err != nil {
			return fmt.Errorf("consume stream %s: %w", name, err)
		}
		return nil
	})
	go func() {
		n := 0
		for d := range deliveries {
			sm := streamMessage{id: d.MessageId}
			sm.offset, _ = d.Headers["x-stream-offset"].(int64)
			sm.lsn, _ = d.Headers["x-relay-lsn"].(string)
			sm.index = d.Headers["x-relay-index"]
			var p struct {
				Agg string `json:"agg"`
				Seq int    `json:"seq"`
			}
			if json.Unmarshal(d.Body, &p) == nil {
				sm.agg, sm.seq = p.Agg, p.Seq
			}
			if lsn, err := relay.ParseLSN(sm.lsn); err == nil && uint64(lsn) > r.highest.Load() {
				r.highest.Store(uint64(lsn))
			}
			r.mu.Lock()
			r.msgs = append(r.msgs, sm)
			r.mu.Unlock()
			if n++; n%500 == 0 {
				_ = d.Ack(true)
			}
		}
	}()
	return r
}

func (r *streamReader) messages() []streamMessage {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]streamMessage(nil), r.msgs...)
}

// endMarker is the id of the message checkStreamExactlyOnce appends.
const endMarker = "end-of-test"

// checkStreamExactlyOnce reads the whole stream once every relay has
// stopped: it appends a marker and reads from the first offset up to it,
// so that every message the relays stored is counted, late ones included.
// Every id of ids must be there once, and each aggregate's rows in
// sequence order. It returns the messages read.
func checkStreamExactlyOnce(t *testing.T, node *services.Rabbit, name string, ids []string) []streamMessage {
	t.Helper()
	conn, err := amqp091.Dial(node.URL())
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirm, err := ch.PublishWithDeferredConfirmWithContext(t.Context(), "", name, true, false, amqp091.Publishing{MessageId: endMarker, Body: []byte("{}")})
	if err != nil {
		t.Fatalf("publish the marker: %v", err)
	}
	if ok, err := confirm.WaitContext(t.Context()); !ok || err != nil {
		t.Fatalf("marker not confirmed: %v", err)
	}

	r := readStream(t, node, name)
	var msgs []streamMessage
	eventually(t, 3*time.Minute, func() error {
		msgs = r.messages()
		if n := len(msgs); n > 0 && msgs[n-1].id == endMarker {
			return nil
		}
		return fmt.Errorf("read %d messages, the marker not yet", len(msgs))
	})
	msgs = msgs[:len(msgs)-1]

	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	count := map[string]int{}
	dups, strangers := 0, 0
	var problems []string
	lastSeq := map[string]int{}
	for _, m := range msgs {
		if !want[m.id] {
			strangers++
			continue
		}
		count[m.id]++
		if count[m.id] > 1 {
			dups++
			if dups <= 5 {
				problems = append(problems, fmt.Sprintf("duplicate of %s at offset %d (lsn %s)", m.id, m.offset, m.lsn))
			}
			continue
		}
		if m.agg != "" {
			if m.seq <= lastSeq[m.agg] {
				problems = append(problems, fmt.Sprintf("aggregate %s: seq %d after %d at offset %d", m.agg, m.seq, lastSeq[m.agg], m.offset))
			}
			lastSeq[m.agg] = m.seq
		}
	}
	missing := 0
	for _, id := range ids {
		if count[id] == 0 {
			missing++
			if missing <= 5 {
				problems = append(problems, "missing "+id)
			}
		}
	}
	t.Logf("stream %s: %d messages for %d rows: %d missing, %d duplicates, %d not of this test", name, len(msgs), len(ids), missing, dups, strangers)
	if missing > 0 || dups > 0 || strangers > 0 || len(problems) > 0 {
		if len(problems) > 20 {
			problems = problems[:20]
		}
		t.Errorf("stream %s is not each row exactly once in order: %d missing, %d duplicates, %d strangers:\n%s",
			name, missing, dups, strangers, strings.Join(problems, "\n"))
	}
	return msgs
}

// waitSlotAtWALEnd waits until the slot has confirmed everything written
// so far: every row committed is in the stream.
func (e *env) waitSlotAtWALEnd(timeout time.Duration) {
	e.t.Helper()
	end := e.currentLSN()
	eventually(e.t, timeout, func() error {
		if got := e.slotLSN(); got < end {
			return fmt.Errorf("slot at %X, WAL end %X", got, end)
		}
		return nil
	})
}

// pacedWriter commits eosWorkload transactions (one row to a couple of
// thousand, of 17 aggregates) every interval until stopped.
type pacedWriter struct {
	rows atomic.Int64
	stop chan struct{}
	done chan struct{}
	ids  []string
	err  error
}

func startPacedWriter(t *testing.T, e *env, seed uint64, interval time.Duration) *pacedWriter {
	w := &pacedWriter{stop: make(chan struct{}), done: make(chan struct{})}
	work := newWorkload(e, rand.New(rand.NewPCG(seed, 1)), 17)
	go func() {
		defer close(w.done)
		next := time.Now()
		for {
			ids, err := work.commit(context.Background(), work.txSize())
			if err != nil {
				w.err = err
				return
			}
			w.ids = append(w.ids, ids...)
			w.rows.Add(int64(len(ids)))
			next = next.Add(interval)
			select {
			case <-w.stop:
				return
			case <-time.After(time.Until(next)):
			}
		}
	}()
	t.Cleanup(func() { w.finish(t) })
	return w
}

func (w *pacedWriter) finish(t *testing.T) []string {
	t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	if w.err != nil {
		t.Fatalf("writer: %v", w.err)
	}
	return w.ids
}

// TestStreamExactlyOnceSurvivesSIGKILLs: rows keep committing while the
// relay is SIGKILLed 20 times, each time with rows in the stream that the
// slot had not confirmed (so its successor is handed them again); 50k rows
// at least. A consumer of the stream from its first offset sees every row
// exactly once, each aggregate's in order.
func TestStreamExactlyOnceSurvivesSIGKILLs(t *testing.T) {
	e, node, name := newStreamEnv(t)
	live := readStream(t, node, name)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	p := e.startRelay()
	w := startPacedWriter(t, e, seed, 20*time.Millisecond)

	const kills, rows = 20, 50000
	k := &replayKiller{e: e, delivered: live.highest.Load}
	for k.replays < kills {
		p = k.kill(p)
	}
	eventually(t, 5*time.Minute, func() error {
		if n := w.rows.Load(); n < rows {
			return fmt.Errorf("%d rows committed, waiting for %d", n, rows)
		}
		return nil
	})
	ids := w.finish(t)
	e.waitSlotAtWALEnd(3 * time.Minute)
	if code := p.stop(30 * time.Second); code != 0 {
		t.Errorf("relay exited %d", code)
	}
	t.Logf("%d rows, %d SIGKILLs (%d with rows in the stream beyond the slot)", len(ids), k.kills, k.replays)
	checkStreamExactlyOnce(t, node, name, ids)
}

// TestStreamBrokerKilledTwice: the node is SIGKILLed and restarted twice
// while rows flow. Nothing is lost (the slot never confirmed a row the
// stream did not hold) and nothing is stored twice.
func TestStreamBrokerKilledTwice(t *testing.T) {
	e, node, name := newStreamEnv(t)
	p := e.startRelay()
	w := startPacedWriter(t, e, uint64(time.Now().UnixNano()), 20*time.Millisecond)
	for i := range 2 {
		before := e.slotLSN()
		eventually(t, time.Minute, func() error {
			if got := e.slotLSN(); got <= before {
				return fmt.Errorf("round %d: slot not past %X yet", i+1, before)
			}
			return nil
		})
		if err := node.Kill(); err != nil {
			t.Fatal(err)
		}
		// Rows keep committing while the node is down.
		want := w.rows.Load() + 500
		eventually(t, time.Minute, func() error {
			if n := w.rows.Load(); n < want {
				return fmt.Errorf("%d rows committed, waiting for %d", n, want)
			}
			return nil
		})
		if err := node.Restart(t.Context()); err != nil {
			t.Fatalf("restart: %v", err)
		}
	}
	want := w.rows.Load() + 2000
	eventually(t, time.Minute, func() error {
		if n := w.rows.Load(); n < want {
			return fmt.Errorf("%d rows committed, waiting for %d", n, want)
		}
		return nil
	})
	ids := w.finish(t)
	e.waitSlotAtWALEnd(3 * time.Minute)
	if p.exited() {
		t.Errorf("the relay exited: %v", p.err)
	} else if code := p.stop(30 * time.Second); code != 0 {
		t.Errorf("relay exited %d", code)
	}
	t.Logf("%d rows; the node SIGKILLed and restarted twice", len(ids))
	checkStreamExactlyOnce(t, node, name, ids)
}

// TestStreamStandbyTakesOverWithoutDuplicates: a leader and a standby; the
// leader is SIGKILLed with rows in the stream beyond the slot, and the
// standby, which takes over the slot, must not store them again.
func TestStreamStandbyTakesOverWithoutDuplicates(t *testing.T) {
	e, node, name := newStreamEnv(t)
	live := readStream(t, node, name)
	leader := e.startRelay()
	standby := startRelayWith(t, e.vars())
	eventually(t, time.Minute, func() error {
		if !strings.Contains(standby.log.String(), "standing by") {
			return fmt.Errorf("the second relay has not reported standing by yet")
		}
		return nil
	})
	w := startPacedWriter(t, e, uint64(time.Now().UnixNano()), 20*time.Millisecond)
	w.rowsAtLeast(t, 5000)
	due := false
	for range maxKillsPerReplay {
		if e.killWithReplayDue(leader, live.highest.Load) {
			due = true
			break
		}
		// The standby took over with nothing due; it leads now, and the
		// first relay comes back as the standby.
		leader, standby = standby, startRelayWith(t, e.vars())
		w.rowsAtLeast(t, int(w.rows.Load())+2000)
	}
	if !due {
		t.Fatal("no kill left rows in the stream beyond the slot")
	}
	w.rowsAtLeast(t, int(w.rows.Load())+5000)
	ids := w.finish(t)
	e.waitSlotAtWALEnd(3 * time.Minute)
	standby.stop(30 * time.Second)
	t.Logf("%d rows; the leader SIGKILLed with rows beyond the slot, the standby took over", len(ids))
	checkStreamExactlyOnce(t, node, name, ids)
}

func (w *pacedWriter) rowsAtLeast(t *testing.T, n int) {
	t.Helper()
	eventually(t, 2*time.Minute, func() error {
		if w.err != nil {
			t.Fatalf("writer: %v", w.err)
		}
		if got := w.rows.Load(); got < int64(n) {
			return fmt.Errorf("%d rows committed, waiting for %d", got, n)
		}
		return nil
	})
}

// TestStreamBackfillSurvivesSIGKILL: 20k rows are in the outbox before the
// relay first starts; it is SIGKILLed mid-backfill and started again.
// Every row is in the stream once.
func TestStreamBackfillSurvivesSIGKILL(t *testing.T) {
	e, node, name := newStreamEnv(t)
	const existing, aggregates = 20000, 11
	e.exec(fmt.Sprintf(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		SELECT 'order', 'old-' || (i %% %[1]d), 'order.created',
		       jsonb_build_object('agg', 'old-' || (i %% %[1]d), 'seq', i / %[1]d + 1)
		FROM generate_series(0, %[2]d - 1) i`, aggregates, existing))
	ids := queryStrings(t, e.db, "SELECT id::text FROM outbox")

	live := readStream(t, node, name)
	p := startRelayWith(t, e.vars())
	// Freeze the relay when the stream holds rows beyond the progress the
	// backfill recorded, so that its successor is handed rows the stream
	// has; a freeze that finds none is undone and tried again.
	var recorded int64
	var inStream int
	for try := 0; ; try++ {
		eventually(t, 2*time.Minute, func() error {
			if p.exited() {
				t.Fatalf("relay exited: %v", p.err)
			}
			if recorded, _, err := e.backfillState(); err != nil || recorded < existing/4 {
				return fmt.Errorf("backfill recorded %d rows (%v), waiting for %d", recorded, err, existing/4)
			}
			return nil
		})
		p.freeze()
		var done bool
		var err error
		recorded, done, err = e.backfillState()
		if err != nil {
			t.Fatal(err)
		}
		if done || recorded+2*backfillPage >= existing {
			t.Fatalf("backfill recorded %d of %d (done %v) when frozen: too near its end", recorded, existing, done)
		}
		// The reader catches up with what the stream holds.
		deadline := time.Now().Add(5 * time.Second)
		for inStream = len(live.messages()); int64(inStream) <= recorded && time.Now().Before(deadline); inStream = len(live.messages()) {
			time.Sleep(20 * time.Millisecond)
		}
		if int64(inStream) > recorded {
			break
		}
		if try == 20 {
			t.Fatalf("in %d freezes the stream never held rows beyond the backfill's recorded progress", try+1)
		}
		p.thaw()
		time.Sleep(time.Duration(10+try*7) * time.Millisecond)
	}
	p.kill()
	p = startRelayWith(t, e.vars())
	eventually(t, 3*time.Minute, func() error {
		if _, done, err := e.backfillState(); err != nil || !done {
			return fmt.Errorf("backfill not done (%v)", err)
		}
		return nil
	})
	e.waitSlotAtWALEnd(time.Minute)
	p.stop(30 * time.Second)
	t.Logf("killed with %d of %d rows recorded by the backfill and %d in the stream", recorded, existing, inStream)
	checkStreamExactlyOnce(t, node, name, ids)
}

// TestStreamFieldsSameOverBothProtocols: a consumer of the stream over the
// stream protocol and one over AMQP 0-9-1 (x-stream-offset) see the same
// id, body, content type, timestamp, event type and headers.
func TestStreamFieldsSameOverBothProtocols(t *testing.T) {
	e, node, name := newStreamEnv(t)
	p := e.startRelay()
	e.exec(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers, created_at)
		VALUES ('order', 'o-1', 'order.created', '{"total": 5}', '{"trace_id": "abc", "n": 7, "ok": true, "aggregate_id": "forged"}', '2024-05-06 07:08:09.5+00'),
		       ('order', 'o-1', 'order.paid', '{"total": 5}', '{}', '2024-05-06 07:08:10+00')`)
	e.waitSlotAtWALEnd(time.Minute)
	p.stop(30 * time.Second)

	env := streamEnv(t, node)
	defer env.Close()
	viaStream := make(chan *amqp.Message, 10)
	_, err := env.NewConsumer(name, func(_ stream.ConsumerContext, m *amqp.Message) { viaStream <- m },
		stream.NewConsumerOptions().SetOffset(stream.OffsetSpecification{}.First()))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := amqp091.Dial(node.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	_ = ch.Qos(10, 0, false)
	viaAMQP, err := ch.Consume(name, "", false, false, false, false, amqp091.Table{"x-stream-offset": "first"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var s *amqp.Message
		var a amqp091.Delivery
		select {
		case s = <-viaStream:
		case <-time.After(30 * time.Second):
			t.Fatalf("message %d not read over the stream protocol", i)
		}
		select {
		case a = <-viaAMQP:
		case <-time.After(30 * time.Second):
			t.Fatalf("message %d not read over AMQP 0-9-1", i)
		}
		t.Logf("message %d over the stream protocol: properties %+v, application properties %v", i, *s.Properties, s.ApplicationProperties)
		t.Logf("message %d over AMQP 0-9-1: message_id %q type %q content_type %q timestamp %v headers %v", i, a.MessageId, a.Type, a.ContentType, a.Timestamp, a.Headers)
		check := func(what string, stream, amqp, want any) {
			t.Helper()
			if fmt.Sprint(stream) != fmt.Sprint(want) {
				t.Errorf("message %d %s over the stream protocol: %v, want %v", i, what, stream, want)
			}
			if fmt.Sprint(amqp) != fmt.Sprint(want) {
				t.Errorf("message %d %s over AMQP 0-9-1: %v, want %v", i, what, amqp, want)
			}
		}
		check("message id", s.Properties.MessageID, a.MessageId, s.Properties.MessageID)
		check("body", string(s.Data[0]), string(a.Body), `{"total": 5}`)
		check("content type", s.Properties.ContentType, a.ContentType, "application/json")
		check("timestamp (seconds)", s.Properties.CreationTime.Unix(), a.Timestamp.Unix(), []int64{1714979289, 1714979290}[i])
		// RabbitMQ 3.10 drops subject on the way to AMQP 0-9-1, so the
		// event type is also a property.
		check("subject", s.Properties.Subject, s.ApplicationProperties["event_type"], []string{"order.created", "order.paid"}[i])
		for _, k := range []string{"aggregate_type", "aggregate_id", "event_type", "x-relay-lsn", "x-relay-index"} {
			check("header "+k, s.ApplicationProperties[k], a.Headers[k], s.ApplicationProperties[k])
		}
		if i == 0 {
			check("aggregate_id (a header column key may not forge it)", s.ApplicationProperties["aggregate_id"], a.Headers["aggregate_id"], "o-1")
			check("header trace_id", s.ApplicationProperties["trace_id"], a.Headers["trace_id"], "abc")
			check("header n", s.ApplicationProperties["n"], a.Headers["n"], 7)
			check("header ok", s.ApplicationProperties["ok"], a.Headers["ok"], true)
		}
		_ = a.Ack(false)
	}
}

// TestStreamPerTableStreams: with two outbox tables, the one that names a
// stream of its own (RELAY_TABLE_…_RABBITMQ_STREAM) goes there, created by
// the relay, and the other to the global stream; each holds its table's
// rows once, in commit order per aggregate. relay check names both
// streams and finds the relay's user may publish to them.
func TestStreamPerTableStreams(t *testing.T) {
	e, node, name := newStreamEnv(t)
	e.createSalesAndBilling()
	billing := "billing." + e.name
	e.extraVars["RELAY_TABLES"] = "sales.outbox,billing.outbox"
	e.extraVars["RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET"] = "debezium"
	e.extraVars["RELAY_TABLE_BILLING_OUTBOX_RABBITMQ_STREAM"] = billing
	// The billing stream must exist for check to try a producer on it.
	env := streamEnv(t, node)
	if err := env.DeclareStream(billing, stream.NewStreamOptions()); err != nil {
		t.Fatal(err)
	}
	env.Close()
	out := e.check(0)
	for _, want := range []string{"stream " + name + ": exists, and the relay's user may publish to it", "stream " + billing + ": exists, and the relay's user may publish to it"} {
		if !strings.Contains(out, want) {
			t.Errorf("relay check does not say %q:\n%s", want, out)
		}
	}
	p := e.startRelay()
	rows := e.insertSalesAndBilling(200)
	e.waitSlotAtWALEnd(time.Minute)
	p.stop(30 * time.Second)
	sales := checkStreamExactlyOnce(t, node, name, idsOf(rows, "sales.outbox"))
	bills := checkStreamExactlyOnce(t, node, billing, idsOf(rows, "billing.outbox"))
	t.Logf("sales stream: %d messages, billing stream: %d", len(sales), len(bills))
}
