//go:build linux

package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// The generator's broker limit: a payload near it is published, one over
// it dead-lettered without its payload.
const genLimit = 64 << 10

// genRow is one adversarial outbox row, written to a table of each
// payload type.
type genRow struct {
	name                    string
	aggType, aggID, evType  string
	payload                 *string // nil: NULL
	headers                 *string // JSON; nil: NULL
	notForMessages, notJSON bool    // the table-less path cannot carry it / its payload is no JSON
}

func ptr(s string) *string { return &s }

// genRows are rows that have broken the relay, or could: empty strings in
// every text column, NULL in every optional one, long and Unicode header
// names and values, the relay's own header names, typed header values,
// payloads empty, of one byte, near and over the broker's limit, and odd
// aggregate types (spaces, dots, slashes, 300 characters).
func genRows() []genRow {
	long := strings.Repeat("h", 300)
	return []genRow{
		{name: "plain", aggType: "order", aggID: "o-1", evType: "created", payload: ptr(`{"n": 1}`), headers: ptr(`{"tenant": "acme"}`)},
		{name: "empty strings", aggType: "", aggID: "", evType: "", payload: ptr(`""`), headers: ptr(`{"": ""}`)},
		{name: "nulls", aggType: "order", aggID: "o-2", evType: "created", payload: nil, headers: nil},
		{name: "unicode", aggType: "заказ", aggID: "🚀", evType: "créé", payload: ptr(`{"текст": "✓ ü 日本"}`), headers: ptr(`{"ключ": "значение", "emoji🔑": "✓"}`)},
		{name: "long header name", aggType: "order", aggID: "o-3", evType: "created", payload: ptr(`{}`), headers: ptr(fmt.Sprintf(`{%q: "v"}`, long))},
		{name: "long header value", aggType: "order", aggID: "o-4", evType: "created", payload: ptr(`{}`), headers: ptr(fmt.Sprintf(`{"v": %q}`, strings.Repeat("v", 10000)))},
		{name: "the relay's own header names", aggType: "order", aggID: "o-5", evType: "created", payload: ptr(`{}`),
			headers: ptr(`{"id": "spoof", "x-relay-lsn": "0/0", "aggregate_type": "spoof", "event_type": "spoof", "aggregate_id": "spoof"}`)},
		{name: "typed headers", aggType: "order", aggID: "o-6", evType: "created", payload: ptr(`{}`),
			headers: ptr(`{"n": 5, "f": 1.5, "b": true, "z": null, "a": [1, "x"], "o": {"k": "v"}, "CC": ["order.copy"]}`)},
		{name: "CC not an array", aggType: "order", aggID: "o-7", evType: "created", payload: ptr(`{}`), headers: ptr(`{"CC": "order.copy"}`)},
		{name: "one byte", aggType: "order", aggID: "o-8", evType: "created", payload: ptr(`1`)},
		{name: "near the limit", aggType: "order", aggID: "o-9", evType: "created", payload: ptr(fmt.Sprintf(`{"pad": %q}`, strings.Repeat("x", genLimit-4096)))},
		{name: "over the limit", aggType: "order", aggID: "o-10", evType: "created", payload: ptr(fmt.Sprintf(`{"pad": %q}`, strings.Repeat("x", genLimit+1024)))},
		{name: "aggregate type with a space", aggType: "Order Item", aggID: "o-11", evType: "created", payload: ptr(`{}`)},
		{name: "aggregate type with dots and slashes", aggType: "a.b/c", aggID: "o-12", evType: "x.y", payload: ptr(`{}`)},
		{name: "aggregate type of 300 characters", aggType: strings.Repeat("a", 300), aggID: "o-13", evType: "created", payload: ptr(`{}`)},
		{name: "headers not an object", aggType: "order", aggID: "o-14", evType: "created", payload: ptr(`{}`), headers: ptr(`[1]`), notForMessages: true},
	}
}

// genTables are the outbox tables of the generator, one per payload type.
var genTables = []struct{ name, payloadType string }{
	{"gen_jsonb", "jsonb"}, {"gen_text", "text"}, {"gen_bytea", "bytea"},
}

// genDB creates the tables (payload and headers nullable) and the
// table-less outbox function, and makes the tables the env's publication.
func (e *env) genDB() {
	e.t.Helper()
	emit, err := os.ReadFile("../schema/outbox_emit.sql")
	if err != nil {
		e.t.Fatal(err)
	}
	e.exec(string(emit))
	var names []string
	for _, tb := range genTables {
		e.exec(fmt.Sprintf(`CREATE TABLE %[1]s (LIKE public.outbox INCLUDING ALL);
			ALTER TABLE %[1]s ALTER COLUMN payload DROP NOT NULL, ALTER COLUMN payload TYPE %[2]s USING payload::text::%[2]s,
				ALTER COLUMN headers DROP NOT NULL;
			GRANT SELECT ON %[1]s TO relay`, tb.name, tb.payloadType))
		names = append(names, "public."+tb.name)
	}
	e.exec(fmt.Sprintf("ALTER PUBLICATION pub_%s SET TABLE %s", e.name, strings.Join(names, ", ")))
	if e.extraVars == nil {
		e.extraVars = map[string]string{}
	}
	e.extraVars["RELAY_TABLES"] = strings.Join(names, ",")
}

// genInsert inserts every generated row into every table, each with the
// id and created_at given, in that order, in one transaction.
func (e *env) genInsert(ids map[string]string, at time.Time) {
	e.t.Helper()
	tx, err := e.db.Begin(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(e.t.Context())
	i := 0
	for _, tb := range genTables {
		for _, r := range genRows() {
			var payload any
			if r.payload != nil {
				switch tb.payloadType {
				case "bytea":
					payload = []byte(*r.payload)
				default:
					payload = *r.payload
				}
			}
			_, err := tx.Exec(e.t.Context(), fmt.Sprintf(`INSERT INTO %s (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at)
				VALUES ($1, $2, $3, $4, $5, $6, $7)`, tb.name),
				ids[tb.name+"/"+r.name], r.aggType, r.aggID, r.evType, payload, r.headers, at.Add(time.Duration(i)*time.Millisecond))
			if err != nil {
				e.t.Fatalf("insert %s into %s: %v", r.name, tb.name, err)
			}
			i++
		}
	}
	if err := tx.Commit(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
}

// genEmit emits every row the table-less path can carry as a logical
// decoding message, with the jsonb table's ids.
func (e *env) genEmit(ids map[string]string) {
	e.t.Helper()
	tx, err := e.db.Begin(e.t.Context())
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(e.t.Context())
	for _, r := range genRows() {
		if r.notForMessages {
			continue
		}
		var payload any
		if r.payload != nil {
			payload = *r.payload
		}
		if _, err := tx.Exec(e.t.Context(), `SELECT outbox_emit($1, $2, $3, $4::jsonb, $5::jsonb, $6)`,
			r.aggType, r.aggID, r.evType, payload, r.headers, ids["gen_jsonb/"+r.name]); err != nil {
			e.t.Fatalf("emit %s: %v", r.name, err)
		}
	}
	if err := tx.Commit(e.t.Context()); err != nil {
		e.t.Fatal(err)
	}
}

// genIDs gives every (table, row) an id of its own.
func genIDs(e *env) map[string]string {
	ids := map[string]string{}
	for _, tb := range genTables {
		for _, r := range genRows() {
			var id string
			if err := e.db.QueryRow(e.t.Context(), "SELECT gen_random_uuid()::text").Scan(&id); err != nil {
				e.t.Fatal(err)
			}
			ids[tb.name+"/"+r.name] = id
		}
	}
	return ids
}

// genDelivery is what a consumer received of one row, normalised to what
// must be the same on every path: the position headers left out.
type genDelivery struct {
	id   string
	dead bool
	// form is the message as JSON: destination, key, properties,
	// headers and body.
	form string
	// timeless is form without the timestamp, which the table-less path
	// takes from the commit.
	timeless string
}

// TestEveryPathBuildsTheSameMessage: adversarial rows (genRows), in tables
// with jsonb, text and bytea payloads, go through the initial backfill,
// through streaming in pgoutput's binary format and then in its text
// format, and (jsonb rows) through the table-less
// pg_logical_emit_message path, to each broker, with a dead-letter
// destination. Every row is delivered or dead-lettered on every path, the
// stream never stalls, and each row's message is the same on every path,
// byte for byte, apart from the position headers (and the table-less
// path's timestamp, which is its commit time). Without a dead-letter
// destination, the stream stops at the first row that was dead-lettered,
// having delivered every row before it, and /readyz names it.
func TestEveryPathBuildsTheSameMessage(t *testing.T) {
	t.Parallel()
	for _, broker := range []string{"rabbitmq", "kafka"} {
		t.Run(broker, func(t *testing.T) {
			var dead map[string]bool
			var order []string
			t.Run("with dead letter every path builds the same message", func(t *testing.T) {
				dead, order = genSamePaths(t, broker)
			})
			if t.Failed() || len(dead) == 0 {
				return
			}
			t.Run("without dead letter the stream stops at the first bad row", func(t *testing.T) {
				genStops(t, broker, dead, order)
			})
		})
	}
}

// genEnv is an env on a broker of the test's own, whose message size
// limit is genLimit.
// The received function returns what each consumer received, in arrival
// order.
func genEnv(t *testing.T, broker string) (*env, func() [][]genDelivery) {
	e := newEnv(t)
	switch broker {
	case "rabbitmq":
		node := startOwnRabbit(t, services.RabbitOptions{MaxMessageSize: genLimit})
		e.amqpURL = node.URL()
		e.genDB()
		dlx := "dead_" + e.name
		e.extraVars["RELAY_DEAD_LETTER"] = dlx
		q := e.bindQueue("#")
		dq := bindQueueAt(t, e.amqpURL, dlx, "q_"+e.name+"_dead", "#")
		// Declarations reach the node's disk late; nothing here kills it.
		return e, func() [][]genDelivery {
			var out [][]genDelivery
			for _, c := range []*consumer{q, dq} {
				var ds []genDelivery
				for _, m := range c.messages() {
					ds = append(ds, rabbitDelivery(m, c == dq))
				}
				out = append(out, ds)
			}
			return out
		}
	default:
		node := startOwnKafka(t, services.KafkaOptions{Configs: map[string]string{"message.max.bytes": fmt.Sprint(genLimit)}})
		e.useKafka(node.Brokers(), "")
		e.genDB()
		dlq := "dead." + e.name
		e.extraVars["RELAY_DEAD_LETTER"] = dlq
		c := consumeKafkaAt(t, node.Brokers(), `^(outbox\.event\..*|`+strings.ReplaceAll(dlq, ".", `\.`)+`)$`)
		return e, func() [][]genDelivery {
			var ds []genDelivery
			for _, r := range c.records() {
				ds = append(ds, kafkaDelivery(r, r.Topic == dlq))
			}
			return [][]genDelivery{ds}
		}
	}
}

func genSamePaths(t *testing.T, broker string) (dead map[string]bool, order []string) {
	e, received := genEnv(t, broker)
	ids := genIDs(e)
	at := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	e.genInsert(ids, at)
	p := e.startRelay()
	n := len(ids)
	// Each phase's deliveries are what every consumer received since the
	// phase before, one per id: a row published again after a channel
	// closed (at least once) must be the same message.
	seen := make([]int, 2)
	phase := func(want []string) map[string]genDelivery {
		t.Helper()
		got := map[string]genDelivery{}
		eventually(t, time.Minute, func() error {
			if p.exited() {
				t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
			}
			clear(got)
			for i, ds := range received() {
				for _, d := range ds[seen[i]:] {
					if first, dup := got[d.id]; dup && first.form != d.form {
						t.Fatalf("row %s delivered twice on one path, as different messages:\n%s\n%s", d.id, first.form, d.form)
					}
					got[d.id] = d
				}
			}
			for _, id := range want {
				if _, ok := got[id]; !ok {
					code, reason := p.ready()
					return fmt.Errorf("%d of %d rows delivered or dead-lettered, e.g. not %s: a row stalls the stream? /readyz %d %s", len(got), len(want), id, code, reason)
				}
			}
			return nil
		})
		for i, ds := range received() {
			seen[i] = len(ds)
		}
		return got
	}
	all := slices.Collect(maps.Values(ids))
	b := phase(all)
	// Streamed: the same rows again, with the same ids.
	for _, tb := range genTables {
		e.exec("DELETE FROM " + tb.name)
	}
	e.genInsert(ids, at)
	s := phase(all)
	var emittedIDs []string
	for _, r := range genRows() {
		if !r.notForMessages {
			emittedIDs = append(emittedIDs, ids["gen_jsonb/"+r.name])
		}
	}
	e.genEmit(ids)
	m := phase(emittedIDs)
	messages := len(emittedIDs)
	// Streamed once more by a relay that asks pgoutput for text: the
	// stream above read the binary format (the default), and must have
	// built the same messages.
	if !strings.Contains(p.log.String(), "pgoutput_format=binary") {
		t.Fatalf("the stream did not use pgoutput's binary format; log:\n%s", p.log.String())
	}
	if code := p.stop(30 * time.Second); code != 0 {
		t.Fatalf("the relay exited with %d on SIGTERM; log:\n%s", code, p.log.String())
	}
	e.extraVars["RELAY_PGOUTPUT_BINARY"] = "false"
	p = e.startRelay()
	for _, tb := range genTables {
		e.exec("DELETE FROM " + tb.name)
	}
	e.genInsert(ids, at)
	x := phase(all)
	if !strings.Contains(p.log.String(), "pgoutput_format=text") {
		t.Fatalf("RELAY_PGOUTPUT_BINARY=false did not stream in text; log:\n%s", p.log.String())
	}

	dead = map[string]bool{}
	for _, tb := range genTables {
		for _, r := range genRows() {
			key := tb.name + "/" + r.name
			id := ids[key]
			order = append(order, id)
			bd, ok1 := b[id]
			sd, ok2 := s[id]
			if !ok1 || !ok2 {
				t.Errorf("%s: backfilled %v, streamed %v", key, ok1, ok2)
				continue
			}
			if bd.form != sd.form {
				t.Errorf("%s: the backfill and the stream built different messages:\nbackfill %s\nstream   %s", key, bd.form, sd.form)
			}
			if xd, ok := x[id]; !ok {
				t.Errorf("%s: not streamed in text mode", key)
			} else if xd.form != sd.form {
				t.Errorf("%s: pgoutput's binary and text formats built different messages:\nbinary %s\ntext   %s", key, sd.form, xd.form)
			}
			if bd.dead {
				dead[id] = true
			}
			if tb.name != "gen_jsonb" || r.notForMessages {
				continue
			}
			md, ok := m[id]
			switch {
			case !ok:
				t.Errorf("%s: no message from the table-less path", key)
			case md.dead != sd.dead:
				t.Errorf("%s: dead-lettered on the stream %v, from the table-less path %v", key, sd.dead, md.dead)
			case !md.dead && md.timeless != sd.timeless:
				t.Errorf("%s: the stream and the table-less path built different messages:\nstream  %s\nmessage %s", key, sd.timeless, md.timeless)
			}
		}
	}
	t.Logf("%s: %d rows on each of 3 paths (backfill, binary and text stream) and %d table-less messages; %d dead-lettered per path", broker, n, messages, len(dead))
	if len(dead) == 0 {
		t.Error("no row was dead-lettered: the generator tested no bad row")
	}
	return dead, order
}

// genStops streams the generated rows without a dead-letter destination:
// the stream must stop at the first row that was dead-lettered.
func genStops(t *testing.T, broker string, dead map[string]bool, order []string) {
	e, received := genEnv(t, broker)
	delete(e.extraVars, "RELAY_DEAD_LETTER")
	e.extraVars["RELAY_BLOCKED_RETRY_INTERVAL"] = "300ms"
	p := e.startRelay()
	// The ids of the first run: the same rows in the same order.
	ids := map[string]string{}
	i := 0
	for _, tb := range genTables {
		for _, r := range genRows() {
			ids[tb.name+"/"+r.name] = order[i]
			i++
		}
	}
	e.genInsert(ids, time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC))
	first := slices.IndexFunc(order, func(id string) bool { return dead[id] })
	p.waitReady(t, http.StatusServiceUnavailable, order[first], 30*time.Second)
	// Every row before it arrives; the row itself never does (rows after
	// it may have been published before the broker refused it, and are
	// published again once the stream goes on).
	eventually(t, 30*time.Second, func() error {
		got := map[string]bool{}
		for _, ds := range received() {
			for _, d := range ds {
				if d.id == order[first] && !d.dead {
					t.Fatalf("the bad row %s was published", d.id)
				}
				got[d.id] = true
			}
		}
		for _, id := range order[:first] {
			if !got[id] {
				return fmt.Errorf("row %s, before the first bad row %s, was not delivered", id, order[first])
			}
		}
		return nil
	})
	if code, reason := p.ready(); code != http.StatusServiceUnavailable || !strings.Contains(reason, order[first]) {
		t.Errorf("/readyz %d %q, want 503 naming row %s", code, reason, order[first])
	}
}

// rabbitDelivery normalises a RabbitMQ message.
func rabbitDelivery(m message, dead bool) genDelivery {
	headers := map[string]any{}
	for k, v := range m.Headers {
		switch k {
		case "x-relay-lsn", "x-relay-index":
		default:
			headers[k] = fmt.Sprintf("%T %v", v, v)
		}
	}
	form := map[string]any{
		"exchange": m.Exchange, "routing_key": m.RoutingKey, "content_type": m.ContentType, "message_id": m.MessageId,
		"type": m.Type, "delivery_mode": m.DeliveryMode, "priority": m.Priority, "correlation_id": m.CorrelationId,
		"reply_to": m.ReplyTo, "expiration": m.Expiration, "headers": headers, "body": m.Body,
	}
	timeless := canonical(form)
	form["timestamp"] = m.Timestamp.UTC().Format(time.RFC3339Nano)
	return genDelivery{id: m.MessageId, dead: dead, form: canonical(form), timeless: timeless}
}

// kafkaDelivery normalises a Kafka record; the order of its headers is
// part of it.
func kafkaDelivery(r kafkaRecord, dead bool) genDelivery {
	var headers []string
	for _, h := range r.Headers {
		switch h.Key {
		case "x-relay-lsn", "x-relay-index":
		default:
			headers = append(headers, fmt.Sprintf("%q=%q", h.Key, h.Value))
		}
	}
	form := map[string]any{"topic": r.Topic, "key": r.Key, "value": r.Value, "headers": headers}
	timeless := canonical(form)
	form["timestamp"] = r.Timestamp.UTC().Format(time.RFC3339Nano)
	return genDelivery{id: r.id(), dead: dead, form: canonical(form), timeless: timeless}
}

// canonical is v as JSON with sorted keys, byte slices as base64.
func canonical(v map[string]any) string {
	keys := make([]string, 0, len(v))
	for k := range v {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		j, _ := json.Marshal(v[k])
		fmt.Fprintf(&b, "%s=%s ", k, j)
	}
	return b.String()
}
