package check

import (
	"path/filepath"
	"strings"
	"testing"
)

func dashboards(t *testing.T) []File {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(Root(), "deploy/grafana/dashboards/*.json"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no dashboards: %v", err)
	}
	var paths []string
	for _, n := range names {
		paths = append(paths, "deploy/grafana/dashboards/"+filepath.Base(n))
	}
	return readFiles(t, paths...)
}

func TestDashboards(t *testing.T) {
	relay := testRelay(t)
	for _, f := range dashboards(t) {
		for _, p := range CheckDashboard(f, relay) {
			t.Error(p)
		}
	}
}

func TestAlertRuleQueries(t *testing.T) {
	relay := testRelay(t)
	exprs := ruleExprs(t, readFiles(t, "deploy/prometheus/alerts.yml")[0])
	if len(exprs) < 5 {
		t.Fatalf("found %d alert expressions", len(exprs))
	}
	for _, e := range exprs {
		for _, p := range CheckPromQL(e, relay) {
			t.Errorf("deploy/prometheus/alerts.yml: %s", p)
		}
	}
}

func TestDashboardCatchesMistakes(t *testing.T) {
	relay := testRelay(t)
	f := dashboards(t)[0]
	cases := []struct{ name, old, new, want string }{
		{"unknown dashboard field", `"graphTooltip"`, `"graphTooltipp"`, "graphTooltipp"},
		{"unknown panel field", `"gridPos"`, `"gridPoss"`, "gridPoss"},
		{"unknown panel option (stat plugin)", `"colorMode": "background"`, `"colourMode": "background"`, "unexpected field 'colourMode'"},
		{"wrong type", `"editable": true`, `"editable": "yes"`, "editable"},
		{"unknown metric", `relay_replication_lag_bytes{`, `relay_replication_lagg_bytes{`, "relay_replication_lagg_bytes is not one the relay exports; did you mean relay_replication_lag_bytes?"},
		{"unknown label", `sum by (reason) (rate(relay_publish_errors_total`, `sum by (cause) (rate(relay_publish_errors_total`, "sum by/without cause"},
		{"unknown label matcher", `relay_blocked{job=~\"$job\"`, `relay_blocked{table=~\"$job\"`, "relay_blocked has no label table"},
		{"undefined variable", `relay_leader{job=~\"$job\", instance=~\"$instance\"})`, `relay_leader{job=~\"$jobs\", instance=~\"$instance\"})`, "$jobs is no variable"},
		{"bad PromQL", `sum(relay_leader{`, `sum(relay_leader{{`, "unexpected"},
		{"variable on an unknown metric", `label_values(relay_leader, job)",`, `label_values(relay_leeder, job)",`, "relay_leeder is not one the relay exports"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			problems := CheckDashboard(broken(t, f, c.old, c.new), relay)
			t.Log(strings.Join(problems, "\n"))
			wantProblem(t, c.name, problems, c.want)
		})
	}
	wantProblem(t, "alert rule label", CheckPromQL(`sum by (instance, cause) (rate(relay_publish_errors_total{job="relay"}[5m])) > 0`, relay), "sum by/without cause")
}

func ruleExprs(t *testing.T, f File) []string {
	t.Helper()
	exprs, err := RuleExprs(f)
	if err != nil {
		t.Fatal(err)
	}
	return exprs
}
