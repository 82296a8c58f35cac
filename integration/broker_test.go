//go:build linux

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestRabbitMQKilledMidStreamLosesNothing freezes the broker while rows
// flow, so that the relay certainly has publishes in flight that no one
// will confirm, SIGKILLs it, checks that the slot holds still while it is
// down, restarts it and expects every event, in order per aggregate. It
// needs a broker it may kill, so it always runs its own node, even when
// RELAY_TEST_AMQP_URL is set.
func TestRabbitMQKilledMidStreamLosesNothing(t *testing.T) {
	node := startOwnRabbit(t, services.RabbitOptions{})
	e := newEnv(t)
	e.amqpURL = node.URL()
	q := e.bindQueue("#")
	bound := time.Now()
	e.startRelay()
	w := e.startWriter(50, 13)
	eventually(t, time.Minute, func() error {
		if got := len(q.messages()); got < 3000 {
			return fmt.Errorf("%d messages, waiting for 3000", got)
		}
		return nil
	})
	// Declarations reach the node's disk up to 2 s late; a crash before
	// that would lose the queue itself, which is not what is under test.
	time.Sleep(time.Until(bound.Add(3 * time.Second)))
	crashWithRowsInFlight(t, e, w, node.Freeze, node.Kill)

	// Once the relay has reported what the broker confirmed before it
	// froze, nothing more can be confirmed, so the slot must not move
	// although rows keep committing.
	e.nextStatus()
	held := e.slotLSN()
	w.waitRows(500)
	ids := w.finish()
	time.Sleep(3 * time.Second) // six status intervals
	if got := e.slotLSN(); got != held {
		t.Fatalf("slot moved from %X to %X while the broker was down", held, got)
	}

	if err := node.Restart(t.Context()); err != nil {
		t.Fatalf("restart rabbitmq: %v", err)
	}
	msgs := q.waitDistinct(len(ids), 3*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	end := e.currentLSN()
	eventually(t, 30*time.Second, func() error {
		if got := e.slotLSN(); got < end {
			return fmt.Errorf("slot at %X, WAL end %X after every event was confirmed", got, end)
		}
		return nil
	})
	t.Logf("%d events, %d deliveries after a broker crash", len(ids), len(msgs))
}

// crashWithRowsInFlight freezes the broker, so that it confirms nothing
// more, waits until rows committed after that have reached the relay,
// which cannot have them confirmed, and kills the broker. The fault thus
// lands with rows in flight however fast the relay is, and the slot must
// stay behind them.
func crashWithRowsInFlight(t *testing.T, e *env, w *writer, freeze, kill func() error) {
	t.Helper()
	if err := freeze(); err != nil {
		t.Fatal(err)
	}
	w.waitRows(200)
	unconfirmable := e.currentLSN()
	e.waitSent(unconfirmable)
	if err := kill(); err != nil {
		t.Fatal(err)
	}
	if got := e.slotLSN(); got >= unconfirmable {
		t.Fatalf("slot at %X covers rows committed at %X, after the broker froze: confirmed without a broker", got, unconfirmable)
	}
}

// TestFenceWithoutPermissionStopsTheRelay: a RabbitMQ user that may
// publish to the exchange but not use the stream's fence queue stops the
// relay at start, exit 1, with a message that names the queue and the
// permission to grant; nothing is published meanwhile.
func TestFenceWithoutPermissionStopsTheRelay(t *testing.T) {
	node := startOwnRabbit(t, services.RabbitOptions{})
	e := newEnv(t)
	e.amqpURL = node.URL()
	q := e.bindQueue("#")
	for _, args := range [][]string{
		{"add_user", "limited", "limited-pw"},
		{"set_permissions", "-p", "/", "limited", "^" + e.exchange + "$", "^" + e.exchange + "$", "^" + e.exchange + "$"},
	} {
		if _, err := node.Ctl(t.Context(), args...); err != nil {
			t.Fatal(err)
		}
	}
	e.amqpURL = node.URLAs("limited", "limited-pw")
	e.insertEvents(10, 10, 2)
	p := startRelayWith(t, e.vars())
	if code := p.wait(time.Minute); code != 1 {
		t.Fatalf("exit code %d, want 1; log:\n%s", code, p.log.String())
	}
	log := p.log.String()
	for _, want := range []string{"relay.fence." + e.slot + "." + e.name + ".", "refused", "configure and read permission"} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
	if strings.Contains(log, "limited-pw") {
		t.Errorf("the log holds the password:\n%s", log)
	}
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages published without a fence", n)
	}
}
