// Package inboxkafka reads the dedup key of a Kafka record for package
// inbox: its "id" header, which the relay sets to the outbox id.
package inboxkafka

import (
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/inbox"
)

// Header is the record header carrying the dedup key.
const Header = "id"

// MessageID returns the value of r's last "id" header. The relay writes its
// own headers after those of the outbox row's headers column, so the last
// value is the relay's even when that column also has an "id" (Java's
// Headers.lastHeader reads the same one).
//
// A record without the header, or with an empty one, yields an error
// matching inbox.ErrNoMessageID: do not process it, since its redeliveries
// could not be recognized.
func MessageID(r *kgo.Record) (string, error) {
	for i := len(r.Headers) - 1; i >= 0; i-- {
		if r.Headers[i].Key != Header {
			continue
		}
		if len(r.Headers[i].Value) == 0 {
			break
		}
		return string(r.Headers[i].Value), nil
	}
	return "", fmt.Errorf("inboxkafka: record %s/%d@%d has no %q header: %w", r.Topic, r.Partition, r.Offset, Header, inbox.ErrNoMessageID)
}
