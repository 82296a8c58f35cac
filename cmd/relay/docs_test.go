package main

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"unicode"
)

// The README is the five-minute introduction; the reference is under docs/.
// These tests hold both to the code (variables, defaults, per-table
// settings), keep every relative link between them working, and keep the
// README short.

// configurationPage holds the full variable reference.
const configurationPage = "docs/configuration.md"

// readmeMaxLines is how long the README may grow: what does not fit
// belongs on a page under docs/.
const readmeMaxLines = 250

// docPages reads README.md and every docs/*.md, keyed by their path in the
// repository.
func docPages(t *testing.T) map[string]string {
	t.Helper()
	pages := map[string]string{"README.md": readRepoFile(t, "README.md")}
	names, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		rel := "docs/" + filepath.Base(name)
		pages[rel] = readRepoFile(t, rel)
	}
	if _, ok := pages[configurationPage]; !ok {
		t.Fatalf("%s is missing", configurationPage)
	}
	return pages
}

// variableRow is a row of a variable table: the variable and its
// documented default.
var variableRow = regexp.MustCompile("(?m)^\\| `(RELAY_[A-Z0-9_]+)` \\| *([^|]*?) *\\|")

// TestConfigurationPageDocumentsEveryVariable keeps the configuration
// page's table, the config struct and `relay --help` (generated from the
// struct) in agreement: every variable has a row with the code's default,
// and no row, on any page, names a variable the relay does not read or
// gives another default.
func TestConfigurationPageDocumentsEveryVariable(t *testing.T) {
	pages := docPages(t)
	var names []string
	defaults := map[string]string{}
	for _, v := range variables() {
		names = append(names, v.Name)
		defaults[v.Name] = v.Default
	}
	for _, page := range sortedKeys(pages) {
		rows := map[string]string{} // variable → documented default
		for _, m := range variableRow.FindAllStringSubmatch(pages[page], -1) {
			if strings.HasPrefix(m[1], "RELAY_TEST_") {
				continue
			}
			rows[m[1]] = strings.TrimSpace(m[2])
		}
		if page == configurationPage {
			for _, name := range names {
				if _, ok := rows[name]; !ok {
					t.Errorf("%s is not in %s's configuration table", name, page)
				}
			}
		}
		for name, doc := range rows {
			def, ok := defaults[name]
			if !ok {
				t.Errorf("%s documents %s, which the relay does not read", page, name)
				continue
			}
			if def != "" && doc != "`"+def+"`" {
				t.Errorf("%s: %s says default %s, the code %q", name, page, doc, def)
			}
		}
	}
}

// TestConfigurationPageDocumentsPerTableSettings: the configuration table
// has a row for the per-table variables that names every per-table setting.
func TestConfigurationPageDocumentsPerTableSettings(t *testing.T) {
	page := readRepoFile(t, configurationPage)
	row := ""
	for line := range strings.Lines(page) {
		if strings.HasPrefix(line, "| `RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>` |") {
			row = line
		}
	}
	if row == "" {
		t.Fatalf("%s's configuration table has no row for RELAY_TABLE_<SCHEMA>_<TABLE>_<SETTING>", configurationPage)
	}
	for _, s := range perTableSettings() {
		if !strings.Contains(row, "`"+s+"`") {
			t.Errorf("%s's per-table row does not name %s", configurationPage, s)
		}
	}
}

// TestReadmeStaysShort: the README keeps the two commands, the outbox
// table, a minimal configuration and the guarantees, links every page
// under docs/, and does not grow back into the reference.
func TestReadmeStaysShort(t *testing.T) {
	pages := docPages(t)
	readme := pages["README.md"]
	if n := strings.Count(readme, "\n"); n > readmeMaxLines {
		t.Errorf("README.md has %d lines, more than %d: move the detail to a page under docs/ and link it", n, readmeMaxLines)
	}
	headings := headingsOf(readme)
	for _, h := range []string{"Try it: the two commands", "The outbox table", "A minimal configuration", "The guarantees"} {
		if !slices.Contains(headings, h) {
			t.Errorf("README.md has no section %q", h)
		}
	}
	for _, s := range []string{"make demo", "make test", "CREATE TABLE public.outbox"} {
		if !strings.Contains(readme, s) {
			t.Errorf("README.md does not show %q", s)
		}
	}
	linked := map[string]bool{}
	for _, l := range linksOf(readme) {
		if target, _, _ := strings.Cut(l, "#"); !strings.Contains(target, ":") {
			linked[path.Clean(target)] = true
		}
	}
	for page := range pages {
		if page != "README.md" && !linked[page] {
			t.Errorf("README.md does not link %s", page)
		}
	}
}

// TestDocLinksResolve: every relative link in README.md and docs/*.md
// names a file or directory of the repository, and, where it has an
// #anchor, a heading of that Markdown file.
func TestDocLinksResolve(t *testing.T) {
	pages := docPages(t)
	anchors := map[string][]string{} // Markdown file → its heading anchors
	anchorsOf := func(file string) []string {
		if a, ok := anchors[file]; ok {
			return a
		}
		text, ok := pages[file]
		if !ok {
			text = readRepoFile(t, file)
		}
		anchors[file] = headingAnchors(text)
		return anchors[file]
	}
	total := 0
	for _, page := range sortedKeys(pages) {
		links := linksOf(pages[page])
		for _, link := range links {
			if problem := checkLink(page, link, anchorsOf); problem != "" {
				t.Errorf("%s: link %s: %s", page, link, problem)
			}
			total++
		}
		if page == "README.md" && len(links) < 10 {
			t.Errorf("README.md: found only %d links; is the scanner broken?", len(links))
		}
	}
	t.Logf("%d links in %d pages", total, len(pages))
}

// checkLink says what is wrong with link, found in page (a path in the
// repository), or "" when it resolves. An absolute URL is not checked.
func checkLink(page, link string, anchorsOf func(file string) []string) string {
	if regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`).MatchString(link) {
		return ""
	}
	target, anchor, hasAnchor := strings.Cut(link, "#")
	file := page
	if target != "" {
		if strings.HasPrefix(target, "/") {
			return "absolute path; use a path relative to " + page
		}
		file = path.Join(path.Dir(page), target)
		if file == ".." || strings.HasPrefix(file, "../") {
			return "points outside the repository"
		}
		if _, err := os.Stat(filepath.Join("../..", filepath.FromSlash(file))); err != nil {
			return fmt.Sprintf("%s does not exist", file)
		}
	}
	if !hasAnchor {
		return ""
	}
	if !strings.HasSuffix(file, ".md") {
		if regexp.MustCompile(`^L[0-9]+(-L[0-9]+)?$`).MatchString(anchor) {
			return ""
		}
		return fmt.Sprintf("anchor #%s on %s, which is not Markdown", anchor, file)
	}
	if !slices.Contains(anchorsOf(file), anchor) {
		return fmt.Sprintf("%s has no heading with anchor #%s", file, anchor)
	}
	return ""
}

var (
	fenceRE   = regexp.MustCompile("^ {0,3}(```|~~~)")
	headingRE = regexp.MustCompile(`^ {0,3}#{1,6}[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$`)
	// An inline link or image, [text](target) or [text](<target> "title").
	inlineLinkRE = regexp.MustCompile(`\]\(\s*<?([^()\s<>]+)>?(?:\s+"[^"]*")?\s*\)`)
	// A reference definition, [label]: target.
	refLinkRE = regexp.MustCompile(`(?m)^ {0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
)

// prose returns text without its fenced code blocks and with every code
// span replaced by "code", so that neither a `# comment` in a shell block
// nor a `[x](y)` in code passes for a heading or a link.
func prose(text string) string {
	var b strings.Builder
	fenced := ""
	for line := range strings.Lines(text) {
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			switch {
			case fenced == "":
				fenced = m[1]
				continue
			case fenced == m[1]:
				fenced = ""
				continue
			}
		}
		if fenced == "" {
			b.WriteString(line)
		}
	}
	return stripCodeSpans(b.String())
}

// stripCodeSpans replaces each code span (a run of n backticks up to the
// next run of exactly n) by "code"; a run without its closing run is text.
func stripCodeSpans(s string) string {
	var b strings.Builder
	run := func(i int) int {
		j := i
		for j < len(s) && s[j] == '`' {
			j++
		}
		return j - i
	}
	for i := 0; i < len(s); {
		if s[i] != '`' {
			b.WriteByte(s[i])
			i++
			continue
		}
		n := run(i)
		end := -1
		for j := i + n; j < len(s); {
			if s[j] != '`' {
				j++
				continue
			}
			m := run(j)
			if m == n {
				end = j + m
				break
			}
			j += m
		}
		if end < 0 {
			b.WriteString(s[i : i+n])
			i += n
			continue
		}
		b.WriteString("code")
		i = end
	}
	return b.String()
}

// linksOf returns the targets of text's inline links, images and
// reference definitions.
func linksOf(text string) []string {
	p := prose(text)
	var links []string
	for _, m := range inlineLinkRE.FindAllStringSubmatch(p, -1) {
		links = append(links, m[1])
	}
	for _, m := range refLinkRE.FindAllStringSubmatch(p, -1) {
		links = append(links, m[1])
	}
	return links
}

// headingsOf returns the text of text's ATX headings, outside code blocks.
func headingsOf(text string) []string {
	var headings []string
	fenced := ""
	for line := range strings.Lines(text) {
		line = strings.TrimRight(line, "\r\n")
		if m := fenceRE.FindStringSubmatch(line); m != nil {
			switch {
			case fenced == "":
				fenced = m[1]
				continue
			case fenced == m[1]:
				fenced = ""
				continue
			}
		}
		if fenced != "" {
			continue
		}
		if m := headingRE.FindStringSubmatch(line); m != nil {
			headings = append(headings, m[1])
		}
	}
	return headings
}

// headingAnchors returns the anchors GitHub gives text's headings, a
// repeated one with -1, -2, … appended.
func headingAnchors(text string) []string {
	var anchors []string
	seen := map[string]int{}
	for _, h := range headingsOf(text) {
		a := githubAnchor(h)
		if n := seen[a]; n > 0 {
			seen[a]++
			a = fmt.Sprintf("%s-%d", a, n)
		} else {
			seen[a] = 1
		}
		anchors = append(anchors, a)
	}
	return anchors
}

// githubAnchor is the anchor GitHub gives a heading: its text lower-cased,
// without punctuation other than '-' and '_', spaces turned into '-'.
func githubAnchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(stripCodeSpansKeepText(heading)) {
		switch {
		case r == ' ':
			b.WriteByte('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) || unicode.IsMark(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// stripCodeSpansKeepText drops the backticks of a heading's code spans;
// their text is part of the anchor.
func stripCodeSpansKeepText(s string) string {
	return strings.ReplaceAll(s, "`", "")
}

// TestDocHeadingAnchors: the anchors of headings the docs link to, as GitHub
// renders them.
func TestDocHeadingAnchors(t *testing.T) {
	for heading, want := range map[string]string{
		"Commands and request/reply":                     "commands-and-requestreply",
		"Message formats (CloudEvents)":                  "message-formats-cloudevents",
		"What a consumer receives (RabbitMQ)":            "what-a-consumer-receives-rabbitmq",
		"Migrating from Debezium's outbox event router":  "migrating-from-debeziums-outbox-event-router",
		"Try it: the two commands":                       "try-it-the-two-commands",
		"Without a table: logical decoding messages":     "without-a-table-logical-decoding-messages",
		"`relay replay` and RELAY_CLEANUP":               "relay-replay-and-relay_cleanup",
		"Größe – über alles":                             "größe--über-alles",
		"Five minutes with docker compose":               "five-minutes-with-docker-compose",
		"Container image, Kubernetes, systemd and more.": "container-image-kubernetes-systemd-and-more",
	} {
		if got := githubAnchor(heading); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", heading, got, want)
		}
	}
	got := headingAnchors("# A\n\n```sh\n# not a heading\n```\n\n## A\n### A ##\n")
	if want := []string{"a", "a-1", "a-2"}; !slices.Equal(got, want) {
		t.Errorf("headingAnchors = %q, want %q", got, want)
	}
}

// TestCheckLinkFindsBrokenLinks: the link check can fail, and says why.
func TestCheckLinkFindsBrokenLinks(t *testing.T) {
	anchorsOf := func(file string) []string {
		return map[string][]string{
			"README.md":          {"relay", "the-outbox-table"},
			"docs/operations.md": {"operations", "replay-and-retention"},
		}[file]
	}
	for _, tt := range []struct{ page, link, want string }{
		{"README.md", "docs/operations.md#replay-and-retention", ""},
		{"README.md", "#the-outbox-table", ""},
		{"docs/operations.md", "../README.md#the-outbox-table", ""},
		{"docs/operations.md", "#replay-and-retention", ""},
		{"docs/operations.md", "../schema/outbox.sql", ""},
		{"docs/operations.md", "../deploy/kubernetes", ""},
		{"README.md", "https://example.com/x#y", ""},
		{"README.md", "#replay-and-retention", "README.md has no heading with anchor #replay-and-retention"},
		{"README.md", "docs/nope.md", "docs/nope.md does not exist"},
		{"docs/operations.md", "operations.md#scaling", "docs/operations.md has no heading with anchor #scaling"},
		{"docs/operations.md", "docs/operations.md", "docs/docs/operations.md does not exist"},
		{"docs/operations.md", "../../x", "points outside the repository"},
		{"README.md", "/README.md", "absolute path; use a path relative to README.md"},
		{"README.md", "schema/outbox.sql#id", "anchor #id on schema/outbox.sql, which is not Markdown"},
	} {
		if got := checkLink(tt.page, tt.link, anchorsOf); got != tt.want {
			t.Errorf("%s: %s: got %q, want %q", tt.page, tt.link, got, tt.want)
		}
	}
	links := linksOf("See [`x`](a.md#b) and\n[two\nlines](c.md), not `[d](e.md)` nor\n\n```md\n[f](g.md)\n```\n\n![img](h.png)\n\n[ref]: i.md\n")
	if want := []string{"a.md#b", "c.md", "h.png", "i.md"}; !slices.Equal(links, want) {
		t.Errorf("linksOf = %q, want %q", links, want)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
