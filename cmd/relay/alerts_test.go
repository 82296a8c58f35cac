package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

// The alert rules run only when something has already gone wrong, so they
// are tested like code: deploy/prometheus/alerts_test.yml gives promtool
// the series relays export in each trouble a rule names, and those of
// healthy relays, which must fire nothing.

const (
	alertRules     = "deploy/prometheus/alerts.yml"
	alertRuleTests = "deploy/prometheus/alerts_test.yml"
	prometheusRule = "deploy/kubernetes/prometheusrule.yaml"
	// The prefix of the test groups that must fire no alert.
	healthyPrefix = "healthy:"
)

// promtool returns the path of promtool, failing the test when it is
// missing: an alert rule nobody tested is the one that stays silent.
func promtool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found; it unit-tests the alert rules. Install it with `sudo apt-get install -y prometheus` (make test does)")
	}
	return path
}

// runRuleTests runs promtool test rules on a copy of alerts_test.yml next
// to rules, which it names alerts.yml.
func runRuleTests(t *testing.T, bin string, rules []byte) (string, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := filepath.Join(dir, "alerts_test.yml")
	if err := os.WriteFile(tests, []byte(readRepoFile(t, alertRuleTests)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "test", "rules", tests).CombinedOutput()
	return string(out), err
}

// prometheusRuleGroups returns the PrometheusRule's groups as a Prometheus
// rule file.
func prometheusRuleGroups(t *testing.T) []byte {
	t.Helper()
	var crd struct {
		Spec struct {
			Groups []any `yaml:"groups"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, prometheusRule)), &crd); err != nil {
		t.Fatal(err)
	}
	if len(crd.Spec.Groups) == 0 {
		t.Fatalf("%s has no groups under spec", prometheusRule)
	}
	b, err := yaml.Marshal(map[string]any{"groups": crd.Spec.Groups})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestAlertRulesFireWhenTheyShould: every alert fires on the series of the
// trouble it names, with its labels and annotations, and none fires for
// healthy relays; in alerts.yml and in the PrometheusRule alike, so that a
// copy left stale fails too.
func TestAlertRulesFireWhenTheyShould(t *testing.T) {
	bin := promtool(t)
	for _, tc := range []struct {
		name  string
		rules func(*testing.T) []byte
	}{
		{alertRules, func(t *testing.T) []byte { return []byte(readRepoFile(t, alertRules)) }},
		{prometheusRule, prometheusRuleGroups},
	} {
		t.Run(filepath.Base(tc.name), func(t *testing.T) {
			out, err := runRuleTests(t, bin, tc.rules(t))
			if err != nil {
				t.Errorf("promtool test rules %s with the rules of %s: %v\n%s", alertRuleTests, tc.name, err, out)
			}
		})
	}
}

// TestAlertRuleTestsFailOnABrokenRule: a rule that never fires fails the
// run above, so that it cannot pass without testing anything.
func TestAlertRuleTestsFailOnABrokenRule(t *testing.T) {
	bin := promtool(t)
	var file struct {
		Groups []struct {
			Name  string           `yaml:"name"`
			Rules []map[string]any `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, alertRules)), &file); err != nil {
		t.Fatal(err)
	}
	var broken string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if name, ok := r["alert"].(string); ok && broken == "" {
				broken = name
				r["expr"] = "vector(0) > 1"
			}
		}
	}
	if broken == "" {
		t.Fatalf("%s has no alert", alertRules)
	}
	rules, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	out, err := runRuleTests(t, bin, rules)
	if err == nil {
		t.Fatalf("promtool passed with %s never firing:\n%s", broken, out)
	}
	if !strings.Contains(out, "alertname: "+broken) {
		t.Errorf("promtool failed without naming %s:\n%s", broken, out)
	}
}

// ruleTests is the part of a promtool test file these tests read.
type ruleTests struct {
	RuleFiles []string `yaml:"rule_files"`
	Tests     []struct {
		Name        string `yaml:"name"`
		InputSeries []struct {
			Series string `yaml:"series"`
			Values string `yaml:"values"`
		} `yaml:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string `yaml:"eval_time"`
			Alertname string `yaml:"alertname"`
			ExpAlerts []any  `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

type alertRule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
	For   string `yaml:"for"`
}

func readAlertRules(t *testing.T) []alertRule {
	t.Helper()
	var file struct {
		Groups []struct {
			Rules []alertRule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal([]byte(readRepoFile(t, alertRules)), &file); err != nil {
		t.Fatal(err)
	}
	var rules []alertRule
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				rules = append(rules, r)
			}
		}
	}
	if len(rules) == 0 {
		t.Fatalf("%s has no alert", alertRules)
	}
	return rules
}

func readRuleTests(t *testing.T) ruleTests {
	t.Helper()
	var tests ruleTests
	if err := yaml.Unmarshal([]byte(readRepoFile(t, alertRuleTests)), &tests); err != nil {
		t.Fatal(err)
	}
	return tests
}

var (
	// A selector in PromQL: every one in the rules has label matchers.
	selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}`)
	rangeRE    = regexp.MustCompile(`\[([0-9a-z]+)\]`)
)

// settles is how long after its series turn bad an alert can first
// fire: its longest range plus its for.
func (r alertRule) settles() (time.Duration, error) {
	var d time.Duration
	for _, m := range rangeRE.FindAllStringSubmatch(r.Expr, -1) {
		w, err := time.ParseDuration(m[1])
		if err != nil {
			return 0, err
		}
		d = max(d, w)
	}
	if r.For != "" {
		f, err := time.ParseDuration(r.For)
		if err != nil {
			return 0, err
		}
		d += f
	}
	return d, nil
}

// TestAlertRuleTestsCoverEveryAlert: the promtool tests expect every
// alert to fire somewhere, and every "healthy: ..." group feeds every
// series the rules read and checks every alert silent after it could
// have fired; a test of an alert that no longer exists is an error, as
// promtool passes it.
func TestAlertRuleTestsCoverEveryAlert(t *testing.T) {
	rules := readAlertRules(t)
	tests := readRuleTests(t)
	if !slices.Equal(tests.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("%s: rule_files is %v, want [alerts.yml] (the test runs it against the PrometheusRule too)", alertRuleTests, tests.RuleFiles)
	}
	var names, read []string
	for _, r := range rules {
		names = append(names, r.Alert)
		for _, m := range selectorRE.FindAllStringSubmatch(r.Expr, -1) {
			if !strings.Contains(m[2], `job="relay"`) {
				t.Errorf("%s selects %s without job=\"relay\"", r.Alert, m[0])
			}
			if !slices.Contains(read, m[1]) {
				read = append(read, m[1])
			}
		}
	}
	fires := map[string]bool{}
	healthy := 0
	for _, g := range tests.Tests {
		for _, at := range g.AlertRuleTest {
			if !slices.Contains(names, at.Alertname) {
				t.Errorf("%q tests %s, which %s does not have", g.Name, at.Alertname, alertRules)
			}
			if len(at.ExpAlerts) > 0 {
				fires[at.Alertname] = true
			}
		}
		if !strings.HasPrefix(g.Name, healthyPrefix) {
			continue
		}
		healthy++
		var inputs []string
		for _, s := range g.InputSeries {
			name, _, _ := strings.Cut(s.Series, "{")
			inputs = append(inputs, strings.TrimSpace(name))
		}
		for _, m := range read {
			if !slices.Contains(inputs, m) {
				t.Errorf("%q has no %s series: an alert that reads it would be silent for want of data, not because the relays are healthy", g.Name, m)
			}
		}
		for _, r := range rules {
			need, err := r.settles()
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			checked := false
			for _, at := range g.AlertRuleTest {
				when, err := time.ParseDuration(at.EvalTime)
				if err != nil {
					t.Fatalf("%q: eval_time %q: %v", g.Name, at.EvalTime, err)
				}
				if at.Alertname == r.Alert && len(at.ExpAlerts) == 0 && when >= need {
					checked = true
				}
				if at.Alertname == r.Alert && len(at.ExpAlerts) > 0 {
					t.Errorf("%q expects %s to fire", g.Name, r.Alert)
				}
			}
			if !checked {
				t.Errorf("%q does not check that %s stays silent at %s or later (its longest range plus its for)", g.Name, r.Alert, need)
			}
		}
	}
	if healthy == 0 {
		t.Errorf("%s has no %q test group", alertRuleTests, healthyPrefix+" ...")
	}
	for _, n := range names {
		if !fires[n] {
			t.Errorf("no test in %s expects %s to fire", alertRuleTests, n)
		}
	}
}

// family is what the relay exports under one metric name.
type family struct {
	typ    string // COUNTER, GAUGE, ...
	labels []string
}

// exportedFamilies returns the metrics a relay's /metrics has, with their
// label names; up is Prometheus's own.
func exportedFamilies(t *testing.T) map[string]family {
	t.Helper()
	reg := prometheus.NewRegistry()
	m := metrics.New(reg, "rabbitmq")
	// Labelled series appear once they have a child.
	m.Tables("public.outbox")
	m.Published("public.outbox", "outbox", time.Now())
	m.HeaderDropped("x-relay-id")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	fams := map[string]family{"up": {typ: "GAUGE"}}
	for _, mf := range mfs {
		f := family{typ: mf.GetType().String()}
		if ms := mf.GetMetric(); len(ms) > 0 {
			for _, l := range ms[0].GetLabel() {
				f.labels = append(f.labels, l.GetName())
			}
		}
		slices.Sort(f.labels)
		fams[mf.GetName()] = f
	}
	// The process collector exports it only where it can read it.
	if _, ok := fams["process_start_time_seconds"]; !ok {
		fams["process_start_time_seconds"] = family{typ: "GAUGE"}
	}
	return fams
}

var (
	seriesRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\}$`)
	labelRE  = regexp.MustCompile(`\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"]*)"\s*(?:,|$)`)
	// promtool's expanding notation: a+bxn, a-bxn, axn.
	expandRE = regexp.MustCompile(`^([-+]?[0-9.]+(?:e[-+]?[0-9]+)?)(?:([-+])([0-9.]+(?:e[-+]?[0-9]+)?))?x([0-9]+)$`)
)

// expandValues turns promtool's values notation into samples; NaN stands
// for a stale marker, and missing samples are left out.
func expandValues(s string) ([]float64, error) {
	var out []float64
	for _, tok := range strings.Fields(s) {
		switch {
		case tok == "_" || strings.HasPrefix(tok, "_x"):
			continue
		case tok == "stale":
			out = append(out, staleSample)
			continue
		}
		m := expandRE.FindStringSubmatch(tok)
		if m == nil {
			v, err := strconv.ParseFloat(tok, 64)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
			continue
		}
		a, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			return nil, err
		}
		var b float64
		if m[3] != "" {
			if b, err = strconv.ParseFloat(m[3], 64); err != nil {
				return nil, err
			}
			if m[2] == "-" {
				b = -b
			}
		}
		n, err := strconv.Atoi(m[4])
		if err != nil {
			return nil, err
		}
		for i := 0; i <= n; i++ {
			out = append(out, a+float64(i)*b)
		}
	}
	return out, nil
}

const staleSample = -1 << 62

// TestAlertRuleTestsUseTheRelaysSeries: the series the promtool tests feed
// the rules are the relay's metrics as it exports them: real names, the
// labels they have (job and instance added by the scrape), values a label
// can take, and counters that only grow (until the process restarts).
func TestAlertRuleTestsUseTheRelaysSeries(t *testing.T) {
	fams := exportedFamilies(t)
	reasons := []string{relay.ReasonTooLarge, relay.ReasonBadRow, relay.ReasonPermanent, relay.ReasonTransient, relay.ReasonCanceled}
	for _, g := range readRuleTests(t).Tests {
		for _, s := range g.InputSeries {
			m := seriesRE.FindStringSubmatch(strings.TrimSpace(s.Series))
			if m == nil {
				t.Errorf("%q: cannot read series %q", g.Name, s.Series)
				continue
			}
			name := m[1]
			f, ok := fams[name]
			if !ok {
				t.Errorf("%q: %s is not a metric the relay exports%s", g.Name, name, suggestion(name, metrics.Names()))
				continue
			}
			labels := map[string]string{}
			for _, l := range labelRE.FindAllStringSubmatch(m[2], -1) {
				labels[l[1]] = l[2]
			}
			if labels["instance"] == "" || (labels["job"] != "relay" && name != "up") {
				t.Errorf("%q: %s needs instance and job=\"relay\", as a scrape of the relay adds", g.Name, s.Series)
			}
			var own []string
			for l := range labels {
				if l != "job" && l != "instance" {
					own = append(own, l)
				}
			}
			slices.Sort(own)
			if !slices.Equal(own, f.labels) {
				t.Errorf("%q: %s has labels %v; the relay exports it with %v", g.Name, s.Series, own, f.labels)
			}
			if r, ok := labels["reason"]; ok && !slices.Contains(reasons, r) {
				t.Errorf("%q: %s: reason %q is none of %v", g.Name, s.Series, r, reasons)
			}
			if sink, ok := labels["sink"]; ok && sink != "rabbitmq" && sink != "kafka" {
				t.Errorf("%q: %s: sink %q is neither rabbitmq nor kafka", g.Name, s.Series, sink)
			}
			values, err := expandValues(s.Values)
			if err != nil {
				t.Errorf("%q: %s: values %q: %v", g.Name, s.Series, s.Values, err)
				continue
			}
			if f.typ != "COUNTER" {
				continue
			}
			last := 0.0
			for _, v := range values {
				if v == staleSample {
					last = 0 // a new process counts from 0
					continue
				}
				if v < last {
					t.Errorf("%q: counter %s goes down (%g after %g) without a restart", g.Name, s.Series, v, last)
					break
				}
				last = v
			}
		}
	}
}

// TestExpandValues: the reader of promtool's notation above reads it as
// promtool does.
func TestExpandValues(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []float64
	}{
		{"1x2", []float64{1, 1, 1}},
		{"-2+4x3", []float64{-2, 2, 6, 10}},
		{"1-2x4", []float64{1, -1, -3, -5, -7}},
		{"1 _x3 stale 0+5x1", []float64{1, staleSample, 0, 5}},
		{"_ 1e3", []float64{1000}},
	} {
		got, err := expandValues(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("expandValues(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := expandValues("1+x"); err == nil {
		t.Error("expandValues(\"1+x\") did not fail")
	}
}
