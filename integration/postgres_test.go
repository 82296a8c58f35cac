//go:build linux

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestPostgresKilledMidStreamLosesNothing SIGKILLs PostgreSQL (its own
// server, so other tests keep theirs) while the relay streams, restarts it,
// and expects the relay to reconnect by itself and deliver every event.
func TestPostgresKilledMidStreamLosesNothing(t *testing.T) {
	server, err := services.StartPostgres(t.Context(), services.PostgresOptions{})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	e := newEnvOn(t, server)
	q := e.bindQueue("#")
	// A backlog makes sure the crash comes mid-stream: the first relay
	// creates the slot, the rows commit while none runs, the second
	// streams them.
	e.startRelay().kill()
	const n = 20000
	ids := e.insertEvents(n, 100, 17)
	p := e.startRelay()
	eventually(t, time.Minute, func() error {
		if got := len(q.messages()); got < 2000 {
			return fmt.Errorf("%d messages, waiting for 2000", got)
		}
		return nil
	})
	if err := server.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the relay meets the dead server and backs off
	if p.exited() {
		t.Fatalf("relay exited while PostgreSQL was down; log:\n%s", p.log.String())
	}
	if err := server.Restart(t.Context()); err != nil {
		t.Fatalf("restart postgres: %v", err)
	}

	msgs := q.waitDistinct(n, 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	end := e.currentLSN()
	eventually(t, 30*time.Second, func() error {
		if got := e.slotLSN(); got < end {
			return fmt.Errorf("slot at %X, WAL end %X after every event was confirmed", got, end)
		}
		return nil
	})
	if !strings.Contains(p.log.String(), "retrying") {
		t.Errorf("the relay did not log the lost connection; log:\n%s", p.log.String())
	}
	t.Logf("%d events, %d deliveries across a PostgreSQL crash", n, len(msgs))
}

// TestDroppedSlotStopsTheRelay drops the relay's slot behind its back. Rows
// committed since the slot's last confirmed position may be gone for good,
// so the relay must stop with exit code 1 and say so, not quietly create a
// new slot that starts after them.
func TestDroppedSlotStopsTheRelay(t *testing.T) {
	e := newEnv(t)
	q := e.bindQueue("#")
	p := e.startRelay()
	ids := e.insertEvents(100, 10, 3)
	q.waitDistinct(len(ids), 30*time.Second)

	// An active slot cannot be dropped: end the relay's walsender and drop
	// the slot before the relay reconnects.
	eventually(t, 30*time.Second, func() error {
		e.db.Exec(t.Context(), "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active", e.slot)
		_, err := e.db.Exec(t.Context(), "SELECT pg_drop_replication_slot($1)", e.slot)
		return err
	})
	if code := p.wait(time.Minute); code != 1 {
		t.Fatalf("exit code %d after the slot was dropped, want 1; log:\n%s", code, p.log.String())
	}
	if log := p.log.String(); !strings.Contains(log, e.slot) || !strings.Contains(log, "disappeared") {
		t.Fatalf("the log does not say the slot disappeared:\n%s", log)
	}
}
