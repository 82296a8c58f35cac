package relay

import (
	"context"
	"errors"
)

// Source reads committed rows from the database, one session at a time.
//
// Stream runs one session. It sends the rows it reads, and marks, on out
// in commit order, and reports to the database the position that pos
// says is published; it never admits, confirms or fails an event itself:
// the core does. A send blocks while the core's in-flight window is full,
// so a source selects on it with ctx and its own timers.
//
// When ctx ends, Stream stops reading, closes out, waits a bounded time
// for pos to reach the rows it sent (pos.Wait), reports the position
// once more and returns ctx's error. The core also ends ctx when the
// session fails (a row it must stop at, a sink error); the source then
// returns the same way, and the core returns its own error. Stream
// closes out on every return path. Errors that retrying cannot fix are
// marked Permanent; any other error ends the session and the core starts
// a new one after a backoff.
type Source interface {
	Stream(ctx context.Context, out chan<- Item, pos *Progress) error
}

// Item is one step of a session: a mark, a row, or both.
type Item struct {
	// Mark, when not zero, is a position that is safe to confirm to the
	// database once every row sent before this item is published: a
	// transaction's end, or a position between transactions. It applies
	// before the item's Event, so a source may carry a transaction's end
	// on the next transaction's first row and send one item instead of
	// two. Marks come in non-decreasing order.
	Mark LSN
	// Event is a row, or nil.
	Event *Event
}

// Progress is the core's answer to a source: how far its session is
// published. It is read-only for the source.
type Progress struct{ tr *tracker }

// LSN is the latest mark whose rows, and every row sent before them, the
// broker has confirmed (or the session's start): what the source may
// confirm to the database.
func (p *Progress) LSN() LSN { return p.tr.Safe() }

// Rows is how many of the rows sent in this session form a confirmed
// prefix of the session.
func (p *Progress) Rows() uint64 { return p.tr.settled() }

// Changed receives a value after LSN or Rows moved.
func (p *Progress) Changed() <-chan struct{} { return p.tr.progress }

// Stopped is closed once the core has stopped the session: nothing sent
// afterwards is published, and Rows and LSN move no further.
func (p *Progress) Stopped() <-chan struct{} { return p.tr.Failed() }

// ErrStopped is what Wait returns when the core stopped the session.
var ErrStopped = errors.New("the relay stopped the session")

// WaitMark returns once LSN reached mark, ctx ended (its error) or the
// core stopped the session (ErrStopped). A mark is reached only after the
// core has taken it from the channel, so this, not Wait, tells a source
// that a mark it sent is safe.
func (p *Progress) WaitMark(ctx context.Context, mark LSN) error {
	return p.wait(ctx, func() bool { return p.LSN() >= mark })
}

// Wait returns once the first rows rows sent are confirmed, ctx ended
// (its error) or the core stopped the session (ErrStopped).
func (p *Progress) Wait(ctx context.Context, rows uint64) error {
	return p.wait(ctx, func() bool { return p.Rows() >= rows })
}

func (p *Progress) wait(ctx context.Context, reached func() bool) error {
	for !reached() {
		select {
		case <-p.Changed():
		case <-p.Stopped():
			return ErrStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
