package kafka

import (
	"errors"
	"testing"

	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/relay-dev/relay/relay"
)

// TestTxnProduceErrorIsFinalOnlyForTheRowOrAuthorization: inside a
// transaction a sequence or epoch error (a broker restarted) is retried by
// a new session, not the end of the relay; a row too large, or a topic
// the relay may not write, is final.
func TestTxnProduceErrorIsFinalOnlyForTheRowOrAuthorization(t *testing.T) {
	ev := &relay.Event{ID: "e1", Payload: []byte("{}")}
	for _, tt := range []struct {
		err       error
		permanent bool
		badRow    bool
	}{
		{kerr.OutOfOrderSequenceNumber, false, false},
		{kerr.InvalidProducerEpoch, false, false},
		{kerr.UnknownProducerID, false, false},
		{errors.New("connection reset"), false, false},
		{kerr.MessageTooLarge, true, true},
		{kerr.TopicAuthorizationFailed, true, false},
		{kerr.TransactionalIDAuthorizationFailed, true, false},
	} {
		err := txnProduceError(ev, "outbox.event.order", tt.err)
		_, bad := relay.AsBadRow(err)
		if relay.IsPermanent(err) != tt.permanent || bad != tt.badRow || !errors.Is(err, tt.err) {
			t.Errorf("%v: got %v (permanent %v, bad row %v), want permanent %v, bad row %v, wrapping it", tt.err, err, relay.IsPermanent(err), bad, tt.permanent, tt.badRow)
		}
	}
}
