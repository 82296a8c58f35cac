package pgops

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// wantFinding is a finding's status and substrings of its detail and fix.
type wantFinding struct {
	status relay.CheckStatus
	detail string
	fix    string
}

func (w wantFinding) match(t *testing.T, f relay.Finding) {
	t.Helper()
	if f.Status != w.status || !strings.Contains(f.Detail, w.detail) || !strings.Contains(f.Fix, w.fix) {
		t.Errorf("got %s %q (fix %q), want %s with %q (fix with %q)", f.Status, f.Detail, f.Fix, w.status, w.detail, w.fix)
	}
}

func matchAll(t *testing.T, got []relay.Finding, want []wantFinding) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("got %d findings, want %d:", len(got), len(want))
		for _, f := range got {
			t.Errorf("  %s %s: %s (fix %q)", f.Status, f.Check, f.Detail, f.Fix)
		}
		return
	}
	for i := range want {
		want[i].match(t, got[i])
	}
}

func TestWalLevelFinding(t *testing.T) {
	t.Parallel()
	wantFinding{relay.CheckOK, "logical", ""}.match(t, walLevelFinding("logical"))
	wantFinding{relay.CheckFail, `"replica"`, "ALTER SYSTEM SET wal_level = logical"}.match(t, walLevelFinding("replica"))
}

func TestHeadroom(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		used, max  int
		have       bool
		slots      wantFinding
		senders    wantFinding
		activeSlot bool
	}{
		{name: "room", used: 3, max: 10, slots: wantFinding{relay.CheckOK, "3 of 10 in use", ""}, senders: wantFinding{relay.CheckOK, "3 of 10", ""}},
		{name: "full without the relay", used: 10, max: 10,
			slots:   wantFinding{relay.CheckFail, "needs one more", "max_replication_slots = 11"},
			senders: wantFinding{relay.CheckFail, "needs one more", "max_wal_senders = 11"}},
		{name: "full with the relay", used: 10, max: 10, have: true, activeSlot: true,
			slots:   wantFinding{relay.CheckOK, "the relay's slot among them", ""},
			senders: wantFinding{relay.CheckOK, "streaming now", ""}},
		{name: "slot exists, not streaming, senders full", used: 10, max: 10, have: true,
			slots:   wantFinding{relay.CheckOK, "among them", ""},
			senders: wantFinding{relay.CheckFail, "needs one more", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.slots.match(t, slotHeadroom(tt.used, tt.max, tt.have))
			tt.senders.match(t, senderHeadroom(tt.used, tt.max, tt.activeSlot))
		})
	}
}

func TestRoleFinding(t *testing.T) {
	t.Parallel()
	wantFinding{relay.CheckOK, "superuser", ""}.match(t, roleFinding(server{user: "postgres", superuser: true}))
	wantFinding{relay.CheckOK, "REPLICATION", ""}.match(t, roleFinding(server{user: "relay", replication: true}))
	wantFinding{relay.CheckFail, "neither REPLICATION", `ALTER ROLE "App" WITH REPLICATION;`}.match(t, roleFinding(server{user: "App"}))
}

func col(name string, typ uint32, typeName string, notNull bool) tableColumn {
	return tableColumn{name: name, typ: typ, typeName: typeName, notNull: notNull}
}

// outboxColumns is schema/outbox.sql as the catalog describes it.
func outboxColumns() []tableColumn {
	return []tableColumn{
		col("id", pgtype.UUIDOID, "uuid", true),
		col("aggregate_type", pgtype.TextOID, "text", true),
		col("aggregate_id", pgtype.TextOID, "text", true),
		col("event_type", pgtype.TextOID, "text", true),
		col("payload", pgtype.JSONBOID, "jsonb", true),
		col("headers", pgtype.JSONBOID, "jsonb", true),
		col("created_at", pgtype.TimestamptzOID, "timestamp with time zone", true),
	}
}

func tpl(t *testing.T, s string) *relay.Template {
	t.Helper()
	x, err := relay.ParseTemplate(s)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestTableFindings(t *testing.T) {
	t.Parallel()
	outbox := pgsource.Table{Schema: "public", Name: "outbox"}
	withCol := func(i int, c tableColumn) []tableColumn {
		cols := outboxColumns()
		cols[i] = c
		return cols
	}
	tests := []struct {
		name      string
		tf        tableFacts
		cols      pgsource.Columns
		templates map[string]*relay.Template
		want      []wantFinding
	}{
		{name: "missing", tf: tableFacts{}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckFail, "does not exist", "RELAY_TABLES"}}},
		{name: "a view", tf: tableFacts{exists: true, kind: 'v', selectPriv: true, schemaUsage: true}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckFail, "not a table", ""}}},
		{name: "standard", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: outboxColumns()}, cols: pgsource.StandardColumns,
			templates: map[string]*relay.Template{"RELAY_AMQP_ROUTING_KEY": tpl(t, "{aggregate_type}.{event_type}")},
			want:      []wantFinding{{relay.CheckOK, "payload=payload (jsonb)", ""}}},
		{name: "partitioned", tf: tableFacts{exists: true, kind: 'p', selectPriv: true, schemaUsage: true, cols: outboxColumns(), partitions: []pgsource.Table{{Schema: "public", Name: "outbox_2026"}, {Schema: "public", Name: "outbox_2026_a"}, {Schema: "public", Name: "outbox_2026_b"}}, leaves: 2}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckOK, "partitioned, 2 partitions holding rows, one outbox; columns id=id", ""}}},
		{name: "no select", tf: tableFacts{exists: true, kind: 'r', schemaUsage: true, cols: outboxColumns()}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckOK, "columns", ""}, {relay.CheckFail, "may not read it", `GRANT SELECT ON "public"."outbox" TO "relay";`}}},
		{name: "debezium preset on a standard table", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: outboxColumns()}, cols: pgsource.DebeziumColumns,
			want: []wantFinding{{relay.CheckFail, "has no column aggregatetype, aggregateid, type", "RELAY_COLUMN_AGGREGATE_TYPE"}}},
		{name: "override naming a missing column", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: outboxColumns()},
			cols: func() pgsource.Columns { c := pgsource.StandardColumns; c.EventType = "kind"; return c }(),
			want: []wantFinding{{relay.CheckFail, "has no column kind", "set RELAY_COLUMN_EVENT_TYPE to its column"}}},
		{name: "payload of a wrong type", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: withCol(4, col("payload", 23, "integer", true))}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckFail, "payload column payload is integer; it must be jsonb, json, text, varchar or bytea", `ALTER TABLE "public"."outbox" ALTER COLUMN "payload" TYPE jsonb USING "payload"::jsonb;`}}},
		{name: "text headers and created_at, nullable aggregate id", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true,
			cols: func() []tableColumn {
				c := withCol(5, col("headers", pgtype.TextOID, "text", false))
				c[6] = col("created_at", pgtype.TextOID, "text", false)
				c[2] = col("aggregate_id", pgtype.TextOID, "text", false)
				return c
			}()}, cols: pgsource.StandardColumns,
			want: []wantFinding{
				{relay.CheckOK, "columns", ""},
				{relay.CheckWarn, "headers column headers is text", ""},
				{relay.CheckWarn, "created_at column created_at is text", ""},
				{relay.CheckWarn, "column aggregate_id allows NULL", `ALTER TABLE "public"."outbox" ALTER COLUMN "aggregate_id" SET NOT NULL;`},
			}},
		{name: "headers of a wrong type", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: withCol(5, col("headers", 23, "integer", true))}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckOK, "columns", ""}, {relay.CheckFail, "headers column headers is integer", "unset RELAY_COLUMN_HEADERS"}}},
		{name: "optional column absent", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: outboxColumns()[:6]}, cols: pgsource.StandardColumns,
			want: []wantFinding{{relay.CheckOK, "columns", ""}, {relay.CheckWarn, `no created at column "created_at"`, "RELAY_COLUMN_CREATED_AT"}}},
		{name: "template naming a missing column", tf: tableFacts{exists: true, kind: 'r', selectPriv: true, schemaUsage: true, cols: outboxColumns()}, cols: pgsource.StandardColumns,
			templates: map[string]*relay.Template{
				"RELAY_KAFKA_TOPIC":      tpl(t, "events.{tenant}"),
				"RELAY_AMQP_ROUTING_KEY": tpl(t, "{table}.{created_at}"),
			},
			want: []wantFinding{{relay.CheckOK, "columns", ""}, {relay.CheckFail, `RELAY_KAFKA_TOPIC "events.{tenant}" names {tenant}`, "RELAY_KAFKA_TOPIC"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			matchAll(t, tableFindings(outbox, &tt.tf, "relay", tt.cols, tt.templates, nil), tt.want)
		})
	}
}

func TestPublicationFindings(t *testing.T) {
	t.Parallel()
	outbox := pgsource.Table{Schema: "public", Name: "outbox"}
	other := pgsource.Table{Schema: "public", Name: "orders"}
	owned := map[pgsource.Table]*tableFacts{outbox: {exists: true, owner: true, cols: outboxColumns()}}
	notOwned := map[pgsource.Table]*tableFacts{outbox: {exists: true, cols: outboxColumns()}}
	super := server{user: "postgres", superuser: true}
	owner := server{user: "app", createInDB: true}
	relayRole := server{user: "relay", replication: true}
	good := pubFacts{exists: true, insert: true, tables: []pubTable{{Table: outbox}}}
	leaf1, leaf2 := pgsource.Table{Schema: "public", Name: "outbox_1"}, pgsource.Table{Schema: "public", Name: "outbox_2"}
	partitioned := map[pgsource.Table]*tableFacts{outbox: {exists: true, kind: 'p', cols: outboxColumns(), partitions: []pgsource.Table{leaf1, leaf2}, leaves: 2}}
	tests := []struct {
		name   string
		p      pubFacts
		tables map[pgsource.Table]*tableFacts
		srv    server
		want   []wantFinding
	}{
		{name: "absent, superuser", tables: notOwned, srv: super,
			want: []wantFinding{{relay.CheckOK, "the relay will create it", ""}}},
		{name: "absent, owner with CREATE", tables: owned, srv: owner,
			want: []wantFinding{{relay.CheckOK, "the relay will create it", ""}}},
		{name: "absent, least-privilege role", tables: notOwned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, "cannot create it", `CREATE PUBLICATION "outbox_relay" FOR TABLE "public"."outbox" WITH (publish = 'insert');`}}},
		{name: "present", p: good, tables: notOwned, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, `publishes inserts of "public"."outbox"`, ""}}},
		{name: "present, also updates", p: pubFacts{exists: true, insert: true, update: true, tables: []pubTable{{Table: outbox}}}, tables: notOwned, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, "(and update, which the relay ignores)", ""}}},
		{name: "all tables", p: pubFacts{exists: true, allTables: true, insert: true}, tables: owned, srv: super,
			want: []wantFinding{{relay.CheckFail, "FOR ALL TABLES", "RELAY_PUBLICATION"}}},
		{name: "no inserts", p: pubFacts{exists: true, delete: true, tables: []pubTable{{Table: outbox}}}, tables: owned, srv: super,
			want: []wantFinding{{relay.CheckFail, "does not publish inserts", `ALTER PUBLICATION "outbox_relay" SET (publish = 'insert');`}}},
		{name: "another table", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: outbox}, {Table: other}}}, tables: owned, srv: super,
			want: []wantFinding{{relay.CheckFail, "also publishes public.orders", `DROP TABLE "public"."orders"`}}},
		{name: "lacks the table, cannot add it", p: pubFacts{exists: true, insert: true}, tables: notOwned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, "cannot add it", `ALTER PUBLICATION "outbox_relay" ADD TABLE "public"."outbox";`}}},
		{name: "lacks a table that does not exist", p: pubFacts{exists: true, insert: true}, tables: map[pgsource.Table]*tableFacts{outbox: {}}, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, "publishes inserts", ""}}},
		{name: "lacks the table, owner adds it", p: pubFacts{exists: true, insert: true, owner: true}, tables: owned, srv: owner,
			want: []wantFinding{{relay.CheckOK, "the relay will add it", ""}}},
		{name: "column list without the payload", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: outbox, columns: []string{"id", "aggregate_type", "aggregate_id", "event_type"}}}}, tables: owned, srv: super,
			want: []wantFinding{{relay.CheckFail, "not payload, headers, created_at", "SET TABLE"}}},
		{name: "row filter", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: outbox, rowFilter: "(aggregate_type = 'order'::text)"}}}, tables: owned, srv: super,
			want: []wantFinding{{relay.CheckWarn, "where (aggregate_type = 'order'::text)", ""}}},
		{name: "partitioned, absent", tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, "cannot create it", `FOR TABLE "public"."outbox" WITH (publish = 'insert', publish_via_partition_root = true);`}}},
		{name: "partitioned, absent, superuser", tables: partitioned, srv: super,
			want: []wantFinding{{relay.CheckOK, "the relay will create it FOR TABLE \"public\".\"outbox\" WITH (publish = 'insert', publish_via_partition_root = true)", ""}}},
		{name: "partitioned, rows under the table", p: pubFacts{exists: true, insert: true, viaRoot: true, tables: []pubTable{{Table: outbox}}, listed: []pgsource.Table{outbox}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, `publishes inserts of "public"."outbox"; a partitioned table's rows under its own name`, ""}}},
		{name: "partitioned, rows under the leaves", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: leaf1}, {Table: leaf2}}, listed: []pgsource.Table{outbox}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, `publishes inserts of "public"."outbox"; a partitioned table's rows under its leaf partitions`, ""}}},
		{name: "partitioned, its schema published", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: leaf1}, {Table: leaf2}}, schemas: []string{"public"}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckOK, `publishes inserts of "public"."outbox"`, ""}}},
		{name: "partitioned, only today's partitions listed", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: leaf1}, {Table: leaf2}}, listed: []pgsource.Table{leaf1, leaf2}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, `lacks "public"."outbox"`, `ADD TABLE "public"."outbox";`}}},
		{name: "partitioned, a leaf without the payload column", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: leaf1, columns: []string{"id", "aggregate_type", "aggregate_id", "event_type", "headers", "created_at"}}, {Table: leaf2}}, listed: []pgsource.Table{outbox}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, "of public.outbox_1, not payload", `SET TABLE "public"."outbox";`}}},
		{name: "partitioned, another partitioned table's leaf", p: pubFacts{exists: true, insert: true, tables: []pubTable{{Table: leaf1}, {Table: other}}, listed: []pgsource.Table{outbox, other}}, tables: partitioned, srv: relayRole,
			want: []wantFinding{{relay.CheckFail, "also publishes public.orders", ""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			matchAll(t, publicationFindings("outbox_relay", []pgsource.Table{outbox}, tt.tables, tt.p, tt.srv, func(pgsource.Table) pgsource.Columns { return pgsource.StandardColumns }), tt.want)
		})
	}
}

func TestSlotFinding(t *testing.T) {
	t.Parallel()
	lsn := "0/16B3748"
	pid := int32(4242)
	n := int64(1234)
	healthy := slotFacts{exists: true, slotType: "logical", plugin: "pgoutput", database: "app", walStatus: "reserved", active: true, activePID: &pid, confirmed: &lsn, lag: &n, retained: &n}
	with := func(f func(*slotFacts)) slotFacts {
		s := healthy
		f(&s)
		return s
	}
	tests := []struct {
		name     string
		s        slotFacts
		want     wantFinding
		recreate bool
		// state is relay.backfill's; nil without the initial backfill.
		state *stateFacts
	}{
		{"absent, no backfill", slotFacts{}, wantFinding{relay.CheckWarn, "does not exist; the relay will create it, and rows committed before then are not relayed (RELAY_SNAPSHOT=never)", "RELAY_SNAPSHOT=initial"}, false, nil},
		{"absent, backfilled", slotFacts{}, wantFinding{relay.CheckOK, "does not exist; the relay will create it and first publish the rows already in the tables (RELAY_SNAPSHOT=initial)", ""}, false,
			&stateFacts{creatable: true}},
		{"absent, backfilled, state table there", slotFacts{}, wantFinding{relay.CheckOK, "does not exist; the relay will create it and first publish the rows already in the tables", ""}, false,
			&stateFacts{exists: true, usable: true}},
		{"absent, state table not creatable", slotFacts{}, wantFinding{relay.CheckFail, "role app_rw may not create relay.backfill", "schema/relay_state.sql"}, false,
			&stateFacts{user: "app_rw"}},
		{"absent, state table not writable", slotFacts{}, wantFinding{relay.CheckFail, "role app_rw may not read and write relay.backfill", `GRANT SELECT, INSERT, UPDATE ON relay.backfill TO "app_rw";`}, false,
			&stateFacts{user: "app_rw", exists: true, creatable: true}},
		{"absent, used before", slotFacts{}, wantFinding{relay.CheckWarn, "does not exist, but relay.backfill records that the relay used it", "reconcile"}, false,
			&stateFacts{exists: true, usable: true, recorded: true}},
		{"healthy", healthy, wantFinding{relay.CheckOK, "confirmed 0/16B3748, 1234 bytes behind, retaining 1234 bytes of WAL, active (pid 4242)", ""}, false, nil},
		{"idle", with(func(s *slotFacts) { s.active, s.activePID = false, nil }), wantFinding{relay.CheckOK, "not active", ""}, false, nil},
		{"physical", with(func(s *slotFacts) { s.slotType, s.plugin = "physical", "" }), wantFinding{relay.CheckFail, "physical slot", "pg_drop_replication_slot('s')"}, false, nil},
		{"test_decoding", with(func(s *slotFacts) { s.plugin = "test_decoding" }), wantFinding{relay.CheckFail, `plugin "test_decoding"`, ""}, false, nil},
		{"other database", with(func(s *slotFacts) { s.database = "other" }), wantFinding{relay.CheckFail, "belongs to database other", ""}, false, nil},
		{"lost", with(func(s *slotFacts) { s.walStatus = "lost" }), wantFinding{relay.CheckFail, "is lost", "SELECT pg_drop_replication_slot('s');"}, false, nil},
		{"lost, recreated", with(func(s *slotFacts) { s.walStatus = "lost" }), wantFinding{relay.CheckWarn, "the relay will drop and recreate it (RELAY_SLOT_RECREATE=true)", "unset RELAY_SLOT_RECREATE"}, true, nil},
		{"unreserved", with(func(s *slotFacts) { s.walStatus = "unreserved" }), wantFinding{relay.CheckWarn, "may soon remove WAL", "max_slot_wal_keep_size"}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.want.match(t, slotFinding("s", "app", tt.s, tt.recreate, tt.state))
		})
	}
}
