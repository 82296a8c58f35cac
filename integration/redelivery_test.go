//go:build linux

package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
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
	for _, b := range sharedBrokers {
		t.Run(b.name, func(t *testing.T) {
			e, c := b.newEnv(t)
			// The slot exists and the rows wait in the WAL: the restarted
			// relay drains them from the stream, as fast as it can. A
			// relay that has confirmed all it published when it is killed
			// (it was waiting for the walsender) republishes nothing, so
			// such a kill is tried again with a fresh backlog.
			p := e.startRelay()
			count := func(batch map[string]bool) (deliveries, distinct int) {
				seen := map[string]bool{}
				for _, id := range c.ids() {
					if batch[id] {
						deliveries++
						seen[id] = true
					}
				}
				return deliveries, len(seen)
			}
			for attempt := 1; ; attempt++ {
				if code := p.stop(30 * time.Second); code != 0 {
					t.Fatalf("exit code %d after SIGTERM", code)
				}
				batch := map[string]bool{}
				for _, id := range e.insertEvents(backlog, 1000, 97) {
					batch[id] = true
				}
				p = e.startRelay()
				start := time.Now()
				eventually(t, 2*time.Minute, func() error {
					if _, n := count(batch); n < backlog/2 {
						return fmt.Errorf("%d of %d rows delivered, waiting for half", n, backlog)
					}
					return nil
				})
				atKill, _ := count(batch)
				rate := float64(atKill) / time.Since(start).Seconds()
				due := e.killWithReplayDue(p, c.highestRelayLSN)
				p = e.startRelay()
				eventually(t, 2*time.Minute, func() error {
					if _, n := count(batch); n < backlog {
						return fmt.Errorf("%d of %d rows delivered", n, backlog)
					}
					return nil
				})
				if !due {
					if attempt == 5 {
						t.Fatalf("in %d attempts no kill left a replay due: nothing was tested", attempt)
					}
					t.Logf("attempt %d: the kill left nothing to publish again; again with a new backlog", attempt)
					continue
				}
				deliveries, _ := count(batch)
				again := deliveries - backlog
				bound := redeliveryWindow + int(0.1*rate)
				t.Logf("%s: drained at %.0f rows/s, killed after %d deliveries; %d delivered again (bound: window %d + 100 ms %d = %d)",
					b.name, rate, atKill, again, redeliveryWindow, bound-redeliveryWindow, bound)
				if again > bound {
					t.Errorf("one kill redelivered %d rows, more than the in-flight window plus 100 ms of stream (%d)", again, bound)
				}
				return
			}
		})
	}
}

// TestPostgresCrashRepublishesAtMost2sOfStream: PostgreSQL keeps a logical
// slot's confirmed position in memory and, after a crash, resumes from the
// last one it happened to save, which can be the slot's creation. With a
// steady stream, a CHECKPOINT 4 s before an immediate (crash) restart of
// PostgreSQL, the relay's own durable record of what the brokers confirmed
// limits what comes again to about 2 s of the stream, where the slot
// alone would give the 4 s since its last save.
func TestPostgresCrashRepublishesAtMost2sOfStream(t *testing.T) {
	server, err := services.StartPostgres(t.Context(), services.PostgresOptions{})
	if err != nil {
		t.Fatalf("this test crashes PostgreSQL, so it needs a server of its own: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	e := newEnvOn(t, server)
	q := e.bindQueue("#")
	p := e.startRelay()

	// About 1000 rows a second, for long enough that the slot has moved
	// far past its creation.
	const perTx, every = 20, 20 * time.Millisecond
	rows := newEventRows(7)
	w := e.startWriterFunc(func(ctx context.Context) ([]string, error) {
		time.Sleep(every)
		return rows.commit(ctx, e.db, perTx)
	})
	waitMessages(t, q, 3000)
	// The checkpoint has the slot saved soon after (its restart point
	// moves past the checkpoint's running-transactions record); the
	// position it confirms in the seconds after that stays in memory only.
	e.exec("CHECKPOINT")
	w.waitRows(4000)
	ids := w.finish()
	q.waitDistinct(len(ids), time.Minute)
	before := len(q.messages())
	if err := server.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := server.Restart(t.Context()); err != nil {
		t.Fatalf("restart postgres: %v", err)
	}
	e.db.Reset() // its connections died with the server
	// The relay reconnects by itself and streams again; the rows it
	// republishes arrive meanwhile.
	eventually(t, time.Minute, func() error {
		if p.exited() {
			t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
		}
		if active, _ := e.slotActive(); !active {
			return fmt.Errorf("slot %s not streaming again yet", e.slot)
		}
		return nil
	})
	// A row committed now arrives after anything republished.
	last := e.insertEvents(1, 1, 1)[0]
	eventually(t, time.Minute, func() error {
		if _, ok := q.find(last); !ok {
			return fmt.Errorf("row %s committed after the restart has not arrived", last)
		}
		return nil
	})
	again := len(q.messages()) - before - 1
	bound := int(2 * float64(perTx) / every.Seconds())
	t.Logf("%d rows at about %d rows/s; %d delivered again after the crash (bound: 2 s of stream, %d)", len(ids), bound/2, again, bound)
	if again > bound {
		t.Errorf("a PostgreSQL crash republished %d rows, more than 2 s of the stream (%d)", again, bound)
	}
}
