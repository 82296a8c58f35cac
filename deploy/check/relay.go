// Package check holds the checks of the files under deploy/ and of the
// Dockerfile, each made with the library or tool that will read the file
// for real: compose-go (docker compose), the Kubernetes API types and
// strict decoder (kubectl, the API server), prometheus-operator's types,
// promtool, grafana-foundation-sdk, systemd-analyze and BuildKit's
// Dockerfile frontend (docker build --check). Its tests run them on the
// repository's files and on broken copies of them.
//
// It is a module of its own so that the relay's go.mod does not carry the
// Kubernetes, Grafana and BuildKit dependency trees.
package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-dev/relay/metrics"
)

// Root is the repository's top directory.
func Root() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Relay is what the relay itself says it reads and serves: its variables
// and HTTP paths from `relay --help`, its metrics from package metrics.
type Relay struct {
	// Binary is the relay built from this repository.
	Binary string
	// Variables are the RELAY_ variables it reads; TableSettings the
	// <SETTING> part of RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>.
	Variables, TableSettings []string
	// HTTPAddrDefault is RELAY_HTTP_ADDR's default, e.g. ":8080";
	// HTTPPaths the paths its help says that server serves.
	HTTPAddrDefault string
	HTTPPaths       []string
	// Metrics maps every metric name the relay exports (histograms with
	// their _bucket, _sum and _count series) to its label names.
	Metrics map[string][]string
}

var (
	relayOnce sync.Once
	relayInfo *Relay
	relayErr  error
)

// LoadRelay builds the relay once (go build ./cmd/relay in the
// repository, so the root module's own go.mod and go.sum decide what it
// is) and reads its help. Cleanup removes the build.
func LoadRelay() (*Relay, error) {
	relayOnce.Do(func() { relayInfo, relayErr = loadRelay() })
	return relayInfo, relayErr
}

// relayDir holds the relay LoadRelay built.
var relayDir string

// Cleanup removes what LoadRelay built.
func Cleanup() {
	if relayDir != "" {
		os.RemoveAll(relayDir)
	}
}

func loadRelay() (*Relay, error) {
	dir, err := os.MkdirTemp("", "relay-deploy-check-")
	if err != nil {
		return nil, err
	}
	relayDir = dir
	bin := filepath.Join(dir, "relay")
	build := exec.Command("go", "build", "-o", bin, "./cmd/relay")
	build.Dir = Root()
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/relay: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "--help").Output()
	if err != nil {
		return nil, fmt.Errorf("relay --help: %v", err)
	}
	r, err := parseHelp(help)
	if err != nil {
		return nil, err
	}
	r.Binary = bin
	r.Metrics = MetricLabels()
	return r, nil
}

var (
	helpVarRE      = regexp.MustCompile(`^\s+(RELAY_[A-Z0-9_]+)\s+(\S+)\s+(.*)$`)
	helpSettingsRE = regexp.MustCompile(`SETTING is one of ([A-Z0-9_, ]+)\.`)
	helpPathRE     = regexp.MustCompile(`(/[a-z]+)\b`)
)

// parseHelp reads the variables' table and the per-table settings from
// the output of relay --help.
func parseHelp(help []byte) (*Relay, error) {
	r := &Relay{}
	for _, line := range strings.Split(string(help), "\n") {
		m := helpVarRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		r.Variables = append(r.Variables, m[1])
		if m[1] == "RELAY_HTTP_ADDR" {
			r.HTTPAddrDefault = m[2]
			for _, p := range helpPathRE.FindAllStringSubmatch(m[3], -1) {
				r.HTTPPaths = append(r.HTTPPaths, p[1])
			}
		}
	}
	if m := helpSettingsRE.FindSubmatch(help); m != nil {
		for _, s := range strings.Split(string(m[1]), ",") {
			r.TableSettings = append(r.TableSettings, strings.TrimSpace(s))
		}
	}
	if len(r.Variables) < 10 || !slices.Contains(r.Variables, "RELAY_DATABASE_URL") ||
		len(r.TableSettings) == 0 || r.HTTPAddrDefault == "" || len(r.HTTPPaths) == 0 {
		return nil, fmt.Errorf("relay --help: could not read its variables (%d), per-table settings (%d), RELAY_HTTP_ADDR's default (%q) and paths (%v); has its format changed?\n%s",
			len(r.Variables), len(r.TableSettings), r.HTTPAddrDefault, r.HTTPPaths, help)
	}
	return r, nil
}

// KnownVariable reports whether the relay reads name: one of its
// variables, or a per-table one of any table.
func (r *Relay) KnownVariable(name string) bool {
	if slices.Contains(r.Variables, name) {
		return true
	}
	rest, ok := strings.CutPrefix(name, "RELAY_TABLE_")
	if !ok {
		return false
	}
	for _, s := range r.TableSettings {
		if key, ok := strings.CutSuffix(rest, "_"+s); ok && key != "" {
			return true
		}
	}
	return false
}

// HTTPPort is the port of RELAY_HTTP_ADDR's default.
func (r *Relay) HTTPPort() string {
	_, port, _ := strings.Cut(r.HTTPAddrDefault, ":")
	return port
}

// collectorsOf is a Registerer that keeps what is registered with it.
type collectorsOf struct{ cs []prometheus.Collector }

func (c *collectorsOf) Register(col prometheus.Collector) error {
	c.cs = append(c.cs, col)
	return nil
}
func (c *collectorsOf) MustRegister(cols ...prometheus.Collector) { c.cs = append(c.cs, cols...) }
func (c *collectorsOf) Unregister(prometheus.Collector) bool      { return true }

var descRE = regexp.MustCompile(`fqName: "([^"]+)".*constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}`)

// MetricLabels returns every metric that package metrics registers (the
// relay's, and the Go and process collectors'), with its label names.
func MetricLabels() map[string][]string {
	var reg collectorsOf
	metrics.New(&reg, "rabbitmq")
	out := map[string][]string{}
	for _, c := range reg.cs {
		ch := make(chan *prometheus.Desc, 64)
		go func() { c.Describe(ch); close(ch) }()
		_, histogram := c.(prometheus.Histogram)
		if _, ok := c.(*prometheus.HistogramVec); ok {
			histogram = true
		}
		for d := range ch {
			m := descRE.FindStringSubmatch(d.String())
			if m == nil {
				continue
			}
			var labels []string
			for _, lp := range strings.Split(m[2], ",") {
				if name, _, ok := strings.Cut(lp, "="); ok {
					labels = append(labels, name)
				}
			}
			for _, l := range strings.Split(m[3], ",") {
				if l = strings.TrimSuffix(strings.TrimPrefix(l, "c("), ")"); l != "" {
					labels = append(labels, l)
				}
			}
			sort.Strings(labels)
			out[m[1]] = labels
			if histogram {
				out[m[1]+"_bucket"] = append(slices.Clone(labels), "le")
				out[m[1]+"_sum"] = labels
				out[m[1]+"_count"] = labels
			}
		}
	}
	return out
}

// run runs a command and returns its combined output.
func run(dir, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// tool finds a command the checks need, or says which Debian package has it.
func tool(name, pkg string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is missing: install the Debian package %s (make deps installs it: apt-get install -y %s)", name, pkg, pkg)
	}
	return p, nil
}
