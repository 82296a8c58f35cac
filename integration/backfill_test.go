package integration

import (
	"fmt"
	"testing"
	"time"
)

// backfillPage is how many rows the relay's backfill publishes at a time
// (pgsource's backfillBatch): it records a page once the broker confirmed
// all of it, and reads the next one only then.
const backfillPage = 2000

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
	old := queryStrings(t, e.db, "SELECT id::text FROM outbox")
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
		if recorded, _, err := e.backfillState(); err != nil || recorded < existing/3 {
			return fmt.Errorf("backfill recorded %d rows (%v), waiting for %d", recorded, err, existing/3)
		}
		return nil
	})
	// Frozen, the relay publishes and records nothing more, so the state
	// read now is the one the kill leaves, give or take a record under way:
	// the backfill is certainly unfinished if it is over a page from its end.
	p.freeze()
	recorded, done, err := e.backfillState()
	if err != nil {
		t.Fatalf("relay.backfill: %v", err)
	}
	if done || recorded+2*backfillPage >= existing {
		t.Fatalf("the backfill had recorded %d of %d rows (done %v) when the relay froze: too near its end for the kill to land before it", recorded, existing, done)
	}
	p.kill()
	p = startRelayWith(t, e.vars())
	ids := append(old, <-inserted...)
	msgs := q.waitDistinct(len(ids), 3*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	if _, done, err := e.backfillState(); err != nil || !done {
		t.Errorf("relay.backfill done=%v (%v) after every row arrived", done, err)
	}
	t.Logf("killed with %d of %d existing rows recorded; %d inserted during the backfill; %d deliveries (%d again after the kill)", recorded, existing, len(ids)-existing, len(msgs), len(msgs)-len(ids))
}

// backfillState returns the rows the relay's backfill of the env's slot
// has recorded as confirmed, and whether it is done.
func (e *env) backfillState() (recorded int64, done bool, err error) {
	err = e.db.QueryRow(e.t.Context(), "SELECT coalesce(sum(rows_done), 0), coalesce(bool_and(done), false) FROM relay.backfill WHERE slot_name = $1", e.slot).Scan(&recorded, &done)
	return recorded, done, err
}
