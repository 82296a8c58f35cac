package relay

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the relay's one retry policy: exponential from a minimum to a
// cap, each wait jittered down by up to a fifth, so that relays and
// connections that failed together do not retry in step. Every retry loop
// of the relay, its sinks and its source waits by it.
type Backoff struct {
	min, max, cur time.Duration
}

// NewBackoff returns a backoff that starts at min and doubles up to max.
func NewBackoff(min, max time.Duration) *Backoff { return &Backoff{min: min, max: max} }

// Next returns how long to wait before the next attempt.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return b.cur - time.Duration(rand.Int64N(int64(b.cur)/5+1))
}

// Reset starts the sequence again from min, after a success.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for Next and reports whether ctx is still live.
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep waits d and reports whether ctx is still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
