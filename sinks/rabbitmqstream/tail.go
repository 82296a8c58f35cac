package rabbitmqstream

import (
	"context"
	"fmt"
	"time"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"
)

const (
	// tailQuiet ends a window of the tail read when no message came for
	// that long, in case the window's last offsets hold no message (a
	// tracking chunk); a window normally ends at its last offset.
	tailQuiet = 2 * time.Second
	// tailFirst bounds the wait for the first message of a window.
	tailFirst = 10 * time.Second
	// tailStep is the first window below the last chunk; each next one
	// doubles.
	tailStep = 1024
)

// tail is the latest message of the producer found in a stream.
type tail struct {
	pos   position
	id    int64
	found bool
}

// readTail finds the position of the message the producer stored under
// publishing id lastID, or of a later one of the producer: a dead relay's
// last frames may land after the broker answered lastID, and they carry
// the same ids for the same events, so any of them fixes the numbering.
// It reads the stream's last chunk, then windows further back, each twice
// the last, until it finds one or reaches the stream's start.
func (s *Sink) readTail(ctx context.Context, env *stream.Environment, name string, lastID int64) (tail, error) {
	var best tail
	see := func(m *amqp.Message) {
		if pos, id, ok := positionOfMessage(m, s.producer); ok && id >= best.id {
			best = tail{pos: pos, id: id, found: true}
		}
	}
	first, err := s.readWindow(ctx, env, name, stream.OffsetSpecification{}.Last(), -1, see)
	end, step := first, int64(tailStep)
	for {
		switch {
		case err != nil:
			return tail{}, err
		case best.found && best.id >= lastID:
			return best, nil
		case end <= 0:
			// The stream is empty, or read back to its first offset.
			return best, nil
		}
		start := max(0, end-step)
		first, err = s.readWindow(ctx, env, name, stream.OffsetSpecification{}.Offset(start), end, see)
		if err == nil && (first < 0 || first > start) {
			// Nothing below start: retention removed the rest.
			return best, nil
		}
		end, step = start, step*2
	}
}

// readWindow reads from spec until offset end-1 (end < 0: to the end of
// the first chunk delivered), calling f for each message, and returns the
// first offset read, -1 when none came.
func (s *Sink) readWindow(ctx context.Context, env *stream.Environment, name string, spec stream.OffsetSpecification, end int64, f func(*amqp.Message)) (int64, error) {
	type delivery struct {
		offset  int64
		entries int64
		msg     *amqp.Message
	}
	ch := make(chan delivery, 4096)
	stopped := make(chan struct{})
	defer close(stopped)
	handler := func(cc stream.ConsumerContext, m *amqp.Message) {
		select {
		case ch <- delivery{cc.Consumer.GetOffset(), int64(cc.GetEntriesCount()), m}:
		case <-stopped:
		}
	}
	c, err := env.NewConsumer(name, handler, stream.NewConsumerOptions().
		SetOffset(spec).
		SetClientProvidedName("relay-tail").
		SetManualCommit())
	if err != nil {
		return -1, fmt.Errorf("read the tail of stream %s: %w", name, err)
	}
	defer c.Close()
	first := int64(-1)
	wait := tailFirst
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return -1, ctx.Err()
		case <-s.life.Done():
			t.Stop()
			return -1, errClosed
		case <-t.C:
			return first, nil
		case d := <-ch:
			t.Stop()
			if first < 0 {
				first = d.offset
				if end < 0 {
					end = d.offset + d.entries
				}
			}
			if d.offset < end {
				f(d.msg)
			}
			if d.offset >= end-1 {
				return first, nil
			}
			wait = tailQuiet
		}
	}
}
