//go:build linux

package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestBrokerKilledMidStreamLosesNothing freezes the broker while rows
// flow, so that the relay certainly has publishes in flight that no one
// will confirm, SIGKILLs it, checks that the slot holds still while it is
// down, restarts it and expects every event, in order per aggregate (per
// key on Kafka). It needs a broker it may kill, so it always runs its own
// node, even when RELAY_TEST_AMQP_URL or RELAY_TEST_KAFKA_BROKERS is set.
// Subtests rabbitmq (formerly TestRabbitMQKilledMidStreamLosesNothing)
// and kafka (formerly TestKafkaBrokerKilledMidStreamLosesNothing, which
// also leaves RELAY_KAFKA_TOPIC unset, so the default template is used).
func TestBrokerKilledMidStreamLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		own  func(t *testing.T, e *env) ownBroker
	}{
		{"rabbitmq", func(t *testing.T, e *env) ownBroker {
			node := startOwnRabbit(t, services.RabbitOptions{})
			e.amqpURL = node.URL()
			return ownBroker{
				freeze: node.Freeze, kill: node.Kill, restart: node.Restart,
				c: e.bindQueue("#"),
				// A crash before declarations reach the node's disk
				// would lose the queue itself, which is not what is
				// under test.
				persist: node.SyncTopology,
			}
		}},
		{"kafka", func(t *testing.T, e *env) ownBroker {
			node := startOwnKafka(t, services.KafkaOptions{})
			e.useKafka(node.Brokers(), "")
			c := e.consumeKafka()
			return ownBroker{
				freeze: node.Freeze, kill: node.Kill, restart: node.Restart,
				c: c,
				check: func(t *testing.T) {
					for _, r := range c.records() {
						if r.Topic != "outbox.event.order" {
							t.Fatalf("record %s on topic %q, want the default template's outbox.event.order", r.id(), r.Topic)
						}
					}
				},
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			b := tc.own(t, e)
			e.startRelay()
			w := e.startWriter(50, 13)
			waitMessages(t, b.c, 3000)
			if b.persist != nil {
				if err := b.persist(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			crashWithRowsInFlight(t, e, w, b.freeze, b.kill)

			// Once the relay has reported what the broker confirmed
			// before it froze, nothing more can be confirmed, so the slot
			// must not move although rows keep committing.
			e.nextStatus()
			held := e.slotLSN()
			w.waitRows(500)
			ids := w.finish()
			e.slotStaysAt(held, 6)

			if err := b.restart(t.Context()); err != nil {
				t.Fatalf("restart %s: %v", tc.name, err)
			}
			msgs := b.c.waitDistinctMessages(len(ids), 3*time.Minute)
			checkAll(t, ids, msgs)
			checkOrder(t, msgs)
			b.c.checkBroker(t)
			if b.check != nil {
				b.check(t)
			}
			end := e.currentLSN()
			e.waitSlotAt(end, 30*time.Second)
			t.Logf("%d events, %d deliveries after a broker crash", len(ids), len(msgs))
		})
	}
}

// ownBroker is a broker node of the test's own, which it may freeze, kill
// and restart, and a consumer of what the relay publishes to it.
type ownBroker struct {
	freeze, kill func() error
	restart      func(context.Context) error
	c            sinkConsumer
	// persist, when set, makes what the node was told so far survive a
	// SIGKILL.
	persist func(context.Context) error
	// check, when set, asserts what this test adds for this broker.
	check func(t *testing.T)
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
	t.Parallel()
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
	q.barrier()
	if n := len(q.messages()); n != 0 {
		t.Errorf("%d messages published without a fence", n)
	}
}
