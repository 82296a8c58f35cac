package relay_test

import (
	"errors"
	"testing"

	"github.com/relay-dev/relay/relay"
)

func TestRowGet(t *testing.T) {
	row := relay.Row{
		Names:  []string{"tenant", "note", "empty", "extra"},
		Values: [][]byte{[]byte("acme"), nil, {}},
	}
	tests := []struct {
		name   string
		row    relay.Row
		column string
		want   string
		ok     bool
	}{
		{"value", row, "tenant", "acme", true},
		{"null", row, "note", "", false},
		{"empty is not null", row, "empty", "", true},
		{"missing", row, "nope", "", false},
		{"case matters", row, "Tenant", "", false},
		{"name without a value", row, "extra", "", false},
		{"zero row", relay.Row{}, "tenant", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.row.Get(tt.column)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Get(%q) = %q, %v; want %q, %v", tt.column, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestEventField(t *testing.T) {
	ev := &relay.Event{
		ID:            "0190a1b2",
		Table:         "public.outbox",
		AggregateType: "order",
		AggregateID:   "42",
		EventType:     "created",
		Row: relay.Row{
			Names:  []string{"id", "event_type", "tenant", "note"},
			Values: [][]byte{[]byte("row-id"), []byte("row-type"), []byte("acme"), nil},
		},
	}
	tests := []struct {
		name  string
		ev    *relay.Event
		field string
		want  string
		ok    bool
	}{
		{"id", ev, "id", "0190a1b2", true},
		{"table", ev, "table", "public.outbox", true},
		{"aggregate_type", ev, "aggregate_type", "order", true},
		{"aggregate_id", ev, "aggregate_id", "42", true},
		{"event_type shadows the column", ev, "event_type", "created", true},
		{"row column", ev, "tenant", "acme", true},
		{"null column", ev, "note", "", false},
		{"missing column", ev, "region", "", false},
		{"outbox field names are exact", ev, "ID", "", false},
		{"unset outbox field is empty, not missing", &relay.Event{}, "aggregate_id", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := tt.ev.Field(tt.field)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Field(%q) = %q, %v; want %q, %v", tt.field, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestEventDone(t *testing.T) {
	(&relay.Event{}).Done(nil) // no OnDone: nothing to call, no panic

	ev := &relay.Event{ID: "a"}
	var gotEv *relay.Event
	var gotErr error
	calls := 0
	ev.OnDone(func(e *relay.Event, err error) { gotEv, gotErr, calls = e, err, calls+1 })
	boom := errors.New("boom")
	ev.Done(boom)
	if calls != 1 || gotEv != ev || !errors.Is(gotErr, boom) {
		t.Errorf("Done(boom) called OnDone %d times with (%p, %v), want once with (%p, %v)", calls, gotEv, gotErr, ev, boom)
	}
}

func TestEventSize(t *testing.T) {
	base := (&relay.Event{}).Size()
	if base <= 0 {
		t.Fatalf("Size() of an empty event = %d, want > 0", base)
	}
	ev := &relay.Event{
		ID:      "1234",
		Payload: make([]byte, 1000),
		Headers: []relay.Header{{Key: "k", Value: "vv"}},
		Row:     relay.Row{Names: []string{"a", "b"}, Values: [][]byte{[]byte("xyz"), nil}},
	}
	if got, least := ev.Size(), base+4+1000+3; got < least {
		t.Errorf("Size() = %d, want at least %d: the payload, id, headers and row values count", got, least)
	}
}
