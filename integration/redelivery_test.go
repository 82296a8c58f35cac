//go:build linux

package integration

import (
	"fmt"
	"testing"
	"time"
)

// redeliveryWindow is the relay's RELAY_MAX_IN_FLIGHT default: the events
// a kill can leave handed to the broker and not yet confirmed.
const redeliveryWindow = 4096

// TestOneKillRedeliversAtMostTheWindowAnd100ms: the relay drains a
// backlog at full speed and is SIGKILLed halfway, at a moment when a
// replay is due. Restarted, it may publish again what was in flight and
// what the broker confirmed but the slot had not yet been told: at most
// the in-flight window plus 100 ms of the stream, measured at the drain
// rate of the same run.
func TestOneKillRedeliversAtMostTheWindowAnd100ms(t *testing.T) {
	const backlog = 60000
	for _, broker := range []string{"rabbitmq", "kafka"} {
		t.Run(broker, func(t *testing.T) {
			var e *env
			var delivered func() []string
			var lastLSN func() uint64
			if broker == "kafka" {
				e = newKafkaEnv(t)
				c := e.consumeKafka()
				delivered = func() []string {
					recs := c.records()
					ids := make([]string, len(recs))
					for i, r := range recs {
						ids[i] = r.id()
					}
					return ids
				}
				lastLSN = c.highestRelayLSN
			} else {
				e = newEnv(t)
				q := e.bindQueue("#")
				delivered = func() []string {
					msgs := q.messages()
					ids := make([]string, len(msgs))
					for i, m := range msgs {
						ids[i] = m.MessageId
					}
					return ids
				}
				lastLSN = q.highestRelayLSN
			}
			// The slot exists and the rows wait in the WAL: the restarted
			// relay drains them from the stream, as fast as it can.
			p := e.startRelay()
			if code := p.stop(30 * time.Second); code != 0 {
				t.Fatalf("exit code %d after SIGTERM", code)
			}
			ids := e.insertEvents(backlog, 1000, 97)
			p = e.startRelay()
			start := time.Now()
			var atKill int
			var rate float64
			k := &replayKiller{e: e, delivered: lastLSN}
			waitMessagesFunc(t, delivered, backlog/2)
			atKill = len(delivered())
			rate = float64(atKill) / time.Since(start).Seconds()
			p = k.kill(p)
			if k.kills != 1 {
				t.Logf("%d kills before one left a replay due", k.kills)
			}

			var got []string
			eventually(t, 2*time.Minute, func() error {
				got = delivered()
				seen := map[string]bool{}
				for _, id := range got {
					seen[id] = true
				}
				if len(seen) < len(ids) {
					return fmt.Errorf("%d of %d rows delivered", len(seen), len(ids))
				}
				return nil
			})
			again := len(got) - len(ids)
			bound := redeliveryWindow + int(0.1*rate)
			t.Logf("%s: drained at %.0f rows/s, killed after %d deliveries; %d delivered again (bound: window %d + 100 ms %d = %d)",
				broker, rate, atKill, again, redeliveryWindow, bound-redeliveryWindow, bound)
			if again > bound {
				t.Errorf("one kill redelivered %d rows, more than the in-flight window plus 100 ms of stream (%d)", again, bound)
			}
		})
	}
}

// waitMessagesFunc waits until delivered returns at least n ids.
func waitMessagesFunc(t *testing.T, delivered func() []string, n int) {
	t.Helper()
	eventually(t, 2*time.Minute, func() error {
		if got := len(delivered()); got < n {
			return fmt.Errorf("%d deliveries, waiting for %d", got, n)
		}
		return nil
	})
}
