package inboxamqp_test

import (
	"errors"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/inbox"
	"github.com/relay-dev/relay/inbox/inboxamqp"
)

func TestMessageID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		d       amqp.Delivery
		want    string
		wantErr error
	}{
		{name: "message_id", d: amqp.Delivery{MessageId: "0b7e4f5a-1c2d-4e6f-8a9b-0c1d2e3f4a5b"}, want: "0b7e4f5a-1c2d-4e6f-8a9b-0c1d2e3f4a5b"},
		{name: "an id header is not the key", d: amqp.Delivery{Headers: amqp.Table{"id": "x"}}, wantErr: inbox.ErrNoMessageID},
		{name: "none", d: amqp.Delivery{RoutingKey: "order.placed"}, wantErr: inbox.ErrNoMessageID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := inboxamqp.MessageID(tt.d)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
