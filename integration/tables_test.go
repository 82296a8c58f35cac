//go:build linux

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Several outbox tables in one slot, each with its own column mapping and
// routing (RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>).

// createSalesAndBilling creates sales.outbox in the standard layout and
// billing.outbox in Debezium's, grants the relay's role SELECT on both,
// and makes them, and only them, the env's publication.
func (e *env) createSalesAndBilling() {
	e.t.Helper()
	e.exec(`CREATE SCHEMA sales;
		CREATE TABLE sales.outbox (LIKE public.outbox INCLUDING ALL);
		CREATE SCHEMA billing;
		CREATE TABLE billing.outbox (
			id            uuid         PRIMARY KEY DEFAULT gen_random_uuid(),
			aggregatetype varchar(255) NOT NULL,
			aggregateid   varchar(255) NOT NULL,
			type          varchar(255) NOT NULL,
			payload       jsonb);
		GRANT USAGE ON SCHEMA sales, billing TO relay;
		GRANT SELECT ON sales.outbox, billing.outbox TO relay;
		ALTER PUBLICATION pub_` + e.name + ` SET TABLE sales.outbox, billing.outbox`)
}

// tableRow is one row the test committed, in commit order per aggregate.
type tableRow struct {
	id, table, aggregateType, aggregateID, eventType string
	seq                                              int
	createdAt                                        time.Time // zero for billing, which has no such column
}

// insertSalesAndBilling commits rows to both tables, interleaved, several
// per transaction: sales orders of three aggregates and billing invoices
// of two, each payload {agg, seq} as checkOrder reads it.
func (e *env) insertSalesAndBilling(perTable int) []tableRow {
	e.t.Helper()
	ctx := e.t.Context()
	var rows []tableRow
	seq := map[string]int{}
	for i := 0; i < perTable; i += 5 {
		tx, err := e.db.Begin(ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		// A failed insert must not leave the pool a connection in a
		// transaction, which the env's cleanup would wait for forever.
		defer tx.Rollback(context.Background())
		for j := i; j < min(i+5, perTable); j++ {
			agg := fmt.Sprintf("o-%d", j%3)
			seq[agg]++
			r := tableRow{table: "sales.outbox", aggregateType: "order", aggregateID: agg, eventType: "placed", seq: seq[agg]}
			err := tx.QueryRow(ctx, `INSERT INTO sales.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
				VALUES ('order', $1, 'placed', jsonb_build_object('agg', $1::text, 'seq', $2::int), '{"tenant": "acme"}')
				RETURNING id::text, created_at`, agg, r.seq).Scan(&r.id, &r.createdAt)
			if err != nil {
				e.t.Fatal(err)
			}
			rows = append(rows, r)

			inv := fmt.Sprintf("i-%d", j%2)
			seq[inv]++
			b := tableRow{table: "billing.outbox", aggregateType: "invoice", aggregateID: inv, eventType: "InvoiceIssued", seq: seq[inv]}
			err = tx.QueryRow(ctx, `INSERT INTO billing.outbox (aggregatetype, aggregateid, type, payload)
				VALUES ('invoice', $1::text, 'InvoiceIssued', jsonb_build_object('agg', $1::text, 'seq', $2::int))
				RETURNING id::text`, inv, b.seq).Scan(&b.id)
			if err != nil {
				e.t.Fatal(err)
			}
			rows = append(rows, b)
		}
		if err := tx.Commit(ctx); err != nil {
			e.t.Fatal(err)
		}
	}
	return rows
}

func idsOf(rows []tableRow, table string) []string {
	var ids []string
	for _, r := range rows {
		if r.table == table {
			ids = append(ids, r.id)
		}
	}
	return ids
}

// TestSeveralTablesWithTheirOwnMappingAndRouting: a standard table and a
// Debezium table in two schemas, one slot; each read with its own column
// preset, each routed with its own routing key, billing to an exchange of
// its own that the relay declares. relay check judges each table by its
// own mapping and checks both exchanges; /metrics counts per table; a
// row's destination still wins over its table's template, and a
// table-less message keeps the global settings.
func TestSeveralTablesWithTheirOwnMappingAndRouting(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.createSalesAndBilling()
	billingExchange := "billing_" + e.name
	e.extraVars = map[string]string{
		"RELAY_TABLES": "sales.outbox,billing.outbox",
		"RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTING_KEY":   "sales.{aggregate_type}.{event_type}",
		"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET":    "debezium",
		"RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY": "billing.{event_type}",
		"RELAY_TABLE_BILLING_OUTBOX_AMQP_EXCHANGE":    billingExchange,
	}

	out := e.check(0)
	hasLine(t, out, "ok    table sales.outbox:", "aggregate_type=aggregate_type", "headers=headers")
	hasLine(t, out, "ok    table billing.outbox:", "aggregate_type=aggregatetype", "event_type=type")
	hasLine(t, out, "ok    exchange "+billingExchange+" (of table billing.outbox): does not exist; the relay will declare it")
	// The checks use each table's own mapping and template.
	bad := e.check(1, "RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY", "billing.{tenant}")
	hasLine(t, bad, `FAIL  table billing.outbox: RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY "billing.{tenant}" names {tenant}, which is not a column`)
	hasLine(t, bad, "ok    table sales.outbox:")
	bad = e.check(1, "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "standard")
	hasLine(t, bad, "FAIL  table billing.outbox: table billing.outbox has no column aggregate_type", "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET")

	sales := e.bindQueue("#")
	p := e.startRelay()
	// The relay declares the table's exchange: bind to it once it has.
	eventually(t, 30*time.Second, func() error {
		conn, err := amqp.Dial(e.amqpURL)
		if err != nil {
			return err
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			return err
		}
		return ch.ExchangeDeclarePassive(billingExchange, "topic", true, false, false, false, nil)
	})
	billing := bindQueueAt(t, e.amqpURL, billingExchange, "q_billing_"+e.name, "#")

	const perTable = 30
	rows := e.insertSalesAndBilling(perTable)
	var commandID string
	if err := e.db.QueryRow(t.Context(), `INSERT INTO sales.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('order', 'cmd', 'ship', '{}', '{"destination": "commands.shipping"}') RETURNING id::text`).Scan(&commandID); err != nil {
		t.Fatal(err)
	}
	e.exec(`SELECT pg_logical_emit_message(true, 'outbox', '{"id": "msg-1", "aggregate_type": "account", "aggregate_id": "7", "event_type": "debited", "payload": {"amount": 10}}')`)

	salesMsgs := sales.waitDistinct(perTable+2, time.Minute)
	billingMsgs := billing.waitDistinct(perTable, time.Minute)
	byID := map[string]message{}
	for _, m := range append(slices.Clone(salesMsgs), billingMsgs...) {
		byID[m.MessageId] = m
	}
	for _, r := range rows {
		m, ok := byID[r.id]
		if !ok {
			t.Fatalf("%s row %s did not arrive", r.table, r.id)
		}
		wantKey, wantExchange := "sales.order.placed", e.exchange
		if r.table == "billing.outbox" {
			wantKey, wantExchange = "billing.InvoiceIssued", billingExchange
		}
		if m.RoutingKey != wantKey || m.Exchange != wantExchange {
			t.Errorf("%s row %s: exchange %q routing key %q, want %q %q", r.table, r.id, m.Exchange, m.RoutingKey, wantExchange, wantKey)
		}
		var body payload
		if err := json.Unmarshal(m.Body, &body); err != nil || body.Agg != r.aggregateID || body.Seq != r.seq {
			t.Errorf("%s row %s: body %s", r.table, r.id, m.Body)
		}
		if m.Type != r.eventType || m.ContentType != "application/json" || m.DeliveryMode != amqp.Persistent ||
			m.Headers["aggregate_type"] != r.aggregateType || m.Headers["aggregate_id"] != r.aggregateID {
			t.Errorf("%s row %s: type %q content type %q delivery mode %d headers %v", r.table, r.id, m.Type, m.ContentType, m.DeliveryMode, m.Headers)
		}
		switch r.table {
		case "sales.outbox":
			if m.Headers["tenant"] != "acme" || !m.Timestamp.Equal(r.createdAt.Truncate(time.Second)) {
				t.Errorf("sales row %s: tenant header %v, timestamp %s, want acme and created_at %s", r.id, m.Headers["tenant"], m.Timestamp, r.createdAt)
			}
		case "billing.outbox":
			// No headers column and no created_at: the commit time.
			if _, ok := m.Headers["tenant"]; ok || m.Timestamp.IsZero() {
				t.Errorf("billing row %s: headers %v, timestamp %s", r.id, m.Headers, m.Timestamp)
			}
		}
	}
	if m := byID[commandID]; m.RoutingKey != "commands.shipping" || m.Exchange != e.exchange {
		t.Errorf("the row naming its destination went to %q %q, want commands.shipping on %s", m.Exchange, m.RoutingKey, e.exchange)
	}
	if m := byID["msg-1"]; m.RoutingKey != "account.debited" || m.Exchange != e.exchange {
		t.Errorf("the table-less message went to %q %q, want the global template's account.debited on %s", m.Exchange, m.RoutingKey, e.exchange)
	}
	checkAll(t, append(idsOf(rows, "sales.outbox"), commandID, "msg-1"), salesMsgs)
	checkAll(t, idsOf(rows, "billing.outbox"), billingMsgs)
	checkOrder(t, withoutIDs(salesMsgs, commandID, "msg-1"))
	checkOrder(t, billingMsgs)

	for _, w := range []struct {
		series string
		want   float64
	}{
		{`relay_events_published_total{sink="rabbitmq",table="sales.outbox",destination="` + e.exchange + `"}`, perTable + 1},
		{`relay_events_published_total{sink="rabbitmq",table="billing.outbox",destination="` + billingExchange + `"}`, perTable},
		{`relay_events_published_total{sink="rabbitmq",table="pg_logical_emit_message",destination="` + e.exchange + `"}`, 1},
	} {
		p.waitMetric(t, w.series, fmt.Sprint(w.want), equals(w.want), 30*time.Second)
	}
	if v, _ := p.metric(`relay_events_published_total{table="billing.outbox",destination="` + e.exchange + `"}`); v != 0 {
		t.Errorf("%v billing events counted on the global exchange", v)
	}
}

// withoutIDs leaves out the messages with the given ids.
func withoutIDs(msgs []message, ids ...string) []message {
	var out []message
	for _, m := range msgs {
		if !slices.Contains(ids, m.MessageId) {
			out = append(out, m)
		}
	}
	return out
}

// TestKafkaSeveralTablesWithTheirOwnTopics: the same two tables to Kafka,
// each with its own topic template, keyed by its own aggregate column.
func TestKafkaSeveralTablesWithTheirOwnTopics(t *testing.T) {
	t.Parallel()
	e := newKafkaEnv(t)
	e.createSalesAndBilling()
	e.extraVars = map[string]string{
		"RELAY_TABLES":                             "sales.outbox,billing.outbox",
		"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC":     "sales.{aggregate_type}." + e.name,
		"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET": "debezium",
		"RELAY_TABLE_BILLING_OUTBOX_KAFKA_TOPIC":   "billing.{event_type}." + e.name,
	}
	out := e.check(0)
	hasLine(t, out, "ok    table billing.outbox:", "aggregate_id=aggregateid")
	hasLine(t, out, "ok    topic billing.{event_type}."+e.name+" (of table billing.outbox):")
	hasLine(t, out, "ok    topic sales.{aggregate_type}."+e.name+" (of table sales.outbox):")

	c := consumeKafkaAt(t, e.kafkaBrokers, `^(sales|billing|outbox)\..+\.`+e.name+`$`)
	p := e.startRelay()
	const perTable = 30
	rows := e.insertSalesAndBilling(perTable)
	e.exec(`SELECT pg_logical_emit_message(true, 'outbox', '{"id": "msg-1", "aggregate_type": "account", "aggregate_id": "7", "event_type": "debited", "payload": {"amount": 10}}')`)
	recs := c.waitDistinct(2*perTable+1, time.Minute)
	byID := map[string]kafkaRecord{}
	for _, r := range recs {
		byID[r.id()] = r
	}
	for _, r := range rows {
		rec, ok := byID[r.id]
		if !ok {
			t.Fatalf("%s row %s did not arrive", r.table, r.id)
		}
		wantTopic := "sales.order." + e.name
		if r.table == "billing.outbox" {
			wantTopic = "billing.InvoiceIssued." + e.name
		}
		et, _ := rec.header("event_type")
		at, _ := rec.header("aggregate_type")
		if rec.Topic != wantTopic || string(rec.Key) != r.aggregateID || et != r.eventType || at != r.aggregateType {
			t.Errorf("%s row %s: topic %q key %q event_type %q aggregate_type %q; want %q %q %q %q",
				r.table, r.id, rec.Topic, rec.Key, et, at, wantTopic, r.aggregateID, r.eventType, r.aggregateType)
		}
		if tenant, _ := rec.header("tenant"); (r.table == "sales.outbox") != (tenant == "acme") {
			t.Errorf("%s row %s: tenant header %q", r.table, r.id, tenant)
		}
	}
	if rec := byID["msg-1"]; rec.Topic != "outbox.account."+e.name {
		t.Errorf("the table-less message went to topic %q, want the global template's outbox.account.%s", rec.Topic, e.name)
	}
	checkAll(t, append(idsOf(rows, "sales.outbox"), append(idsOf(rows, "billing.outbox"), "msg-1")...), asMessages(recs))
	checkOrder(t, withoutIDs(asMessages(recs), "msg-1"))
	checkKafkaRecords(t, recs, 3)
	p.waitMetric(t, `relay_events_published_total{sink="kafka",table="sales.outbox",destination="sales.order.`+e.name+`"}`, fmt.Sprint(perTable), equals(perTable), 30*time.Second)
	p.waitMetric(t, `relay_events_published_total{sink="kafka",table="billing.outbox",destination="billing.InvoiceIssued.`+e.name+`"}`, fmt.Sprint(perTable), equals(perTable), 30*time.Second)
}
