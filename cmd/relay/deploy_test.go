package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/relay-dev/relay/metrics"
)

// The files under deploy/, README.md and the pages under docs/ name
// environment variables and metrics by hand. These tests hold them to what the code has, so that
// docs and deploy files cannot drift from it.

var (
	varRE = regexp.MustCompile(`\bRELAY_[A-Z0-9]+(?:_[A-Z0-9]+)*\b`)
	// A metric in a PromQL expression; `outbox_relay` and the like are
	// not, as a word character precedes them.
	metricRE = regexp.MustCompile(`(?:^|[^A-Za-z0-9_:])(relay_[a-z_]+)`)
	// A metric named in the prose of README.md or a docs/ page, as code.
	docMetricRE = regexp.MustCompile("`(relay_[a-z_]+)")
)

// exprKeys are the keys whose values are PromQL: Prometheus rules' expr,
// Grafana targets' expr, Grafana variables' query and definition.
var exprKeys = []string{"expr", "query", "definition"}

// scalar is one string of a parsed YAML or JSON file, with the mapping key
// it is the value of ("" for keys and list items).
type scalar struct{ key, value string }

// deployRefs is what one file under deploy/ names.
type deployRefs struct {
	vars, metrics []string
}

// scanDeployFile parses a YAML or JSON file (other files are read as text)
// and returns the RELAY_ variables it names anywhere and the relay_
// metrics its PromQL expressions use.
func scanDeployFile(name string, data []byte) (deployRefs, error) {
	var scalars []scalar
	switch filepath.Ext(name) {
	case ".yml", ".yaml":
		dec := yaml.NewDecoder(bytes.NewReader(data))
		for {
			var doc yaml.Node
			if err := dec.Decode(&doc); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				return deployRefs{}, fmt.Errorf("parse %s: %w", name, err)
			}
			scalars = yamlScalars(&doc, "", scalars)
		}
	case ".json":
		var v any
		if err := json.Unmarshal(data, &v); err != nil {
			return deployRefs{}, fmt.Errorf("parse %s: %w", name, err)
		}
		scalars = jsonScalars(v, "", scalars)
	default:
		return deployRefs{vars: varRE.FindAllString(string(data), -1)}, nil
	}
	var refs deployRefs
	for _, s := range scalars {
		refs.vars = append(refs.vars, varRE.FindAllString(s.value, -1)...)
		if slices.Contains(exprKeys, s.key) {
			for _, m := range metricRE.FindAllStringSubmatch(s.value, -1) {
				refs.metrics = append(refs.metrics, m[1])
			}
		}
	}
	return refs, nil
}

func yamlScalars(n *yaml.Node, key string, out []scalar) []scalar {
	switch n.Kind {
	case yaml.ScalarNode:
		return append(out, scalar{key, n.Value})
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			out = yamlScalars(n.Content[i], "", out)
			out = yamlScalars(n.Content[i+1], n.Content[i].Value, out)
		}
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			out = yamlScalars(c, "", out)
		}
	}
	// An alias repeats its anchor's content, which was walked already.
	return out
}

func jsonScalars(v any, key string, out []scalar) []scalar {
	switch v := v.(type) {
	case string:
		return append(out, scalar{key, v})
	case map[string]any:
		for k, c := range v {
			out = append(out, scalar{"", k})
			out = jsonScalars(c, k, out)
		}
	case []any:
		for _, c := range v {
			out = jsonScalars(c, "", out)
		}
	}
	return out
}

// driftProblems lists every variable and metric that files (path →
// content: deploy files, the Dockerfile, README.md and docs/*.md) name and
// the relay lacks. counts
// gives how many metric uses each file had, so that a scanner that finds
// nothing cannot pass for a clean one.
func driftProblems(files map[string][]byte, knownVars, knownMetrics []string) (problems []string, counts map[string]int) {
	counts = map[string]int{}
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		data := files[name]
		var refs deployRefs
		if filepath.Ext(name) == ".md" || filepath.Base(name) == "Dockerfile" {
			refs.vars = varRE.FindAllString(string(data), -1)
			for _, m := range docMetricRE.FindAllStringSubmatch(string(data), -1) {
				refs.metrics = append(refs.metrics, m[1])
			}
		} else {
			var err error
			if refs, err = scanDeployFile(name, data); err != nil {
				problems = append(problems, err.Error())
				continue
			}
		}
		counts[name] = len(refs.metrics)
		seen := map[string]bool{}
		for _, v := range refs.vars {
			// Variables of the test harness, documented in docs/design.md's
			// section on tests; the relay does not read them.
			if strings.HasPrefix(v, "RELAY_TEST_") || seen[v] {
				continue
			}
			seen[v] = true
			if !slices.Contains(knownVars, v) && !isTableVariable(v) {
				problems = append(problems, fmt.Sprintf("%s names %s, which the relay does not read%s", name, v, suggestion(v, knownVars)))
			}
		}
		for _, m := range refs.metrics {
			if seen[m] {
				continue
			}
			seen[m] = true
			if !slices.Contains(knownMetrics, m) {
				problems = append(problems, fmt.Sprintf("%s uses metric %s, which the relay does not export%s", name, m, suggestion(m, knownMetrics)))
			}
		}
	}
	return problems, counts
}

func suggestion(name string, known []string) string {
	if c := closest(name, known); c != "" {
		return "; did you mean " + c + "?"
	}
	return ""
}

func variableNames() []string {
	var names []string
	for _, v := range variables() {
		names = append(names, v.Name)
	}
	return names
}

// readDeployFiles reads every file under deploy/, README.md, the pages
// under docs/ and the Dockerfile, keyed by their path in the repository.
func readDeployFiles(t *testing.T) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	root := "../.."
	err := filepath.WalkDir(filepath.Join(root, "deploy"), func(path string, d fs.DirEntry, err error) error {
		// deploy/check is the Go module that checks these files, with
		// deliberately broken copies in its tests; it deploys nothing.
		if err == nil && d.IsDir() && filepath.ToSlash(path) == root+"/deploy/check" {
			return filepath.SkipDir
		}
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		files[filepath.ToSlash(rel)] = b
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"README.md", "Dockerfile"} {
		files[name] = []byte(readRepoFile(t, name))
	}
	for name, text := range docPages(t) {
		files[name] = []byte(text)
	}
	return files
}

// TestDeployFilesMatchTheCode: every RELAY_ variable that README.md, a page
// under docs/ or a file under deploy/ names is one the relay reads, and every relay_ metric a
// dashboard or alert rule queries is one it exports.
func TestDeployFilesMatchTheCode(t *testing.T) {
	files := readDeployFiles(t)
	problems, counts := driftProblems(files, variableNames(), metrics.Names())
	for _, p := range problems {
		t.Error(p)
	}
	// The scanner must have found queries where there are queries.
	for name := range files {
		dashboard := strings.HasPrefix(name, "deploy/grafana/dashboards/") && strings.HasSuffix(name, ".json")
		rules := name == "deploy/prometheus/alerts.yml" || name == "deploy/kubernetes/prometheusrule.yaml"
		if (dashboard || rules) && counts[name] == 0 {
			t.Errorf("%s: found no relay_ metric in its queries; is the scanner broken?", name)
		}
	}
	// The metrics table and the delivery guarantees name metrics.
	for _, name := range []string{"docs/operations.md", "docs/delivery-guarantees.md"} {
		if counts[name] == 0 {
			t.Errorf("%s: found no relay_ metric in it; is the scanner broken?", name)
		}
	}
	if _, ok := files["deploy/prometheus/alerts.yml"]; !ok {
		t.Error("deploy/prometheus/alerts.yml is missing")
	}
}

// TestDriftProblemsNamesWhatTheCodeLacks: the check above can fail, and
// says what to fix.
func TestDriftProblemsNamesWhatTheCodeLacks(t *testing.T) {
	files := map[string][]byte{
		"deploy/k8s.yaml": []byte("env:\n  - name: RELAY_SLOTT\n    value: x\n  - name: RELAY_SLOT\nslot: outbox_relay\n"),
		"deploy/dash.json": []byte(`{"targets": [{"expr": "rate(relay_events_publish_total[5m]) + relay_leader"}],
			"description": "relay_not_a_query"}`),
		"deploy/rules.yml":       []byte("groups:\n- rules:\n  - expr: relay_lag_bytes > 0\n    annotations: {summary: 'see RELAY_TEST_AMQP_URL'}\n"),
		"deploy/relay.service":   []byte("Environment=RELAY_AMQP_ULR=amqp://\n"),
		"deploy/broken.yaml":     []byte("a: [\n"),
		"README.md":              []byte("Set `RELAY_DATABASE_URL`; watch `relay_leader` and `relay_lagg`.\n"),
		"docs/operations.md":     []byte("| `RELAY_SINKK` | `rabbitmq` |\n| `relay_leader` | 1 while … |\n| `relay_leeder` | |\n"),
		"deploy/clean/ok.yml":    []byte("x: RELAY_SLOT\n"),
		"deploy/grafana/x.json":  []byte(`{"templating": {"list": [{"query": "label_values(relay_leader, job)"}]}}`),
		"deploy/anchors/c.yml":   []byte("x: &a {RELAY_SINK: kafka}\ny: *a\nz:\n  <<: *a\n"),
		"deploy/prom/other.yaml": []byte("expr: up{job=\"relay\"} == 0 and outbox_relay_x > 0\n"),
		// A per-table variable of any table is known; a mistyped setting is not.
		"deploy/tables.yml": []byte("a: RELAY_TABLE_SALES_OUTBOX_KAFKA_TOPIC\nb: RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTNG_KEY\n"),
	}
	knownVars := []string{"RELAY_SLOT", "RELAY_AMQP_URL", "RELAY_DATABASE_URL", "RELAY_SINK"}
	knownMetrics := []string{"relay_events_published_total", "relay_leader", "relay_replication_lag_bytes"}
	got, counts := driftProblems(files, knownVars, knownMetrics)
	want := []string{
		"README.md uses metric relay_lagg, which the relay does not export",
		"parse deploy/broken.yaml",
		"deploy/dash.json uses metric relay_events_publish_total, which the relay does not export; did you mean relay_events_published_total?",
		"deploy/k8s.yaml names RELAY_SLOTT, which the relay does not read; did you mean RELAY_SLOT?",
		"deploy/relay.service names RELAY_AMQP_ULR, which the relay does not read; did you mean RELAY_AMQP_URL?",
		"deploy/rules.yml uses metric relay_lag_bytes, which the relay does not export",
		"deploy/tables.yml names RELAY_TABLE_SALES_OUTBOX_AMQP_ROUTNG_KEY, which the relay does not read",
		"docs/operations.md names RELAY_SINKK, which the relay does not read; did you mean RELAY_SINK?",
		"docs/operations.md uses metric relay_leeder, which the relay does not export; did you mean relay_leader?",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d:\n got: %s\nwant: %s…", i, got[i], want[i])
		}
	}
	wantCounts := map[string]int{"deploy/dash.json": 2, "deploy/grafana/x.json": 1, "deploy/prom/other.yaml": 0, "deploy/rules.yml": 1, "docs/operations.md": 2}
	for name, n := range wantCounts {
		if counts[name] != n {
			t.Errorf("%s: counted %d metric uses, want %d", name, counts[name], n)
		}
	}
}

// TestPrometheusRuleCarriesTheAlertRules: the Kubernetes PrometheusRule
// and the plain Prometheus rule file are the same rules.
func TestPrometheusRuleCarriesTheAlertRules(t *testing.T) {
	var plain struct {
		Groups any `yaml:"groups"`
	}
	var crd struct {
		Spec struct {
			Groups any `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy/prometheus/alerts.yml")), &plain); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, "deploy/kubernetes/prometheusrule.yaml")), &crd); err != nil {
		t.Fatal(err)
	}
	if plain.Groups == nil {
		t.Fatal("deploy/prometheus/alerts.yml has no groups")
	}
	if !reflect.DeepEqual(plain.Groups, crd.Spec.Groups) {
		t.Error("deploy/kubernetes/prometheusrule.yaml's groups differ from deploy/prometheus/alerts.yml's; copy them over")
	}
}

// TestDashboardShowsWhatOperatorsAsk: the dashboard covers throughput,
// commit→ack latency, lag, retained WAL, errors, dead letters and the
// leader.
func TestDashboardShowsWhatOperatorsAsk(t *testing.T) {
	refs, err := scanDeployFile("relay.json", []byte(readRepoFile(t, "deploy/grafana/dashboards/relay.json")))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{
		"relay_events_published_total", "relay_commit_to_ack_seconds_bucket", "relay_replication_lag_bytes",
		"relay_slot_retained_wal_bytes", "relay_publish_errors_total", "relay_dead_lettered_total", "relay_leader",
	} {
		if !slices.Contains(refs.metrics, m) {
			t.Errorf("the dashboard does not query %s", m)
		}
	}
}
