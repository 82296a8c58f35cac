package check

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

var registerPlugins sync.Once

// labelValuesRE is a Prometheus template variable's query: the metric
// selector of label_values(selector, label) or label_values(label).
var labelValuesRE = regexp.MustCompile(`^\s*label_values\((?:(.+),\s*)?(\w+)\s*\)\s*$`)

// CheckDashboard decodes a dashboard's JSON strictly into the dashboard
// model of Grafana's Go SDK (grafana-foundation-sdk: an unknown field, a
// wrong type or a missing required field is an error) with its panel and
// query plugins registered, validates it, and checks every Prometheus
// query of its panels and template variables with CheckPromQL after its
// variables are expanded; a variable that the dashboard does not define
// and Grafana does not build in is a problem too.
func CheckDashboard(f File, relay *Relay) []string {
	registerPlugins.Do(plugins.RegisterDefaultPlugins)
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(f.Path+": "+format, args...))
	}
	var d dashboard.Dashboard
	// The SDK's strict decoding also requires every option a panel or
	// variable has; Grafana fills in those a dashboard leaves out with
	// their defaults, so only what it would not accept counts: unknown
	// fields, values of the wrong type.
	if err := d.UnmarshalJSONStrict(f.Content); err != nil {
		var errs cog.BuildErrors
		if !errors.As(err, &errs) {
			add("not a dashboard Grafana's model accepts: %v", err)
		}
		for _, e := range errs {
			if e.Message != "required field is missing from input" {
				add("not a dashboard Grafana's model accepts: %v", e)
			}
		}
	}

	// The queries, read from the JSON as Grafana stores them.
	var raw struct {
		Templating struct {
			List []struct {
				Name       string          `json:"name"`
				Type       string          `json:"type"`
				Query      json.RawMessage `json:"query"`
				Definition string          `json:"definition"`
				Datasource json.RawMessage `json:"datasource"`
			} `json:"list"`
		} `json:"templating"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(f.Content, &raw); err != nil {
		add("%v", err)
		return problems
	}
	var defined []string
	for _, v := range raw.Templating.List {
		defined = append(defined, v.Name)
	}
	check := func(where, q string) {
		expanded, undefined := expandGrafana(q, defined)
		for _, u := range undefined {
			add("%s: $%s is no variable of the dashboard", where, u)
		}
		for _, p := range CheckPromQL(expanded, relay) {
			add("%s: %s", where, p)
		}
	}
	queries := 0
	for _, v := range raw.Templating.List {
		for _, u := range varsIn(string(v.Datasource), defined) {
			add("variable %s: its datasource names $%s, which is no variable of the dashboard", v.Name, u)
		}
		if v.Type != "query" {
			continue
		}
		var q string
		var obj struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				add("variable %s: query is neither a string nor {query}", v.Name)
				continue
			}
			q = obj.Query
		}
		if v.Definition != "" && v.Definition != q {
			add("variable %s: definition %q differs from its query %q", v.Name, v.Definition, q)
		}
		m := labelValuesRE.FindStringSubmatch(q)
		if m == nil {
			add("variable %s: query %q is not label_values(…)", v.Name, q)
			continue
		}
		queries++
		if m[1] == "" {
			continue
		}
		check("variable "+v.Name, fmt.Sprintf("sum by (%s) (%s)", m[2], m[1]))
	}
	var walk func(p json.RawMessage)
	walk = func(p json.RawMessage) {
		var panel struct {
			Title      string            `json:"title"`
			Datasource json.RawMessage   `json:"datasource"`
			Targets    []json.RawMessage `json:"targets"`
			Panels     []json.RawMessage `json:"panels"`
		}
		if err := json.Unmarshal(p, &panel); err != nil {
			add("%v", err)
			return
		}
		for _, u := range varsIn(string(panel.Datasource), defined) {
			add("panel %q: its datasource names $%s, which is no variable of the dashboard", panel.Title, u)
		}
		for i, t := range panel.Targets {
			var target struct {
				Expr       string          `json:"expr"`
				Datasource json.RawMessage `json:"datasource"`
			}
			if err := json.Unmarshal(t, &target); err != nil {
				add("panel %q: %v", panel.Title, err)
				continue
			}
			for _, u := range varsIn(string(target.Datasource), defined) {
				add("panel %q, query %d: its datasource names $%s, which is no variable of the dashboard", panel.Title, i, u)
			}
			if strings.TrimSpace(target.Expr) == "" {
				add("panel %q, query %d: no expr", panel.Title, i)
				continue
			}
			queries++
			check(fmt.Sprintf("panel %q", panel.Title), target.Expr)
		}
		for _, c := range panel.Panels {
			walk(c)
		}
	}
	for _, p := range raw.Panels {
		walk(p)
	}
	if queries == 0 {
		add("found no query: is the check broken?")
	}
	return problems
}

func varsIn(s string, defined []string) []string {
	_, undefined := expandGrafana(s, defined)
	return undefined
}
