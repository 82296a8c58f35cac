package kafka

import (
	"regexp"
	"strings"
	"testing"
)

// TestCheckTopicAgreesWithKafkasRule: the byte loop accepts exactly what
// Kafka's rule (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-', not "." or "..")
// accepts.
func TestCheckTopicAgreesWithKafkasRule(t *testing.T) {
	rule := regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)
	names := []string{"", ".", "..", "...", "outbox.event.order", "a", "A-Z_0.9", "with space", "ü", "a/b", "a\\x00", strings.Repeat("x", 249), strings.Repeat("x", 250), "topic!", "tab\t"}
	for c := 0; c < 256; c++ {
		names = append(names, "t"+string(rune(c)), string([]byte{byte(c)}))
	}
	for _, n := range names {
		want := rule.MatchString(n) && n != "." && n != ".."
		if got := checkTopic(n) == nil; got != want {
			t.Errorf("checkTopic(%q) accepts %v, Kafka's rule %v", n, got, want)
		}
	}
}
