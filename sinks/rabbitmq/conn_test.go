package rabbitmq

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestGatheringConnKeepsEveryByteInOrder(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	g := gather(client)
	defer g.Close()
	var want bytes.Buffer
	for i := range 20000 {
		want.Write(bytes.Repeat([]byte{byte(i)}, 1+i%700))
	}
	got := make(chan []byte)
	go func() {
		b := make([]byte, want.Len())
		n, _ := io.ReadFull(server, b)
		got <- b[:n]
	}()
	for rest := want.Bytes(); len(rest) > 0; {
		n := 1 + len(rest)%700
		if n > len(rest) {
			n = len(rest)
		}
		if w, err := g.Write(rest[:n]); w != n || err != nil {
			t.Fatalf("Write = %d, %v", w, err)
		}
		rest = rest[n:]
	}
	if b := <-got; !bytes.Equal(b, want.Bytes()) {
		t.Fatalf("read %d bytes, wrote %d; the streams differ", len(b), want.Len())
	}
}

func TestGatheringConnReturnsAWriteErrorFromTheNextWrite(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe()
	server.Close()
	g := gather(client)
	defer g.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := g.Write([]byte("frame"))
		if err != nil {
			if !errors.Is(err, io.ErrClosedPipe) {
				t.Fatalf("Write error %v, want the connection's", err)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("Write never reported the broken connection")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestGatheringConnWaitsWhenFullAndCloseFreesIt(t *testing.T) {
	t.Parallel()
	client, server := net.Pipe() // nobody reads: the first write blocks
	defer server.Close()
	g := gather(client)
	big := make([]byte, maxGathered/2+1)
	// The writer takes the first and blocks writing it; the second fills
	// the buffer.
	if _, err := g.Write(big); err != nil {
		t.Fatal(err)
	}
	for taken := false; !taken; {
		g.mu.Lock()
		taken = len(g.pending) == 0
		g.mu.Unlock()
	}
	if _, err := g.Write(big); err != nil {
		t.Fatal(err)
	}
	// Only a Write waiting for room unlocks through room.L (everything else
	// locks g.mu itself), so counting those unlocks tells that the third
	// Write really waits before Close, rather than hoping it got there.
	waits := &unlockCounter{Locker: &g.mu}
	g.room.L = waits
	blocked := make(chan error)
	go func() {
		_, err := g.Write(big)
		blocked <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for waits.n.Load() == 0 {
		select {
		case err := <-blocked:
			t.Fatalf("Write returned %v with the buffer full", err)
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatal("the third Write never waited for room")
		}
	}
	g.Close()
	select {
	case err := <-blocked:
		if err == nil {
			t.Fatal("Write after Close succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not free a waiting Write")
	}
}

// unlockCounter counts its Unlock calls.
type unlockCounter struct {
	sync.Locker
	n atomic.Int64
}

func (u *unlockCounter) Unlock() {
	u.n.Add(1)
	u.Locker.Unlock()
}
