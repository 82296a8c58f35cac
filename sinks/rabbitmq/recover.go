package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"slices"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
)

// supervise is the single recovery goroutine: whenever the channel fails it
// waits out the backoff and calls recover until publishing works again.
func (s *Sink) supervise() {
	defer s.wg.Done()
	for {
		select {
		case <-s.life.Done():
			return
		case <-s.kick:
		}
		for s.needsRecovery() {
			if !relay.Sleep(s.life, s.nextBackoff()) {
				return
			}
			if err := s.recover(s.life); err != nil {
				if s.life.Err() != nil {
					return
				}
				s.log.Warn("RabbitMQ recovery failed; retrying", "url", s.redacted, "error", err)
			}
		}
	}
}

func (s *Sink) needsRecovery() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.failed && !s.stopped
}

// recover replaces the failed channel, redialling when the connection is
// gone too, redeclares the exchange, and republishes every unconfirmed event
// on the new channel in its original order. Publishing resumes (healthy) only
// once all of them are written, so nothing newer can overtake them.
func (s *Sink) recover(ctx context.Context) error {
	s.mu.Lock()
	conn, old := s.conn, s.ch
	s.mu.Unlock()
	if old != nil {
		// After a nack or return the old channel is still open; closing it
		// ends its watcher. Its late confirms would be stale anyway.
		_ = old.Close()
	}
	if conn == nil || conn.IsClosed() {
		c, err := s.dial(ctx)
		if err != nil {
			return fmt.Errorf("connect: %w", err)
		}
		s.mu.Lock()
		if s.stopped {
			s.mu.Unlock()
			_ = c.Close()
			return errClosed
		}
		s.conn, s.blocked = c, false
		s.mu.Unlock()
		conn = c
		blocks := c.NotifyBlocked(make(chan amqp.Blocking, 4))
		s.wg.Add(1)
		go s.watchBlocked(c, blocks)
	}

	for _, x := range s.declared {
		if err := declareExchange(conn, x); err != nil {
			return err
		}
	}
	ch, err := conn.Channel()
	if err != nil {
		// A connection that cannot open channels is of no use; the next
		// attempt dials a fresh one.
		_ = conn.Close()
		return fmt.Errorf("open channel: %w", err)
	}
	if s.fence != "" {
		if ch, err = s.takeFence(ctx, conn, ch); err != nil {
			if !relay.IsPermanent(err) && ctx.Err() == nil {
				_ = conn.Close()
			}
			return err
		}
	}
	// Buffers of a full window, so that the library's reader never waits
	// for the watcher (see watch).
	confirms := ch.NotifyPublish(make(chan amqp.Confirmation, s.window))
	returns := ch.NotifyReturn(make(chan amqp.Return, s.window))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return fmt.Errorf("enable publisher confirms: %w", err)
	}

	if err := s.lockWire(ctx); err != nil {
		_ = ch.Close()
		return err
	}
	defer s.unlockWire()
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		_ = ch.Close()
		return errClosed
	}
	s.gen++
	gen := s.gen
	s.ch, s.failed = ch, false
	clear(s.byTag)
	var tooBig, resend []*pending
	kept := s.inflight[:0]
	for _, p := range s.inflight {
		p.gen, p.returned = 0, false
		if s.maxSize > 0 && len(p.msg.Body) > s.maxSize {
			p.done = true
			tooBig = append(tooBig, p)
			continue
		}
		kept = append(kept, p)
	}
	clear(s.inflight[len(kept):])
	s.inflight = kept
	// With the wire lock held nothing can be added, so this is everything
	// to resend; confirms may still remove events meanwhile.
	resend = slices.Clone(kept)
	limit := s.maxSize
	probe := s.probe
	s.probe, s.closeReason = false, nil
	s.mu.Unlock()
	s.wg.Add(1)
	go s.watch(gen, confirms, returns, closes)

	for _, p := range tooBig {
		err := tooLarge(p.ev, limit)
		s.log.Warn("event exceeds the broker's max_message_size; failing it", "event_id", p.ev.ID, "error", err)
		s.complete(p, relay.BadRow(p.ev, err))
	}

	for _, p := range resend {
		s.mu.Lock()
		if s.failed {
			s.mu.Unlock()
			return errors.New("channel failed while republishing")
		}
		done := p.done
		s.mu.Unlock()
		if done {
			continue
		}
		s.assignTag(p, ch, gen)
		if err := ch.Publish(p.exchange, p.key, true, false, p.msg); err != nil {
			s.mu.Lock()
			s.unassignTagLocked(p, gen)
			s.failLocked(gen)
			s.mu.Unlock()
			return fmt.Errorf("republish event %s: %w", p.ev.ID, err)
		}
		if probe {
			if err := s.settle(ctx, p); err != nil {
				return err
			}
		}
	}
	s.mu.Lock()
	if s.failed {
		s.mu.Unlock()
		return errors.New("channel failed while republishing")
	}
	s.healthy = true
	s.mu.Unlock()
	if gen > 1 {
		s.metrics.Retried(len(resend))
		s.log.Info("RabbitMQ channel reopened; unconfirmed events republished", "republished", len(resend))
	}
	return nil
}

// settle waits, while recovery probes for a message the broker refuses,
// until p is confirmed alone on its channel. If instead the broker closes
// the channel with a 406, p is the message it refuses for what it is (a
// header or property no check here knew of): a bad row under the bad-row
// policy, rather than a message republished into the same refusal forever.
func (s *Sink) settle(ctx context.Context, p *pending) error {
	for {
		s.mu.Lock()
		done, failed, reason := p.done, s.failed, s.closeReason
		s.mu.Unlock()
		switch {
		case done:
			return nil
		case failed && reason != nil && reason.Code == amqp.PreconditionFailed:
			s.mu.Lock()
			ok := s.finishLocked(p, false)
			s.mu.Unlock()
			if ok {
				s.log.Warn("RabbitMQ refuses this event for what it is; failing it as a bad row", "event_id", p.ev.ID, "reason", reason.Reason)
				s.complete(p, relay.BadRow(p.ev, fmt.Errorf("RabbitMQ refused it: %s", reason.Reason)))
			}
			return errors.New("channel closed by a refused message")
		case failed:
			return errors.New("channel failed while republishing")
		}
		select {
		case <-s.settled:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// declareExchange makes sure the exchange exists: a passive declare first,
// so an existing exchange of any type or arguments is used as it is, and a
// durable topic exchange is declared only if it is missing. Each declare gets
// a throwaway channel because a failed one closes its channel.
func declareExchange(conn *amqp.Connection, name string) error {
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	err = ch.ExchangeDeclarePassive(name, amqp.ExchangeTopic, true, false, false, false, nil)
	_ = ch.Close()
	var aerr *amqp.Error
	if err == nil || !errors.As(err, &aerr) || aerr.Code != amqp.NotFound {
		if err != nil {
			return fmt.Errorf("check exchange %q: %w", name, err)
		}
		return nil
	}
	ch, err = conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if err := ch.ExchangeDeclare(name, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return fmt.Errorf("declare exchange %q: %w", name, err)
	}
	return nil
}

// watchBlocked logs the broker's flow control of one connection and feeds
// it to Connected. Publishing itself just waits: the broker stops reading.
func (s *Sink) watchBlocked(conn *amqp.Connection, blocks <-chan amqp.Blocking) {
	defer s.wg.Done()
	for b := range blocks {
		s.mu.Lock()
		if s.conn == conn {
			s.blocked = b.Active
		}
		s.mu.Unlock()
		if b.Active {
			s.log.Warn("RabbitMQ blocked publishing (resource alarm); waiting", "reason", b.Reason)
		} else {
			s.log.Info("RabbitMQ unblocked publishing")
		}
	}
}
