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

// BoundarySink is a Sink that makes events visible to consumers in groups
// of its own (Kafka transactions) and must end a group only where a
// source transaction ends, so that consumers see each source transaction
// whole or not at all. The core calls Boundary from the goroutine that
// calls Publish, between Publish calls; it must not block for longer than
// ending a group takes. What ending a group does to the events reaches
// them, as always, through Event.Done.
type BoundarySink interface {
	Sink
	Boundary(ctx context.Context, b Boundary)
}

// Boundary is what the core tells a BoundarySink about the events it
// handed over so far.
type Boundary uint8

const (
	// TransactionEnd: every event handed to the sink so far belongs to a
	// source transaction that has ended; a group may end here.
	TransactionEnd Boundary = iota + 1
	// Idle is a TransactionEnd after which the source sent nothing more:
	// a group waiting for more events would only wait, so it should end
	// now.
	Idle
	// Stalled: the in-flight window is full, so the core can hand over
	// nothing more until some of what the sink holds is confirmed. The
	// sink must end its group now, even inside a source transaction, or
	// the stream stops for good.
	Stalled
	// Stopping: the relay is shutting down, and the source sends at most
	// what it has read already. The sink ends its open group now: as a
	// TransactionEnd would if the group ends where a source transaction
	// ends, else by discarding it (its events fail, and a restart
	// publishes them again); what it is handed afterwards it fails at
	// once. Otherwise a group inside a source transaction, whose end will
	// never come, holds the shutdown until its timeout.
	Stopping
)
