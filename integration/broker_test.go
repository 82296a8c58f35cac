//go:build linux

package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestRabbitMQKilledMidStreamLosesNothing SIGKILLs the broker while rows
// flow, checks that the slot holds still while it is down, restarts it and
// expects every event, in order per aggregate. It needs a broker it may
// kill, so it always runs its own node, even when RELAY_TEST_AMQP_URL is set.
func TestRabbitMQKilledMidStreamLosesNothing(t *testing.T) {
	node, err := services.StartRabbit(t.Context())
	if err != nil {
		t.Fatalf("this test kills the broker, so it needs its own RabbitMQ node (apt-get install rabbitmq-server): %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rabbitmq log: %s", node.LogPath())
		}
		node.Close()
	})
	e := newEnv(t)
	e.amqpURL = node.URL()
	q := e.bindQueue("#")
	bound := time.Now()
	e.startRelay()

	const n = 20000
	inserted := make(chan []string, 1)
	go func() { inserted <- e.insertEvents(n, 50, 13) }()
	eventually(t, time.Minute, func() error {
		if got := len(q.messages()); got < 3000 {
			return fmt.Errorf("%d messages, waiting for 3000", got)
		}
		return nil
	})
	// Declarations reach the node's disk up to 2 s late; a crash before
	// that would lose the queue itself, which is not what is under test.
	time.Sleep(time.Until(bound.Add(3 * time.Second)))
	if err := node.Kill(); err != nil {
		t.Fatal(err)
	}

	// Whatever the broker confirmed before it died may still be reported
	// for a moment; after that, nothing can be confirmed, so the slot must
	// not move although rows keep committing.
	time.Sleep(time.Second)
	held := e.slotLSN()
	ids := <-inserted
	time.Sleep(3 * time.Second) // six status intervals
	if got := e.slotLSN(); got != held {
		t.Fatalf("slot moved from %X to %X while the broker was down", held, got)
	}
	if end := e.currentLSN(); held >= end {
		t.Fatalf("slot at %X already covers the WAL end %X: the kill came too late to test anything", held, end)
	}

	if err := node.Restart(t.Context()); err != nil {
		t.Fatalf("restart rabbitmq: %v", err)
	}
	msgs := q.waitDistinct(n, 3*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	end := e.currentLSN()
	eventually(t, 30*time.Second, func() error {
		if got := e.slotLSN(); got < end {
			return fmt.Errorf("slot at %X, WAL end %X after every event was confirmed", got, end)
		}
		return nil
	})
	t.Logf("%d events, %d deliveries after a broker crash", n, len(msgs))
}
