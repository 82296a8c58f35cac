package kafka

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

// dones records which events are done, in the order Done was called.
type dones struct {
	mu   sync.Mutex
	ok   []string
	errs map[string]error
}

// event returns row index of the database transaction numbered txn.
func (d *dones) event(txn, index int) *relay.Event {
	ev := &relay.Event{
		ID: fmt.Sprintf("t%d-%d", txn, index), Table: "public.outbox", AggregateType: "order",
		AggregateID: fmt.Sprint("o-", index%3), EventType: "created", Payload: []byte("{}"),
		CommitLSN: relay.LSN(0x1000000 + txn*0x100), Index: index,
	}
	ev.OnDone(func(ev *relay.Event, err error) {
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil {
			if d.errs == nil {
				d.errs = map[string]error{}
			}
			d.errs[ev.ID] = err
			return
		}
		d.ok = append(d.ok, ev.ID)
	})
	return ev
}

func (d *dones) done() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.ok)
}

func ids(txn, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("t%d-%d", txn, i))
	}
	return out
}

func publishTxn(t *testing.T, s *Sink, d *dones, txn, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := s.Publish(t.Context(), d.event(txn, i)); err != nil {
			t.Fatal(err)
		}
	}
}

// boundaryConfig is exactly-once with transactions of at most 20 events,
// committed at a database transaction's end once they hold 10, and never
// by the linger timer within a test: only what the test does commits.
func boundaryConfig(t *testing.T, brokers []string) Config {
	cfg := eosConfig(t, brokers)
	cfg.TransactionMaxEvents, cfg.TransactionLinger = 20, time.Hour
	return cfg
}

// Each check below reads Done right after the call that commits: a
// commit's Done calls run before Publish or Boundary returns, so what is
// not done then was not committed.

// TestKafkaTransactionsHoldWholeDatabaseTransactions: a Kafka transaction
// takes in whole database transactions and commits at the first end of
// one after it holds half the bound, or when the stream goes idle; never
// in the middle of one.
func TestKafkaTransactionsHoldWholeDatabaseTransactions(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, boundaryConfig(t, brokers))
	d := &dones{}
	publishTxn(t, s, d, 0, 0, 7)
	s.Boundary(t.Context(), relay.TransactionEnd)
	publishTxn(t, s, d, 1, 0, 7)
	s.Boundary(t.Context(), relay.TransactionEnd) // 14 events: due
	want := append(ids(0, 0, 7), ids(1, 0, 7)...)
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	publishTxn(t, s, d, 2, 0, 5)
	s.Boundary(t.Context(), relay.TransactionEnd) // 5 events: not due
	publishTxn(t, s, d, 3, 0, 6)
	publishTxn(t, s, d, 4, 0, 1) // 11 before it, but no boundary yet
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	publishTxn(t, s, d, 4, 1, 3)
	s.Boundary(t.Context(), relay.Idle)
	want = append(want, append(append(ids(2, 0, 5), ids(3, 0, 6)...), ids(4, 0, 3)...)...)
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != len(want) {
		t.Fatalf("a read_committed consumer sees %d records, want %d", len(recs), len(want))
	}
}

// TestAKafkaTransactionEndsInsideADatabaseTransactionOnlyAtTheBound: a
// database transaction of more events than the bound is split there, and
// where the full window stalls the stream; the split is counted and
// logged once, with its parts, when the database transaction ends. One
// that merely ends at the bound is not split.
func TestAKafkaTransactionEndsInsideADatabaseTransactionOnlyAtTheBound(t *testing.T) {
	brokers := cluster(t)
	reg := prometheus.NewRegistry()
	cfg := boundaryConfig(t, brokers)
	cfg.Metrics = metrics.New(reg, "kafka")
	var logs strings.Builder
	var logMu sync.Mutex
	cfg.Logger = newTestLogger(&logs, &logMu)
	s := newSink(t, cfg)
	d := &dones{}
	split := func() float64 {
		t.Helper()
		families, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range families {
			if f.GetName() == "relay_transactions_split_total" {
				return f.GetMetric()[0].GetCounter().GetValue()
			}
		}
		t.Fatal("no relay_transactions_split_total")
		return 0
	}

	publishTxn(t, s, d, 0, 0, 20) // ends exactly at the bound
	if got := d.done(); !slices.Equal(got, ids(0, 0, 20)) {
		t.Fatalf("done %v, want the 20 events of the bound", got)
	}
	s.Boundary(t.Context(), relay.TransactionEnd)
	if n := split(); n != 0 {
		t.Fatalf("relay_transactions_split_total = %v after a transaction that ended at the bound", n)
	}

	publishTxn(t, s, d, 1, 0, 45) // 20 + 20 + 5
	want := append(ids(0, 0, 20), ids(1, 0, 40)...)
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	s.Boundary(t.Context(), relay.Idle)
	want = append(want, ids(1, 40, 45)...)
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	if n := split(); n != 1 {
		t.Fatalf("relay_transactions_split_total = %v, want 1", n)
	}

	// The window is full before the bound: the core says Stalled.
	publishTxn(t, s, d, 2, 0, 8)
	s.Boundary(t.Context(), relay.Stalled)
	want = append(want, ids(2, 0, 8)...)
	if got := d.done(); !slices.Equal(got, want) {
		t.Fatalf("done %v, want %v", got, want)
	}
	publishTxn(t, s, d, 2, 8, 10)
	s.Boundary(t.Context(), relay.Idle)
	if n := split(); n != 2 {
		t.Fatalf("relay_transactions_split_total = %v, want 2", n)
	}
	logMu.Lock()
	got := logs.String()
	logMu.Unlock()
	for _, w := range []string{"commit_lsn=0/1000100 parts=3", "commit_lsn=0/1000200 parts=2"} {
		if !strings.Contains(got, w) {
			t.Errorf("the log lacks %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "commit_lsn=0/1000000 ") {
		t.Errorf("the transaction that ended at the bound is logged as split:\n%s", got)
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != 20+45+10 {
		t.Fatalf("a read_committed consumer sees %d records, want %d", len(recs), 20+45+10)
	}
}

// TestAReplayedTransactionsEndIsNotTheOpenOnes: after a session restart
// the core replays from the slot, and the end of a replayed transaction
// before the open one's last event does not end the open one.
func TestAReplayedTransactionsEndIsNotTheOpenOnes(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, boundaryConfig(t, brokers))
	d := &dones{}
	publishTxn(t, s, d, 0, 0, 7)
	s.Boundary(t.Context(), relay.TransactionEnd)
	publishTxn(t, s, d, 1, 0, 3) // the session ends here
	// The next session: transaction 0 again, its end, and idle.
	publishTxn(t, s, d, 0, 0, 7)
	s.Boundary(t.Context(), relay.Idle)
	if got := d.done(); len(got) != 0 {
		t.Fatalf("done %v before transaction 1 ended", got)
	}
	publishTxn(t, s, d, 1, 0, 5)
	s.Boundary(t.Context(), relay.Idle)
	if got := d.done(); len(got) != 7+7+3+5 {
		t.Fatalf("done %v, want every event and replay", got)
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != 12 {
		t.Fatalf("a read_committed consumer sees %d records, want 12", len(recs))
	}
}

// TestClosingInsideADatabaseTransactionAbortsIt: the part of a database
// transaction that was produced when the relay stops is aborted, not
// committed: a restart publishes all of it again.
func TestClosingInsideADatabaseTransactionAbortsIt(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, boundaryConfig(t, brokers))
	d := &dones{}
	publishTxn(t, s, d, 0, 0, 7)
	s.Boundary(t.Context(), relay.TransactionEnd)
	publishTxn(t, s, d, 1, 0, 3)
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	failed := len(d.errs)
	d.mu.Unlock()
	if len(d.done()) != 0 || failed != 10 {
		t.Fatalf("done %v and %d failed, want all 10 failed", d.done(), failed)
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != 0 {
		t.Fatalf("a read_committed consumer sees %d records of an aborted transaction", len(recs))
	}
}

// lockedWriter serialises the log writes of the sink's goroutines.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func newTestLogger(w io.Writer, mu *sync.Mutex) *slog.Logger {
	return slog.New(slog.NewTextHandler(lockedWriter{mu, w}, nil))
}

// TestStoppingEndsTheOpenTransactionAtOnce: told the relay is stopping,
// the sink commits an open transaction that ends where a database
// transaction ends, aborts one inside a database transaction at once
// (not at Close, which a shutdown reaches only after waiting for every
// event's Done), and fails what it is handed afterwards.
func TestStoppingEndsTheOpenTransactionAtOnce(t *testing.T) {
	brokers := cluster(t)
	s := newSink(t, boundaryConfig(t, brokers))
	d := &dones{}
	publishTxn(t, s, d, 0, 0, 3)
	s.Boundary(t.Context(), relay.TransactionEnd) // 3 events: not due
	s.Boundary(t.Context(), relay.Stopping)
	if got, want := d.done(), ids(0, 0, 3); !slices.Equal(got, want) {
		t.Fatalf("whole transaction at Stopping: done %v, want %v", got, want)
	}

	s2 := newSink(t, boundaryConfig(t, brokers))
	d2 := &dones{}
	publishTxn(t, s2, d2, 1, 0, 4) // its end never comes
	s2.Boundary(t.Context(), relay.Stopping)
	d2.mu.Lock()
	failed := len(d2.errs)
	d2.mu.Unlock()
	if len(d2.done()) != 0 || failed != 4 {
		t.Fatalf("partial transaction at Stopping: done %v and %d failed, want all 4 failed before Close", d2.done(), failed)
	}
	publishTxn(t, s2, d2, 1, 4, 6)
	d2.mu.Lock()
	failed = len(d2.errs)
	d2.mu.Unlock()
	if failed != 6 {
		t.Fatalf("after Stopping: %d failed, want the 2 handed over later failed too", failed)
	}
	if recs := readCommitted(t, brokers, "eos.order"); len(recs) != 3 {
		t.Fatalf("a read_committed consumer sees %d records, want the 3 of the whole transaction", len(recs))
	}
}
