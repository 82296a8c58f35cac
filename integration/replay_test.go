//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/inbox"
)

// replayDelivery is one message as a replay test judges it, from either
// broker.
type replayDelivery struct {
	id, replay string
	body       []byte
}

func rabbitReplayDeliveries(q *consumer) func() []replayDelivery {
	return func() []replayDelivery {
		var out []replayDelivery
		for _, m := range q.messages() {
			r, _ := m.Headers["x-relay-replay"].(string)
			out = append(out, replayDelivery{id: m.MessageId, replay: r, body: m.Body})
		}
		return out
	}
}

func kafkaReplayDeliveries(c *kafkaConsumer) func() []replayDelivery {
	return func() []replayDelivery {
		var out []replayDelivery
		for _, r := range c.records() {
			rp, _ := r.header("x-relay-replay")
			out = append(out, replayDelivery{id: r.id(), replay: rp, body: r.Value})
		}
		return out
	}
}

func asReplayMessages(ds []replayDelivery) []message {
	msgs := make([]message, len(ds))
	for i, d := range ds {
		msgs[i] = message{Delivery: amqp.Delivery{MessageId: d.id, Body: d.body}}
	}
	return msgs
}

// replayOrderProblem judges the order of each aggregate's replayed
// deliveries as orderProblem judges a stream, except that an aggregate's
// first replayed event may be any of its events: a replay selects a range.
func replayOrderProblem(ds []replayDelivery) error {
	type state struct{ first, prev, max int }
	aggs := map[string]*state{}
	for i, d := range ds {
		var p payload
		if err := json.Unmarshal(d.body, &p); err != nil {
			return fmt.Errorf("message %s: body %q: %w", d.id, d.body, err)
		}
		a := aggs[p.Agg]
		switch {
		case a == nil:
			aggs[p.Agg] = &state{first: p.Seq, prev: p.Seq, max: p.Seq}
			continue
		case p.Seq == a.prev+1:
		case p.Seq >= a.first && p.Seq <= a.prev:
			// A resumed replay repeats what its predecessor had not
			// recorded, in order.
		case p.Seq > a.max+1:
			return fmt.Errorf("replayed message %d (%s): aggregate %s: event %d arrived before event %d", i, d.id, p.Agg, p.Seq, a.max+1)
		default:
			return fmt.Errorf("replayed message %d (%s): aggregate %s: event %d arrived right after %d", i, d.id, p.Agg, p.Seq, a.prev)
		}
		a.prev = p.Seq
		a.max = max(a.max, p.Seq)
	}
	return nil
}

// replayCommand runs `relay replay args` and requires exit code want.
func (e *env) replayCommand(want int, args ...string) (stdout, stderr string) {
	e.t.Helper()
	code, stdout, stderr := e.command(append([]string{"replay"}, args...))
	if code != want {
		e.t.Fatalf("relay replay %s exited %d, want %d; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, stdout, stderr)
	}
	return stdout, stderr
}

var summaryRE = regexp.MustCompile(`(?m)^replay (\S+): (\d+) rows`)

// dbTime is the database's clock, which created_at is read from.
func (e *env) dbTime() time.Time {
	e.t.Helper()
	var ts time.Time
	if err := e.db.QueryRow(e.t.Context(), "SELECT clock_timestamp()").Scan(&ts); err != nil {
		e.t.Fatal(err)
	}
	return ts
}

// replayRecord is what relay.replay holds of a replay.
func (e *env) replayRecord(id string) (rows int64, done bool) {
	e.t.Helper()
	err := e.db.QueryRow(e.t.Context(), `SELECT coalesce(sum(rows_done), 0), coalesce(bool_and(done), false) FROM relay.replay WHERE replay_id = $1`, id).Scan(&rows, &done)
	if err != nil {
		e.t.Fatal(err)
	}
	return rows, done
}

// applyThroughInbox applies every delivery, in the order received, with
// package inbox against a consumer database of its own, and returns how
// many were applied and which deliveries of a replay were.
func applyThroughInbox(t *testing.T, e *env, ds []replayDelivery) (applied int, replayedApplied []string) {
	t.Helper()
	ctx := t.Context()
	name := e.name + "_consumer"
	if err := pg.CreateDatabase(ctx, name); err != nil {
		t.Fatal(err)
	}
	db, err := pgxpool.New(ctx, pg.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	schema, err := os.ReadFile("../schema/inbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(ctx, string(schema)+"; CREATE TABLE effects (id text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	ib, err := inbox.New("replay-test")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds {
		first, err := ib.Process(ctx, db, d.id, func(tx pgx.Tx) error {
			// A second application would fail on the primary key.
			_, err := tx.Exec(ctx, "INSERT INTO effects VALUES ($1)", d.id)
			return err
		})
		if err != nil {
			t.Fatalf("inbox: process %s: %v", d.id, err)
		}
		if first {
			applied++
			if d.replay != "" {
				replayedApplied = append(replayedApplied, d.id)
			}
		}
	}
	return applied, replayedApplied
}

// liveRows commits rows of aggregate type "live", numbered per aggregate
// as eventRows numbers its own, so that the live stream's order can be
// judged apart from the replayed "order" rows.
func liveRows(e *env, aggregates int) func(context.Context) ([]string, error) {
	seq := make([]int, aggregates)
	next := 0
	return func(ctx context.Context) ([]string, error) {
		var ids []string
		err := pgx.BeginFunc(ctx, e.db, func(tx pgx.Tx) error {
			for range 5 {
				agg := next % aggregates
				var id string
				if err := tx.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
					VALUES ('live', $1, 'live.created', jsonb_build_object('agg', $1::text, 'seq', $2::int)) RETURNING id`,
					fmt.Sprintf("live-%d", agg), seq[agg]+1).Scan(&id); err != nil {
					return err
				}
				seq[agg]++
				next++
				ids = append(ids, id)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		// Paced: the live stream goes on through the replay without
		// flooding the broker the test reads.
		time.Sleep(5 * time.Millisecond)
		return ids, nil
	}
}

// testReplayWhileStreaming: rows before, inside and after a time range
// are streamed; `relay replay` of the range and of aggregate type order
// runs while the live relay streams other rows. Every selected row arrives
// once more with the replay's header, in order per aggregate, nothing else
// is replayed, the live stream is whole and in order, and the inbox
// applies no replayed message a second time.
func testReplayWhileStreaming(t *testing.T, e *env, deliveries func() []replayDelivery) {
	e.startRelay()
	live := e.startWriterFunc(liveRows(e, 5))
	// One numbering for the order rows, more rows per transaction than
	// aggregates, so that an aggregate has several rows of one created_at.
	numbered := newEventRows(7)
	commit := func(n int) []string {
		t.Helper()
		return numbered.commitAll(t, e.db, n, 20)
	}
	before := commit(400)
	since := e.dbTime()
	inside := commit(2000)
	until := e.dbTime()
	after := commit(400)
	live.waitRows(200)

	waitIDs := func(what string, ids []string, replayID string) {
		t.Helper()
		eventually(t, 2*time.Minute, func() error {
			got := map[string]bool{}
			for _, d := range deliveries() {
				if d.replay == replayID {
					got[d.id] = true
				}
			}
			for _, id := range ids {
				if !got[id] {
					return fmt.Errorf("%s: row %s not delivered (with replay header %q)", what, id, replayID)
				}
			}
			return nil
		})
	}
	waitIDs("streamed", append(append(append([]string(nil), before...), inside...), after...), "")

	stdout, _ := e.replayCommand(0, "--since", since.Format(time.RFC3339Nano), "--until", until.Format(time.RFC3339Nano), "--aggregate-type", "order")
	m := summaryRE.FindStringSubmatch(stdout)
	if m == nil || m[2] != fmt.Sprint(len(inside)) {
		t.Fatalf("relay replay printed %q, want a summary of %d rows", stdout, len(inside))
	}
	replayID := m[1]
	t.Logf("%s", strings.TrimSpace(stdout))
	waitIDs("replayed", inside, replayID)
	liveIDs := live.finish()
	waitIDs("streamed live", liveIDs, "")

	all := deliveries()
	selected := map[string]bool{}
	for _, id := range inside {
		selected[id] = true
	}
	replays := map[string]int{}
	var replayed, streamed []replayDelivery
	for _, d := range all {
		switch {
		case d.replay == "":
			streamed = append(streamed, d)
		case d.replay != replayID:
			t.Fatalf("message %s carries x-relay-replay %q, want %q", d.id, d.replay, replayID)
		case !selected[d.id]:
			t.Fatalf("row %s was replayed, and is not in the time range or not of aggregate type order", d.id)
		default:
			replays[d.id]++
			replayed = append(replayed, d)
		}
	}
	for _, id := range inside {
		if replays[id] != 1 {
			t.Fatalf("row %s was replayed %d times, want once", id, replays[id])
		}
	}
	if err := replayOrderProblem(replayed); err != nil {
		t.Fatal(err)
	}
	// The live stream, whole and in order, as if no replay had run.
	msgs := asReplayMessages(streamed)
	checkAll(t, append(append(append(append([]string(nil), before...), inside...), after...), liveIDs...), msgs)
	checkOrder(t, msgs)
	if rows, done := e.replayRecord(replayID); rows != int64(len(inside)) || !done {
		t.Errorf("relay.replay records %d rows, done %v; want %d, done", rows, done, len(inside))
	}

	applied, again := applyThroughInbox(t, e, all)
	if len(again) > 0 {
		t.Fatalf("the inbox applied %d replayed messages, e.g. %s, that it had applied before", len(again), again[0])
	}
	if want := len(before) + len(inside) + len(after) + len(liveIDs); applied != want {
		t.Fatalf("the inbox applied %d messages, want each of %d rows once", applied, want)
	}
	t.Logf("%d rows streamed, %d replayed while %d live rows streamed; the inbox applied %d of %d deliveries", len(before)+len(inside)+len(after), len(replayed), len(liveIDs), applied, len(all))
}

func TestReplayOfATimeRangeToRabbitMQWhileStreaming(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindQueue("#")
	testReplayWhileStreaming(t, e, rabbitReplayDeliveries(q))
}

func TestReplayOfATimeRangeToKafkaWhileStreaming(t *testing.T) {
	t.Parallel()
	e := newKafkaEnv(t)
	c := e.consumeKafka()
	testReplayWhileStreaming(t, e, kafkaReplayDeliveries(c))
}

// TestReplayKilledMidwayResumesWithNothingLost: a replay SIGKILLed after it
// recorded progress, and before it finished, is resumed with --resume:
// every selected row arrives with the replay's header, in order per
// aggregate (a resumed replay repeating, in order, what was not recorded).
// No relay streams: a replay needs no slot.
func TestReplayKilledMidwayResumesWithNothingLost(t *testing.T) {
	e := newEnv(t)
	q := e.bindQueue("#")
	ids := e.insertEvents(40000, 50, 13)

	vars := append(e.vars(), "RELAY_MAX_IN_FLIGHT=256")
	p := startRelayWith(t, vars, "replay", "--aggregate-type", "order")
	var id string
	eventually(t, time.Minute, func() error {
		if p.exited() {
			t.Fatalf("relay replay exited (%v) before it could be killed; output:\n%s", p.err, p.log.String())
		}
		var rows int64
		err := e.db.QueryRow(t.Context(), `SELECT replay_id, rows_done FROM relay.replay`).Scan(&id, &rows)
		if err != nil || rows == 0 {
			return fmt.Errorf("no progress recorded yet (%v)", err)
		}
		return nil
	})
	// Frozen, it records nothing more while the test looks.
	p.freeze()
	rows, done := e.replayRecord(id)
	if done || rows >= int64(len(ids)) {
		t.Fatalf("the replay finished (%d rows) before it could be killed", rows)
	}
	p.kill()
	e.waitRelayGone()
	beforeKill := len(q.messages())

	stdout, _ := e.replayCommand(0, "--resume", id)
	t.Logf("killed after %d rows recorded, %d delivered; resumed: %s", rows, beforeKill, strings.TrimSpace(stdout))
	if m := summaryRE.FindStringSubmatch(stdout); m == nil || m[1] != id {
		t.Fatalf("relay replay --resume %s printed %q, want its summary", id, stdout)
	}
	msgs := q.waitDistinct(len(ids), time.Minute)
	ds := rabbitReplayDeliveries(q)()
	for _, d := range ds {
		if d.replay != id {
			t.Fatalf("message %s carries x-relay-replay %q, want %q", d.id, d.replay, id)
		}
	}
	checkAll(t, ids, msgs)
	if err := replayOrderProblem(ds); err != nil {
		t.Fatal(err)
	}
	if rows, done := e.replayRecord(id); rows != int64(len(ids)) || !done {
		t.Errorf("relay.replay records %d rows, done %v; want %d, done", rows, done, len(ids))
	}
	t.Logf("%d deliveries of %d rows", len(ds), len(ids))
	// A complete replay resumed says so, and publishes nothing.
	stdout, _ = e.replayCommand(0, "--resume", id)
	if !strings.Contains(stdout, "complete") {
		t.Errorf("resuming a complete replay printed %q", stdout)
	}
}

// TestRetentionDeletesOnlyConfirmedRowsOlderThanIt: with RELAY_CLEANUP=retain
// and RELAY_RETENTION=1h, the relay deletes the rows that are older than an
// hour and that it confirmed; the young rows, and the old rows from a row
// the stream is stopped at on, stay.
func TestRetentionDeletesOnlyConfirmedRowsOlderThanIt(t *testing.T) {
	e := newEnv(t)
	e.exec(`GRANT DELETE ON outbox TO relay`)
	q := e.bindQueue("#")
	p := e.startRelay()
	insert := func(kind string, n int, age string) {
		t.Helper()
		e.exec(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
			SELECT $1, i::text, 'e', '{}', now() - $3::interval FROM generate_series(1, $2::int) i`, kind, n, age)
	}
	insert("old", 3000, "2 hours")
	insert("young", 100, "0")
	q.waitDistinct(3100, time.Minute)
	// The slot tells which transactions are confirmed once a checkpoint
	// has logged the running ones and the relay confirmed past it.
	eventually(t, time.Minute, func() error {
		e.exec(`CHECKPOINT`)
		var unconfirmed int
		if err := e.db.QueryRow(t.Context(), `SELECT count(*) FROM outbox
			WHERE age(xmin) <= (SELECT age(catalog_xmin) FROM pg_replication_slots WHERE slot_name = $1)`, e.slot).Scan(&unconfirmed); err != nil {
			return err
		}
		if unconfirmed > 0 {
			return fmt.Errorf("%d rows not yet behind the slot's catalog_xmin", unconfirmed)
		}
		return nil
	})
	// A routing key over AMQP's 255 bytes: without a dead-letter
	// destination the stream stops before this row, and the rows after
	// it are never confirmed.
	insert(strings.Repeat("x", 300), 1, "2 hours")
	insert("old-after-the-bad-row", 50, "2 hours")
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("relay exited %d", code)
	}

	e.extraVars = map[string]string{"RELAY_CLEANUP": "retain", "RELAY_RETENTION": "1h"}
	// Not startRelay: the stream stops at the bad row at once, and stays
	// stopped between its retries.
	p = startRelayWith(t, e.vars())
	count := func(kind string) int {
		var n int
		if err := e.db.QueryRow(t.Context(), `SELECT count(*) FROM outbox WHERE aggregate_type = $1`, kind).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	eventually(t, time.Minute, func() error {
		if n := count("old"); n > 0 {
			return fmt.Errorf("%d old confirmed rows not deleted yet", n)
		}
		return nil
	})
	// The sweep that deleted them saw these.
	if young, bad, after := count("young"), count(strings.Repeat("x", 300)), count("old-after-the-bad-row"); young != 100 || bad != 1 || after != 50 {
		t.Fatalf("left %d young rows, %d bad rows, %d old rows after the bad one; want 100, 1, 50", young, bad, after)
	}
	if p.exited() {
		t.Fatalf("the relay exited: %v", p.err)
	}
}

// TestReplayAndRetentionRefuseWrongRequests: wrong requests exit 2 with the
// flag or variable named; a replay that matches no row says so and exits 0.
func TestReplayAndRetentionRefuseWrongRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.insertEvents(30, 10, 3)
	for _, tt := range []struct {
		args []string
		kv   []string
		want string
	}{
		{args: []string{"replay", "--since", "2026-12-02", "--until", "2026-12-01"}, want: "--since"},
		{args: []string{"replay", "--bogus"}, want: "bogus"},
		{args: []string{"replay", "--since", "banana"}, want: "--since"},
		{args: []string{"replay", "--resume", "nope"}, want: "no replay nope"},
		{args: []string{"replay", "--from-id", "not-a-uuid"}, want: "--from-id"},
		{args: []string{"replay"}, kv: []string{"RELAY_RETENTION", "168h"}, want: "RELAY_RETENTION"},
		{kv: []string{"RELAY_RETENTION", "168h"}, want: "RELAY_RETENTION"},
		{kv: []string{"RELAY_CLEANUP", "retain"}, want: "RELAY_RETENTION"},
		{kv: []string{"RELAY_CLEANUP", "retain", "RELAY_RETENTION", "-1h"}, want: "RELAY_RETENTION"},
	} {
		code, stdout, stderr := e.command(tt.args, tt.kv...)
		if code != 2 || !strings.Contains(stderr, tt.want) {
			t.Errorf("relay %q with %q: exit %d, stderr %q; want 2 naming %s (stdout %q)", tt.args, tt.kv, code, stderr, tt.want, stdout)
		}
	}
	stdout, _ := e.replayCommand(0, "--since", "2000-01-01", "--until", "2000-01-02")
	if !strings.HasPrefix(stdout, "no rows match") {
		t.Errorf("a replay of no rows printed %q", stdout)
	}
	stdout, _ = e.replayCommand(0, "--dry-run", "--since", "1h")
	if !strings.HasPrefix(stdout, "30 rows match") {
		t.Errorf("a dry run printed %q, want 30 rows", stdout)
	}
	var n int
	if err := e.db.QueryRow(t.Context(), `SELECT count(*) FROM relay.replay`).Scan(&n); err != nil || n != 0 {
		t.Errorf("relay.replay holds %d rows (%v) after requests that replayed nothing", n, err)
	}

	// A retention the role may not carry out (no DELETE) stops the
	// relay, saying why, rather than leaving the rows to pile up.
	e.extraVars = map[string]string{"RELAY_CLEANUP": "retain", "RELAY_RETENTION": "100s"}
	p := startRelayWith(t, e.vars())
	if code := p.wait(time.Minute); code != 1 || !strings.Contains(p.log.String(), "permission denied") {
		t.Errorf("relay with a retention and no DELETE on the table exited %d, want 1 saying so; log:\n%s", code, p.log.String())
	}
}

// TestReplayStopsAtABadRowThenDeadLettersItOnResume: a row the broker
// cannot take stops a replay, which names it and exits 1 with the rows
// before it published and recorded; resumed with --dead-letter, the row
// goes to RELAY_DEAD_LETTER marked as replayed, and the rest follow.
func TestReplayStopsAtABadRowThenDeadLettersItOnResume(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindQueue("#")
	dlx := "dlx_" + e.name
	dead := bindQueueAt(t, e.amqpURL, dlx, "q_"+e.name+"_dead", "#")
	first := e.insertEvents(3000, 20, 7)
	var bad string
	// A routing key over AMQP's 255 bytes.
	if err := e.db.QueryRow(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		VALUES (repeat('x', 300), '1', 'e', '{}') RETURNING id`).Scan(&bad); err != nil {
		t.Fatal(err)
	}
	rest := e.insertEvents(1000, 20, 7)

	code, stdout, stderr := e.command([]string{"replay"})
	if code != 1 || !strings.Contains(stderr, "stopped at row "+bad) {
		t.Fatalf("relay replay over a bad row exited %d, want 1 naming row %s; stdout:\n%s\nstderr:\n%s", code, bad, stdout, stderr)
	}
	var id string
	var rows int64
	if err := e.db.QueryRow(t.Context(), `SELECT replay_id, rows_done FROM relay.replay`).Scan(&id, &rows); err != nil {
		t.Fatal(err)
	}
	if rows > int64(len(first)) {
		t.Fatalf("relay.replay records %d rows, past the bad row (row %d)", rows, len(first)+1)
	}
	q.waitDistinct(len(first), time.Minute)

	code, stdout, stderr = e.command([]string{"replay", "--resume", id, "--dead-letter"}, "RELAY_DEAD_LETTER", dlx)
	if code != 0 {
		t.Fatalf("relay replay --resume %s --dead-letter exited %d; stdout:\n%s\nstderr:\n%s", id, code, stdout, stderr)
	}
	if !strings.Contains(stdout, "(1 dead-lettered)") {
		t.Errorf("summary %q does not count the dead letter", stdout)
	}
	msgs := q.waitDistinct(len(first)+len(rest), time.Minute)
	checkAll(t, append(append([]string(nil), first...), rest...), msgs)
	d := dead.waitDistinct(1, time.Minute)[0]
	if d.MessageId != bad || d.Headers["x-relay-replay"] != id || d.Headers["x-relay-error"] == nil {
		t.Errorf("dead letter %s with headers %v, want row %s with x-relay-replay %s and x-relay-error", d.MessageId, d.Headers, bad, id)
	}
}
