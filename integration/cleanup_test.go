package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// TestCleanupDeletesOnlyConfirmedRows: with RELAY_CLEANUP=after-publish the
// relay deletes rows the broker confirmed. The broker freezes after some
// rows were confirmed and deleted, rows committed after that reach the
// relay and go out unconfirmed, and the relay is SIGKILLed and started
// again. None of those rows was deleted, every row gone from the table had
// reached the broker before, and every row arrives. It freezes and kills
// the broker, so it runs its own node, even when RELAY_TEST_AMQP_URL is set.
func TestCleanupDeletesOnlyConfirmedRows(t *testing.T) {
	node := startOwnRabbit(t, services.RabbitOptions{})
	e := newEnv(t)
	e.amqpURL = node.URL()
	e.extraVars = map[string]string{"RELAY_CLEANUP": "after-publish"}
	e.exec(`GRANT DELETE ON outbox TO relay`)
	q := e.bindQueue("#")
	p := e.startRelay()

	// One numbering for every row, so that checkOrder judges them all.
	numbered := newEventRows(7)
	commit := func(n int) []string {
		t.Helper()
		return numbered.commitAll(t, e.db, n, 20)
	}
	confirmed := commit(6000)
	q.waitDistinct(len(confirmed), time.Minute)
	eventually(t, 30*time.Second, func() error {
		if left := e.outboxCount(); left >= len(confirmed) {
			return fmt.Errorf("%d of %d rows in the outbox: nothing deleted yet", left, len(confirmed))
		}
		return nil
	})

	// A crash before the declarations reach the node's disk would lose the
	// queue itself, which is not what is under test.
	if err := node.SyncTopology(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Frozen, the broker confirms nothing more: rows committed from now on
	// reach the relay, which cannot have them confirmed, and must stay in
	// the table.
	if err := node.Freeze(); err != nil {
		t.Fatal(err)
	}
	unconfirmed := commit(200)
	e.waitSent(e.currentLSN())
	all := append(append([]string(nil), confirmed...), unconfirmed...)
	p.kill()
	e.waitRelayGone()

	present := e.outboxIDs()
	for _, id := range unconfirmed {
		if !present[id] {
			t.Fatalf("row %s, committed after the broker froze, was deleted although the broker never confirmed it", id)
		}
	}
	var deleted []string
	for _, id := range confirmed {
		if !present[id] {
			deleted = append(deleted, id)
		}
	}
	if len(deleted) == 0 {
		t.Fatal("nothing was deleted before the kill; the test shows nothing")
	}

	// What was deleted must have been confirmed, so the broker has it: the
	// consumer received it before the freeze or gets it from the queue.
	if err := node.Restart(t.Context()); err != nil {
		t.Fatalf("restart rabbitmq: %v", err)
	}
	eventually(t, time.Minute, func() error {
		arrived := map[string]bool{}
		for _, m := range q.messages() {
			arrived[m.MessageId] = true
		}
		missing := 0
		for _, id := range deleted {
			if !arrived[id] {
				missing++
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d deleted rows not delivered (e.g. %s): deleted before the broker had them?", missing, len(deleted), firstMissing(deleted, arrived))
		}
		return nil
	})

	p = e.startRelay()
	msgs := q.waitDistinct(len(all), 2*time.Minute)
	checkAll(t, all, msgs)
	checkOrder(t, msgs)
	// Once confirmed, the rows published after the restart are deleted
	// too; rows confirmed just before the kill may stay.
	eventually(t, 30*time.Second, func() error {
		present := e.outboxIDs()
		for _, id := range unconfirmed {
			if present[id] {
				return fmt.Errorf("row %s, published after the restart, is still in the outbox", id)
			}
		}
		return nil
	})
	t.Logf("%d rows deleted before the kill (all delivered), %d unconfirmed kept; %d rows left at the end of %d", len(deleted), len(unconfirmed), e.outboxCount(), len(all))
}

func firstMissing(ids []string, arrived map[string]bool) string {
	for _, id := range ids {
		if !arrived[id] {
			return id
		}
	}
	return ""
}

// outboxCount returns how many rows the outbox holds.
func (e *env) outboxCount() int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(e.t.Context(), "SELECT count(*) FROM outbox").Scan(&n); err != nil {
		e.t.Fatalf("count outbox rows: %v", err)
	}
	return n
}

// outboxIDs returns the ids of the rows the outbox holds.
func (e *env) outboxIDs() map[string]bool {
	e.t.Helper()
	rows, err := e.db.Query(e.t.Context(), "SELECT id::text FROM outbox")
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	ids := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			e.t.Fatal(err)
		}
		ids[id] = true
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return ids
}

// waitRelayGone waits until no session of the relay's role is left in the
// env's database: after a SIGKILL, statements a backend was still running
// (a DELETE of confirmed rows, a backfill record) have ended, so what the
// tables hold is final.
func (e *env) waitRelayGone() {
	e.t.Helper()
	eventually(e.t, time.Minute, func() error {
		var n int
		if err := e.db.QueryRow(e.t.Context(), "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = 'relay'", e.name).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%d sessions of the killed relay still in database %s", n, e.name)
		}
		return nil
	})
}
