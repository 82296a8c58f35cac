package pgsource

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/relay-dev/relay/relay"
)

// HeartbeatPrefix is the prefix of the relay's heartbeat messages (see
// pgops.Leader), which pgoutput sends too once messages are requested.
const HeartbeatPrefix = "relay-heartbeat"

// MessageTable is the Table of events from logical decoding messages, as
// templates see it ({table}).
const MessageTable = "pg_logical_emit_message"

// envelope is the JSON content of a table-less outbox message, written
// with pg_logical_emit_message(true, prefix, envelope) (schema/outbox_emit.sql).
type envelope struct {
	ID            *string         `json:"id"`
	AggregateType *string         `json:"aggregate_type"`
	AggregateID   *string         `json:"aggregate_id"`
	EventType     *string         `json:"event_type"`
	Payload       json.RawMessage `json:"payload"`
	// Headers is decoded as a headers column is, from the text as
	// written: re-encoding it would compact and escape the values.
	Headers json.RawMessage `json:"headers"`
}

// messageEvent builds the event of a transactional outbox message. For a bad
// envelope it returns the event with every field that was well-formed, for
// its dead letter, and an error wrapping errBadRow. Without an id in the
// envelope, the dedup key is the message's position: its transaction's
// commit LSN and its index in it, which are the same on every delivery.
func messageEvent(content []byte, commit relay.LSN, index int) (*relay.Event, error) {
	ev := &relay.Event{Table: MessageTable}
	fallbackID := fmt.Sprintf("%s/%d", commit, index)
	var env envelope
	// A field of the wrong type leaves the others decoded.
	err := json.Unmarshal(content, &env)
	var typeErr *json.UnmarshalTypeError
	if err != nil && (!errors.As(err, &typeErr) || typeErr.Field == "") {
		ev.ID = fallbackID
		return ev, fmt.Errorf("%w %s: message content is not a JSON object: %v", errBadRow, ev.ID, err)
	}
	ev.ID = fallbackID
	if env.ID != nil && *env.ID != "" {
		ev.ID = *env.ID
	}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w %s (message): %s", errBadRow, ev.ID, fmt.Sprintf(format, args...))
	}
	var problem error // the first problem, reported once the rest is read
	if typeErr != nil {
		problem = bad("%s: want a string, not a JSON %s", typeErr.Field, typeErr.Value)
	}
	names := []string{"id", "aggregate_type", "aggregate_id", "event_type"}
	values := [][]byte{[]byte(ev.ID), nil, nil, nil}
	for i, f := range []struct {
		name string
		src  *string
		dst  *string
	}{{"aggregate_type", env.AggregateType, &ev.AggregateType}, {"aggregate_id", env.AggregateID, &ev.AggregateID}, {"event_type", env.EventType, &ev.EventType}} {
		if f.src == nil {
			if problem == nil {
				problem = bad("%s is missing", f.name)
			}
			continue
		}
		*f.dst = *f.src
		values[i+1] = []byte(*f.src)
	}
	ev.Row = relay.Row{Names: names, Values: values}
	// The payload is the JSON value as written; null or absent is an
	// empty body, as a NULL payload column is.
	if len(env.Payload) > 0 && string(env.Payload) != "null" {
		ev.Payload = slices.Clone(env.Payload)
		ev.ContentType = relay.ContentTypeJSON
	}
	if len(env.Headers) > 0 {
		h, err := decodeHeaders(env.Headers)
		if err != nil && problem == nil {
			problem = bad("headers: %v", err)
		}
		ev.Headers = h
	}
	return ev, problem
}

// errNonTransactional is a message with the outbox prefix that is not part
// of a transaction: it would be published even if the transaction that
// wrote it rolled back, so the relay refuses it.
var errNonTransactional = errors.New("non-transactional message")

func nonTransactional(prefix string, lsn relay.LSN) error {
	return fmt.Errorf("%w with prefix %q at %s: outbox messages must be transactional, pg_logical_emit_message(true, …); a non-transactional one is sent even when its transaction rolls back", errNonTransactional, prefix, lsn)
}
