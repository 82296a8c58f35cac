// Package relay is the core of the outbox relay: it moves committed outbox
// rows from a Source (PostgreSQL logical replication) to a Sink (a broker)
// and confirms to the source only what the broker has confirmed.
//
// The path of an event is Source → Relay → Sink → Tracker → Source: the
// source decodes rows and admits them into a Tracker, the relay hands them to
// the sink in order, the sink reports each broker confirm through Event.Done,
// and the tracker tells the source the highest position it may confirm.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
)

// Source produces events from the database, one session at a time.
//
// Stream runs one replication session: it admits each event into tr (waiting
// on tr.Space while the window is full) and then sends it on out, in commit
// order; it reports tr.Safe() back to the database. When ctx ends it stops
// reading, closes out, waits a bounded time for in-flight events to be
// confirmed, sends a final status and returns ctx's error. Stream closes out
// on every return path. It returns when tr.Failed is closed, with tr.Err().
// Errors that retrying cannot fix are marked Permanent; any other error ends
// the session and the relay starts a new one after a backoff.
type Source interface {
	Stream(ctx context.Context, out chan<- *Event, tr *Tracker) error
}

// Config is what a Relay needs.
type Config struct {
	Source Source
	Sink   Sink
	// MaxInFlight bounds the events handed to the sink and not yet confirmed.
	MaxInFlight int
	// MaxInFlightBytes bounds their approximate memory.
	MaxInFlightBytes int
	// Logger receives lifecycle events and errors; never one line per event.
	Logger *slog.Logger
}

// Relay runs sessions of Source → Sink until its context ends or an error
// that retrying cannot fix.
type Relay struct {
	cfg Config
	log *slog.Logger
}

// New returns a Relay for cfg.
func New(cfg Config) *Relay {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = 64 << 20
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, log: log.With("component", "relay")}
}

// Run streams until ctx ends (returning nil) or a Permanent error occurs.
// Transient errors (lost connections, a slot held by another process) are
// logged and retried with capped exponential backoff.
func (r *Relay) Run(ctx context.Context) error {
	backoff := NewBackoff(500*time.Millisecond, 30*time.Second)
	for {
		start := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if IsPermanent(err) {
			return err
		}
		if time.Since(start) > time.Minute {
			backoff.Reset()
		}
		wait := backoff.Next()
		r.log.Warn("replication session ended; retrying", "error", err, "retry_in", wait.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// session runs one Source.Stream with a fresh tracker, so that after a
// reconnect the window restarts from what the database has confirmed and
// confirms for events of an earlier session are ignored.
func (r *Relay) session(ctx context.Context) error {
	tr := NewTracker(r.cfg.MaxInFlight, r.cfg.MaxInFlightBytes, 0)
	events := make(chan *Event, r.cfg.MaxInFlight)
	// The publisher outlives ctx: on shutdown the source stops reading but
	// waits for what is in flight, so events already admitted must still
	// reach the sink. It ends when the source closes events or the session
	// is over.
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()

	var g errgroup.Group
	g.Go(func() error {
		defer stopPub()
		return r.cfg.Source.Stream(ctx, events, tr)
	})
	g.Go(func() error {
		for ev := range events {
			if tr.Err() != nil {
				continue // the session is failing; drain so nothing blocks
			}
			if err := r.cfg.Sink.Publish(pubCtx, ev); err != nil {
				if pubCtx.Err() != nil {
					return nil
				}
				tr.Fail(fmt.Errorf("publish event %s: %w", ev.ID, err))
			}
		}
		return nil
	})
	err := g.Wait()
	if err == nil {
		err = tr.Err()
	}
	if err == nil && ctx.Err() == nil {
		err = errors.New("replication stream ended")
	}
	return err
}

// Backoff is capped exponential backoff for retry loops.
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
	return b.cur
}

// Reset starts the sequence again from min, after a success.
func (b *Backoff) Reset() { b.cur = 0 }
