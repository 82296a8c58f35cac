package relay

import (
	"fmt"
	"strings"
)

// Template is a routing template such as "{aggregate_type}.{event_type}":
// literal text with {name} placeholders resolved by Event.Field.
type Template struct {
	src   string
	parts []templatePart
}

type templatePart struct {
	literal string
	field   string // set for a placeholder
}

// ParseTemplate compiles a template. Placeholder names are letters, digits,
// '_', '-' and '.'; braces do not nest.
func ParseTemplate(s string) (*Template, error) {
	t := &Template{src: s}
	rest := s
	for rest != "" {
		open := strings.IndexAny(rest, "{}")
		if open < 0 {
			t.parts = append(t.parts, templatePart{literal: rest})
			break
		}
		if rest[open] == '}' {
			return nil, fmt.Errorf("template %q: '}' without '{'", s)
		}
		if open > 0 {
			t.parts = append(t.parts, templatePart{literal: rest[:open]})
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			return nil, fmt.Errorf("template %q: unclosed '{'", s)
		}
		name := rest[open+1 : open+end]
		if name == "" {
			return nil, fmt.Errorf("template %q: empty placeholder", s)
		}
		for _, c := range name {
			if !(c == '_' || c == '-' || c == '.' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
				return nil, fmt.Errorf("template %q: invalid character %q in placeholder {%s}", s, c, name)
			}
		}
		t.parts = append(t.parts, templatePart{field: name})
		rest = rest[open+end+1:]
	}
	return t, nil
}

// String returns the template's source text.
func (t *Template) String() string { return t.src }

// Fields lists the placeholder names in order of appearance.
func (t *Template) Fields() []string {
	var names []string
	for _, p := range t.parts {
		if p.field != "" {
			names = append(names, p.field)
		}
	}
	return names
}

// Execute renders the template for ev. A placeholder naming neither an
// outbox field nor a non-null column of the row is an error: routing an
// event to a guessed destination would be a silent misdelivery.
func (t *Template) Execute(ev *Event) (string, error) {
	if len(t.parts) == 1 && t.parts[0].field == "" {
		return t.parts[0].literal, nil
	}
	var b strings.Builder
	for _, p := range t.parts {
		if p.field == "" {
			b.WriteString(p.literal)
			continue
		}
		v, ok := ev.Field(p.field)
		if !ok {
			return "", fmt.Errorf("template %q: row has no column %q or it is null", t.src, p.field)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}
