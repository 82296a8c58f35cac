//go:build linux

package integration

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestPostgresKilledMidStreamLosesNothing SIGKILLs PostgreSQL (its own
// server, so other tests keep theirs) while the relay streams and rows it
// has not confirmed are in the WAL, restarts it, and expects the relay to
// reconnect by itself and deliver every event.
func TestPostgresKilledMidStreamLosesNothing(t *testing.T) {
	server, err := services.StartPostgres(t.Context(), services.PostgresOptions{})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	e := newEnvOn(t, server)
	q := e.bindQueue("#")
	p := e.startRelay()
	w := e.startWriter(100, 17)
	waitMessages(t, q, 2000)
	// Frozen, the relay confirms nothing more: the rows committed now are
	// certainly past the slot when the server dies.
	p.freeze()
	w.waitRows(500)
	ids := w.finish() // before the server dies under it
	if slot, end := e.slotLSN(), e.currentLSN(); slot >= end {
		t.Fatalf("slot at %X covers rows committed up to %X while the relay was frozen", slot, end)
	}
	if err := server.Kill(); err != nil {
		t.Fatal(err)
	}
	logged := len(p.log.String())
	p.thaw()
	// It meets the dead server and backs off, rather than exiting.
	eventually(t, time.Minute, func() error {
		if p.exited() {
			t.Fatalf("relay exited while PostgreSQL was down; log:\n%s", p.log.String())
		}
		if !strings.Contains(p.log.String()[logged:], "retrying") {
			return errors.New("the relay has not logged the lost connection")
		}
		return nil
	})
	if err := server.Restart(t.Context()); err != nil {
		t.Fatalf("restart postgres: %v", err)
	}
	e.db.Reset() // its connections died with the server

	msgs := q.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	end := e.currentLSN()
	e.waitSlotAt(end, 30*time.Second)
	t.Logf("%d events, %d deliveries across a PostgreSQL crash", len(ids), len(msgs))
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

	e.dropSlotUnder(p)
	if code := p.wait(time.Minute); code != 1 {
		t.Fatalf("exit code %d after the slot was dropped, want 1; log:\n%s", code, p.log.String())
	}
	if log := p.log.String(); !strings.Contains(log, e.slot) || !strings.Contains(log, "disappeared") {
		t.Fatalf("the log does not say the slot disappeared:\n%s", log)
	}
}

// dropSlotUnder drops the env's slot from under relay p. An active slot
// cannot be dropped, and a running relay reconnects within its backoff, so
// p is frozen while its walsender is ended and the slot dropped; thawed,
// it finds its connection and its slot gone.
func (e *env) dropSlotUnder(p *relayProc) {
	e.t.Helper()
	p.freeze()
	defer p.thaw()
	active, pid := e.slotActive()
	if !active {
		e.t.Fatalf("slot %s has no reader to drop it from under", e.slot)
	}
	e.exec("SELECT pg_terminate_backend($1)", pid)
	// pg_terminate_backend only signals: the slot is released once the
	// walsender has exited.
	eventually(e.t, 30*time.Second, func() error {
		if active, pid := e.slotActive(); active {
			return fmt.Errorf("slot %s still active (pid %d)", e.slot, pid)
		}
		return nil
	})
	e.exec("SELECT pg_drop_replication_slot($1)", e.slot)
}
