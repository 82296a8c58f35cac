//go:build linux

package integration

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"
)

type payload struct {
	Agg string `json:"agg"`
	Seq int    `json:"seq"`
}

// checkOrder asserts the order of each aggregate's events as they were
// received (payloads {agg, seq}, seq counting the aggregate's events in
// commit order from 1), and returns the number of replays per aggregate;
// see orderProblem.
func checkOrder(t *testing.T, msgs []message) map[string]int {
	t.Helper()
	replays, err := orderProblem(msgs)
	if err != nil {
		t.Fatal(err)
	}
	return replays
}

// orderProblem judges the order of each aggregate's deliveries. The first
// delivery of each event comes in commit order: seq one past the highest
// delivered so far. Any other delivery is part of an in-order replay, such
// as the suffix a restarted relay publishes again: it starts with a step
// back to an event already delivered and goes on one event at a time,
// until it has caught up or another replay starts. An event of an
// aggregate never arrives after a later one otherwise.
func orderProblem(msgs []message) (map[string]int, error) {
	type state struct{ prev, max int }
	aggs := map[string]*state{}
	replays := map[string]int{}
	for i, m := range msgs {
		var p payload
		if err := json.Unmarshal(m.Body, &p); err != nil {
			return nil, fmt.Errorf("message %s: body %q: %w", m.MessageId, m.Body, err)
		}
		a := aggs[p.Agg]
		if a == nil {
			a = &state{}
			aggs[p.Agg] = a
		}
		switch {
		case p.Seq == a.prev+1:
			// The next event: new, or the next of a replay.
		case p.Seq >= 1 && p.Seq <= a.prev:
			replays[p.Agg]++
		case p.Seq > a.max+1:
			return nil, fmt.Errorf("message %d (%s): aggregate %s: event %d arrived before event %d", i, m.MessageId, p.Agg, p.Seq, a.max+1)
		default:
			return nil, fmt.Errorf("message %d (%s): aggregate %s: event %d arrived right after %d, skipping the rest of a replay", i, m.MessageId, p.Agg, p.Seq, a.prev)
		}
		a.prev = p.Seq
		a.max = max(a.max, p.Seq)
	}
	return replays, nil
}

// checkAll asserts that every id arrived, and that repeated deliveries of
// an id carry the same body.
func checkAll(t *testing.T, ids []string, msgs []message) {
	t.Helper()
	bodies := map[string]string{}
	for _, m := range msgs {
		if b, ok := bodies[m.MessageId]; ok && b != string(m.Body) {
			t.Fatalf("message %s delivered twice with different bodies", m.MessageId)
		}
		bodies[m.MessageId] = string(m.Body)
	}
	var missing []string
	for _, id := range ids {
		if _, ok := bodies[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d events never arrived, e.g. %v", len(missing), len(ids), missing[:min(5, len(missing))])
	}
	if len(bodies) != len(ids) {
		t.Fatalf("received %d distinct ids, inserted %d", len(bodies), len(ids))
	}
}

var lsnRE = regexp.MustCompile(`^[0-9A-F]+/[0-9A-F]+$`)

func TestManyRowsArriveWithTheirProperties(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindQueue("#")
	e.startRelay()
	const n = 20000
	ids := e.insertEvents(n, 100, 37)
	msgs := q.waitDistinct(n, 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)

	var createdAt time.Time
	err := e.db.QueryRow(t.Context(), "SELECT created_at FROM outbox WHERE id = $1", ids[0]).Scan(&createdAt)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.MessageId != ids[0] {
			continue
		}
		if m.RoutingKey != "order.order.created" {
			t.Errorf("routing key %q, want order.order.created", m.RoutingKey)
		}
		if m.Type != "order.created" || m.ContentType != "application/json" || m.DeliveryMode != 2 {
			t.Errorf("type %q content type %q delivery mode %d", m.Type, m.ContentType, m.DeliveryMode)
		}
		if !m.Timestamp.Equal(createdAt.Truncate(time.Second)) {
			t.Errorf("timestamp %s, want created_at %s", m.Timestamp, createdAt)
		}
		var p payload
		if err := json.Unmarshal(m.Body, &p); err != nil || p.Agg != "agg-0" || p.Seq != 1 {
			t.Errorf("body %s", m.Body)
		}
		// The headers column's number stays a number: an AMQP long.
		want := map[string]any{"aggregate_type": "order", "aggregate_id": "agg-0", "tenant": "acme", "n": int64(1)}
		for k, v := range want {
			if got := m.Headers[k]; got != v {
				t.Errorf("header %s = %#v, want %#v", k, got, v)
			}
		}
		lsn, _ := m.Headers["x-relay-lsn"].(string)
		if !lsnRE.MatchString(lsn) {
			t.Errorf("x-relay-lsn %q is not an LSN", lsn)
		}
		return
	}
	t.Fatalf("first event %s not found", ids[0])
}

// TestSIGKILLMidStreamLosesNothing SIGKILLs the relay twice while rows
// keep committing, each time at a moment when the broker holds rows that
// the slot had not confirmed, so that the restarted relay certainly
// publishes them again, and expects every row, each redelivery the same
// (on Kafka the same record), and order per aggregate: subtests rabbitmq
// (formerly this test alone) and kafka (formerly
// TestKafkaSIGKILLMidStreamLosesNothing).
func TestSIGKILLMidStreamLosesNothing(t *testing.T) {
	for _, b := range sharedBrokers {
		t.Run(b.name, func(t *testing.T) {
			e, c := b.newEnv(t)
			p := e.startRelay()
			// Rows commit until after the last restart, however fast the
			// relay drains them.
			w := e.startWriter(50, 11)
			k := &replayKiller{e: e, delivered: c.highestRelayLSN}
			for _, at := range []int{2000, 9000} {
				waitMessages(t, c, at)
				p = k.kill(p)
			}
			w.waitRows(2000)
			ids := w.finish()
			msgs := c.waitDistinctMessages(len(ids), 2*time.Minute)
			checkAll(t, ids, msgs)
			checkOrder(t, msgs)
			c.checkBroker(t)
			if len(msgs) == len(ids) {
				t.Errorf("no row was delivered twice, although %d kills left delivered rows the slot had not confirmed", k.replays)
			}
			t.Logf("%d events, %d deliveries (%d redelivered after %d kills, %d with a replay due)", len(ids), len(msgs), len(msgs)-len(ids), k.kills, k.replays)
		})
	}
}

// TestSIGTERMConfirmsAndExitsZero does not run in parallel: it expects the
// final status to cover the WAL end, which other tests' writes would move
// past what this relay has been sent.
func TestSIGTERMConfirmsAndExitsZero(t *testing.T) {
	e := newEnv(t)
	q := e.bindQueue("#")
	p := e.startRelay()
	ids := e.insertEvents(500, 10, 5)
	q.waitDistinct(len(ids), time.Minute)
	end := e.currentLSN()
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d after SIGTERM, want 0; log:\n%s", code, p.log.String())
	}
	// The final status update confirmed everything that was published.
	if got := e.slotLSN(); got < end {
		t.Fatalf("slot confirmed %X after a clean stop, want at least %X (all published rows)", got, end)
	}
	// A restart finds nothing to republish.
	before := len(q.messages())
	e.startRelay()
	more := e.insertEvents(1, 1, 1)
	msgs := q.waitDistinct(len(ids)+1, time.Minute)
	if extra := len(msgs) - before - 1; extra != 0 {
		t.Fatalf("restart after a clean stop redelivered %d events", extra)
	}
	checkAll(t, append(ids, more...), msgs)
}

func TestUnroutableMessagesAreNotDropped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Only order.* is bound: the invoice events are unroutable at first.
	orders := e.bindQueue("order.#")
	p := e.startRelay()
	e.exec(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('invoice', 'i-1', 'issued', '{"n":1}')`)
	before := e.currentLSN()
	e.exec(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', 'o-1', 'created', '{"n":2}')`)
	// Each return is followed by a republish of what is unconfirmed, the
	// invoice at least: once the count grew twice, the relay has had the
	// invoice returned and retried it at least twice, and the status
	// update after that shows what it confirmed meanwhile.
	retried := p.waitMetric(t, "relay_publish_retries_total", "at least 1", func(v float64) bool { return v >= 1 }, 30*time.Second)
	p.waitMetric(t, "relay_publish_retries_total", fmt.Sprintf("above %v", retried), func(v float64) bool { return v > retried }, 30*time.Second)
	e.nextStatus()
	if got := e.slotLSN(); got > before {
		t.Fatalf("slot advanced to %X past the unroutable event's transaction (ends before %X)", got, before)
	}
	invoices := e.bindQueue("invoice.#")
	msgs := invoices.waitDistinct(1, 30*time.Second)
	if msgs[0].RoutingKey != "invoice.issued" || string(msgs[0].Body) != `{"n": 1}` {
		t.Fatalf("got %q %s", msgs[0].RoutingKey, msgs[0].Body)
	}
	// Order is kept on the wire: the order event follows the retried invoice.
	orders.waitDistinct(1, 30*time.Second)
	eventually(t, 10*time.Second, func() error {
		if got := e.slotLSN(); got <= before {
			return fmt.Errorf("slot at %X, not past %X after both were confirmed", got, before)
		}
		return nil
	})
}

func TestIdleOutboxDoesNotHoldWAL(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.bindQueue("#")
	e.startRelay()
	e.insertEvents(1, 1, 1)
	// Traffic on an unpublished table only: the slot must keep up anyway.
	e.exec("CREATE TABLE other (id bigserial PRIMARY KEY, data text)")
	for range 20 {
		e.exec("INSERT INTO other (data) SELECT repeat('x', 500) FROM generate_series(1, 2000)")
	}
	written := e.currentLSN()
	eventually(t, 30*time.Second, func() error {
		if got := e.slotLSN(); got < written {
			return fmt.Errorf("slot confirmed %X, WAL is at %X: %d bytes held", got, written, written-got)
		}
		return nil
	})
}

func TestInvalidConfigurationExitsTwoNamingEachVariable(t *testing.T) {
	t.Parallel()
	p := startRelayWith(t, []string{
		"RELAY_DATABASE_URL=postgres://u:pw@127.0.0.1:1/db",
		"RELAY_SINK=rabbitmq",
		"RELAY_MAX_IN_FLIGHT=lots",
		"RELAY_LOG_FORMAT=xml",
		"RELAY_AMQP_ROUTING_KEY={aggregate_type",
	})
	if code := p.wait(10 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	out := p.log.String()
	for _, v := range []string{"RELAY_AMQP_URL", "RELAY_MAX_IN_FLIGHT", "RELAY_LOG_FORMAT", "RELAY_AMQP_ROUTING_KEY"} {
		if !strings.Contains(out, v) {
			t.Errorf("output does not name %s:\n%s", v, out)
		}
	}
	if strings.Contains(out, "pw@") {
		t.Errorf("output shows the password:\n%s", out)
	}
}

func TestHelpListsEveryVariable(t *testing.T) {
	t.Parallel()
	p := startRelayWith(t, nil, "--help")
	if code := p.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	out := p.log.String()
	for _, v := range []string{"RELAY_DATABASE_URL", "RELAY_TABLES", "RELAY_SLOT", "RELAY_PUBLICATION", "RELAY_SINK", "RELAY_AMQP_URL", "RELAY_AMQP_EXCHANGE", "RELAY_AMQP_ROUTING_KEY", "RELAY_LOG_LEVEL", "RELAY_LOG_FORMAT", "RELAY_HTTP_ADDR"} {
		if !strings.Contains(out, v) {
			t.Errorf("--help does not list %s", v)
		}
	}
}

// TestOverTheUnixSocket: the relay reads the slot through PostgreSQL's
// Unix socket (docs/deploying.md recommends it on the database host),
// with the least-privilege role, and publishes every row, leaving the slot
// confirmed past them.
func TestOverTheUnixSocket(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.dbURL = pg.SocketURL("relay", "change-me", e.name)
	if !strings.Contains(e.dbURL, "host=%2F") {
		t.Fatalf("socket URL %s names no socket directory", e.dbURL)
	}
	q := e.bindQueue("#")
	p := e.startRelay()
	ids := e.insertEvents(300, 10, 3)
	q.waitDistinct(len(ids), time.Minute)
	// A walsender serving a Unix-socket client has no client address.
	var overSocket bool
	if err := e.db.QueryRow(t.Context(), `SELECT r.client_addr IS NULL FROM pg_stat_replication r
		JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1`, e.slot).Scan(&overSocket); err != nil {
		t.Fatalf("the slot's walsender: %v", err)
	}
	if !overSocket {
		t.Fatal("the walsender's client has a network address: the relay did not connect through the socket")
	}
	end := e.currentLSN()
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0; log:\n%s", code, p.log.String())
	}
	if got := e.slotLSN(); got < end {
		t.Fatalf("slot confirmed %X, want at least %X", got, end)
	}
}
