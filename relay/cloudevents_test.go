package relay

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseFormat(t *testing.T) {
	for _, f := range []Format{FormatRaw, FormatCloudEvents, FormatCloudEventsStructured} {
		got, err := ParseFormat(f.String())
		if err != nil || got != f {
			t.Errorf("ParseFormat(%q) = %v, %v", f.String(), got, err)
		}
	}
	for _, s := range []string{"", "CloudEvents", "json", "cloudevents-binary"} {
		if _, err := ParseFormat(s); err == nil {
			t.Errorf("ParseFormat(%q) succeeded", s)
		}
	}
}

func ceEvent() *Event {
	return &Event{
		ID: "0b6e-42", Table: "public.outbox", AggregateType: "order", AggregateID: "42", EventType: "order.placed",
		Payload: []byte(`{"total": 42, "note": "<b>&</b>"}`), ContentType: ContentTypeJSON,
		Headers: []Header{
			{Key: "tenant", Value: "acme"},
			{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			{Key: "tracestate", Value: "congo=t61rcWkgMzE"},
		},
		CreatedAt: time.Date(2026, 3, 4, 5, 6, 7, 123456000, time.FixedZone("CET", 3600)),
		CommitLSN: 0x16B3748, Index: 12,
	}
}

func TestCloudEventAttributes(t *testing.T) {
	tests := []struct {
		name    string
		ev      func(*Event)
		want    []Header
		wantErr string
	}{
		{
			name: "every attribute",
			want: []Header{
				{Key: "specversion", Value: "1.0"}, {Key: "id", Value: "0b6e-42"}, {Key: "source", Value: "/orders"}, {Key: "type", Value: "order.placed"},
				{Key: "subject", Value: "42"}, {Key: "time", Value: "2026-03-04T04:06:07.123456Z"},
				{Key: "traceparent", Value: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, {Key: "tracestate", Value: "congo=t61rcWkgMzE"},
				{Key: "relaylsn", Value: "0/16B3748"}, {Key: "relayindex", Value: "12"},
			},
		},
		{
			name: "no subject, time or trace",
			ev:   func(e *Event) { e.AggregateID, e.CreatedAt, e.Headers = "", time.Time{}, nil },
			want: []Header{{Key: "specversion", Value: "1.0"}, {Key: "id", Value: "0b6e-42"}, {Key: "source", Value: "/orders"}, {Key: "type", Value: "order.placed"},
				{Key: "relaylsn", Value: "0/16B3748"}, {Key: "relayindex", Value: "12"}},
		},
		{name: "empty type", ev: func(e *Event) { e.EventType = "" }, wantErr: "type is empty"},
		{name: "empty id", ev: func(e *Event) { e.ID = "" }, wantErr: "id is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := ceEvent()
			if tt.ev != nil {
				tt.ev(ev)
			}
			got, err := CloudEventAttributes(ev, "/orders")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
	if _, err := CloudEventAttributes(ceEvent(), ""); err == nil {
		t.Error("no error without a source")
	}
}

func TestStructuredCloudEvent(t *testing.T) {
	tests := []struct {
		name string
		ev   func(*Event)
		want map[string]any
	}{
		{
			name: "json payload is data",
			want: map[string]any{
				"specversion": "1.0", "id": "0b6e-42", "source": "/orders", "type": "order.placed", "subject": "42",
				"time": "2026-03-04T04:06:07.123456Z", "datacontenttype": "application/json",
				"relaylsn": "0/16B3748", "relayindex": float64(12),
				"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "congo=t61rcWkgMzE",
				"data": map[string]any{"total": float64(42), "note": "<b>&</b>"},
			},
		},
		{
			name: "binary payload is data_base64",
			ev:   func(e *Event) { e.Payload, e.ContentType, e.Headers = []byte{0, 1, 0xfe, 0xff}, "", nil },
			want: map[string]any{
				"specversion": "1.0", "id": "0b6e-42", "source": "/orders", "type": "order.placed", "subject": "42",
				"time": "2026-03-04T04:06:07.123456Z", "data_base64": "AAH+/w==",
				"relaylsn": "0/16B3748", "relayindex": float64(12),
			},
		},
		{
			name: "null payload has no data",
			ev:   func(e *Event) { e.Payload, e.Headers = nil, nil },
			want: map[string]any{
				"specversion": "1.0", "id": "0b6e-42", "source": "/orders", "type": "order.placed", "subject": "42",
				"time": "2026-03-04T04:06:07.123456Z", "datacontenttype": "application/json",
				"relaylsn": "0/16B3748", "relayindex": float64(12),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := ceEvent()
			if tt.ev != nil {
				tt.ev(ev)
			}
			b, err := StructuredCloudEvent(ev, "/orders")
			if err != nil {
				t.Fatal(err)
			}
			if ev.ContentType == ContentTypeJSON && len(ev.Payload) > 0 && !strings.Contains(string(b), `"<b>&</b>"`) {
				t.Errorf("payload strings were escaped: %s", b)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatalf("not JSON: %v\n%s", err, b)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
	ev := ceEvent()
	ev.EventType = ""
	if _, err := StructuredCloudEvent(ev, "/orders"); err == nil {
		t.Error("no error for an event without a type")
	}
}

func TestRoute(t *testing.T) {
	tests := []struct {
		name    string
		to      string
		headers []Header
		want    string
	}{
		{name: "none", want: ""},
		{name: "column", to: "/billing.commands", want: "/billing.commands"},
		{name: "header", headers: []Header{{Key: "destination", Value: "audit"}}, want: "audit"},
		{name: "column wins over header", to: "a", headers: []Header{{Key: "destination", Value: "b"}}, want: "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ev := &Event{To: tt.to, Headers: tt.headers}
			if got := ev.Route(); got != tt.want {
				t.Errorf("Route() = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestCloudEventsExtensionNamesAreValid: extension attribute names are
// lower-case ASCII letters and digits, at most 20 of them (CloudEvents
// 1.0, "Attribute Naming Convention").
func TestCloudEventsExtensionNamesAreValid(t *testing.T) {
	for _, name := range []string{CloudEventsLSN, CloudEventsIndex} {
		if len(name) == 0 || len(name) > 20 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
			t.Errorf("%q is not a valid CloudEvents attribute name", name)
		}
	}
}

// TestOwnHeadersListTheRelaysHeaders: every message carries its position;
// a replayed one and a dead letter say so.
func TestOwnHeadersListTheRelaysHeaders(t *testing.T) {
	ev := &Event{Table: "public.outbox", CommitLSN: 0xABCDEF01_23456789, Index: 4321}
	want := []Header{{Key: HeaderLSN, Value: "ABCDEF01/23456789"}, {Key: HeaderIndex, Value: "4321", JSON: true}}
	if got := OwnHeaders(nil, ev); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	ev.Replay, ev.DeadLetter, ev.OmittedPayload = "r-1", "too large", 1<<20
	want = append(want, Header{Key: HeaderReplay, Value: "r-1"}, Header{Key: HeaderError, Value: "too large"},
		Header{Key: HeaderTable, Value: "public.outbox"}, Header{Key: HeaderPayloadOmitted, Value: "1048576 bytes"})
	if got := OwnHeaders(nil, ev); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
	for _, l := range []LSN{0, 1, 0x16B3748, 1<<64 - 1} {
		if got := string(AppendLSN(nil, l)); got != l.String() {
			t.Errorf("AppendLSN %s, want %s", got, l)
		}
	}
}
