package integration

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var httpAddrRE = regexp.MustCompile(`msg="http listening" addr=(\S+)`)

// httpAddr is where the relay's HTTP server listens, from its log.
func (p *relayProc) httpAddr() string {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := httpAddrRE.FindStringSubmatch(p.log.String()); m != nil {
			return m[1]
		}
		if time.Now().After(deadline) || p.exited() {
			p.t.Fatalf("the relay does not say where its HTTP server listens; log:\n%s", p.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches path from the relay's HTTP server.
func (p *relayProc) get(path string) (int, string, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + p.httpAddr() + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ready returns /readyz's status code and reason.
func (p *relayProc) ready() (int, string) {
	p.t.Helper()
	code, body, err := p.get("/readyz")
	if err != nil {
		p.t.Fatalf("GET /readyz: %v", err)
	}
	return code, strings.TrimSpace(body)
}

// metric returns the value of the sample of /metrics whose name and
// labels start with series (e.g. `relay_leader` or
// `relay_publish_errors_total{reason="too_large"`), summed over matches;
// ok is false when there is none.
func (p *relayProc) metric(series string) (v float64, ok bool) {
	p.t.Helper()
	code, body, err := p.get("/metrics")
	if err != nil || code != http.StatusOK {
		p.t.Fatalf("GET /metrics: %d %v", code, err)
	}
	name, labels, _ := strings.Cut(series, "{")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		sample, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		sname, slabels, _ := strings.Cut(sample, "{")
		if sname != name {
			continue
		}
		if labels != "" {
			match := true
			for _, l := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
				if !strings.Contains(slabels, l) {
					match = false
				}
			}
			if !match {
				continue
			}
		}
		f, err := strconv.ParseFloat(value, 64)
		if err != nil {
			p.t.Fatalf("metric %s: %q: %v", sample, value, err)
		}
		v += f
		ok = true
	}
	return v, ok
}

// waitReady waits until /readyz answers code with a reason containing want.
func (p *relayProc) waitReady(t *testing.T, code int, want string, timeout time.Duration) string {
	t.Helper()
	var got string
	eventually(t, timeout, func() error {
		if p.exited() {
			t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
		}
		c, reason := p.ready()
		got = reason
		if c != code || !strings.Contains(reason, want) {
			return fmt.Errorf("/readyz %d %q, waiting for %d %q", c, reason, code, want)
		}
		return nil
	})
	return got
}
