//go:build linux

package integration

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestOrderProblemJudgesReplays pins down what checkOrder accepts: each
// aggregate's first deliveries in commit order, and redeliveries only as
// in-order replays that step back and go on one event at a time.
func TestOrderProblemJudgesReplays(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		seqs    string // agg:seq deliveries in arrival order
		replays map[string]int
		wantErr string
	}{
		{name: "in order", seqs: "a:1 b:1 a:2 b:2 a:3"},
		{name: "a replayed suffix", seqs: "a:1 a:2 a:3 a:2 a:3 a:4", replays: map[string]int{"a": 1}},
		{name: "a replay cut short by another", seqs: "a:1 a:2 a:3 a:4 a:2 a:3 a:1 a:2 a:3 a:4 a:5", replays: map[string]int{"a": 2}},
		{name: "a replay of the last event only", seqs: "a:1 a:2 a:2 a:3", replays: map[string]int{"a": 1}},
		{name: "aggregates replayed independently", seqs: "a:1 b:1 a:2 b:2 a:1 b:1 a:2 b:2 b:3", replays: map[string]int{"a": 1, "b": 1}},
		{name: "a first event missing", seqs: "a:2", wantErr: "event 2 arrived before event 1"},
		{name: "a gap", seqs: "a:1 a:3 a:2", wantErr: "event 3 arrived before event 2"},
		{name: "a replay skipping an event", seqs: "a:1 a:2 a:3 a:4 a:2 a:4", wantErr: "event 4 arrived right after 2, skipping the rest of a replay"},
		{name: "a replay abandoned for a new event", seqs: "a:1 a:2 a:3 a:1 a:4", wantErr: "event 4 arrived right after 1, skipping the rest of a replay"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var msgs []message
			for i, d := range strings.Fields(tt.seqs) {
				agg, seq, _ := strings.Cut(d, ":")
				n, _ := strconv.Atoi(seq)
				msgs = append(msgs, message{Delivery: amqp.Delivery{MessageId: fmt.Sprint(i), Body: fmt.Appendf(nil, `{"agg": %q, "seq": %d}`, agg, n)}})
			}
			replays, err := orderProblem(msgs)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("orderProblem: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("orderProblem = %v, want an error saying %q", err, tt.wantErr)
			case tt.wantErr == "" && len(replays)+len(tt.replays) > 0 && fmt.Sprint(replays) != fmt.Sprint(tt.replays):
				t.Errorf("replays %v, want %v", replays, tt.replays)
			}
		})
	}
}

// delivery is one message as a consumer of one queue or partition (its
// group) received it, with the commit LSN the relay stamped on it.
type delivery struct {
	message
	group, lsn string
}

// TestAggregateOrderHoldsAcrossRestarts: rows of many aggregates committed
// from several sessions at once, while the relay is SIGKILLed three times
// (each kill repeated until it left delivered rows the slot had not
// confirmed, so that every kill tests a replay) and stopped with SIGTERM
// once, each time restarted: every row arrives;
// each aggregate's first deliveries come in commit order; a redelivery is
// only ever part of an in-order replay, at most one per aggregate and
// restart; and within one RabbitMQ queue or Kafka partition first
// deliveries of all aggregates come in commit order. Commit order per
// aggregate is the database's: each row takes the next value of its
// aggregate's counter, whose row lock its transaction holds until commit.
func TestAggregateOrderHoldsAcrossRestarts(t *testing.T) {
	t.Run("rabbitmq", func(t *testing.T) {
		e := newEnv(t)
		q := e.bindQueue("#") // one queue: every aggregate in it
		orderAcrossRestarts(t, e, func() []delivery {
			var ds []delivery
			for _, m := range q.messages() {
				lsn, _ := m.Headers["x-relay-lsn"].(string)
				ds = append(ds, delivery{message: m, group: q.queue, lsn: lsn})
			}
			return ds
		})
	})
	t.Run("kafka", func(t *testing.T) {
		e := newKafkaEnv(t)
		c := e.consumeKafka()
		orderAcrossRestarts(t, e, func() []delivery {
			recs := c.records()
			msgs := asMessages(recs)
			ds := make([]delivery, len(recs))
			for i, r := range recs {
				lsn, _ := r.header("x-relay-lsn")
				ds[i] = delivery{message: msgs[i], group: fmt.Sprintf("%s/%d", r.Topic, r.Partition), lsn: lsn}
			}
			return ds
		})
	})
}

func orderAcrossRestarts(t *testing.T, e *env, received func() []delivery) {
	const (
		aggregates = 40
		writers    = 4
		deliveries = 12000 // the writers stop once this many arrived
	)
	e.exec(`CREATE TABLE agg_seq (agg text PRIMARY KEY, n int NOT NULL DEFAULT 0)`)
	e.exec(`INSERT INTO agg_seq SELECT 'agg-' || i, 0 FROM generate_series(0, $1::int - 1) i`, aggregates)
	p := e.startRelay()

	var ws []*writer
	for w := range writers {
		conn, err := pgx.Connect(t.Context(), pg.URL(e.name))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		rng := rand.New(rand.NewPCG(uint64(w), 7))
		ws = append(ws, e.startWriterFunc(func(ctx context.Context) ([]string, error) {
			return commitRows(ctx, conn, rng, aggregates)
		}))
	}

	waitFor := func(n int) {
		t.Helper()
		eventually(t, 2*time.Minute, func() error {
			if got := len(received()); got < n {
				return fmt.Errorf("%d deliveries, waiting for %d", got, n)
			}
			return nil
		})
	}
	lastDelivered := func() uint64 {
		var last uint64
		for _, d := range received() {
			if lsn, err := parseLSN(d.lsn); err == nil {
				last = max(last, lsn)
			}
		}
		return last
	}
	k := &replayKiller{e: e, delivered: lastDelivered}
	for i, at := range []int{1500, 4000, 6500, 9000} {
		waitFor(at)
		if i == 2 {
			if code := p.stop(30 * time.Second); code != 0 {
				t.Fatalf("exit code %d after SIGTERM, want 0; log:\n%s", code, p.log.String())
			}
			p = e.startRelay()
			continue
		}
		p = k.kill(p)
	}
	restarts := k.kills + 1
	waitFor(deliveries)
	var all []string
	for _, w := range ws {
		all = append(all, w.finish()...)
	}

	var ds []delivery
	eventually(t, 2*time.Minute, func() error {
		ds = received()
		seen := map[string]bool{}
		for _, d := range ds {
			seen[d.MessageId] = true
		}
		if len(seen) < len(all) {
			return fmt.Errorf("%d of %d rows arrived", len(seen), len(all))
		}
		return nil
	})
	msgs := make([]message, len(ds))
	for i, d := range ds {
		msgs[i] = d.message
	}
	checkAll(t, all, msgs)
	replays := checkOrder(t, msgs)
	for agg, n := range replays {
		if n > restarts {
			t.Errorf("aggregate %s was replayed %d times in %d restarts", agg, n, restarts)
		}
	}
	if len(ds) == len(all) {
		t.Errorf("no row was delivered twice, although %d kills left delivered rows the slot had not confirmed", k.replays)
	}

	// Across aggregates, one queue or partition has them in commit order.
	seen := map[string]bool{}
	last := map[string]uint64{}
	for _, d := range ds {
		if seen[d.MessageId] {
			continue
		}
		seen[d.MessageId] = true
		lsn, err := parseLSN(d.lsn)
		if err != nil {
			t.Fatalf("message %s: x-relay-lsn %q: %v", d.MessageId, d.lsn, err)
		}
		if lsn < last[d.group] {
			t.Fatalf("%s: message %s of a transaction committed at %X arrived after one committed at %X", d.group, d.MessageId, lsn, last[d.group])
		}
		last[d.group] = lsn
	}
	t.Logf("%d rows of %d aggregates, %d deliveries; %d restarts, %d kills with a replay due; replays per aggregate %v", len(all), aggregates, len(ds), restarts, k.replays, replays)
}

// commitRows commits one transaction of one to three rows for each of one
// to three aggregates and returns their ids. Each row takes the next
// value of its aggregate's counter; the counter's row lock, held to the
// commit, makes that value the row's place in the aggregate's commit
// order. Aggregates are locked in name order, so writers never deadlock.
func commitRows(ctx context.Context, conn *pgx.Conn, rng *rand.Rand, aggregates int) ([]string, error) {
	picked := map[string]bool{}
	for range 1 + rng.IntN(3) {
		picked[fmt.Sprintf("agg-%d", rng.IntN(aggregates))] = true
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	var ids []string
	for _, agg := range slices.Sorted(maps.Keys(picked)) {
		for range 1 + rng.IntN(3) {
			var id string
			err := tx.QueryRow(ctx, `
				WITH c AS (UPDATE agg_seq SET n = n + 1 WHERE agg = $1 RETURNING n)
				INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
				SELECT 'order', $1, 'order.changed', jsonb_build_object('agg', $1::text, 'seq', c.n) FROM c
				RETURNING id::text`, agg).Scan(&id)
			if err != nil {
				return nil, err
			}
			ids = append(ids, id)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return ids, nil
}
