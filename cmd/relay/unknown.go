package main

import (
	"log/slog"
	"slices"
	"sort"
	"strings"
)

// unknownVariable is a RELAY_ variable in the environment that the relay
// does not read: most often a typo, which would otherwise leave a setting
// silently at its default.
type unknownVariable struct {
	Name string
	// Suggestion is the known variable closest to Name, when it is close
	// enough to be what was meant; else empty.
	Suggestion string
}

// String is the warning printed with a configuration error, where a typo
// is the likeliest cause of a "required, not set".
func (u unknownVariable) String() string {
	if u.Suggestion == "" {
		return u.Name + ": unknown variable, ignored"
	}
	return u.Name + ": unknown variable, ignored; did you mean " + u.Suggestion + "?"
}

// unknownVariables returns, sorted by name, the RELAY_ variables of environ
// that the relay does not read. Only names are looked at: values may be
// secrets.
func unknownVariables(environ map[string]string) []unknownVariable {
	known := make([]string, 0, len(variables()))
	for _, v := range variables() {
		known = append(known, v.Name)
	}
	var unknown []unknownVariable
	for name := range environ {
		// RELAY_TEST_ variables configure the test harness, which passes
		// its environment on to the relays it starts. Per-table variables
		// are loadConfig's to judge, as only RELAY_TABLES tells a valid
		// one: it refuses each it cannot place, with the closest valid name.
		if !strings.HasPrefix(name, "RELAY_") || strings.HasPrefix(name, "RELAY_TEST_") || strings.HasPrefix(name, tableVarPrefix) || slices.Contains(known, name) {
			continue
		}
		unknown = append(unknown, unknownVariable{Name: name, Suggestion: closest(name, known)})
	}
	sort.Slice(unknown, func(i, j int) bool { return unknown[i].Name < unknown[j].Name })
	return unknown
}

// warnUnknownVariables logs one warning per unknown RELAY_ variable, with
// the known one it probably meant.
func warnUnknownVariables(log *slog.Logger, environ map[string]string) {
	for _, u := range unknownVariables(environ) {
		attrs := []any{"variable", u.Name}
		if u.Suggestion != "" {
			attrs = append(attrs, "did_you_mean", u.Suggestion)
		}
		log.Warn("unknown variable, ignored", attrs...)
	}
}

// closest returns the candidate nearest to name by edit distance when it is
// within what a typo plausibly changes (two edits, or one in five
// characters for long names); ties go to the first candidate.
func closest(name string, candidates []string) string {
	best, bestDist := "", max(2, len(name)/5)+1
	for _, c := range candidates {
		if d := editDistance(name, c); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and transpositions of adjacent characters each
// count one, as a swapped pair is the commonest typo.
func editDistance(a, b string) int {
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
