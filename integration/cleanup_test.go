package integration

import (
	"fmt"
	"testing"
	"time"
)

// TestCleanupDeletesOnlyConfirmedRows: with RELAY_CLEANUP=after-publish the
// relay deletes rows the broker confirmed; it is SIGKILLed mid-stream and
// started again. Every row arrives, and every row gone from the table had
// arrived before: none was deleted ahead of its confirm.
func TestCleanupDeletesOnlyConfirmedRows(t *testing.T) {
	e := newEnv(t)
	e.extraVars = map[string]string{"RELAY_CLEANUP": "after-publish"}
	e.exec(`GRANT DELETE ON outbox TO relay`)
	q := e.bindQueue("#")
	p := e.startRelay()
	const n = 20000
	inserted := make(chan []string, 1)
	go func() { inserted <- e.insertEvents(n, 20, 7) }()
	eventually(t, time.Minute, func() error {
		if got := len(q.messages()); got < n/3 {
			return fmt.Errorf("%d messages, waiting for %d", got, n/3)
		}
		return nil
	})
	// What was deleted by the kill must have been confirmed, so it is
	// in the queue.
	p.kill()
	// The broker confirmed what it holds; let the consumer drain it.
	for last := -1; len(q.messages()) != last; time.Sleep(time.Second) {
		last = len(q.messages())
	}
	arrived := map[string]bool{}
	for _, m := range q.messages() {
		arrived[m.MessageId] = true
	}
	var deleted []string
	ids := <-inserted
	present := map[string]bool{}
	rows, err := e.db.Query(t.Context(), "SELECT id::text FROM outbox")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		rows.Scan(&id)
		present[id] = true
	}
	rows.Close()
	for _, id := range ids {
		if !present[id] {
			deleted = append(deleted, id)
		}
	}
	for _, id := range deleted {
		if !arrived[id] {
			t.Fatalf("row %s was deleted before the broker delivered it", id)
		}
	}
	if len(deleted) == 0 {
		t.Fatal("nothing was deleted before the kill; the test shows nothing")
	}
	p = e.startRelay()
	msgs := q.waitDistinct(n, 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	// Once everything is confirmed, the rows published after the restart
	// are deleted too; those confirmed just before the kill may stay.
	var left int
	eventually(t, 30*time.Second, func() error {
		if err := e.db.QueryRow(t.Context(), "SELECT count(*) FROM outbox").Scan(&left); err != nil {
			return err
		}
		if left > n/2 {
			return fmt.Errorf("%d rows left", left)
		}
		return nil
	})
	t.Logf("%d rows deleted before the kill (all delivered); %d rows left at the end of %d", len(deleted), left, n)
}
