//go:build linux

package integration

import (
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A headers column RabbitMQ refuses: CC and BCC must be arrays of
// strings, and a string closes the channel (unacceptable_type_in_header).
// The row is a bad row under the bad-row policy, not a reconnect loop; its
// dead letter, without the header, is publishable.
func TestBadRowCCHeaderNotAnArray(t *testing.T) {
	runBadRow(t, badRowCase{
		good: goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'agg-0', 'created', '{}', '{"CC": "audit"}') RETURNING id`,
		reason: "CC",
	})
}

func TestBadRowBCCHeaderNotAnArray(t *testing.T) {
	runBadRow(t, badRowCase{
		good: goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'agg-0', 'created', '{}', '{"BCC": ["audit", 7]}') RETURNING id`,
		reason: "BCC",
	})
}

// A header name AMQP cannot carry: the row is bad, and its dead letter,
// which cannot carry it either, goes without it and says so.
func TestBadRowHeaderNameTooLong(t *testing.T) {
	runBadRow(t, badRowCase{
		good: goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'agg-0', 'created', '{}', jsonb_build_object(repeat('h', 300), 'v')) RETURNING id`,
		reason: "header name is 300 bytes",
	})
}

// TestTypedHeadersKeepTheirTypes: JSON numbers, booleans, null, arrays and
// objects in the headers column arrive on RabbitMQ as the AMQP field types
// a consumer or plugin expects (an integer a long, any other number a
// double, ...), so that CC routes a copy; on Kafka, as their JSON text.
func TestTypedHeadersKeepTheirTypes(t *testing.T) {
	t.Parallel()
	const headers = `{"x-delay": 5000, "big": 12345678901234567890, "ratio": 1.5, "flag": true, "nothing": null,
		"CC": ["audit.copy"], "list": [1, "two", false], "obj": {"a": 1, "b": [true]}, "text": "5"}`
	t.Run("rabbitmq", func(t *testing.T) {
		e := newEnv(t)
		q := e.bindQueue("order.#")
		audit := bindQueueAt(t, e.amqpURL, e.exchange, "audit_"+e.name, "audit.copy")
		e.startRelay()
		id := e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'o-1', 'created', '{}', $1) RETURNING id`, headers)
		m := q.waitDistinct(1, 30*time.Second)[0]
		want := amqp.Table{
			"x-delay": int64(5000),
			"big":     float64(12345678901234567890),
			"ratio":   1.5,
			"flag":    true,
			"nothing": nil,
			"CC":      []any{"audit.copy"},
			"list":    []any{int64(1), "two", false},
			"obj":     amqp.Table{"a": int64(1), "b": []any{true}},
			"text":    "5",
		}
		for k, v := range want {
			got, ok := m.Headers[k]
			if !ok || !reflect.DeepEqual(got, v) {
				t.Errorf("header %s = %#v (present %v), want %#v", k, got, ok, v)
			}
		}
		if m.MessageId != id {
			t.Errorf("message id %q, want %s", m.MessageId, id)
		}
		// CC is RabbitMQ's sender-selected distribution: the copy
		// reaches the queue bound to its key.
		if c := audit.waitDistinct(1, 30*time.Second)[0]; c.MessageId != id {
			t.Errorf("the CC copy has id %q, want %s", c.MessageId, id)
		}
	})
	t.Run("kafka", func(t *testing.T) {
		e := newKafkaEnv(t)
		c := e.consumeKafka()
		e.startRelay()
		e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'o-1', 'created', '{}', $1) RETURNING id`, headers)
		r := c.waitDistinct(1, 30*time.Second)[0]
		want := map[string]string{
			"x-delay": "5000",
			"big":     "12345678901234567890",
			"ratio":   "1.5",
			"flag":    "true",
			"nothing": "null",
			"CC":      `["audit.copy"]`,
			"list":    `[1,"two",false]`,
			"obj":     `{"a":1,"b":[true]}`,
			"text":    "5",
		}
		for k, v := range want {
			if got, ok := r.header(k); !ok || got != v {
				t.Errorf("header %s = %q (present %v), want %q", k, got, ok, v)
			}
		}
	})
}

// TestHeadersColumnCannotForgeTheRelaysHeaders: keys of the headers column
// that repeat the relay's own headers (the dedup key id, the event type,
// the position, the CloudEvents attributes) are dropped: the relay's
// headers appear once, with the relay's values, on both brokers, and each
// dropped key is logged once and counted.
func TestHeadersColumnCannotForgeTheRelaysHeaders(t *testing.T) {
	t.Parallel()
	t.Run("kafka", func(t *testing.T) {
		e := newKafkaEnv(t)
		e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents", "RELAY_CLOUDEVENTS_SOURCE": "/orders"}
		c := e.consumeKafka()
		p := e.startRelay()
		forged := `{"id": "spoof", "event_type": "spoof", "aggregate_type": "spoof", "x-relay-lsn": "0/0",
			"content-type": "text/spoof", "ce_id": "spoof", "ce_type": "spoof", "tenant": "acme"}`
		var ids []string
		for range 3 {
			ids = append(ids, e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
				VALUES ('order', 'o-1', 'created', '{}', $1) RETURNING id`, forged))
		}
		recs := c.waitDistinct(len(ids), 30*time.Second)
		for i, r := range recs {
			count := map[string]int{}
			for _, h := range r.Headers {
				count[h.Key]++
			}
			for k, n := range count {
				if n != 1 {
					t.Errorf("record %d: header %s appears %d times", i, k, n)
				}
			}
			want := map[string]string{"id": ids[i], "ce_id": ids[i], "event_type": "created", "ce_type": "created",
				"aggregate_type": "order", "content-type": "application/json", "tenant": "acme"}
			for k, v := range want {
				if got, _ := r.header(k); got != v {
					t.Errorf("record %d: header %s = %q, want %q", i, k, got, v)
				}
			}
			if lsn, _ := r.header("x-relay-lsn"); lsn == "0/0" {
				t.Errorf("record %d: x-relay-lsn is the forged 0/0", i)
			}
		}
		p.waitMetric(t, `relay_headers_dropped_total{header="id"}`, "3", equals(3), 10*time.Second)
		if n := strings.Count(p.log.String(), `header=ce_id`); n != 1 {
			t.Errorf("the log names the dropped header ce_id %d times, want once:\n%s", n, p.log.String())
		}
	})
	t.Run("rabbitmq", func(t *testing.T) {
		e := newEnv(t)
		e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents", "RELAY_CLOUDEVENTS_SOURCE": "/orders"}
		q := e.bindQueue("#")
		p := e.startRelay()
		id := e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'o-1', 'created', '{}', $1) RETURNING id`,
			`{"aggregate_type": "spoof", "aggregate_id": "spoof", "x-relay-lsn": "0/0", "cloudEvents:id": "spoof", "tenant": "acme"}`)
		m := q.waitDistinct(1, 30*time.Second)[0]
		want := map[string]any{"aggregate_type": "order", "aggregate_id": "o-1", "cloudEvents:id": id, "tenant": "acme"}
		for k, v := range want {
			if got := m.Headers[k]; got != v {
				t.Errorf("header %s = %#v, want %#v", k, got, v)
			}
		}
		if m.Headers["x-relay-lsn"] == "0/0" {
			t.Error("x-relay-lsn is the forged 0/0")
		}
		p.waitMetric(t, `relay_headers_dropped_total{header="cloudEvents:id"}`, "1", equals(1), 10*time.Second)
	})
}

// TestKafkaTopicTheBrokerWouldRefuseIsABadRow: a topic template renders a
// name Kafka refuses (a space in the aggregate type): the row is a bad
// row, stopping the stream with its id, or dead-lettered; the relay never
// asks the broker to create the topic, which a real cluster refuses and
// kfake accepts.
func TestKafkaTopicTheBrokerWouldRefuseIsABadRow(t *testing.T) {
	t.Parallel()
	const bad = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		VALUES ('Order Item', 'o-1', 'created', '{}') RETURNING id`
	t.Run("without dead letter the stream stops before it", func(t *testing.T) {
		e := newKafkaEnv(t)
		e.extraVars = map[string]string{"RELAY_BLOCKED_RETRY_INTERVAL": "300ms"}
		p := e.startRelay()
		id := e.insertRow(bad)
		p.waitReady(t, http.StatusServiceUnavailable, id, 30*time.Second)
		if code, reason := p.ready(); !strings.Contains(reason, "topic") {
			t.Errorf("/readyz %d %q does not say the topic is the problem", code, reason)
		}
	})
	t.Run("with dead letter it is dead-lettered", func(t *testing.T) {
		e := newKafkaEnv(t)
		dlq := "dead." + e.name
		e.extraVars = map[string]string{"RELAY_DEAD_LETTER": dlq}
		c := e.consumeKafka()
		dead := consumeKafkaAt(t, e.kafkaBrokers, "^"+dlq+"$")
		p := e.startRelay()
		id := e.insertRow(bad)
		next := e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', 'o-2', 'created', '{}') RETURNING id`)
		if r := dead.waitDistinct(1, 30*time.Second)[0]; r.id() != id {
			t.Fatalf("dead letter %q, want %s", r.id(), id)
		} else if reason, _ := r.header("x-relay-error"); !strings.Contains(reason, "Order Item") {
			t.Errorf("x-relay-error %q does not name the topic", reason)
		}
		if r := c.waitDistinct(1, 30*time.Second)[0]; r.id() != next {
			t.Errorf("first record %q, want the row after the bad one, %s", r.id(), next)
		}
		p.waitMetric(t, "relay_dead_lettered_total", "1", equals(1), 10*time.Second)
		for _, r := range c.records() {
			if strings.Contains(r.Topic, " ") {
				t.Errorf("a record went to topic %q", r.Topic)
			}
		}
	})
}

// TestDeadLetterOfAHeaderRowIsPublishable: with a dead-letter exchange, a
// row whose headers RabbitMQ refuses reaches it, without those headers and
// with x-relay-error naming them, and the stream goes on.
func TestDeadLetterOfAHeaderRowIsPublishable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dlx := "dead_" + e.name
	e.extraVars = map[string]string{"RELAY_DEAD_LETTER": dlx}
	dead := bindQueueAt(t, e.amqpURL, dlx, "q_"+e.name+"_dead", "#")
	q := e.bindQueue("#")
	e.startRelay()
	long := strings.Repeat("h", 300)
	id := e.insertRow(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('order', 'o-1', 'created', '{"n": 1}', $1) RETURNING id`,
		fmt.Sprintf(`{"CC": "audit", %q: "v", "tenant": "acme", "expiration": "soon"}`, long))
	next := e.insertRow(goodRow, 1)
	dl := dead.waitDistinct(1, 30*time.Second)[0]
	if dl.MessageId != id || string(dl.Body) != `{"n": 1}` {
		t.Errorf("dead letter %s with body %q, want %s with the row's payload", dl.MessageId, dl.Body, id)
	}
	reason, _ := dl.Headers["x-relay-error"].(string)
	for _, want := range []string{"CC", "header name is 300 bytes"} {
		if !strings.Contains(reason, want) {
			t.Errorf("x-relay-error %q does not say %q", reason, want)
		}
	}
	if _, ok := dl.Headers["CC"]; ok {
		t.Error("the dead letter carries the CC header that made its row bad")
	}
	if _, ok := dl.Headers[long]; ok {
		t.Error("the dead letter carries the 300-byte header name")
	}
	if dl.Headers["tenant"] != "acme" {
		t.Errorf("the dead letter lost the good header tenant: %v", dl.Headers)
	}
	if m := q.waitDistinct(1, 30*time.Second)[0]; m.MessageId != next {
		t.Errorf("the row after the bad one: got %s, want %s", m.MessageId, next)
	}
}

// TestEveryMessageCarriesItsTransaction: on each broker every message of a
// three-row transaction carries the transaction's commit LSN
// (x-relay-lsn) and its index in it (x-relay-index: 0, 1, 2, in commit
// order; a long where headers are typed), which a headers-column key
// cannot forge; with the cloudevents format also as the extension
// attributes relaylsn and relayindex.
func TestEveryMessageCarriesItsTransaction(t *testing.T) {
	t.Parallel()
	const insert = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('order', 'o-1', 'created', '{}', '{"x-relay-index": 99}'), ('order', 'o-2', 'created', '{}', '{}'),
			('order', 'o-3', 'created', '{}', '{}')
		RETURNING id`
	insertTxn := func(e *env) []string {
		return queryStrings(t, e.db, insert)
	}
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		e := newKafkaEnv(t)
		e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents", "RELAY_CLOUDEVENTS_SOURCE": "/orders"}
		c := e.consumeKafka()
		e.startRelay()
		ids := insertTxn(e)
		recs := c.waitDistinct(len(ids), 30*time.Second)
		lsns := map[string]bool{}
		for _, r := range recs {
			i := slices.Index(ids, r.id())
			lsn, _ := r.header("x-relay-lsn")
			lsns[lsn] = true
			index, n := "", 0
			for _, h := range r.Headers {
				if h.Key == "x-relay-index" {
					index, n = string(h.Value), n+1
				}
			}
			ceLSN, _ := r.header("ce_relaylsn")
			ceIndex, _ := r.header("ce_relayindex")
			if n != 1 || index != strconv.Itoa(i) || ceIndex != index || ceLSN != lsn {
				t.Errorf("record %s (row %d): x-relay-index %q (%d times), ce_relayindex %q, x-relay-lsn %q, ce_relaylsn %q", r.id(), i, index, n, ceIndex, lsn, ceLSN)
			}
		}
		if len(lsns) != 1 {
			t.Errorf("one transaction's records carry commit LSNs %v", lsns)
		}
	})
	t.Run("rabbitmq", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.extraVars = map[string]string{"RELAY_FORMAT": "cloudevents", "RELAY_CLOUDEVENTS_SOURCE": "/orders"}
		q := e.bindQueue("#")
		e.startRelay()
		ids := insertTxn(e)
		lsns := map[any]bool{}
		for _, m := range q.waitDistinct(len(ids), 30*time.Second) {
			i := slices.Index(ids, m.MessageId)
			lsns[m.Headers["x-relay-lsn"]] = true
			if m.Headers["x-relay-index"] != int64(i) || m.Headers["cloudEvents:relayindex"] != strconv.Itoa(i) ||
				m.Headers["cloudEvents:relaylsn"] != m.Headers["x-relay-lsn"] {
				t.Errorf("message %s (row %d): headers %v", m.MessageId, i, m.Headers)
			}
		}
		if len(lsns) != 1 {
			t.Errorf("one transaction's messages carry commit LSNs %v", lsns)
		}
	})
	t.Run("rabbitmq-stream", func(t *testing.T) {
		t.Parallel()
		e, node, name := newStreamEnv(t)
		e.startRelay()
		ids := insertTxn(e)
		r := readStream(t, node, name)
		eventually(t, 30*time.Second, func() error {
			if n := len(r.messages()); n < len(ids) {
				return fmt.Errorf("%d messages of %d", n, len(ids))
			}
			return nil
		})
		lsns := map[string]bool{}
		for _, m := range r.messages() {
			i := slices.Index(ids, m.id)
			lsns[m.lsn] = true
			if m.index != int64(i) {
				t.Errorf("message %s (row %d): x-relay-index %#v", m.id, i, m.index)
			}
		}
		if len(lsns) != 1 {
			t.Errorf("one transaction's messages carry commit LSNs %v", lsns)
		}
	})
}
