package relay

import (
	"context"
	"errors"
)

// Sink delivers events to one broker.
//
// Publish is called from a single goroutine, in stream order; a sink keeps
// that order on the wire so that one aggregate's events reach the broker in
// commit order. Publish may return before the broker has confirmed the event:
// the sink later calls ev.Done exactly once, with nil only after the broker
// has taken responsibility for the event (a RabbitMQ confirm that was not
// preceded by a return, a Kafka acks=all produce response). Events are not a
// batch: each is confirmed or failed on its own, possibly out of order.
//
// A sink retries what the broker can still accept (nacks, returns, lost
// connections) itself, with backoff, for as long as it takes; it passes an
// error to Done, or returns one from Publish, only when retrying cannot help
// (a message over the broker's size limit), and that error should be marked
// with Permanent. Publish blocks while the sink's own window is full and
// returns ctx's error if ctx ends first, leaving the event unpublished.
//
// An event whose DeadLetter is set goes to the sink's dead-letter
// destination instead of its own, carrying DeadLetter as the reason; a sink
// without one fails it. A sink sets Destination to where it published the
// event (the exchange or the topic), for metrics.
//
// Close waits, until ctx ends, for every published event's Done and then
// releases the connection. Publish must not be called after Close.
type Sink interface {
	Publish(ctx context.Context, ev *Event) error
	Close(ctx context.Context) error
}

// permanentError marks an error that retrying will not fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as one that retrying cannot fix, such as a bad row or
// a misconfigured database: the relay stops instead of retrying.
func Permanent(err error) error {
	if err == nil || IsPermanent(err) {
		return err
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, was marked
// Permanent or is a RowError.
func IsPermanent(err error) bool {
	var p permanentError
	var re *RowError
	return errors.As(err, &p) || errors.As(err, &re)
}
