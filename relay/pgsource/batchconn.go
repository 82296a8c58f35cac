//go:build unix

package pgsource

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
)

// batchConn is the replication connection's TCP socket, read in batches
// while a backlog streams in. The walsender sends each pgoutput message on
// its own, and waking the reader once per message costs more CPU than the
// rest of the client. While data arrives faster than bulkEnter per
// bulkWindow, SO_RCVLOWAT makes the kernel wake the reader only once
// bulkLowat bytes wait, for at most bulkWait; when nothing arrives within
// bulkWait the backlog is over and every message wakes the reader again.
//
// Only the waiting changes: the bytes, their order and the caller's
// deadlines are the socket's. mu orders a deadline set from another
// goroutine (pgconn's context watcher interrupts a read with one in the
// past) with the batched wait's own.
type batchConn struct {
	*net.TCPConn
	raw syscall.RawConn

	buf  []byte
	r, w int

	bulk    bool
	off     bool // SO_RCVLOWAT was refused: read plainly
	since   time.Time
	arrived int // bytes read since since, while not batching

	mu       sync.Mutex
	deadline time.Time // the caller's read deadline
}

const (
	// bulkLowat is the SO_RCVLOWAT of batched reads: some 150 rows of a
	// typical outbox.
	bulkLowat = 64 << 10
	// bulkWait bounds how long a batched read waits for bulkLowat bytes.
	bulkWait = 2 * time.Millisecond
	// Reading bulkEnter bytes within bulkWindow starts batching: 6.4 MB/s,
	// about 15k outbox rows a second, more than most live outboxes carry.
	bulkEnter  = 64 << 10
	bulkWindow = 10 * time.Millisecond
	// batchBuf is the most one read takes; pgconn's own reads are 8 KB.
	batchBuf = 256 << 10
)

// newBatchConn wraps c, or returns it as it is if it has no file
// descriptor to set options on.
func newBatchConn(c *net.TCPConn) net.Conn {
	raw, err := c.SyscallConn()
	if err != nil {
		return c
	}
	return &batchConn{TCPConn: c, raw: raw, buf: make([]byte, batchBuf)}
}

// Read implements net.Conn.
func (c *batchConn) Read(p []byte) (int, error) {
	if c.r == c.w {
		n, err := c.fill()
		c.r, c.w = 0, n
		if n == 0 {
			return 0, err
		}
	}
	n := copy(p, c.buf[c.r:c.w])
	c.r += n
	return n, nil
}

// fill reads into c.buf, which the caller has emptied.
func (c *batchConn) fill() (int, error) {
	if c.bulk {
		if n, err, ok := c.fillBatch(); ok {
			return n, err
		}
		c.setBulk(false)
	}
	n, err := c.TCPConn.Read(c.buf)
	if n > 0 && !c.off {
		now := time.Now()
		if now.Sub(c.since) > bulkWindow {
			c.since, c.arrived = now, 0
		}
		if c.arrived += n; c.arrived >= bulkEnter {
			c.setBulk(true)
		}
	}
	return n, err
}

// fillBatch waits up to bulkWait for bulkLowat bytes and reads what
// arrived. It reports ok false when nothing did.
func (c *batchConn) fillBatch() (n int, err error, ok bool) {
	c.mu.Lock()
	caller := c.deadline
	wait := time.Now().Add(bulkWait)
	if !caller.IsZero() && caller.Before(wait) {
		wait = caller
	}
	err = c.TCPConn.SetReadDeadline(wait)
	c.mu.Unlock()
	if err != nil {
		return 0, err, true
	}
	n, err = c.TCPConn.Read(c.buf)
	c.mu.Lock()
	caller = c.deadline
	derr := c.TCPConn.SetReadDeadline(caller)
	c.mu.Unlock()
	switch {
	case n > 0 || !isTimeout(err):
		return n, err, true
	case derr != nil:
		return 0, derr, true
	case !caller.IsZero() && !time.Now().Before(caller):
		return 0, err, true // the caller's deadline
	}
	// Fewer than bulkLowat bytes came in time: take what did. The read
	// above found none, and a plain read would wait for bulkLowat again.
	n, err = c.readNow()
	return n, err, n > 0 || err != nil
}

// readNow reads what the socket holds, without waiting for more.
func (c *batchConn) readNow() (int, error) {
	var n int
	var rerr error
	err := c.raw.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), c.buf)
			if rerr != syscall.EINTR {
				return true
			}
		}
	})
	switch {
	case err != nil:
		return 0, err
	case rerr == syscall.EAGAIN:
		return 0, nil
	case rerr != nil:
		return 0, os.NewSyscallError("read", rerr)
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// setBulk sets the socket's low-water mark for batched or plain reads.
func (c *batchConn) setBulk(on bool) {
	lowat := 1
	if on {
		lowat = bulkLowat
	}
	var serr error
	err := c.raw.Control(func(fd uintptr) {
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVLOWAT, lowat)
	})
	if err != nil || serr != nil {
		// Batching only saves CPU: the socket reads as it did before.
		c.off, c.bulk = true, false
		return
	}
	c.bulk = on
	c.since, c.arrived = time.Time{}, 0
}

// SetReadDeadline implements net.Conn.
func (c *batchConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.TCPConn.SetReadDeadline(t)
}

// SetDeadline implements net.Conn.
func (c *batchConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	return c.TCPConn.SetDeadline(t)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
