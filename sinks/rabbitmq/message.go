package rabbitmq

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
)

// cloudEventsPrefix names the CloudEvents attributes among the headers in
// binary mode. The AMQP binding also allows "cloudEvents_", but only some
// readers understand it; every one reads the colon (docs/design.md).
const cloudEventsPrefix = "cloudEvents:"

// Headers-column keys that become AMQP properties instead of headers, so
// that commands and request/reply flow through the outbox.
const (
	keyCorrelationID = "correlation_id"
	keyReplyTo       = "reply_to"
	keyExpiration    = "expiration"
	keyPriority      = "priority"
)

// splitDestination reads a row's destination: "routing-key" on the
// configured exchange, "exchange/routing-key", or "/queue" for the default
// exchange, which routes a message to the queue of that name. The first
// slash separates, so a routing key may hold slashes and an exchange name
// may not.
func splitDestination(dest, exchange string) (string, string) {
	if x, key, ok := strings.Cut(dest, "/"); ok {
		return x, key
	}
	return exchange, dest
}

// setProperty moves a well-known headers-column key into its AMQP property
// and reports whether it did. A value the broker would refuse (closing the
// channel, so every retry would fail again) is a bad row. A JSON null sets
// nothing.
func setProperty(msg *amqp.Publishing, h relay.Header) (bool, error) {
	switch h.Key {
	case keyCorrelationID, keyReplyTo, keyExpiration, keyPriority:
		if h.JSON && h.Value == "null" {
			return true, nil
		}
	}
	switch h.Key {
	case keyCorrelationID, keyReplyTo, keyExpiration, keyPriority:
		if len(h.Value) > maxShortstr {
			return false, fmt.Errorf("header %s is %d bytes, AMQP allows at most %d", h.Key, len(h.Value), maxShortstr)
		}
	}
	switch h.Key {
	case keyCorrelationID:
		msg.CorrelationId = h.Value
	case keyReplyTo:
		msg.ReplyTo = h.Value
	case keyExpiration:
		// RabbitMQ takes the per-message TTL as a string of milliseconds
		// and closes the channel on anything else.
		if _, err := strconv.ParseUint(h.Value, 10, 32); err != nil {
			return false, fmt.Errorf("header %s %q: want milliseconds, 0 to 4294967295", h.Key, h.Value)
		}
		msg.Expiration = h.Value
	case keyPriority:
		p, err := strconv.ParseUint(h.Value, 10, 8)
		if err != nil {
			return false, fmt.Errorf("header %s %q: want 0 to 255", h.Key, h.Value)
		}
		msg.Priority = uint8(p)
	default:
		return false, nil
	}
	return true, nil
}

// headerValue is h's value as an AMQP field: a string, or, for a value
// that is not a JSON string, its AMQP type, so that a row can set headers
// that plugins and consumers read typed (x-delay, CC): an integer is a
// long (one beyond 64 bits a double), any other number a double, true and
// false a boolean, null void, an array an array, an object a table.
func headerValue(h relay.Header) (any, error) {
	if !h.JSON {
		return h.Value, nil
	}
	if i, err := strconv.ParseInt(h.Value, 10, 64); err == nil {
		return i, nil // what the decoder below makes of it, cheaply
	}
	d := json.NewDecoder(strings.NewReader(h.Value))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("header %s: %w", h.Key, err)
	}
	v, err := fieldValue(v)
	if err != nil {
		return nil, fmt.Errorf("header %s: %w", h.Key, err)
	}
	return v, nil
}

func fieldValue(v any) (any, error) {
	switch v := v.(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i, nil
		}
		f, err := v.Float64()
		if err != nil {
			return nil, fmt.Errorf("number %s: %w", v, err)
		}
		return f, nil
	case []any:
		out := make([]any, len(v))
		for i, x := range v {
			y, err := fieldValue(x)
			if err != nil {
				return nil, err
			}
			out[i] = y
		}
		return out, nil
	case map[string]any:
		t := make(amqp.Table, len(v))
		for k, x := range v {
			if len(k) > maxShortstr {
				return nil, fmt.Errorf("a key of %d bytes; AMQP allows at most %d", len(k), maxShortstr)
			}
			y, err := fieldValue(x)
			if err != nil {
				return nil, err
			}
			t[k] = y
		}
		return t, nil
	}
	return v, nil // a string, a bool or nil
}

// checkBrokerHeader refuses what RabbitMQ checks itself: CC and BCC are
// sender-selected routing keys, an array of strings, and anything else
// closes the channel (unacceptable_type_in_header), which recovery would
// republish into forever.
func checkBrokerHeader(key string, v any) error {
	if key != "CC" && key != "BCC" {
		return nil
	}
	keys, ok := v.([]any)
	for _, k := range keys {
		if _, ok = k.(string); !ok {
			break
		}
	}
	if !ok {
		return fmt.Errorf("header %s must be an array of strings (RabbitMQ routes by it and refuses anything else)", key)
	}
	return nil
}

// checkExchange makes sure an exchange a row names exists before the first
// publish to it: publishing to a missing exchange closes the channel, and
// recovery would republish into the same error forever. A missing one makes
// the row bad. The relay does not declare it: a row cannot say which type
// and arguments it should have. Without a connection to ask, the publish
// goes ahead; a missing exchange then shows as channel closes in the log.
func (s *Sink) checkExchange(ev *relay.Event, name string) error {
	if name == "" || slices.Contains(s.declared, name) {
		return nil // the default exchange always exists; the others are declared
	}
	s.mu.Lock()
	known := s.dests[name]
	conn := s.conn
	s.mu.Unlock()
	if known || conn == nil || conn.IsClosed() {
		return nil
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil
	}
	err = ch.ExchangeDeclarePassive(name, amqp.ExchangeTopic, true, false, false, false, nil)
	_ = ch.Close()
	var aerr *amqp.Error
	switch {
	case err == nil:
		s.mu.Lock()
		s.dests[name] = true
		s.mu.Unlock()
	case errors.As(err, &aerr) && aerr.Code == amqp.NotFound:
		return relay.BadRow(ev, fmt.Errorf("destination exchange %q does not exist", name))
	}
	return nil
}

// body is the message body and content type in the sink's format. A dead
// letter is the row as it was, whatever made it bad: the format must not
// fail it a second time.
func (s *Sink) body(ev *relay.Event) ([]byte, string, error) {
	if s.format != relay.FormatCloudEventsStructured || ev.DeadLetter != "" {
		return ev.Payload, ev.ContentType, nil
	}
	b, err := relay.StructuredCloudEvent(ev, s.ceSource)
	if err != nil {
		return nil, "", err
	}
	return b, relay.ContentTypeCloudEventsJSON, nil
}
