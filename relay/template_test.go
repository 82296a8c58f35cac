package relay_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
)

func TestParseTemplate(t *testing.T) {
	tests := []struct {
		src    string
		fields []string
	}{
		{"", nil},
		{"orders", nil},
		{"orders.created", nil},
		{"{event_type}", []string{"event_type"}},
		{"{aggregate_type}.{event_type}", []string{"aggregate_type", "event_type"}},
		{"outbox.{aggregate_type}.{event_type}.v1", []string{"aggregate_type", "event_type"}},
		{"{a}{b}", []string{"a", "b"}},
		{"{id}-{id}", []string{"id", "id"}},
		{"{Tenant_ID-2.x}", []string{"Tenant_ID-2.x"}},
		{"événements/{id} #1", []string{"id"}},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			tpl, err := relay.ParseTemplate(tt.src)
			if err != nil {
				t.Fatalf("ParseTemplate(%q) error: %v", tt.src, err)
			}
			if got := tpl.String(); got != tt.src {
				t.Errorf("String() = %q, want the source %q", got, tt.src)
			}
			if got := tpl.Fields(); !slices.Equal(got, tt.fields) {
				t.Errorf("Fields() = %q, want %q", got, tt.fields)
			}
		})
	}
}

func TestParseTemplateErrors(t *testing.T) {
	tests := []struct {
		src  string
		want string // in the error
	}{
		{"{", "unclosed '{'"},
		{"orders.{event_type", "unclosed '{'"},
		{"{a}.{b", "unclosed '{'"},
		{"}", "'}' without '{'"},
		{"orders}", "'}' without '{'"},
		{"{a}}", "'}' without '{'"},
		{"{a}.b}", "'}' without '{'"},
		{"{}", "empty placeholder"},
		{"orders.{}", "empty placeholder"},
		{"{{a}}", "invalid character '{'"},
		{"{a{b}}", "invalid character '{'"},
		{"{a b}", "invalid character ' '"},
		{"{a/b}", "invalid character '/'"},
		{"{é}", "invalid character 'é'"},
		{"{a\tb}", "invalid character '\\t'"},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			tpl, err := relay.ParseTemplate(tt.src)
			if err == nil {
				t.Fatalf("ParseTemplate(%q) = %q, want an error containing %q", tt.src, tpl.Fields(), tt.want)
			}
			if tpl != nil {
				t.Errorf("ParseTemplate(%q) returned a template with its error", tt.src)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseTemplate(%q) error %q, want it to contain %q", tt.src, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.src) {
				t.Errorf("ParseTemplate(%q) error %q does not quote the template", tt.src, err)
			}
		})
	}
}

func TestTemplateExecute(t *testing.T) {
	ev := &relay.Event{
		ID:            "0190a1b2",
		Table:         "public.outbox",
		AggregateType: "order",
		AggregateID:   "42",
		EventType:     "created",
		Row: relay.Row{
			Names:  []string{"id", "tenant", "region", "note", "empty"},
			Values: [][]byte{[]byte("row-id"), []byte("acme"), []byte("eu-west"), nil, {}},
		},
	}
	tests := []struct {
		name string
		src  string
		want string
	}{
		{"literal only", "orders.created", "orders.created"},
		{"empty template", "", ""},
		{"single field", "{event_type}", "created"},
		{"fields and literals", "{aggregate_type}.{event_type}", "order.created"},
		{"all outbox fields", "{table}/{aggregate_type}/{aggregate_id}/{event_type}/{id}", "public.outbox/order/42/created/0190a1b2"},
		{"row column", "{tenant}.{aggregate_type}", "acme.order"},
		{"adjacent fields", "{region}{aggregate_id}", "eu-west42"},
		{"repeated field", "{aggregate_id}-{aggregate_id}", "42-42"},
		{"outbox field shadows a column of the same name", "{id}", "0190a1b2"},
		{"empty non-null column", "x{empty}y", "xy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := relay.ParseTemplate(tt.src)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tt.src, err)
			}
			got, err := tpl.Execute(ev)
			if err != nil {
				t.Fatalf("Execute(%q) error: %v", tt.src, err)
			}
			if got != tt.want {
				t.Errorf("Execute(%q) = %q, want %q", tt.src, got, tt.want)
			}
		})
	}

	errTests := []struct {
		name   string
		src    string
		column string
	}{
		{"missing column", "{aggregate_type}.{nope}", "nope"},
		{"null column", "{note}", "note"},
		{"case matters", "{Tenant}", "Tenant"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := relay.ParseTemplate(tt.src)
			if err != nil {
				t.Fatalf("ParseTemplate(%q): %v", tt.src, err)
			}
			got, err := tpl.Execute(ev)
			if err == nil {
				t.Fatalf("Execute(%q) = %q, want an error: a misrouted event is a silent misdelivery", tt.src, got)
			}
			if got != "" {
				t.Errorf("Execute(%q) returned %q with its error, want \"\"", tt.src, got)
			}
			if !strings.Contains(err.Error(), `"`+tt.column+`"`) {
				t.Errorf("Execute(%q) error %q does not name column %q", tt.src, err, tt.column)
			}
		})
	}
}

func TestTemplateExecuteZeroEvent(t *testing.T) {
	// The outbox fields always resolve, to "" when unset; row columns do not.
	tpl, err := relay.ParseTemplate("{aggregate_type}.{event_type}")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := tpl.Execute(&relay.Event{}); err != nil || got != "." {
		t.Errorf("Execute(zero event) = %q, %v; want \".\", nil", got, err)
	}
}
