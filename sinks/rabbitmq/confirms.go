package rabbitmq

import (
	"regexp"
	"strconv"

	amqp "github.com/rabbitmq/amqp091-go"
)

// sizeLimitRE finds N in RabbitMQ's 406 channel close for a message over
// max_message_size: "message size 2000 is larger than configured max size
// 1024" (some versions put N in parentheses).
var sizeLimitRE = regexp.MustCompile(`larger than (?:configured )?max size \(?(\d+)\)?`)

// watch turns one channel generation's returns, confirms and close into
// event outcomes. It is the only reader of all three and runs until the
// channel is closed.
//
// amqp091-go hands a message's basic.return to returns before its ack
// reaches confirms, but a select may still pick the confirm first, so every
// confirm drains returns before it is acted on. Both buffers hold a full
// window: the library drops a return after blocking 5 s on it, and a
// dropped return would be a false success (docs/design.md).
func (s *Sink) watch(gen uint64, confirms <-chan amqp.Confirmation, returns <-chan amqp.Return, closes <-chan *amqp.Error) {
	defer s.wg.Done()
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil // closed just before confirms; keep reading those
				continue
			}
			s.returned(gen, r)
		case c, ok := <-confirms:
			if !ok {
				// The library sends the close reason, if any, before it
				// closes the notification channels.
				var reason *amqp.Error
				select {
				case reason = <-closes:
				default:
				}
				s.channelClosed(gen, reason)
				return
			}
			returns = s.drainReturns(gen, returns)
			s.confirmed(gen, c)
		}
	}
}

func (s *Sink) drainReturns(gen uint64, returns <-chan amqp.Return) <-chan amqp.Return {
	for returns != nil {
		select {
		case r, ok := <-returns:
			if !ok {
				return nil
			}
			s.returned(gen, r)
		default:
			return returns
		}
	}
	return nil
}

// returned marks the returned event so that its coming ack does not count,
// and stops the line.
func (s *Sink) returned(gen uint64, r amqp.Return) {
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return
	}
	matched := false
	for _, p := range s.inflight {
		if p.gen == gen && p.msg.MessageId == r.MessageId {
			p.returned = true
			matched = true
		}
	}
	if !matched {
		// Cannot happen while MessageId is the event id; should it, no ack
		// on this channel can be trusted to mean "routed".
		for _, p := range s.inflight {
			if p.gen == gen {
				p.returned = true
			}
		}
	}
	first := s.failLocked(gen)
	s.mu.Unlock()
	if first {
		s.log.Warn("RabbitMQ returned an event; republishing",
			"event_id", r.MessageId, "reply_code", r.ReplyCode, "reason", r.ReplyText,
			"exchange", r.Exchange, "routing_key", r.RoutingKey)
	}
}

// confirmed completes an acked event that was not returned; a nack stops
// the line so the event is republished.
func (s *Sink) confirmed(gen uint64, c amqp.Confirmation) {
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return
	}
	p := s.byTag[c.DeliveryTag]
	if p == nil {
		s.mu.Unlock()
		return
	}
	delete(s.byTag, c.DeliveryTag)
	switch {
	case !c.Ack:
		first := s.failLocked(gen)
		s.mu.Unlock()
		if first {
			s.log.Warn("RabbitMQ nacked an event; republishing", "event_id", p.ev.ID)
		}
	case p.returned:
		s.mu.Unlock() // already failed by its return
	default:
		ok := s.finishLocked(p, true)
		s.mu.Unlock()
		if ok {
			s.complete(p, nil)
		}
	}
}

// channelClosed stops the line after the channel or its connection closed.
// A 406 for an oversized message also teaches the sink the broker's limit,
// so recovery fails the events over it instead of resending them forever.
func (s *Sink) channelClosed(gen uint64, reason *amqp.Error) {
	limit := 0
	if reason != nil && reason.Code == amqp.PreconditionFailed {
		if m := sizeLimitRE.FindStringSubmatch(reason.Reason); m != nil {
			limit, _ = strconv.Atoi(m[1])
		}
	}
	s.mu.Lock()
	if gen != s.gen {
		s.mu.Unlock()
		return
	}
	if limit > 0 {
		s.maxSize = limit
	}
	s.closeReason = reason
	if reason != nil && reason.Code == amqp.PreconditionFailed && limit == 0 {
		s.probe = true
	}
	first := s.failLocked(gen)
	n := len(s.inflight)
	firstID := ""
	if n > 0 {
		firstID = s.inflight[0].ev.ID
	}
	s.mu.Unlock()
	// A nil reason is our own close, already accounted for.
	if first && reason != nil {
		s.log.Warn("RabbitMQ channel closed; republishing unconfirmed events",
			"reason", reason.Error(), "unconfirmed", n, "event_id", firstID)
	}
}
