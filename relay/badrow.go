package relay

import (
	"errors"
	"fmt"
)

// ErrTooLarge is wrapped by sinks' errors for an event over the broker's
// size limit; a dead letter for it goes without its payload.
var ErrTooLarge = errors.New("message too large")

// RowError is an outbox row that cannot be published as it is: a NULL in a
// mapped column, a headers column that is not a JSON object, a routing
// template the row cannot fill, a payload over the broker's limit. Retrying
// the same row cannot help; the relay dead-letters it when a dead-letter
// destination is set, and otherwise stops the stream before it.
type RowError struct {
	// ID is the row's id; empty when the id itself is missing.
	ID string
	// LSN and Index are the row's position in the stream.
	LSN   LSN
	Index int
	Err   error
}

func (e *RowError) Error() string {
	return fmt.Sprintf("row %s: %v", e.Row(), e.Err)
}

func (e *RowError) Unwrap() error { return e.Err }

// Row names the row: its id, or its position when it has none.
func (e *RowError) Row() string {
	if e.ID != "" {
		return e.ID
	}
	return fmt.Sprintf("at %s #%d (no id)", e.LSN, e.Index)
}

// BadRow marks err as caused by ev's content. A bad row is also a
// Permanent error: retrying it as it is cannot help.
func BadRow(ev *Event, err error) error {
	var re *RowError
	if err == nil || errors.As(err, &re) {
		return err
	}
	return &RowError{ID: ev.ID, LSN: ev.CommitLSN, Index: ev.Index, Err: err}
}

// AsBadRow returns the RowError in err's chain, if any.
func AsBadRow(err error) (*RowError, bool) {
	var re *RowError
	ok := errors.As(err, &re)
	return re, ok
}
