package main

import (
	"bytes"
	"log/slog"
	"reflect"
	"strings"
	"testing"
)

func TestEditDistance(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int
	}{
		{"", "", 0},
		{"abc", "", 3},
		{"", "abc", 3},
		{"RELAY_SLOT", "RELAY_SLOT", 0},
		{"RELAY_SLOTT", "RELAY_SLOT", 1}, // insertion
		{"RELAY_SLT", "RELAY_SLOT", 1},   // deletion
		{"RELAY_SLOP", "RELAY_SLOT", 1},  // substitution
		{"RELAY_SOLT", "RELAY_SLOT", 1},  // adjacent transposition
		{"RELAY_AMQP_ULR", "RELAY_AMQP_URL", 1},
		{"kitten", "sitting", 3},
		{"ca", "abc", 3}, // optimal string alignment, not full Damerau (2)
	}
	for _, tt := range tests {
		if got := editDistance(tt.a, tt.b); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
		if got := editDistance(tt.b, tt.a); got != tt.want {
			t.Errorf("editDistance(%q, %q) = %d, want %d (symmetry)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestUnknownVariablesSuggestTheClosestKnownOne(t *testing.T) {
	t.Parallel()
	environ := map[string]string{
		"RELAY_DATABASE_URL":    "postgres://u:secret@h/db",
		"RELAY_DATABSE_URL":     "postgres://u:secret@h/db", // transposed
		"RELAY_AMQP_ROUTINGKEY": "x",                        // missing _
		"RELAY_SLOTS":           "a",                        // one too many
		"RELAY_KAFKA_BROKER":    "k:9092",                   // singular
		"RELAY_SIKN":            "kafka",
		"RELAY_COMPLETELY_NEW":  "1", // nothing close
		"RELAY_TEST_AMQP_URL":   "amqp://",
		"PATH":                  "/bin",
		"relay_slot":            "lower case is not ours",
	}
	want := []unknownVariable{
		{Name: "RELAY_AMQP_ROUTINGKEY", Suggestion: "RELAY_AMQP_ROUTING_KEY"},
		{Name: "RELAY_COMPLETELY_NEW"},
		{Name: "RELAY_DATABSE_URL", Suggestion: "RELAY_DATABASE_URL"},
		{Name: "RELAY_KAFKA_BROKER", Suggestion: "RELAY_KAFKA_BROKERS"},
		{Name: "RELAY_SIKN", Suggestion: "RELAY_SINK"},
		{Name: "RELAY_SLOTS", Suggestion: "RELAY_SLOT"},
	}
	if got := unknownVariables(environ); !reflect.DeepEqual(got, want) {
		t.Errorf("unknownVariables:\n got %+v\nwant %+v", got, want)
	}
	if got := unknownVariables(map[string]string{"RELAY_SLOT": "x", "HOME": "/"}); len(got) != 0 {
		t.Errorf("known variables reported as unknown: %+v", got)
	}
}

// TestEveryVariableIsKnown: no variable of the configuration is reported,
// whatever is added to it.
func TestEveryVariableIsKnown(t *testing.T) {
	t.Parallel()
	environ := map[string]string{}
	for _, v := range variables() {
		environ[v.Name] = "x"
	}
	if got := unknownVariables(environ); len(got) != 0 {
		t.Errorf("configuration variables reported as unknown: %+v", got)
	}
}

// TestWarnUnknownVariablesLogsNamesNotValues: the startup warning names
// the variable and the suggestion, and never the value, which may be a
// secret.
func TestWarnUnknownVariablesLogsNamesNotValues(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	warnUnknownVariables(log, map[string]string{
		"RELAY_SLOT":          "outbox_relay",
		"RELAY_AMQP_ULR":      "amqp://u:secret-password@h/",
		"RELAY_BRAND_NEW_ONE": "secret-token",
	})
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want two warnings, got:\n%s", buf.String())
	}
	for i, want := range []string{
		"level=WARN msg=\"unknown variable, ignored\" variable=RELAY_AMQP_ULR did_you_mean=RELAY_AMQP_URL",
		"level=WARN msg=\"unknown variable, ignored\" variable=RELAY_BRAND_NEW_ONE",
	} {
		if _, rest, _ := strings.Cut(lines[i], " "); rest != want {
			t.Errorf("warning %d:\n got %s\nwant time=… %s", i, lines[i], want)
		}
	}
	if strings.Contains(buf.String(), "secret") {
		t.Errorf("a value reached the log:\n%s", buf.String())
	}
}

// TestInvalidConfigurationNamesTheTypo: when a typo leaves a required
// variable unset, the error output says which variable was meant.
func TestInvalidConfigurationNamesTheTypo(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	code := run(nil, map[string]string{
		"RELAY_DATABSE_URL": "postgres://u:secret@h/db",
		"RELAY_AMQP_URL":    "amqp://h/",
	}, &bytes.Buffer{}, &stderr)
	if code != 2 {
		t.Fatalf("exit code %d, want 2; stderr:\n%s", code, stderr.String())
	}
	want := "  RELAY_DATABSE_URL: unknown variable, ignored; did you mean RELAY_DATABASE_URL?\n"
	if !strings.Contains(stderr.String(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
	}
	if strings.Contains(stderr.String(), "secret") {
		t.Errorf("stderr shows a value:\n%s", stderr.String())
	}
}
