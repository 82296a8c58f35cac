// Package relay is the core of the outbox relay: it moves committed outbox
// rows from a Source (PostgreSQL logical replication, a backfill, a replay)
// to a Sink (a broker) and tells the source only what the broker has
// confirmed.
//
// An event's path crosses each part once: the source sends rows and marks
// on one channel (Item); the core admits each row into its in-flight
// window and hands it to the sink; the sink reports the broker's verdict
// through Event.Done; the core alone decides, in session.settle, whether
// the row is acknowledged, dead-lettered or stops the stream; and the
// source reads back through Progress the position it may confirm.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
)

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
	// Backoff is the wait between sessions after a transient error;
	// default 500 ms doubling to 30 s.
	Backoff *Backoff
	// OnPublished, when set, is called for every event the broker
	// confirmed, from the sink's goroutines; it must not block.
	OnPublished func(*Event)
	// Observer is told what happens to events; nil: nothing is.
	Observer Observer
	// Logger receives lifecycle events and errors; never one line per event.
	Logger *slog.Logger
}

// Observer is what the core reports, for metrics. Its methods are called
// from the core's and the sink's goroutines and must not block.
type Observer interface {
	// Published counts an event the broker confirmed, at destination.
	Published(table, destination string, commitTime time.Time)
	// PublishError counts a refusal; reason is one of the Reason
	// constants.
	PublishError(table, reason string)
	// DeadLettered counts a row published to the dead-letter destination.
	DeadLettered(table string)
	// InFlight is the number of events handed to the sink and not yet
	// confirmed, about once a second.
	InFlight(n int)
	// Blocked reports whether the stream is stopped at a row.
	Blocked(on bool)
	// SessionRestart counts a session that ended other than by shutdown.
	SessionRestart()
}

// Reasons a publish failed, for Observer.PublishError.
const (
	ReasonTooLarge  = "too_large" // over the broker's size limit
	ReasonBadRow    = "bad_row"   // anything else about the row itself
	ReasonPermanent = "permanent" // retrying cannot help, but not the row's fault
	ReasonTransient = "transient" // retried
	ReasonCanceled  = "canceled"  // given up at shutdown
)

// itemBuffer is how many items a source may send ahead of the core's
// admission: enough that the two goroutines hand over in runs, few enough
// that the rows waiting in it add little to the in-flight bytes.
const itemBuffer = 128

// Relay runs sessions of Source → Sink until its context ends or an error
// that retrying cannot fix.
type Relay struct {
	cfg     Config
	obs     Observer
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
	if cfg.Backoff == nil {
		cfg.Backoff = NewBackoff(500*time.Millisecond, 30*time.Second)
	}
	obs := cfg.Observer
	if obs == nil {
		obs = nopObserver{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, obs: obs, log: log.With("component", "relay")}
}

// Run streams until ctx ends (returning nil) or a Permanent error occurs.
// Transient errors (lost connections, a slot held by another process) are
// logged and retried with backoff. A row that cannot be published and has
// nowhere to be dead-lettered blocks the stream: Run reports it through
// Blocked and tries again every BlockedRetry.
func (r *Relay) Run(ctx context.Context) error {
	backoff := r.cfg.Backoff
	for {
		start := time.Now()
		err := r.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		r.obs.SessionRestart()
		var wait time.Duration
		switch re, bad := AsBadRow(err); {
		case bad:
			r.blocked.Store(re)
			r.obs.Blocked(true)
			wait = r.cfg.BlockedRetry
			r.log.Error("the stream is stopped at a row that cannot be published; it resumes once the cause is fixed, or set a dead-letter destination (RELAY_DEAD_LETTER) and restart",
				"event_id", re.ID, "lsn", re.LSN.String(), "index", re.Index, "reason", re.Err.Error(), "retry_in", wait.String())
		case IsPermanent(err):
			return err
		default:
			if time.Since(start) > time.Minute {
				backoff.Reset()
			}
			wait = backoff.Next()
			r.log.Warn("replication session ended; retrying", "error", err, "retry_in", wait.String())
		}
		if !Sleep(ctx, wait) {
			return nil
		}
	}
}

// session is one Source.Stream and the events it sends. Each session has
// a fresh tracker, so that after a reconnect the window restarts from what
// the database has confirmed and confirms for events of an earlier
// session are ignored.
type session struct {
	*Relay
	tr *tracker
	// again carries dead letters from settle, on the sink's goroutines, to
	// the publisher, the only goroutine that may call Publish. A row is
	// dead-lettered at most twice (its dead letter, then a bare one), so
	// twice the window never fills.
	again chan *Event
	// over is set, by the publisher, once a row was left out because
	// the session ended.
	over bool
}

func (r *Relay) session(ctx context.Context) error {
	s := &session{Relay: r, again: make(chan *Event, 2*r.cfg.MaxInFlight)}
	s.tr = newTracker(r.cfg.MaxInFlight, r.cfg.MaxInFlightBytes, 0, s.settle)

	// The source's context also ends when the session fails, so that it
	// stops reading and returns.
	srcCtx, stopSource := context.WithCancel(ctx)
	defer stopSource()
	// The publisher outlives ctx: on shutdown the source stops reading
	// but waits for what is in flight, so what it sent must still reach
	// the sink. It ends with the source.
	pubCtx, stopPub := context.WithCancel(context.WithoutCancel(ctx))
	defer stopPub()

	items := make(chan Item, itemBuffer)
	var g errgroup.Group
	g.Go(func() error {
		defer stopPub()
		return r.cfg.Source.Stream(srcCtx, items, &Progress{tr: s.tr})
	})
	g.Go(func() error {
		s.publish(pubCtx, ctx.Done(), items)
		return nil
	})
	g.Go(func() error {
		select {
		case <-s.tr.Failed():
			stopSource()
		case <-pubCtx.Done():
		}
		return nil
	})
	err := g.Wait()
	if ferr := s.tr.Err(); ferr != nil {
		// The source returned because the session failed.
		return ferr
	}
	if err == nil && ctx.Err() == nil {
		err = errors.New("replication stream ended")
	}
	return err
}

// publish admits the source's rows into the window, in order, and hands
// them and dead letters to the sink, until ctx ends. stopping closes when
// the relay shuts down, which a BoundarySink is told.
func (s *session) publish(ctx context.Context, stopping <-chan struct{}, items <-chan Item) {
	gauge := time.NewTicker(time.Second)
	defer gauge.Stop()
	failed := s.tr.Failed()
	var waiting *Event // a row waiting for room in the window
	bs, _ := s.cfg.Sink.(BoundarySink)
	if bs == nil {
		stopping = nil
	}
	stalled := false // bs was told that waiting cannot be admitted
	for n := 0; ; n++ {
		var (
			it       Item
			received bool
		)
		// The common case, a row ready and the session live, takes a
		// plain receive; every 64th turn, and whenever there is nothing
		// to receive, the full select serves the rest.
		if waiting == nil && failed != nil && n%64 != 0 && !s.tr.stopped.Load() {
			select {
			case it, received = <-items:
				if !received {
					items = nil
				}
			default:
			}
		}
		if !received {
			in, space := items, (<-chan struct{})(nil)
			if waiting != nil {
				in, space = nil, s.tr.space
			}
			select {
			case it, received = <-in:
				if !received {
					// Keep dead-lettering while the source waits
					// for what is in flight, until the session ends.
					items = nil
				}
			case <-space:
			case dl := <-s.again:
				if failed != nil && !s.publishOne(ctx, dl) {
					failed, waiting = nil, nil
				}
				stalled = false
				continue
			case <-failed:
				failed, waiting = nil, nil
				continue
			case <-gauge.C:
				s.obs.InFlight(s.tr.InFlight())
				continue
			case <-stopping:
				stopping = nil
				bs.Boundary(ctx, Stopping)
				continue
			case <-ctx.Done():
				return
			}
		}
		if received {
			if failed == nil {
				continue // failed: drained so that nothing waits
			}
			if it.Mark != 0 {
				s.tr.Mark(it.Mark)
				if bs != nil {
					b := TransactionEnd
					if it.Event == nil && len(items) == 0 {
						b = Idle
					}
					bs.Boundary(ctx, b)
				}
			}
			waiting = it.Event
		}
		if waiting != nil && !s.tr.Add(waiting) {
			if bs != nil && !stalled {
				// The sink's open group holds what the window waits
				// for: only ending it can make room.
				stalled = true
				bs.Boundary(ctx, Stalled)
			}
			continue
		}
		if waiting != nil {
			ev := waiting
			waiting = nil
			stalled = false
			if ev.Invalid != nil {
				// Its dead letter takes its place in the stream.
				ev = s.refused(ev, ev.Invalid)
			}
			if !s.publishOne(ctx, ev) {
				// Nothing after a row the stream stops at goes out.
				failed = nil
			}
		}
	}
}

// publishOne hands ev to the sink, and what replaces it when the sink
// refuses it at once. It reports false when that stopped the session (or
// ev is nil: refused already stopped it).
func (s *session) publishOne(ctx context.Context, ev *Event) bool {
	for ev != nil {
		// Once a row is left out because the session ended, nothing
		// after it goes out: a sink may still take an event with an
		// ended ctx after refusing the one before it.
		if s.over {
			return true
		}
		err := s.cfg.Sink.Publish(ctx, ev)
		if err == nil {
			return true
		}
		if ctx.Err() != nil {
			s.over = true
			return true
		}
		ev = s.refused(ev, err)
	}
	return false
}

// settle is every published event's Done: the broker's verdict.
func (s *session) settle(ev *Event, err error) {
	if err != nil {
		if dl := s.refused(ev, err); dl != nil {
			select {
			case s.again <- dl:
			default:
				s.tr.Fail(fmt.Errorf("dead-letter event %s: too many dead letters waiting", dl.ID))
			}
		}
		return
	}
	row := ev
	if ev.of != nil {
		// A dead letter: its row is done, counted where it went.
		row = ev.of
		s.obs.DeadLettered(row.Table)
		row.Destination = ev.Destination
	}
	s.obs.Published(row.Table, row.Destination, row.CommitTime)
	if s.cfg.OnPublished != nil {
		s.cfg.OnPublished(row)
	}
	if re := s.blocked.Load(); re != nil && re.LSN == row.CommitLSN && re.Index == row.Index {
		if s.blocked.CompareAndSwap(re, nil) {
			s.obs.Blocked(false)
			s.log.Info("the row the stream was stopped at is published; streaming again", "event_id", row.ID)
		}
	}
	s.tr.Ack(row)
}

// Stages of a row that cannot be published.
const (
	stageNone       = iota
	stageDeadLetter // its dead letter is out
	stageBare       // its dead letter was refused; a bare one is out
)

// refused decides what happens after the broker, the sink or the source
// refused ev (a row or its dead letter): the one place that does. A row
// with something wrong with it goes to the dead-letter destination: it
// returns the dead letter to publish. When that refuses the dead letter
// too, a bare one without the row's payload and headers goes. A refused
// bare one, a row without a dead-letter destination, and any error not
// about the row stop the session: it returns nil.
func (s *session) refused(ev *Event, err error) *Event {
	s.obs.PublishError(ev.Table, reason(err))
	row := ev
	if ev.of != nil {
		row = ev.of
	}
	re, bad := AsBadRow(err)
	switch {
	case !bad:
		s.tr.Fail(fmt.Errorf("publish event %s: %w", row.ID, err))
		return nil
	case !s.cfg.DeadLetter || row.stage == stageBare:
		s.tr.Fail(re)
		return nil
	}
	dl := *row
	dl.Invalid, dl.of, dl.done = nil, row, s.settle
	switch {
	case row.stage == stageDeadLetter:
		// Sinks leave out of a dead letter what they know the broker
		// refuses; what is left to a row is its payload and headers, so
		// the last resort carries neither.
		row.stage = stageBare
		dl.DeadLetter = fmt.Sprintf("%s; its dead letter was refused too (%v), so this one goes without the row's payload and headers", ev.DeadLetter, re.Err)
		dl.Payload, dl.Headers, dl.To = nil, nil, ""
		dl.OmittedPayload = len(row.Payload)
	case errors.Is(err, ErrTooLarge):
		// Its payload is what the broker refuses.
		row.stage = stageDeadLetter
		dl.DeadLetter = re.Err.Error()
		dl.Payload = nil
		dl.OmittedPayload = len(row.Payload)
	default:
		row.stage = stageDeadLetter
		dl.DeadLetter = re.Err.Error()
	}
	s.log.Warn("dead-lettering a row that cannot be published", "event_id", re.Row(), "lsn", re.LSN.String(), "index", re.Index, "reason", dl.DeadLetter)
	return &dl
}

// reason is a short, stable word for what made a publish fail, for the
// relay_publish_errors_total label.
func reason(err error) string {
	switch {
	case errors.Is(err, ErrTooLarge):
		return ReasonTooLarge
	case IsPermanent(err):
		if _, ok := AsBadRow(err); ok {
			return ReasonBadRow
		}
		return ReasonPermanent
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return ReasonCanceled
	}
	return ReasonTransient
}

type nopObserver struct{}

func (nopObserver) Published(string, string, time.Time) {}
func (nopObserver) PublishError(string, string)         {}
func (nopObserver) DeadLettered(string)                 {}
func (nopObserver) InFlight(int)                        {}
func (nopObserver) Blocked(bool)                        {}
func (nopObserver) SessionRestart()                     {}
