package main

import (
	"cmp"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// FuzzTableVariables checks the per-table variables against their
// definition (docs/outbox-tables.md, "Several outbox tables"):
// RELAY_TABLE_<KEY>_<SETTING> sets RELAY_<SETTING> for the table of
// RELAY_TABLES whose key is <KEY>. The reference is the definition run
// forwards: a variable applies to table t and setting s exactly when its
// name is tableVariable(t, s). So every RELAY_TABLE_ variable is either
// placed on the one table it names, with its value, or stops the relay
// naming it (no table, not a per-table setting, a key two tables share,
// empty, an invalid template or preset), never both and never silently
// ignored; and what the relay says about it does not depend on its value,
// which may be a secret in a mistyped name.
func FuzzTableVariables(f *testing.F) {
	f.Add("sales.outbox,billing.outbox", "SALES_OUTBOX_KAFKA_TOPIC", "BILLING_OUTBOX_AMQP_ROUTNG_KEY", "x.{event_type}", uint8(0))
	f.Add("sales.outbox,billing.outbox", "BILING_OUTBOX_AMQP_ROUTING_KEY", "SALES_OUTBOX_AMQP_URL", "amqp://secret@h/", uint8(7))
	f.Add("a.b,a.b_kafka", "A_B_KAFKA_TOPIC", "A_B_KAFKA_KAFKA_TOPIC", "ab", uint8(1))
	f.Add("a_b.c,a.b_c", "A_B_C_KAFKA_TOPIC", "A_B_C_COLUMN_ID", "x", uint8(2))
	f.Add("sales.outbox,Sales.Outbox", "SALES_OUTBOX_COLUMN_PRESET", "", "debezium", uint8(3))
	f.Add("zoë.outbox,日本.表", "ZO__OUTBOX_KAFKA_TOPIC", "_____KAFKA_TOPIC", "zoe", uint8(4))
	f.Add("public.outbox", "PUBLIC_OUTBOX_COLUMN_PRESET", "PUBLIC_OUTBOX_AMQP_EXCHANGE", "kafka-connect", uint8(5))
	f.Add("public.outbox", "PUBLIC_OUTBOX_AMQP_ROUTING_KEY", "PUBLIC_OUTBOX_KAFKA_TOPIC", "{", uint8(6))
	f.Add("public.outbox", "PUBLIC_OUTBOX_AMQP_EXCHANGE", "PUBLIC_OUTBOX_COLUMN_AGGREGATE_ID", strings.Repeat("x", 256), uint8(8))
	f.Add(" a.b , a.b,c", "A_B_COLUMN_ID", "PUBLIC_C_COLUMN_ID", "id", uint8(9))
	f.Add("a.b_column,a.b", "A_B_COLUMN_COLUMN_ID", "A_B_COLUMN_ID", "", uint8(10))
	f.Add("x.y,.z,w.", "X_Y_", "", "v", uint8(11))
	f.Fuzz(func(t *testing.T, tables, v1, v2, value string, pick uint8) {
		environ := minimalEnv()
		environ["RELAY_TABLES"] = tables
		set := func(suffix string, v string) {
			name := tableVarPrefix + suffix
			// What an environment cannot hold, or a problem line
			// cannot be told apart by.
			if strings.ContainsAny(name, "=:\x00") {
				return
			}
			environ[name] = v
		}
		set(v1, value)
		set(v2, value)
		// One variable that names a table of RELAY_TABLES, whatever the
		// fuzzer makes of the others.
		settings := perTableSettings()
		// env reads RELAY_TABLES as loadConfig does: split at commas,
		// the default when empty.
		probe := config{Tables: strings.Split(cmp.Or(tables, "public.outbox"), ",")}
		var ts []pgsource.Table
		for _, tbl := range probe.tables() {
			if !slices.Contains(ts, tbl) {
				ts = append(ts, tbl)
			}
		}
		if len(ts) > 0 {
			n := int(pick)
			if own := tableVariable(ts[n%len(ts)], "RELAY_"+settings[n/len(ts)%len(settings)]); !strings.ContainsAny(own, "=:\x00") {
				environ[own] = value
			}
		}

		c, err := loadConfig(environ)
		var problems configError
		if err != nil && !errors.As(err, &problems) {
			t.Fatalf("loadConfig: %v, want a configError", err)
		}
		if !slices.Equal(c.Tables, probe.Tables) {
			t.Fatalf("RELAY_TABLES=%q read as %q, the test assumes %q", tables, c.Tables, probe.Tables)
		}
		problemsOf := func(name string, problems []string) []string {
			var out []string
			for _, p := range problems {
				if strings.HasPrefix(p, name+": ") {
					out = append(out, p)
				}
			}
			return out
		}
		for _, p := range problems {
			if key, _, _ := strings.Cut(p, ": "); strings.HasPrefix(key, tableVarPrefix) {
				if _, ok := environ[key]; !ok {
					t.Errorf("problem of a variable that is not set: %q", p)
				}
			}
		}

		placed := 0
		for name, v := range environ {
			if !strings.HasPrefix(name, tableVarPrefix) {
				continue
			}
			rest := strings.TrimPrefix(name, tableVarPrefix)
			var table pgsource.Table
			var setting string
			keys := map[string]bool{}
			for _, tbl := range ts {
				for _, s := range settings {
					if tableKey(tbl)+"_"+s == rest {
						table, setting = tbl, s
						keys[tableKey(tbl)] = true
					}
				}
			}
			var sharing []pgsource.Table
			for _, tbl := range ts {
				if keys[tableKey(tbl)] {
					sharing = append(sharing, tbl)
				}
			}
			global := "RELAY_" + setting
			own := problemsOf(name, problems)
			var got tableOverride
			var isPlaced bool
			for tbl, overrides := range c.perTable {
				for g, o := range overrides {
					if o.variable == name {
						if isPlaced {
							t.Errorf("%s placed twice", name)
						}
						isPlaced, got = true, o
						if tbl != table || g != global {
							t.Errorf("%s placed as %s of %s, want %s of %s", name, g, tbl, global, table)
						}
					}
				}
			}
			wantPlaced := len(sharing) == 1 && v != ""
			switch {
			case wantPlaced != isPlaced:
				t.Fatalf("%s=%q with RELAY_TABLES=%q: placed %v, want %v (problems %q)", name, v, tables, isPlaced, wantPlaced, own)
			case !isPlaced && len(own) != 1:
				t.Fatalf("%s=%q with RELAY_TABLES=%q is not placed, and named by %d problems, want 1: %q", name, v, tables, len(own), own)
			case !isPlaced:
				continue
			}
			placed++
			if got.value != v {
				t.Errorf("%s placed with value %q, want %q", name, got.value, v)
			}
			if !isTableVariable(name) {
				t.Errorf("%s is placed, but isTableVariable says it is not one: it would be warned about as unknown", name)
			}
			if fv := fieldOf(c.forTable(table), global); fv != v {
				t.Errorf("forTable(%s).%s = %q, want %s's %q", table, global, fv, name, v)
			}
			// The documented checks of the value, as for the global variable.
			var invalid bool
			switch global {
			case "RELAY_COLUMN_PRESET":
				invalid = v != "standard" && v != "debezium"
			case "RELAY_AMQP_ROUTING_KEY", "RELAY_KAFKA_TOPIC":
				_, perr := relay.ParseTemplate(v)
				invalid = perr != nil
			case "RELAY_AMQP_EXCHANGE":
				invalid = len(v) > 255
			}
			if invalid != (len(own) == 1) || len(own) > 1 {
				t.Errorf("%s=%q: problems %q; invalid by the documented checks: %v", name, v, own, invalid)
			}
		}
		n := 0
		for _, overrides := range c.perTable {
			n += len(overrides)
		}
		if n != placed {
			t.Errorf("%d per-table settings placed, %d variables name them", n, placed)
		}

		// The same variables with another value of the same emptiness
		// draw the same problems: a value never reaches them.
		other := map[string]string{}
		for name, v := range environ {
			if strings.HasPrefix(name, tableVarPrefix) && v != "" {
				v = "v"
			}
			other[name] = v
		}
		first := (&config{Tables: probe.Tables}).readTableVariables(environ)
		second := (&config{Tables: probe.Tables}).readTableVariables(other)
		if !slices.Equal(first, second) {
			t.Errorf("problems depend on the value %q:\n%q\n%q", value, first, second)
		}
	})
}

// fieldOf is the value of c's field of the variable global.
func fieldOf(c config, global string) string {
	v := reflect.ValueOf(c)
	for i := range v.NumField() {
		if name, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("env"), ","); name == global {
			return v.Field(i).String()
		}
	}
	return ""
}
