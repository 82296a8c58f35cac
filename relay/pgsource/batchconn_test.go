//go:build unix

package pgsource

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// loopback returns the two ends of a TCP connection on 127.0.0.1, the
// reading end wrapped in a batchConn.
func loopback(t *testing.T) (*batchConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	w, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	bc, ok := newBatchConn(c.(*net.TCPConn)).(*batchConn)
	if !ok {
		t.Fatal("not wrapped")
	}
	t.Cleanup(func() { bc.Close(); w.Close() })
	return bc, w
}

// TestBatchConnReadsEveryByteInOrder streams bursts and pauses, small and
// large writes, through a batching reader read in pgconn's 8 KB pieces:
// what arrives is exactly what was sent, and batching both started and
// stopped on the way.
func TestBatchConnReadsEveryByteInOrder(t *testing.T) {
	t.Parallel()
	bc, w := loopback(t)
	var sent bytes.Buffer
	rng := rand.New(rand.NewPCG(1, 2))
	for range 4000 {
		chunk := make([]byte, 1+rng.IntN(2000))
		for i := range chunk {
			chunk[i] = byte(rng.Uint32())
		}
		sent.Write(chunk)
	}
	want := sent.Bytes()
	writeErr := make(chan error, 1)
	go func() {
		p := want
		for i := 0; len(p) > 0; i++ {
			n := min(len(p), 1+rng.IntN(4000))
			if _, err := w.Write(p[:n]); err != nil {
				writeErr <- err
				return
			}
			p = p[n:]
			if i%500 == 499 {
				// Long enough for the reader to catch up and find
				// nothing for bulkWait: a batch ends.
				time.Sleep(100 * time.Millisecond)
			}
		}
		writeErr <- w.(*net.TCPConn).CloseWrite()
	}()
	var got bytes.Buffer
	buf := make([]byte, 8192)
	entered, left := false, false
	for {
		n, err := bc.Read(buf)
		got.Write(buf[:n])
		if bc.bulk {
			entered = true
		} else if entered {
			left = true
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read after %d bytes: %v", got.Len(), err)
		}
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("read %d bytes, sent %d; equal prefix %d", got.Len(), len(want), commonPrefix(got.Bytes(), want))
	}
	if !entered || !left {
		t.Errorf("batching entered %v, left %v; want both", entered, left)
	}
}

func commonPrefix(a, b []byte) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// TestBatchConnDeliversALoneMessage: a few bytes after a batch, fewer than
// the low-water mark, are still read, and batching ends.
func TestBatchConnDeliversALoneMessage(t *testing.T) {
	t.Parallel()
	bc, w := loopback(t)
	burst := make([]byte, 2*bulkEnter)
	if _, err := w.Write(burst); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bc, make([]byte, len(burst))); err != nil {
		t.Fatal(err)
	}
	if !bc.bulk {
		t.Fatal("a burst of twice bulkEnter did not start batching")
	}
	if _, err := w.Write([]byte("commit")); err != nil {
		t.Fatal(err)
	}
	if err := bc.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := io.ReadFull(bc, got); err != nil {
		t.Fatalf("the lone message was not read: %v", err)
	}
	if string(got) != "commit" {
		t.Fatalf("read %q", got)
	}
	// Nothing more arrives: the next read leaves batching, then waits for
	// the caller's deadline.
	if err := bc.SetReadDeadline(time.Now().Add(50 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if _, err := bc.Read(got); !isTimeout(err) {
		t.Fatalf("read with nothing sent: %v, want a timeout", err)
	}
	if bc.bulk {
		t.Error("still batching after an idle interval")
	}
}

// TestBatchConnDeadlineInterruptsABatchedWait: a deadline in the past set
// from another goroutine, as pgconn's context watcher sets one, ends a
// read that waits in batching mode.
func TestBatchConnDeadlineInterruptsABatchedWait(t *testing.T) {
	t.Parallel()
	// A trickle keeps the reader batching only while it comes at least
	// every bulkWait; a machine busy enough to delay it for longer ends
	// batching before the deadline, and the attempt proves nothing.
	for attempt := 1; ; attempt++ {
		if deadlineEndsBatchedRead(t) {
			return
		}
		if attempt == 10 {
			t.Fatal("the reader never stayed in batching mode until the deadline")
		}
		t.Logf("attempt %d: batching ended before the deadline; again", attempt)
	}
}

// deadlineEndsBatchedRead sets a deadline in the past while a reader
// batches a trickle, and reports whether the read it ended was a batched
// one.
func deadlineEndsBatchedRead(t *testing.T) bool {
	bc, w := loopback(t)
	if _, err := w.Write(make([]byte, 2*bulkEnter)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(bc, make([]byte, 2*bulkEnter)); err != nil {
		t.Fatal(err)
	}
	if !bc.bulk {
		t.Fatal("not batching")
	}
	// Keep a trickle coming so that batching goes on waiting.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(bulkWait / 4):
				w.Write([]byte{1})
			}
		}
	}()
	type ended struct {
		err  error
		bulk bool
	}
	done := make(chan ended, 1)
	// batched counts the reads that found the reader still batching, so
	// that the deadline is set once the reader is in its batched waits,
	// not before it started; left tells that batching ended.
	var batched atomic.Int64
	var left atomic.Bool
	go func() {
		buf := make([]byte, 1024)
		for {
			if _, err := bc.Read(buf); err != nil {
				done <- ended{err, bc.bulk}
				return
			}
			if bc.bulk {
				batched.Add(1)
			} else {
				left.Store(true)
			}
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for batched.Load() < 3 && !left.Load() {
		select {
		case e := <-done:
			t.Fatalf("read ended with %v before any deadline", e.err)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reader made %d batched reads in 10 s", batched.Load())
		}
	}
	if err := bc.SetDeadline(time.Unix(1, 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-done:
		if !errors.Is(e.err, os.ErrDeadlineExceeded) {
			t.Fatalf("read ended with %v, want the deadline", e.err)
		}
		return e.bulk
	case <-time.After(5 * time.Second):
		t.Fatal("a deadline in the past did not interrupt the batched read")
		return false
	}
}
