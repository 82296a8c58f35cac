package relay_test

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
)

// templateGrammar is the template syntax ParseTemplate documents, as a
// reference: literal text without braces, and {name} placeholders whose
// names are ASCII letters, digits, '_', '-' and '.'.
var (
	templateGrammar = regexp.MustCompile(`^(?:[^{}]|\{[A-Za-z0-9_.\-]+\})*$`)
	placeholder     = regexp.MustCompile(`\{([A-Za-z0-9_.\-]+)\}`)
)

// FuzzParseTemplate checks ParseTemplate against the grammar, and that
// rendering each placeholder as itself gives back the source: nothing is
// lost, reordered or invented between the text and the parts.
func FuzzParseTemplate(f *testing.F) {
	for _, s := range []string{
		"", "orders", "{event_type}", "{aggregate_type}.{event_type}", "outbox.event.{aggregate_type}",
		"{table}/{aggregate_type}/{aggregate_id}/{event_type}/{id}", "{a}{b}", "{id}-{id}", "{Tenant_ID-2.x}",
		"événements/{id} #1", "{", "}", "{}", "{{a}}", "{a{b}}", "{a}}", "{a b}", "{é}", "x{a}y{",
		"{a}\xff{b}", "\xff", "{\xff}", "{a\x00}", "a\x00b", "{aggregate_type}.{event_type}.}",
		strings.Repeat("{a}", 100), "{" + strings.Repeat("x", 300) + "}",
	} {
		f.Add(s)
	}
	// The ASCII neighbours of the characters a name may have.
	for _, c := range ",/:@[^`{~" {
		f.Add("{a" + string(c) + "b}")
	}
	f.Fuzz(func(t *testing.T, src string) {
		tpl, err := relay.ParseTemplate(src)
		valid := templateGrammar.MatchString(src)
		if err != nil {
			if tpl != nil {
				t.Errorf("ParseTemplate(%q) returned a template with its error %v", src, err)
			}
			if valid {
				t.Fatalf("ParseTemplate(%q) rejects a template of the documented syntax: %v", src, err)
			}
			if q := fmt.Sprintf("%q", src); !strings.Contains(err.Error(), q) {
				t.Errorf("ParseTemplate(%q) error %q does not quote the template", src, err)
			}
			return
		}
		if !valid {
			t.Fatalf("ParseTemplate(%q) accepts a template outside the documented syntax: fields %q", src, tpl.Fields())
		}
		if got := tpl.String(); got != src {
			t.Errorf("String() = %q, want the source %q", got, src)
		}
		var want []string
		for _, m := range placeholder.FindAllStringSubmatch(src, -1) {
			want = append(want, m[1])
		}
		if got := tpl.Fields(); !slices.Equal(got, want) {
			t.Fatalf("ParseTemplate(%q).Fields() = %q, want %q", src, got, want)
		}

		// Every field, outbox field or column, renders as its own
		// placeholder, so the rendering is the source.
		ev := &relay.Event{ID: "{id}", Table: "{table}", AggregateType: "{aggregate_type}", AggregateID: "{aggregate_id}", EventType: "{event_type}"}
		for _, name := range want {
			if !slices.Contains(ev.Row.Names, name) {
				ev.Row.Names = append(ev.Row.Names, name)
				ev.Row.Values = append(ev.Row.Values, []byte("{"+name+"}"))
			}
		}
		got, err := tpl.Execute(ev)
		if err != nil || got != src {
			t.Fatalf("Execute(%q) with each field as its placeholder = %q, %v; want the source", src, got, err)
		}

		// A column the row lacks is an error naming it, never a guess;
		// a template of literal text needs no field at all.
		got, err = tpl.Execute(&relay.Event{})
		var column string
		for _, name := range want {
			if _, ok := (&relay.Event{}).Field(name); !ok {
				column = name
				break
			}
		}
		switch {
		case column == "" && err != nil:
			t.Fatalf("Execute(%q) of an empty event: %v, but every field is an outbox field", src, err)
		case column != "" && (err == nil || got != ""):
			t.Fatalf("Execute(%q) of an event without column %q = %q, %v; want an error", src, column, got, err)
		case column != "" && !strings.Contains(err.Error(), fmt.Sprintf("%q", column)):
			t.Errorf("Execute(%q) error %q does not name the missing column %q", src, err, column)
		case len(want) == 0 && got != src:
			t.Errorf("Execute(%q) of a literal template = %q", src, got)
		}
	})
}
