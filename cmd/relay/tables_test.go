package main

import (
	"bytes"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay/pgsource"
)

func TestTableKey(t *testing.T) {
	t.Parallel()
	tests := []struct {
		table pgsource.Table
		want  string
	}{
		{pgsource.Table{Schema: "sales", Name: "outbox"}, "SALES_OUTBOX"},
		{pgsource.Table{Schema: "public", Name: "outbox_v2"}, "PUBLIC_OUTBOX_V2"},
		{pgsource.Table{Schema: "Billing", Name: "Out-Box"}, "BILLING_OUT_BOX"},
		{pgsource.Table{Schema: "a b", Name: "c.d$e"}, "A_B_C_D_E"},
		// One _ per character, not per byte.
		{pgsource.Table{Schema: "zoë", Name: "日本"}, "ZO____"},
	}
	for _, tt := range tests {
		if got := tableKey(tt.table); got != tt.want {
			t.Errorf("tableKey(%s) = %q, want %q", tt.table, got, tt.want)
		}
	}
}

var (
	sales   = pgsource.Table{Schema: "sales", Name: "outbox"}
	billing = pgsource.Table{Schema: "billing", Name: "outbox"}
)

func TestPerTableSettings(t *testing.T) {
	t.Parallel()
	want := []string{"AMQP_EXCHANGE", "AMQP_ROUTING_KEY", "RABBITMQ_STREAM", "KAFKA_TOPIC", "COLUMN_PRESET", "COLUMN_ID", "COLUMN_AGGREGATE_TYPE",
		"COLUMN_AGGREGATE_ID", "COLUMN_EVENT_TYPE", "COLUMN_PAYLOAD", "COLUMN_HEADERS", "COLUMN_CREATED_AT", "COLUMN_DESTINATION"}
	if got := perTableSettings(); !slices.Equal(got, want) {
		t.Errorf("perTableSettings() = %v, want %v", got, want)
	}
	for _, name := range []string{"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC", "RELAY_TABLE_X_COLUMN_ID", "RELAY_TABLE_A_B_C_COLUMN_PRESET"} {
		if !isTableVariable(name) {
			t.Errorf("isTableVariable(%s) = false", name)
		}
	}
	for _, name := range []string{"RELAY_TABLES", "RELAY_TABLE_KAFKA_TOPIC", "RELAY_TABLE_SALES_OUTBOX_SLOT", "RELAY_KAFKA_TOPIC", "RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPICS"} {
		if isTableVariable(name) {
			t.Errorf("isTableVariable(%s) = true", name)
		}
	}
}

func TestTableVariablesValid(t *testing.T) {
	t.Parallel()
	two := []string{"RELAY_TABLES", "sales.outbox,billing.outbox"}
	standardWith := func(f func(*pgsource.Columns)) pgsource.Columns {
		c := pgsource.StandardColumns
		f(&c)
		return c
	}
	debeziumWith := func(f func(*pgsource.Columns)) pgsource.Columns {
		c := pgsource.DebeziumColumns
		f(&c)
		return c
	}
	tests := []struct {
		name      string
		env       []string
		columns   map[pgsource.Table]pgsource.Columns // tables() not named: the global mapping
		keys      map[string]string                   // table → routing key template
		exchanges map[string]string
		topics    map[string]string
	}{
		{
			name: "no per-table variables",
			env:  two,
		},
		{
			name: "routing per table",
			env: append(two,
				"RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY", "billing.{event_type}",
				"RELAY_TABLE_BILLING_OUTBOX_AMQP_EXCHANGE", "billing",
				"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC", "sales.{aggregate_type}"),
			columns:   map[pgsource.Table]pgsource.Columns{sales: pgsource.StandardColumns, billing: pgsource.StandardColumns},
			keys:      map[string]string{"billing.outbox": "billing.{event_type}"},
			exchanges: map[string]string{"billing.outbox": "billing"},
			topics:    map[string]string{"sales.outbox": "sales.{aggregate_type}"},
		},
		{
			name:    "a preset per table",
			env:     append(two, "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "debezium"),
			columns: map[pgsource.Table]pgsource.Columns{billing: pgsource.DebeziumColumns},
		},
		{
			// The table's preset, then the global overrides, then its own.
			name: "global column overrides apply on top of the table's own preset",
			env: append(two, "RELAY_COLUMN_CREATED_AT", "ts", "RELAY_COLUMN_ID", "event_id",
				"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "debezium",
				"RELAY_TABLE_BILLING_OUTBOX_COLUMN_CREATED_AT", "occurred_at"),
			columns: map[pgsource.Table]pgsource.Columns{
				billing: debeziumWith(func(c *pgsource.Columns) { c.ID, c.CreatedAt = "event_id", "occurred_at" }),
			},
		},
		{
			name: "a table's own standard preset under a global debezium one",
			env: append(two, "RELAY_COLUMN_PRESET", "debezium", "RELAY_COLUMN_HEADERS", "meta",
				"RELAY_TABLE_SALES_OUTBOX_COLUMN_PRESET", "standard"),
			columns: map[pgsource.Table]pgsource.Columns{
				sales: standardWith(func(c *pgsource.Columns) { c.Headers = "meta" }),
			},
		},
		{
			name: "every column of one table",
			env: append(two, "RELAY_TABLE_SALES_OUTBOX_COLUMN_ID", "a", "RELAY_TABLE_SALES_OUTBOX_COLUMN_AGGREGATE_TYPE", "b",
				"RELAY_TABLE_SALES_OUTBOX_COLUMN_AGGREGATE_ID", "c", "RELAY_TABLE_SALES_OUTBOX_COLUMN_EVENT_TYPE", "d",
				"RELAY_TABLE_SALES_OUTBOX_COLUMN_PAYLOAD", "e", "RELAY_TABLE_SALES_OUTBOX_COLUMN_HEADERS", "f",
				"RELAY_TABLE_SALES_OUTBOX_COLUMN_CREATED_AT", "g", "RELAY_TABLE_SALES_OUTBOX_COLUMN_DESTINATION", "h"),
			columns: map[pgsource.Table]pgsource.Columns{
				sales: {ID: "a", AggregateType: "b", AggregateID: "c", EventType: "d", Payload: "e", Headers: "f", CreatedAt: "g", Destination: "h"},
			},
		},
		{
			name: "the default table",
			env:  []string{"RELAY_TABLE_PUBLIC_OUTBOX_AMQP_ROUTING_KEY", "orders.{event_type}"},
			keys: map[string]string{"public.outbox": "orders.{event_type}"},
			columns: map[pgsource.Table]pgsource.Columns{
				{Schema: "public", Name: "outbox"}: pgsource.StandardColumns,
			},
		},
		{
			// a.b's key is a prefix of a.b_kafka's: the setting decides.
			name:   "one key a prefix of another",
			env:    []string{"RELAY_TABLES", "a.b,a.b_kafka", "RELAY_TABLE_A_B_KAFKA_TOPIC", "ab", "RELAY_TABLE_A_B_KAFKA_KAFKA_TOPIC", "abk"},
			topics: map[string]string{"a.b": "ab", "a.b_kafka": "abk"},
			columns: map[pgsource.Table]pgsource.Columns{
				{Schema: "a", Name: "b"}: pgsource.StandardColumns, {Schema: "a", Name: "b_kafka"}: pgsource.StandardColumns,
			},
		},
		{
			// Only a variable that cannot tell them apart is a problem.
			name: "colliding keys without per-table variables",
			env:  []string{"RELAY_TABLES", "a_b.c,a.b_c"},
		},
		{
			name:   "non-ASCII table name",
			env:    []string{"RELAY_TABLES", "zoë.outbox", "RELAY_TABLE_ZO__OUTBOX_KAFKA_TOPIC", "zoe"},
			topics: map[string]string{"zoë.outbox": "zoe"},
			columns: map[pgsource.Table]pgsource.Columns{
				{Schema: "zoë", Name: "outbox"}: pgsource.StandardColumns,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, err := loadConfig(envWith(tt.env...))
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if got := c.tableColumns(); !maps.Equal(got, tt.columns) {
				t.Errorf("tableColumns() = %+v\nwant %+v", got, tt.columns)
			}
			for _, tc := range []struct {
				global string
				want   map[string]string
			}{{"RELAY_AMQP_ROUTING_KEY", tt.keys}, {"RELAY_KAFKA_TOPIC", tt.topics}} {
				got := map[string]string{}
				for table, tpl := range c.tableTemplates(tc.global) {
					got[table] = tpl.String()
				}
				if len(got) != len(tc.want) || (len(got) > 0 && !maps.Equal(got, tc.want)) {
					t.Errorf("tableTemplates(%s) = %v, want %v", tc.global, got, tc.want)
				}
			}
			if got := c.tableExchanges(); len(got) != len(tt.exchanges) || (len(got) > 0 && !maps.Equal(got, tt.exchanges)) {
				t.Errorf("tableExchanges() = %v, want %v", got, tt.exchanges)
			}
		})
	}
}

func TestTableVariablesInvalid(t *testing.T) {
	t.Parallel()
	two := []string{"RELAY_TABLES", "sales.outbox,billing.outbox"}
	tests := []struct {
		name string
		env  []string
		want map[string]string // variable → what its problem must say
	}{
		{
			name: "a table not in RELAY_TABLES",
			env:  append(two, "RELAY_TABLE_BILING_OUTBOX_AMQP_ROUTING_KEY", "x"),
			want: map[string]string{"RELAY_TABLE_BILING_OUTBOX_AMQP_ROUTING_KEY": "names no table of RELAY_TABLES (their keys: SALES_OUTBOX for sales.outbox; BILLING_OUTBOX for billing.outbox); did you mean RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY?"},
		},
		{
			name: "a table of the default RELAY_TABLES only",
			env:  []string{"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC", "x"},
			want: map[string]string{"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC": "names no table of RELAY_TABLES (their keys: PUBLIC_OUTBOX for public.outbox)"},
		},
		{
			name: "a setting that is not per table",
			env:  append(two, "RELAY_TABLE_SALES_OUTBOX_AMQP_URL", "amqp://secret@h/", "RELAY_TABLE_BILLING_OUTBOX_SLOT", "s"),
			want: map[string]string{
				"RELAY_TABLE_SALES_OUTBOX_AMQP_URL": "not a per-table setting; a table of RELAY_TABLES may set AMQP_EXCHANGE, AMQP_ROUTING_KEY, RABBITMQ_STREAM, KAFKA_TOPIC, COLUMN_PRESET,",
				"RELAY_TABLE_BILLING_OUTBOX_SLOT":   "not a per-table setting",
			},
		},
		{
			name: "a mistyped setting",
			env:  append(two, "RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTNG_KEY", "x"),
			want: map[string]string{"RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTNG_KEY": "did you mean RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTING_KEY?"},
		},
		{
			name: "two tables with one key",
			env:  []string{"RELAY_TABLES", "a_b.c,a.b_c", "RELAY_TABLE_A_B_C_KAFKA_TOPIC", "x"},
			want: map[string]string{"RELAY_TABLE_A_B_C_KAFKA_TOPIC": "tables a_b.c and a.b_c share the key A_B_C"},
		},
		{
			name: "two tables with one key in different case",
			env:  []string{"RELAY_TABLES", "sales.outbox,Sales.Outbox", "RELAY_TABLE_SALES_OUTBOX_COLUMN_PRESET", "debezium"},
			want: map[string]string{"RELAY_TABLE_SALES_OUTBOX_COLUMN_PRESET": "tables sales.outbox and Sales.Outbox share the key SALES_OUTBOX"},
		},
		{
			name: "routing key template",
			env:  append(two, "RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY", "billing.{event_type"),
			want: map[string]string{"RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY": "unclosed '{'"},
		},
		{
			name: "topic template",
			env:  append(two, "RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC", "sales.{}"),
			want: map[string]string{"RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC": "empty placeholder"},
		},
		{
			name: "preset",
			env:  append(two, "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "kafka-connect"),
			want: map[string]string{"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET": `"kafka-connect": want standard or debezium`},
		},
		{
			name: "empty value",
			env:  append(two, "RELAY_TABLE_BILLING_OUTBOX_COLUMN_ID", ""),
			want: map[string]string{"RELAY_TABLE_BILLING_OUTBOX_COLUMN_ID": "empty; unset it for RELAY_COLUMN_ID to apply to table billing.outbox"},
		},
		{
			name: "exchange too long",
			env:  append(two, "RELAY_TABLE_BILLING_OUTBOX_AMQP_EXCHANGE", strings.Repeat("x", 256)),
			want: map[string]string{"RELAY_TABLE_BILLING_OUTBOX_AMQP_EXCHANGE": "256 bytes: AMQP allows at most 255"},
		},
		{
			name: "every problem at once, with the global ones",
			env: append(two, "RELAY_SLOT", "Bad", "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "x",
				"RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTING_KEY", "{", "RELAY_TABLE_SHOP_OUTBOX_KAFKA_TOPIC", "t"),
			want: map[string]string{
				"RELAY_SLOT": "lower-case",
				"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET":  "want standard or debezium",
				"RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTING_KEY": "unclosed",
				"RELAY_TABLE_SHOP_OUTBOX_KAFKA_TOPIC":       "names no table",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(envWith(tt.env...))
			var ce configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig: %v, want a configError", err)
			}
			problems := map[string]string{}
			for _, line := range ce {
				key, msg, _ := strings.Cut(line, ": ")
				problems[key] = msg
			}
			for v, want := range tt.want {
				if !strings.Contains(problems[v], want) {
					t.Errorf("problem of %s = %q, want it to say %q", v, problems[v], want)
				}
			}
			for v := range problems {
				if _, ok := tt.want[v]; !ok {
					t.Errorf("unexpected problem %s: %s", v, problems[v])
				}
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("a value reached the error: %v", err)
			}
		})
	}
}

// TestTableVariablesAreKnown: valid per-table variables draw no unknown
// variable warning; bad ones stop the relay with exit code 2, named.
func TestTableVariablesAreKnown(t *testing.T) {
	t.Parallel()
	environ := envWith("RELAY_TABLES", "sales.outbox,billing.outbox",
		"RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY", "billing.{event_type}",
		"RELAY_TABLE_SALES_OUTBOX_COLUMN_PRESET", "debezium")
	for _, s := range perTableSettings() {
		environ[tableVariable(billing, "RELAY_"+s)] = "x"
	}
	if got := unknownVariables(environ); len(got) != 0 {
		t.Errorf("per-table variables reported as unknown: %+v", got)
	}
	var buf bytes.Buffer
	code := run(nil, envWith("RELAY_TABLES", "sales.outbox,billing.outbox",
		"RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTNG_KEY", "x", "RELAY_TABLE_SALES_OUTBOX_AMQP_EXCHANGE", "sales"), &bytes.Buffer{}, &buf)
	if code != 2 {
		t.Fatalf("exit code %d, want 2; stderr:\n%s", code, buf.String())
	}
	want := "  RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTNG_KEY: not a per-table setting;"
	if !strings.Contains(buf.String(), want) || strings.Contains(buf.String(), "RELAY_TABLE_SALES_OUTBOX_AMQP_EXCHANGE") {
		t.Errorf("stderr does not name exactly the bad variable (%q):\n%s", want, buf.String())
	}
	if n := strings.Count(buf.String(), "RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTNG_KEY"); n != 1 {
		t.Errorf("the bad variable is named %d times:\n%s", n, buf.String())
	}
}

// TestTableSettingsAreLoggedAndHelped: the startup line shows each
// table's own settings, and --help explains the variables.
func TestTableSettingsAreLoggedAndHelped(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(envWith("RELAY_TABLES", "sales.outbox,billing.outbox", "RELAY_TABLE_BILLING_OUTBOX_AMQP_EXCHANGE", "billing"))
	if err != nil {
		t.Fatal(err)
	}
	attrs := c.logAttrs()
	i := slices.Index(attrs, any("table_billing_outbox_amqp_exchange"))
	if i < 0 || attrs[i+1] != "billing" {
		t.Errorf("logAttrs lacks table_billing_outbox_amqp_exchange=billing: %v", attrs)
	}
	var b bytes.Buffer
	printHelp(&b)
	line := lineWith(b.String(), "SETTING is one of")
	for _, s := range perTableSettings() {
		if !strings.Contains(line, s) {
			t.Errorf("--help does not list per-table setting %s: %q", s, line)
		}
	}
	if !strings.Contains(b.String(), "RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>") {
		t.Errorf("--help does not explain the per-table variables:\n%s", b.String())
	}
}

// TestForTableChangesOnlyTheTablesSettings: forTable changes exactly the
// fields of the settings a table sets, and of no other table.
func TestForTableChangesOnlyTheTablesSettings(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(envWith("RELAY_TABLES", "sales.outbox,billing.outbox",
		"RELAY_TABLE_BILLING_OUTBOX_KAFKA_TOPIC", "billing", "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PAYLOAD", "body"))
	if err != nil {
		t.Fatal(err)
	}
	bc := c.forTable(billing)
	if bc.KafkaTopic != "billing" || bc.ColumnPayload != "body" {
		t.Errorf("forTable(billing): topic %q payload %q", bc.KafkaTopic, bc.ColumnPayload)
	}
	if sc := c.forTable(sales); sc.KafkaTopic != c.KafkaTopic || sc.ColumnPayload != "" {
		t.Errorf("forTable(sales) took billing's settings: %q %q", sc.KafkaTopic, sc.ColumnPayload)
	}
	if c.KafkaTopic != "outbox.event.{aggregate_type}" || c.ColumnPayload != "" {
		t.Errorf("forTable changed the global configuration")
	}
	if got := c.variableFor(billing, "RELAY_COLUMN_PAYLOAD"); got != "RELAY_TABLE_BILLING_OUTBOX_COLUMN_PAYLOAD" {
		t.Errorf("variableFor(billing, RELAY_COLUMN_PAYLOAD) = %s", got)
	}
	if got := c.variableFor(sales, "RELAY_COLUMN_PAYLOAD"); got != "RELAY_TABLE_SALES_OUTBOX_COLUMN_PAYLOAD" {
		t.Errorf("variableFor(sales, RELAY_COLUMN_PAYLOAD) = %s, want sales's own: the global one would change billing too", got)
	}
	if got := c.variableFor(sales, "RELAY_SLOT"); got != "RELAY_SLOT" {
		t.Errorf("variableFor(sales, RELAY_SLOT) = %s", got)
	}
	one, err := loadConfig(minimalEnv())
	if err != nil {
		t.Fatal(err)
	}
	if got := one.variableFor(pgsource.Table{Schema: "public", Name: "outbox"}, "RELAY_COLUMN_PAYLOAD"); got != "RELAY_COLUMN_PAYLOAD" {
		t.Errorf("variableFor with one table = %s, want the global variable", got)
	}
}
