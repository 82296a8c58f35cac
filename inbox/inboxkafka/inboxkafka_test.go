package inboxkafka_test

import (
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/inbox"
	"github.com/relay-dev/relay/inbox/inboxkafka"
)

func TestMessageID(t *testing.T) {
	t.Parallel()
	h := func(kv ...string) []kgo.RecordHeader {
		var out []kgo.RecordHeader
		for i := 0; i < len(kv); i += 2 {
			out = append(out, kgo.RecordHeader{Key: kv[i], Value: []byte(kv[i+1])})
		}
		return out
	}
	tests := []struct {
		name    string
		headers []kgo.RecordHeader
		want    string
		wantErr error
	}{
		{name: "id", headers: h("event_type", "placed", "id", "a1"), want: "a1"},
		{name: "last value wins", headers: h("id", "from-headers-column", "tenant", "acme", "id", "a1"), want: "a1"},
		{name: "missing", headers: h("event_type", "placed", "ID", "a1"), wantErr: inbox.ErrNoMessageID},
		{name: "last value empty", headers: h("id", "a1", "id", ""), wantErr: inbox.ErrNoMessageID},
		{name: "no headers", wantErr: inbox.ErrNoMessageID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := inboxkafka.MessageID(&kgo.Record{Topic: "t", Headers: tt.headers})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}
