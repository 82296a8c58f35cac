package integration

import (
	"fmt"
	"testing"
	"time"
)

// TestBackfillSurvivesSIGKILL: 100k rows are in the outbox before the relay
// first starts; rows keep being inserted while it backfills; it is
// SIGKILLed mid-backfill and started again. Every row arrives, existing
// and new, duplicates only with the same id, and each aggregate's rows in
// order.
func TestBackfillSurvivesSIGKILL(t *testing.T) {
	e := newEnv(t)
	const existing = 100000
	const aggregates = 11
	// Numbered per aggregate as insertEvents numbers them, so checkOrder
	// can judge the backfilled rows too.
	e.exec(fmt.Sprintf(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		SELECT 'order', 'old-' || (i %% %[1]d), 'order.created',
		       jsonb_build_object('agg', 'old-' || (i %% %[1]d), 'seq', i / %[1]d + 1)
		FROM generate_series(0, %[2]d - 1) i`, aggregates, existing))
	var old []string
	rows, err := e.db.Query(t.Context(), "SELECT id::text FROM outbox")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		old = append(old, id)
	}
	rows.Close()
	if len(old) != existing {
		t.Fatalf("%d rows inserted, want %d", len(old), existing)
	}

	q := e.bindQueue("#")
	p := startRelayWith(t, e.vars())
	inserted := make(chan []string, 1)
	go func() { inserted <- e.insertEvents(5000, 10, 7) }()
	eventually(t, 2*time.Minute, func() error {
		if p.exited() {
			t.Fatalf("relay exited: %v; log:\n%s", p.err, p.log.String())
		}
		if got := len(q.messages()); got < existing/3 {
			return fmt.Errorf("%d messages, waiting for %d", got, existing/3)
		}
		return nil
	})
	var done bool
	if err := e.db.QueryRow(t.Context(), "SELECT bool_and(done) FROM relay.backfill WHERE slot_name = $1", e.slot).Scan(&done); err != nil {
		t.Fatalf("relay.backfill: %v", err)
	}
	if done {
		t.Fatal("the backfill finished before the kill; the test kills nothing")
	}
	p.kill()
	p = startRelayWith(t, e.vars())
	ids := append(old, <-inserted...)
	msgs := q.waitDistinct(len(ids), 3*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	if err := e.db.QueryRow(t.Context(), "SELECT bool_and(done) FROM relay.backfill WHERE slot_name = $1", e.slot).Scan(&done); err != nil || !done {
		t.Errorf("relay.backfill done=%v (%v) after every row arrived", done, err)
	}
	t.Logf("%d existing rows and %d inserted during the backfill; %d deliveries (%d again after the kill)", existing, len(ids)-existing, len(msgs), len(msgs)-len(ids))
}
