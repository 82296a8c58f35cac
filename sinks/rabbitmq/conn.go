package rabbitmq

import (
	"net"
	"sync"
)

// maxGathered bounds the bytes a gatheringConn holds unwritten; Write waits
// beyond it, as it would on a full socket buffer.
const maxGathered = 1 << 20

// gatheringConn is the broker connection with its writes gathered: the
// client library writes and flushes every publish on its own, a system
// call and a small TCP segment per message. Write only appends, and one
// goroutine writes out whatever gathered while its previous write was in
// flight: a lone message goes out at once, a burst in a few large writes.
//
// Only the broker's confirm ever meant "the broker has it". Data lost with
// a failed connection is unconfirmed and recovery republishes it; the
// write error is returned by the next Write, which makes the library close
// the connection.
type gatheringConn struct {
	net.Conn

	mu      sync.Mutex
	wake    sync.Cond // the writer waits for data or close
	room    sync.Cond // Write waits for room
	pending []byte
	spare   []byte
	err     error // the first write error, returned by every later Write
	closed  bool
	done    chan struct{}
}

func gather(c net.Conn) *gatheringConn {
	g := &gatheringConn{Conn: c, done: make(chan struct{})}
	g.wake.L, g.room.L = &g.mu, &g.mu
	go g.writer()
	return g
}

func (g *gatheringConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.err == nil && !g.closed && len(g.pending) > 0 && len(g.pending)+len(p) > maxGathered {
		g.room.Wait()
	}
	if g.err != nil {
		return 0, g.err
	}
	if g.closed {
		return 0, net.ErrClosed
	}
	g.pending = append(g.pending, p...)
	g.wake.Signal()
	return len(p), nil
}

func (g *gatheringConn) writer() {
	defer close(g.done)
	g.mu.Lock()
	for {
		for len(g.pending) == 0 && !g.closed {
			g.wake.Wait()
		}
		if g.closed {
			g.mu.Unlock()
			return
		}
		out := g.pending
		g.pending = g.spare[:0]
		g.mu.Unlock()
		_, err := g.Conn.Write(out)
		g.mu.Lock()
		g.spare = out[:0]
		if err != nil && g.err == nil {
			g.err = err
		}
		g.room.Broadcast()
		if g.err != nil {
			g.mu.Unlock()
			return
		}
	}
}

// Close closes the connection at once, dropping what has not been
// written: the library closes it only after the broker answered its
// connection.close, which was therefore written, or after a failure.
func (g *gatheringConn) Close() error {
	g.mu.Lock()
	g.closed = true
	g.wake.Signal()
	g.room.Broadcast()
	g.mu.Unlock()
	err := g.Conn.Close() // unblocks a writer stuck in Write
	<-g.done
	return err
}
