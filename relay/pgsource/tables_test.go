//go:build linux

package pgsource_test

import (
	"testing"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// TestEachTableIsReadWithItsOwnColumns: two tables of different layouts in
// one slot, the second with a mapping of its own (Config.TableColumns),
// are both read right, in the backfill and in the stream (pgops
// TestCleanerDeletesEachTableByItsOwnIDColumn: and the cleaner deletes
// each table's rows by its own id column).
func TestEachTableIsReadWithItsOwnColumns(t *testing.T) {
	f := newFixture(t, `
		CREATE SCHEMA sales;
		CREATE TABLE sales.outbox (
			id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
			aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
			payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now());
		CREATE SCHEMA billing;
		CREATE TABLE billing.outbox (
			event_id text PRIMARY KEY, aggregatetype varchar(255) NOT NULL, aggregateid varchar(255) NOT NULL,
			type varchar(255) NOT NULL, payload jsonb);
		INSERT INTO sales.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 's-1', 'placed', '{"n": 1}', '{"tenant": "acme"}');
		INSERT INTO billing.outbox VALUES ('b-1', 'invoice', 'i-1', 'InvoiceIssued', '{"n": 1}')`)
	billing := pgsource.Table{Schema: "billing", Name: "outbox"}
	billingCols := pgsource.DebeziumColumns
	billingCols.ID = "event_id"
	f.tableColumns = map[pgsource.Table]pgsource.Columns{billing: billingCols}
	f.snapshot = pgsource.SnapshotInitial
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "sales.outbox", "billing.outbox")
	rec.wait(t, 2) // the backfill
	waitSlot(t, f)
	if _, err := f.db.Exec(t.Context(), `
		INSERT INTO sales.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 's-1', 'paid', '{"n": 2}', '{"tenant": "acme"}');
		INSERT INTO billing.outbox VALUES ('b-2', 'invoice', 'i-1', 'InvoicePaid', '{"n": 2}')`); err != nil {
		t.Fatal(err)
	}
	evs := rec.wait(t, 4)
	got := map[string]*relay.Event{}
	for _, ev := range evs {
		got[ev.Table+" "+ev.EventType] = ev
	}
	for _, w := range []struct{ table, eventType, aggType, aggID, payload, header string }{
		{"sales.outbox", "placed", "order", "s-1", `{"n": 1}`, "acme"},
		{"sales.outbox", "paid", "order", "s-1", `{"n": 2}`, "acme"},
		{"billing.outbox", "InvoiceIssued", "invoice", "i-1", `{"n": 1}`, ""},
		{"billing.outbox", "InvoicePaid", "invoice", "i-1", `{"n": 2}`, ""},
	} {
		ev, ok := got[w.table+" "+w.eventType]
		if !ok {
			t.Errorf("no %s event from %s; got %v", w.eventType, w.table, evs)
			continue
		}
		tenant, _ := ev.Header("tenant")
		if ev.AggregateType != w.aggType || ev.AggregateID != w.aggID || string(ev.Payload) != w.payload || tenant != w.header || ev.ID == "" {
			t.Errorf("%s %s: id %q aggregate %s/%s payload %s tenant %q", w.table, w.eventType, ev.ID, ev.AggregateType, ev.AggregateID, ev.Payload, tenant)
		}
	}
	if ev := got["billing.outbox InvoicePaid"]; ev != nil && ev.ID != "b-2" {
		t.Errorf("billing's id is %q, want b-2 from its own id column event_id", ev.ID)
	}
}
