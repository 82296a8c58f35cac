package rabbitmqstream

import (
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
)

func TestMessageCarriesTheAMQPSinksFields(t *testing.T) {
	tests := []struct {
		name   string
		format relay.Format
		ev     relay.Event
		want   map[string]any // application properties that must be there
		absent []string
	}{
		{
			name: "raw",
			ev: relay.Event{ID: "id-1", AggregateType: "order", AggregateID: "o-1", EventType: "order.created",
				Payload: []byte(`{"a":1}`), ContentType: relay.ContentTypeJSON, CommitLSN: 0x1_0000_0100, Index: 3,
				CreatedAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
				Headers: []relay.Header{
					{Key: "trace_id", Value: "abc"},
					{Key: "n", Value: "7", JSON: true},
					{Key: "f", Value: "1.5", JSON: true},
					{Key: "ok", Value: "true", JSON: true},
					{Key: "list", Value: `[1,2]`, JSON: true},
					{Key: "aggregate_id", Value: "forged"},
					{Key: "x-relay-lsn", Value: "forged"},
					{Key: "destination", Value: "elsewhere"},
				}},
			want: map[string]any{"trace_id": "abc", "n": int64(7), "f": 1.5, "ok": true, "list": "[1,2]",
				"aggregate_type": "order", "aggregate_id": "o-1", "event_type": "order.created", "x-relay-lsn": "1/100", "x-relay-index": int64(3), "x-relay-producer": "p"},
			absent: []string{"destination", "cloudEvents:id"},
		},
		{
			name:   "cloudevents binary",
			format: relay.FormatCloudEvents,
			ev: relay.Event{ID: "id-2", Table: "public.outbox", AggregateType: "order", AggregateID: "o-1", EventType: "order.paid",
				Payload: []byte(`{}`), ContentType: relay.ContentTypeJSON, CommitLSN: 0x200, CreatedAt: time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC),
				Headers: []relay.Header{{Key: "cloudEvents:id", Value: "forged"}}},
			want: map[string]any{"cloudEvents:id": "id-2", "cloudEvents:type": "order.paid", "cloudEvents:source": "/orders", "cloudEvents:specversion": "1.0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &Sink{producer: "p", format: tt.format, ceSource: "/orders"}
			s.guard = relay.NewHeaderGuard(s.ownProperty, nil, nil)
			msg, err := s.message(&tt.ev)
			if err != nil {
				t.Fatal(err)
			}
			p := msg.Properties
			if p.MessageID != tt.ev.ID || p.Subject != tt.ev.EventType || p.ContentType != relay.ContentTypeJSON || !p.CreationTime.Equal(tt.ev.CreatedAt) {
				t.Errorf("properties %+v", *p)
			}
			for k, v := range tt.want {
				if got := msg.ApplicationProperties[k]; got != v {
					t.Errorf("property %s = %#v, want %#v", k, got, v)
				}
			}
			for _, k := range tt.absent {
				if v, ok := msg.ApplicationProperties[k]; ok {
					t.Errorf("property %s = %v, want none", k, v)
				}
			}
			if _, err := msg.MarshalBinary(); err != nil {
				t.Errorf("marshal: %v", err)
			}
		})
	}
}

func TestPositionsOrder(t *testing.T) {
	a := position{lsn: 0x100, index: 5}
	for _, tt := range []struct {
		b     position
		after bool
	}{
		{position{0x100, 6}, true},
		{position{0x101, 0}, true},
		{position{0x100, 5}, false},
		{position{0x0ff, 9}, false},
	} {
		if got := tt.b.after(a); got != tt.after {
			t.Errorf("%v after %v = %v, want %v", tt.b, a, got, tt.after)
		}
	}
}
