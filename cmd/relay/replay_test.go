package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

// TestReplayRefusesWrongRequestsWithExitTwo: a request wrong on its face
// or against the configuration exits 2, naming the flag or variable,
// before connecting anywhere.
func TestReplayRefusesWrongRequestsWithExitTwo(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // in stderr
	}{
		{name: "unknown flag", args: []string{"--frobnicate"}, want: []string{"frobnicate"}},
		{name: "malformed time", args: []string{"--since", "yesterday"}, want: []string{"--since", `"yesterday"`}},
		{name: "time without a zone", args: []string{"--until", "2026-12-01T08:00:00"}, want: []string{"--until"}},
		{name: "negative duration", args: []string{"--since", "-1h"}, want: []string{"--since"}},
		{name: "since after until", args: []string{"--since", "2026-12-02", "--until", "2026-12-01"}, want: []string{"--since", "--until"}},
		{name: "since at until", args: []string{"--since", "2026-12-01T00:00:00Z", "--until", "2026-12-01"}, want: []string{"is not before"}},
		{name: "an argument", args: []string{"now"}, want: []string{`"now"`}},
		{name: "resume with a selection", args: []string{"--resume", "r1", "--since", "1h", "--table", "public.outbox"}, want: []string{"--since", "--table"}},
		{name: "resume without an id", args: []string{"--resume", ""}, want: []string{"--resume"}},
		{name: "empty destination", args: []string{"--destination", ""}, want: []string{"--destination"}},
		{name: "empty aggregate id", args: []string{"--aggregate-id="}, want: []string{"--aggregate-id"}},
		{name: "table not relayed", args: []string{"--table", "sales.outbox"}, want: []string{"--table", "RELAY_TABLES"}},
		{name: "malformed table", args: []string{"--table", "a.b.c"}, want: []string{"--table"}},
		{name: "dead letter without a destination", args: []string{"--dead-letter"}, want: []string{"RELAY_DEAD_LETTER"}},
		{name: "resumed with dead letters without a destination", args: []string{"--resume", "r1", "--dead-letter"}, want: []string{"RELAY_DEAD_LETTER"}},
		{name: "kafka destination not a topic", args: []string{"--destination", "orders replayed"},
			env: envWith("RELAY_SINK", "kafka", "RELAY_KAFKA_BROKERS", "127.0.0.1:9092"), want: []string{"--destination"}},
		{name: "rabbitmq destination queue without a name", args: []string{"--destination", "/"}, want: []string{"--destination"}},
		{name: "time range without created_at", args: []string{"--since", "24h"}, env: envWith("RELAY_COLUMN_PRESET", "debezium"),
			want: []string{"--since", "RELAY_COLUMN_CREATED_AT"}},
		{name: "invalid configuration", args: []string{"--since", "24h"}, env: envWith("RELAY_SLOT", "Bad-Slot"), want: []string{"RELAY_SLOT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := tt.env
			if env == nil {
				env = minimalEnv()
			}
			code, stdout, stderr := runQuickly(t, append([]string{"replay"}, tt.args...), env)
			if code != 2 {
				t.Errorf("exit %d, want 2; stderr:\n%s", code, stderr)
			}
			for _, s := range tt.want {
				if !strings.Contains(stderr, s) {
					t.Errorf("stderr lacks %q:\n%s", s, stderr)
				}
			}
			if stdout != "" {
				t.Errorf("stdout = %q, want nothing", stdout)
			}
		})
	}
}

func TestReplayHelp(t *testing.T) {
	code, stdout, stderr := runQuickly(t, []string{"replay", "--help"}, nil)
	if code != 0 || stderr != "" {
		t.Errorf("relay replay --help: exit %d, stderr %q", code, stderr)
	}
	var b bytes.Buffer
	printHelp(&b)
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	(&replayFlags{}).define(fs)
	fs.VisitAll(func(f *flag.Flag) {
		for what, out := range map[string]string{"relay replay --help": stdout, "relay --help": b.String()} {
			if line := lineWith(out, "  --"+f.Name+" "); !strings.HasSuffix(line, strings.ReplaceAll(f.Usage, "`", "")) {
				t.Errorf("%s does not show --%s with its usage: %q", what, f.Name, line)
			}
		}
	})
	if !strings.Contains(b.String(), "relay replay ") {
		t.Error("relay --help does not list relay replay")
	}
}

func TestParseReplayTime(t *testing.T) {
	now := time.Date(2026, 12, 10, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in      string
		want    time.Time
		wantErr bool
	}{
		{in: "2026-12-01T08:30:00Z", want: time.Date(2026, 12, 1, 8, 30, 0, 0, time.UTC)},
		{in: "2026-12-01T08:30:00.123456+02:00", want: time.Date(2026, 12, 1, 6, 30, 0, 123456000, time.UTC)},
		{in: "2026-12-01", want: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)},
		{in: "90m", want: now.Add(-90 * time.Minute)},
		{in: "24h", want: now.Add(-24 * time.Hour)},
		{in: "7d", want: now.Add(-7 * 24 * time.Hour)},
		{in: "0s", want: now},
		{in: "", wantErr: true},
		{in: "-1h", wantErr: true},
		{in: "1.5d", wantErr: true},
		{in: "d", wantErr: true},
		{in: "yesterday", wantErr: true},
		{in: "2026-12-01 08:30:00", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseReplayTime(tt.in, now)
		if (err != nil) != tt.wantErr || err == nil && !got.Equal(tt.want) {
			t.Errorf("parseReplayTime(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNewReplayIDsDiffer(t *testing.T) {
	now := time.Date(2026, 12, 10, 12, 0, 0, 0, time.UTC)
	a, b := newReplayID(now), newReplayID(now)
	if a == b || !strings.HasPrefix(a, "20261210T120000-") {
		t.Errorf("ids %q and %q: want distinct ids starting with the time", a, b)
	}
}
