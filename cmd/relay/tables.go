package main

import (
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// Per-table settings. With several tables in RELAY_TABLES, each may have
// its own column mapping and routing: RELAY_TABLE_<KEY>_<SETTING> sets
// RELAY_<SETTING> for that table only, where <KEY> is tableKey of the table
// and <SETTING> one of perTableSettings. A table's effective settings are
// the global ones with its own on top, variable by variable; its column
// mapping is then built from them as the global one is: its preset (its own
// RELAY_TABLE_<KEY>_COLUMN_PRESET, else RELAY_COLUMN_PRESET), then the
// RELAY_COLUMN_* overrides in effect for it (its own, else the global ones).

// tableVarPrefix begins every per-table variable. It differs from
// RELAY_TABLES in its last character, so neither is a prefix of the other.
const tableVarPrefix = "RELAY_TABLE_"

// tableKey names a table in its variables: schema and name upper-cased,
// every character but an ASCII letter or digit replaced by _, joined by _.
// Distinct tables can share a key (a_b.c and a.b_c); readTableVariables
// refuses a variable for such a key rather than guess which table it means.
func tableKey(t pgsource.Table) string {
	clean := func(s string) string {
		var b strings.Builder
		for _, r := range s {
			switch {
			case r >= 'a' && r <= 'z':
				b.WriteRune(r - 'a' + 'A')
			case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
				b.WriteRune(r)
			default:
				b.WriteByte('_')
			}
		}
		return b.String()
	}
	return clean(t.Schema) + "_" + clean(t.Name)
}

// tableVariable is table t's own variable for the global variable global
// (RELAY_<SETTING>).
func tableVariable(t pgsource.Table, global string) string {
	return tableVarPrefix + tableKey(t) + "_" + strings.TrimPrefix(global, "RELAY_")
}

// perTableSettings lists the settings a table may have of its own, as
// their global variables' names without RELAY_: the config fields tagged
// table:"true", in declaration order.
func perTableSettings() []string {
	var out []string
	t := reflect.TypeFor[config]()
	for i := range t.NumField() {
		if f := t.Field(i); f.Tag.Get("table") == "true" {
			name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			out = append(out, strings.TrimPrefix(name, "RELAY_"))
		}
	}
	return out
}

// isTableVariable reports whether name has the shape of a per-table
// variable, for any table: what deploy files and docs may name.
func isTableVariable(name string) bool {
	rest, ok := strings.CutPrefix(name, tableVarPrefix)
	if !ok {
		return false
	}
	for _, s := range perTableSettings() {
		if key, ok := strings.CutSuffix(rest, "_"+s); ok && key != "" {
			return true
		}
	}
	return false
}

// tableOverride is one per-table variable that was set.
type tableOverride struct {
	variable, value string
}

// readTableVariables reads the per-table variables of environ into
// c.perTable and returns a problem for each it cannot place: one that
// names no table of RELAY_TABLES, one whose setting is not per-table, one
// whose key two tables share, or one set to the empty string.
func (c *config) readTableVariables(environ map[string]string) []string {
	settings := perTableSettings()
	byKey := map[string][]pgsource.Table{}
	var keys []string
	for _, t := range c.tables() {
		k := tableKey(t)
		if !slices.Contains(byKey[k], t) {
			byKey[k] = append(byKey[k], t)
		}
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	var names []string
	for name := range environ {
		if strings.HasPrefix(name, tableVarPrefix) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	var bad []string
	add := func(name, format string, args ...any) {
		bad = append(bad, name+": "+fmt.Sprintf(format, args...))
	}
	for _, name := range names {
		rest := strings.TrimPrefix(name, tableVarPrefix)
		var key, setting string
		prefixOf := false // some table's key begins rest
		for _, k := range keys {
			s, ok := strings.CutPrefix(rest, k+"_")
			if !ok {
				continue
			}
			prefixOf = true
			if slices.Contains(settings, s) {
				// No setting ends with another, so at most one key
				// leaves a setting.
				key, setting = k, s
			}
		}
		switch {
		case key == "" && prefixOf:
			add(name, "not a per-table setting; a table of RELAY_TABLES may set %s%s", strings.Join(settings, ", "), c.suggestTableVariable(name))
			continue
		case key == "":
			var known []string
			for _, k := range keys {
				known = append(known, fmt.Sprintf("%s for %s", k, strings.Join(tableNames(byKey[k]), " and ")))
			}
			add(name, "names no table of RELAY_TABLES (their keys: %s)%s", strings.Join(known, "; "), c.suggestTableVariable(name))
			continue
		case len(byKey[key]) > 1:
			add(name, "tables %s share the key %s, so their variables cannot tell them apart; rename one, or give each its own relay",
				strings.Join(tableNames(byKey[key]), " and "), key)
			continue
		}
		global := "RELAY_" + setting
		if environ[name] == "" {
			add(name, "empty; unset it for %s to apply to table %s", global, byKey[key][0])
			continue
		}
		if c.perTable == nil {
			c.perTable = map[pgsource.Table]map[string]tableOverride{}
		}
		t := byKey[key][0]
		if c.perTable[t] == nil {
			c.perTable[t] = map[string]tableOverride{}
		}
		c.perTable[t][global] = tableOverride{variable: name, value: environ[name]}
	}
	return bad
}

func tableNames(ts []pgsource.Table) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.String()
	}
	return out
}

// suggestTableVariable is "; did you mean X?" for the per-table variable
// (or, for a mistyped RELAY_TABLES, the global one) closest to name.
func (c *config) suggestTableVariable(name string) string {
	var candidates []string
	for _, t := range c.tables() {
		for _, s := range perTableSettings() {
			candidates = append(candidates, tableVariable(t, "RELAY_"+s))
		}
	}
	for _, v := range variables() {
		candidates = append(candidates, v.Name)
	}
	if c := closest(name, candidates); c != "" {
		return "; did you mean " + c + "?"
	}
	return ""
}

// validateTables checks each table's own values as validate checks the
// global ones, naming the per-table variable.
func (c *config) validateTables() []string {
	var bad []string
	// RELAY_TABLES may list a table twice (validate says so): check its
	// values once.
	seen := map[pgsource.Table]bool{}
	for _, t := range c.tables() {
		if seen[t] {
			continue
		}
		seen[t] = true
		for _, global := range slices.Sorted(maps.Keys(c.perTable[t])) {
			o := c.perTable[t][global]
			switch global {
			case "RELAY_COLUMN_PRESET":
				if o.value != "standard" && o.value != "debezium" {
					bad = append(bad, fmt.Sprintf("%s: %q: want standard or debezium", o.variable, o.value))
				}
			case "RELAY_AMQP_ROUTING_KEY", "RELAY_KAFKA_TOPIC", "RELAY_RABBITMQ_STREAM":
				if _, err := relay.ParseTemplate(o.value); err != nil {
					bad = append(bad, fmt.Sprintf("%s: %v", o.variable, err))
				}
			case "RELAY_AMQP_EXCHANGE":
				// AMQP's limit, which the sink would only hit at connect time.
				if len(o.value) > 255 {
					bad = append(bad, fmt.Sprintf("%s: %d bytes: AMQP allows at most 255", o.variable, len(o.value)))
				}
			}
		}
	}
	return bad
}

// forTable is the configuration in effect for table t: the global one
// with t's own values in place of the global ones they override.
func (c *config) forTable(t pgsource.Table) config {
	tc := *c
	overrides := c.perTable[t]
	if len(overrides) == 0 {
		return tc
	}
	v := reflect.ValueOf(&tc).Elem()
	for i := range v.NumField() {
		f := v.Type().Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if o, ok := overrides[name]; ok && f.Tag.Get("table") == "true" {
			v.Field(i).SetString(o.value)
		}
	}
	return tc
}

// tableColumns is the column mapping of each table that has settings of
// its own; the others use columns().
func (c *config) tableColumns() map[pgsource.Table]pgsource.Columns {
	var out map[pgsource.Table]pgsource.Columns
	for _, t := range c.tables() {
		if len(c.perTable[t]) == 0 {
			continue
		}
		if out == nil {
			out = map[pgsource.Table]pgsource.Columns{}
		}
		tc := c.forTable(t)
		out[t] = tc.columns()
	}
	return out
}

// tableTemplates returns the template each table sets for itself in
// place of the global variable global, keyed by relay.Event.Table
// (schema.name); loadConfig has validated them.
func (c *config) tableTemplates(global string) map[string]*relay.Template {
	var out map[string]*relay.Template
	for _, t := range c.tables() {
		o, ok := c.perTable[t][global]
		if !ok {
			continue
		}
		tpl, err := relay.ParseTemplate(o.value)
		if err != nil {
			continue
		}
		if out == nil {
			out = map[string]*relay.Template{}
		}
		out[t.String()] = tpl
	}
	return out
}

// tableExchanges returns the exchange of each table that sets its own,
// keyed by relay.Event.Table.
func (c *config) tableExchanges() map[string]string {
	var out map[string]string
	for _, t := range c.tables() {
		if o, ok := c.perTable[t]["RELAY_AMQP_EXCHANGE"]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[t.String()] = o.value
		}
	}
	return out
}

// variableFor names the variable to set global's value for table t: the
// table's own when it sets one or when there are several tables (setting
// the global one would change the others too), else the global one.
func (c *config) variableFor(t pgsource.Table, global string) string {
	if o, ok := c.perTable[t][global]; ok {
		return o.variable
	}
	if len(c.tables()) > 1 && slices.Contains(perTableSettings(), strings.TrimPrefix(global, "RELAY_")) {
		return tableVariable(t, global)
	}
	return global
}

// tableLogAttrs are the per-table settings for the startup log line, as
// logAttrs gives the global ones (none of them is a secret).
func (c *config) tableLogAttrs() []any {
	var attrs []any
	for _, t := range c.tables() {
		for _, global := range slices.Sorted(maps.Keys(c.perTable[t])) {
			o := c.perTable[t][global]
			attrs = append(attrs, strings.ToLower(strings.TrimPrefix(o.variable, "RELAY_")), o.value)
		}
	}
	return attrs
}

// printTableHelp explains the per-table variables after the list of the
// global ones.
func printTableHelp(w io.Writer) {
	fmt.Fprintf(w, `
Per-table settings, for several tables in RELAY_TABLES:
  RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING> sets RELAY_<SETTING> for that table only,
  <SCHEMA> and <TABLE> upper-cased with every character but A-Z and 0-9 as _,
  e.g. RELAY_TABLE_BILLING_OUTBOX_AMQP_ROUTING_KEY=billing.{event_type}.
  SETTING is one of %s.
  A table's column mapping is its preset (its own, else RELAY_COLUMN_PRESET),
  then the RELAY_COLUMN_* in effect for it (its own, else the global ones).
`, strings.Join(perTableSettings(), ", "))
}
