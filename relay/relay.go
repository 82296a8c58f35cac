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
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/relay-dev/relay/metrics"
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
	// DeadLetter tells that the sink has a dead-letter destination: a row
	// that cannot be published goes there, and the stream goes on.
	// Without one the stream stops before such a row and retries every
	// BlockedRetry, in case the cause was fixed (a broker limit raised);
	// Blocked reports the row meanwhile.
	DeadLetter   bool
	BlockedRetry time.Duration
	// OnPublished, when set, is called for every event the broker
	// confirmed, from the sink's goroutines; it must not block.
	OnPublished func(*Event)
	// Metrics records events and errors; nil records nothing.
	Metrics *metrics.Metrics
	// Logger receives lifecycle events and errors; never one line per event.
	Logger *slog.Logger
}

// Relay runs sessions of Source → Sink until its context ends or an error
// that retrying cannot fix.
type Relay struct {
	cfg     Config
	log     *slog.Logger
	blocked atomic.Pointer[RowError]
}

// Blocked returns the row the stream is stopped at, or nil.
func (r *Relay) Blocked() *RowError { return r.blocked.Load() }

// New returns a Relay for cfg.
func New(cfg Config) *Relay {
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.MaxInFlightBytes <= 0 {
		cfg.MaxInFlightBytes = 64 << 20
	}
	if cfg.BlockedRetry <= 0 {
		cfg.BlockedRetry = 30 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, log: log.With("component", "relay")}
}

// Run streams until ctx ends (returning nil) or a Permanent error occurs.
// Transient errors (lost connections, a slot held by another process) are
// logged and retried with capped exponential backoff. A row that cannot be
// published and has nowhere to be dead-lettered blocks the stream: Run
// reports it through Blocked and tries again every BlockedRetry.
func (r *Relay) Run(ctx context.Context) error {
	backoff := NewBackoff(500*time.Millisecond, 30*time.Second)
	for {
		start := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.cfg.Metrics.SessionRestart()
		if re, ok := AsBadRow(err); ok {
			r.blocked.Store(re)
			r.cfg.Metrics.Blocked(true)
			r.log.Error("the stream is stopped at a row that cannot be published; it resumes once the cause is fixed, or set a dead-letter destination (RELAY_DEAD_LETTER) and restart",
				"event_id", re.ID, "lsn", re.LSN.String(), "index", re.Index, "reason", re.Err.Error(), "retry_in", r.cfg.BlockedRetry.String())
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(r.cfg.BlockedRetry):
			}
			continue
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
	// Rejected events come back to the publishing goroutine, the only one
	// that may call Publish. Each event is rejected at most twice (its
	// dead letter, then a bare one), so twice the in-flight bound is the
	// channel's.
	rejects := make(chan rejected, 2*r.cfg.MaxInFlight)
	tr.Hooks(r.acked, func(ev *Event, err error) bool {
		r.cfg.Metrics.PublishError(ev.Table, reason(err))
		if _, ok := AsBadRow(err); !ok || !r.cfg.DeadLetter {
			return false
		}
		select {
		case rejects <- rejected{ev, err}:
			return true
		default:
			return false
		}
	})
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
		gauge := time.NewTicker(time.Second)
		defer gauge.Stop()
		for {
			var (
				ev    *Event
				cause error
			)
			select {
			case e, ok := <-events:
				if !ok {
					// Keep dead-lettering while the source waits
					// for what is in flight, until the session ends.
					events = nil
					continue
				}
				ev, cause = e, e.Invalid
			case rj := <-rejects:
				ev, cause = rj.ev, rj.err
			case <-gauge.C:
				r.cfg.Metrics.InFlight(tr.InFlight())
				continue
			case <-pubCtx.Done():
				return nil
			}
			if tr.Err() != nil {
				continue // the session is failing; drain so nothing blocks
			}
			if cause != nil {
				if ev.Invalid != nil {
					r.cfg.Metrics.PublishError(ev.Table, reason(cause))
				}
				ev, cause = r.deadLetter(ev, cause)
				if cause != nil {
					tr.Fail(cause)
					continue
				}
			}
			if err := r.cfg.Sink.Publish(pubCtx, ev); err != nil {
				if pubCtx.Err() != nil {
					return nil
				}
				r.cfg.Metrics.PublishError(ev.Table, reason(err))
				if _, ok := AsBadRow(err); ok && r.cfg.DeadLetter {
					if ev.DeadLetter != "" {
						// A dead letter's Done hands the failure to its
						// row, which goes bare or stops the stream.
						ev.Done(err)
						continue
					}
					select {
					case rejects <- rejected{ev, err}:
						continue
					default:
					}
				}
				tr.Fail(fmt.Errorf("publish event %s: %w", ev.ID, err))
			}
		}
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

type rejected struct {
	ev  *Event
	err error
}

// acked runs for every confirmed event.
func (r *Relay) acked(ev *Event) {
	r.cfg.Metrics.Published(ev.Table, ev.Destination, ev.CommitTime)
	if r.cfg.OnPublished != nil {
		r.cfg.OnPublished(ev)
	}
	if re := r.blocked.Load(); re != nil && re.LSN == ev.CommitLSN && re.Index == ev.Index {
		if r.blocked.CompareAndSwap(re, nil) {
			r.cfg.Metrics.Blocked(false)
			r.log.Info("the row the stream was stopped at is published; streaming again", "event_id", ev.ID)
		}
	}
}

// deadLetter returns the dead letter that replaces ev, failed with cause,
// or the error that stops the stream when there is nowhere to send it.
func (r *Relay) deadLetter(ev *Event, cause error) (*Event, error) {
	re, ok := AsBadRow(cause)
	if !ok {
		re = &RowError{ID: ev.ID, LSN: ev.CommitLSN, Index: ev.Index, Err: cause}
	}
	if !r.cfg.DeadLetter || ev.bare {
		return nil, re
	}
	dl := *ev
	dl.Invalid = nil
	switch {
	case ev.DeadLetter != "":
		// Its dead letter was refused too. Sinks leave out of a dead
		// letter what they know the broker refuses; what is left to a
		// row is its payload and headers, so the last resort carries
		// neither, and a third refusal stops the stream.
		ev.bare = true
		dl.bare = true
		dl.DeadLetter = fmt.Sprintf("%s; its dead letter was refused too (%v), so this one goes without the row's payload and headers", ev.DeadLetter, re.Err)
		dl.Payload, dl.Headers, dl.To = nil, nil, ""
		dl.OmittedPayload = len(ev.Payload)
	case errors.Is(cause, ErrTooLarge):
		// Its payload is what the broker refuses; the row keeps it.
		dl.DeadLetter = re.Err.Error()
		dl.Payload = nil
		dl.OmittedPayload = len(ev.Payload)
	default:
		dl.DeadLetter = re.Err.Error()
	}
	dl.done = func(d *Event, err error) {
		if err == nil {
			r.cfg.Metrics.DeadLettered(ev.Table)
			// Published, it counts where it went, not where its row
			// could not go.
			ev.Destination = d.Destination
		}
		// The original's Done: the tracker acks it, or fails the stream.
		ev.Done(err)
	}
	// Only the original counts as dead-lettered from now: its Done, when
	// called by the dead letter's outcome, must not reject it again.
	ev.DeadLetter = dl.DeadLetter
	r.log.Warn("dead-lettering a row that cannot be published", "event_id", re.Row(), "lsn", re.LSN.String(), "index", re.Index, "reason", dl.DeadLetter)
	return &dl, nil
}

// reason is a short, stable word for what made a publish fail, for the
// relay_publish_errors_total label.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return metrics.ReasonTooLarge
	case IsPermanent(err):
		if _, ok := AsBadRow(err); ok {
			return metrics.ReasonBadRow
		}
		return metrics.ReasonPermanent
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return metrics.ReasonCanceled
	}
	return metrics.ReasonTransient
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
