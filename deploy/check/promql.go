package check

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// targetLabels are the labels Prometheus adds to every scraped series.
var targetLabels = []string{"job", "instance"}

// otherMetrics are series a query may name that the relay does not
// export: Prometheus' own per target.
var otherMetrics = map[string][]string{"up": nil, "scrape_duration_seconds": nil}

var promqlParser = parser.NewParser(parser.Options{})

// CheckPromQL parses expr with Prometheus' parser and returns what in it
// the relay does not have: a metric it does not export, a label matcher or
// a by/without label that none of the selected metrics carries.
func CheckPromQL(expr string, relay *Relay) []string {
	e, err := promqlParser.ParseExpr(expr)
	if err != nil {
		return []string{fmt.Sprintf("%q: %v", expr, err)}
	}
	var problems []string
	add := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf("%q: ", expr)+fmt.Sprintf(format, args...))
	}
	// labelsUnder lists the labels of the metrics selected under a node.
	labelsUnder := func(n parser.Node) []string {
		out := slices.Clone(targetLabels)
		parser.Inspect(n, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				out = append(out, relay.Metrics[selectorName(vs)]...)
				out = append(out, otherMetrics[selectorName(vs)]...)
			}
			return nil
		})
		return out
	}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.VectorSelector:
			name := selectorName(n)
			known, ok := relay.Metrics[name]
			if _, other := otherMetrics[name]; !ok && !other {
				add("metric %s is not one the relay exports%s", name, suggestion(name, mapKeys(relay.Metrics)))
				return nil
			}
			for _, m := range n.LabelMatchers {
				if m.Name != labels.MetricName && !slices.Contains(known, m.Name) && !slices.Contains(targetLabels, m.Name) {
					add("%s has no label %s (it has %s)", name, m.Name, strings.Join(append(slices.Clone(known), targetLabels...), ", "))
				}
			}
		case *parser.AggregateExpr:
			have := labelsUnder(n.Expr)
			for _, l := range n.Grouping {
				if !slices.Contains(have, l) {
					add("%s by/without %s: no metric under it has that label", n.Op, l)
				}
			}
		}
		return nil
	})
	return problems
}

func selectorName(vs *parser.VectorSelector) string {
	if vs.Name != "" {
		return vs.Name
	}
	for _, m := range vs.LabelMatchers {
		if m.Name == labels.MetricName {
			return m.Value
		}
	}
	return ""
}

func mapKeys(m map[string][]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// suggestion names the closest of known to name, if one is close.
func suggestion(name string, known []string) string {
	best, bestD := "", len(name)/3+1
	for _, k := range known {
		if d := distance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return "; did you mean " + best + "?"
}

// distance is the Levenshtein distance of a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// grafanaVarRE is a dashboard variable in a query: $name, ${name},
// ${name:format} or [[name]].
var grafanaVarRE = regexp.MustCompile(`\$\{(\w+)(?::[^}]*)?\}|\$(\w+)|\[\[(\w+)\]\]`)

// grafanaBuiltins are the variables Grafana defines itself.
var grafanaBuiltins = []string{"__interval", "__interval_ms", "__rate_interval", "__rate_interval_ms", "__range", "__range_s", "__range_ms", "__from", "__to", "__dashboard", "__org", "__user", "__timeFilter"}

// expandGrafana replaces the variables of a Grafana query with values
// PromQL accepts where they stand (a duration for the interval and range
// variables, a regular expression for the others), and returns the names
// of those that are neither built in nor in defined.
func expandGrafana(q string, defined []string) (string, []string) {
	var undefined []string
	out := grafanaVarRE.ReplaceAllStringFunc(q, func(v string) string {
		m := grafanaVarRE.FindStringSubmatch(v)
		name := m[1] + m[2] + m[3]
		switch {
		case strings.HasPrefix(name, "__") && (strings.Contains(name, "interval") || strings.Contains(name, "range")):
			if !slices.Contains(grafanaBuiltins, name) {
				undefined = append(undefined, name)
			}
			return "5m"
		case !slices.Contains(defined, name) && !slices.Contains(grafanaBuiltins, name):
			undefined = append(undefined, name)
		}
		return ".*"
	})
	return out, undefined
}
