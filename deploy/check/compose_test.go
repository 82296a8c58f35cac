package check

import (
	"os"
	"strings"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	Cleanup()
	os.Exit(code)
}

var composeSets = [][]string{
	{"deploy/compose/compose.yml"},
	{"deploy/compose/compose.yml", "deploy/compose/compose.kafka.yml"},
}

func testRelay(t *testing.T) *Relay {
	t.Helper()
	r, err := LoadRelay()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readFiles(t *testing.T, paths ...string) []File {
	t.Helper()
	files, err := ReadFiles(paths...)
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// broken returns f with old replaced by new, failing if old is not there.
func broken(t *testing.T, f File, old, new string) File {
	t.Helper()
	if !strings.Contains(string(f.Content), old) {
		t.Fatalf("%s no longer contains %q: update the test", f.Path, old)
	}
	return File{Path: f.Path, Content: []byte(strings.Replace(string(f.Content), old, new, 1))}
}

// wantProblem fails unless one of problems contains want.
func wantProblem(t *testing.T, what string, problems []string, want string) {
	t.Helper()
	for _, p := range problems {
		if strings.Contains(p, want) {
			return
		}
	}
	t.Errorf("%s: no problem mentions %q; got %d:\n%s", what, want, len(problems), strings.Join(problems, "\n"))
}

func TestComposeFiles(t *testing.T) {
	relay := testRelay(t)
	for _, set := range composeSets {
		files := readFiles(t, set...)
		for _, p := range CheckCompose(files, relay) {
			t.Error(p)
		}
		project, err := LoadCompose(files)
		if err != nil {
			t.Fatal(err)
		}
		if len(project.Services) < 6 {
			t.Errorf("%v: loaded %d services, want postgres, rabbitmq, two relays, prometheus, grafana", set, len(project.Services))
		}
	}
}

// TestComposeCatchesMistakes: each seeded mistake is reported.
func TestComposeCatchesMistakes(t *testing.T) {
	relay := testRelay(t)
	base := readFiles(t, "deploy/compose/compose.yml", "deploy/compose/compose.kafka.yml")
	main, kafka := base[0], base[1]
	cases := []struct {
		name  string
		files []File
		want  string
	}{
		{"misspelt key (schema)", []File{broken(t, main, "    healthcheck:\n      test: [\"CMD\", \"pg_isready\"", "    healtcheck:\n      test: [\"CMD\", \"pg_isready\""), kafka}, "healtcheck"},
		{"variable without default", []File{broken(t, main, "image: postgres:17", "image: postgres:${PG_VERSION}"), kafka}, "${PG_VERSION} has no default"},
		{"required variable unset", []File{broken(t, main, "image: postgres:17", "image: postgres:${PG_VERSION:?set PG_VERSION}"), kafka}, "set PG_VERSION"},
		{"unknown relay variable", []File{main, broken(t, kafka, "RELAY_KAFKA_BROKERS:", "RELAY_KAFKA_BROKER:")}, "RELAY_KAFKA_BROKER, which the relay does not read"},
		{"missing build context", []File{broken(t, main, "context: ../..", "context: ../../nowhere"), kafka}, "builds from nowhere"},
		{"missing mounted file", []File{broken(t, main, "../prometheus/alerts.yml:", "../prometheus/alert.yml:"), kafka}, "mounts deploy/prometheus/alert.yml"},
		{"healthy condition without healthcheck", []File{main, broken(t, kafka, "    healthcheck:\n", "    x-healthcheck:\n")}, "waits for kafka to be healthy, but kafka has no healthcheck"},
		{"dependency that is no service", []File{main, broken(t, kafka, "    kafka: {condition: service_healthy}", "    kafka: {condition: service_healthy}\n    zookeeper: {condition: service_started}")}, "zookeeper"},
		{"port collision", []File{main, broken(t, kafka, "127.0.0.1:29092:29092", "127.0.0.1:9090:29092")}, "both publish host port 9090/tcp"},
		{"relay port not its HTTP address", []File{broken(t, main, "127.0.0.1:8082:8080", "127.0.0.1:8082:8081"), kafka}, "publishes container port 8081, but the relay listens on 8080"},
		{"image without tag", []File{broken(t, main, "image: prom/prometheus:v3.5.0", "image: prom/prometheus"), kafka}, "without a tag"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantProblem(t, c.name, CheckCompose(c.files, relay), c.want)
		})
	}
}

func TestPromtool(t *testing.T) {
	files := readFiles(t, composeSets[0]...)
	project, err := LoadCompose(files)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Promtool(project, nil) {
		t.Error(p)
	}
	for _, f := range readFiles(t, "deploy/prometheus/alerts.yml") {
		for _, p := range PromtoolRules(f) {
			t.Error(p)
		}
	}
}

func TestPromtoolCatchesMistakes(t *testing.T) {
	files := readFiles(t, composeSets[0]...)
	project, err := LoadCompose(files)
	if err != nil {
		t.Fatal(err)
	}
	config := readFiles(t, "deploy/prometheus/prometheus.yml")[0]
	rules := readFiles(t, "deploy/prometheus/alerts.yml")[0]
	cases := []struct {
		name  string
		files map[string][]byte
		want  string
	}{
		{"misspelt config key", map[string][]byte{config.Path: broken(t, config, "scrape_interval:", "scrape_intervall:").Content}, "scrape_intervall"},
		{"unmounted rule file", map[string][]byte{config.Path: broken(t, config, "/etc/prometheus/alerts.yml", "/etc/prometheus/rules.yml").Content}, "rule file /etc/prometheus/rules.yml is not mounted"},
		{"bad rule in mounted file", map[string][]byte{rules.Path: broken(t, rules, "expr: up{job=\"relay\"} == 0", "expr: up{job=\"relay\" == 0").Content}, "promtool check config"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantProblem(t, c.name, Promtool(project, c.files), c.want)
		})
	}
	wantProblem(t, "rule file", PromtoolRules(broken(t, rules, "for: 2m", "for: 2 minutes")), "promtool check rules")
}
