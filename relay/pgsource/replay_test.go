//go:build linux

package pgsource_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// replayConfig is a replay of the fixture's tables with a selection.
func replayConfig(f *fixture, id string, sel pgsource.ReplaySelection) pgsource.ReplayConfig {
	if sel.Tables == nil {
		sel.Tables = []string{"public.outbox"}
	}
	sel.Sink = "test"
	return pgsource.ReplayConfig{ConnString: f.url, Columns: pgsource.StandardColumns, ID: id, Selection: sel, ShutdownTimeout: 100 * time.Millisecond}
}

// replayed runs a replay to its end through the relay core and sink.
func replayed(t *testing.T, cfg pgsource.ReplayConfig, sink relay.Sink, deadLetter bool) *pgsource.Replay {
	t.Helper()
	rep, err := pgsource.OpenReplay(t.Context(), cfg)
	if err != nil {
		t.Fatalf("open replay: %v", err)
	}
	defer rep.Close(context.Background())
	if err := rep.Record(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	r := relay.New(relay.Config{Source: rep, Sink: sink, DeadLetter: deadLetter, MaxInFlight: 256, BlockedRetry: time.Hour})
	go func() { done <- r.Run(ctx) }()
	select {
	case <-rep.Finished():
	case err := <-done:
		t.Fatalf("the relay stopped before the replay finished: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("replay not finished within 30 s; blocked at %v", r.Blocked())
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return rep
}

// replayRecord is a replay's rows in relay.replay.
func replayRecord(t *testing.T, f *fixture, id string) (rows int64, done bool) {
	t.Helper()
	err := f.db.QueryRow(t.Context(), `SELECT sum(rows_done), bool_and(done) FROM relay.replay WHERE replay_id = $1`, id).Scan(&rows, &done)
	if err != nil {
		t.Fatal(err)
	}
	return rows, done
}

func payloadsOf(t *testing.T, evs []*relay.Event) []int {
	t.Helper()
	var out []int
	for _, ev := range evs {
		var p struct{ I int }
		if err := json.Unmarshal(ev.Payload, &p); err != nil {
			t.Fatalf("event %s: payload %q: %v", ev.ID, ev.Payload, err)
		}
		out = append(out, p.I)
	}
	return out
}

// insertGroups inserts rows i = 0..n-1 with payload {"i": i}, the rows of
// each group of size sharing one created_at (as the rows of one
// transaction do), group g at minute g after 2026-01-01. Groups are
// inserted in the order given, so the physical order of the rows is not
// their created_at order.
func insertGroups(t *testing.T, f *fixture, n, size int, order []int) {
	t.Helper()
	for _, g := range order {
		_, err := f.db.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
			SELECT CASE WHEN i % 7 = 3 THEN 'other' ELSE 'order' END, 'a' || (i % 3), 'e', jsonb_build_object('i', i),
			       '2026-01-01 00:00:00+00'::timestamptz + $3::int * interval '1 minute'
			FROM generate_series($1::int, $2::int) i`, g*size, min((g+1)*size, n)-1, g)
		if err != nil {
			t.Fatal(err)
		}
	}
}

func minute(m int) *time.Time {
	t := time.Date(2026, 1, 1, 0, m, 0, 0, time.UTC)
	return &t
}

// TestReplayPublishesTheSelectionInInsertionOrder: a replay publishes the
// rows of its time range and aggregate type, and no other, ordered by
// created_at and, among rows of one created_at, in insertion order (a
// random uuid id would shuffle an aggregate's rows of one transaction),
// each marked with the replay's id and recorded as done.
func TestReplayPublishesTheSelectionInInsertionOrder(t *testing.T) {
	f := newFixture(t, standardDDL)
	insertGroups(t, f, 100, 10, []int{5, 2, 8, 0, 9, 3, 7, 1, 6, 4})
	rec := &recorder{}
	rep := replayed(t, replayConfig(f, "r1", pgsource.ReplaySelection{Since: minute(2), Until: minute(7), AggregateType: "order"}), rec, false)

	var want []int
	for i := 20; i < 70; i++ {
		if i%7 != 3 {
			want = append(want, i)
		}
	}
	evs := rec.got()
	if got := payloadsOf(t, evs); !slices.Equal(got, want) {
		t.Fatalf("replayed rows %v\nwant %v", got, want)
	}
	for _, ev := range evs {
		if ev.Replay != "r1" || ev.CommitLSN != evs[0].CommitLSN || ev.CommitLSN == 0 {
			t.Fatalf("event %s: replay %q at %s, want r1 at the snapshot's position %s", ev.ID, ev.Replay, ev.CommitLSN, evs[0].CommitLSN)
		}
	}
	if rows, done := replayRecord(t, f, "r1"); rows != int64(len(want)) || !done {
		t.Errorf("relay.replay records %d rows, done %v; want %d, done", rows, done, len(want))
	}
	if rep.Remaining() != int64(len(want)) {
		t.Errorf("Remaining() = %d, want %d", rep.Remaining(), len(want))
	}
}

// holder confirms the first n events and holds the others, as a broker
// that stops confirming does.
type holder struct {
	recorder
	n int
}

func (h *holder) Publish(_ context.Context, ev *relay.Event) error {
	h.mu.Lock()
	h.events = append(h.events, ev)
	k := len(h.events)
	h.mu.Unlock()
	if k <= h.n {
		ev.Done(nil)
	}
	return nil
}

// interrupted runs a replay whose broker confirms only the first n
// events, until the replay has recorded the confirmed prefix, and stops it.
func interrupted(t *testing.T, f *fixture, cfg pgsource.ReplayConfig, n int, wantRecorded int64) {
	t.Helper()
	rep, err := pgsource.OpenReplay(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer rep.Close(context.Background())
	if err := rep.Record(t.Context()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	r := relay.New(relay.Config{Source: rep, Sink: &holder{n: n}, MaxInFlight: 200})
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if rows, _ := replayRecord(t, f, cfg.ID); rows == wantRecorded {
			break
		} else if rows > wantRecorded || time.Now().After(deadline) {
			t.Fatalf("relay.replay records %d rows, want %d: the confirmed prefix", rows, wantRecorded)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if rows, done := replayRecord(t, f, cfg.ID); rows != wantRecorded || done {
		t.Fatalf("after the stop relay.replay records %d rows, done %v; want %d, not done", rows, done, wantRecorded)
	}
}

// TestReplayResumesAfterTheConfirmedPrefix: a replay stopped while the
// broker held rows unconfirmed has recorded the batches confirmed whole;
// resumed, it publishes the rows after them and nothing before.
func TestReplayResumesAfterTheConfirmedPrefix(t *testing.T) {
	f := newFixture(t, standardDDL)
	const n = 5000
	var order []int
	for g := range (n + 6) / 7 {
		order = append(order, g)
	}
	insertGroups(t, f, n, 7, order)
	cfg := replayConfig(f, "r2", pgsource.ReplaySelection{})
	cfg.Batch = 100
	// 1234 confirmed: batches up to row 1200 are whole.
	interrupted(t, f, cfg, 1234, 1200)

	cfg.Resume, cfg.Selection = true, pgsource.ReplaySelection{}
	rec := &recorder{}
	rep := replayed(t, cfg, rec, false)
	if rep.Replayed() != 1200 || rep.Remaining() != n-1200 {
		t.Errorf("resumed with Replayed() %d, Remaining() %d; want 1200, %d", rep.Replayed(), rep.Remaining(), n-1200)
	}
	var want []int
	for i := 1200; i < n; i++ {
		want = append(want, i)
	}
	if got := payloadsOf(t, rec.got()); !slices.Equal(got, want) {
		t.Fatalf("resumed replay published %d rows from %v, want rows 1200 to %d", len(got), got[:min(5, len(got))], n-1)
	}
	if rows, done := replayRecord(t, f, "r2"); rows != n || !done {
		t.Errorf("relay.replay records %d rows, done %v; want %d, done", rows, done, n)
	}
}

// TestReplayResumedAfterATableRewriteLosesNothing: VACUUM FULL moves rows,
// so the recorded key no longer says where the replay stopped; the resumed
// replay goes back to the first row of the last created_at it recorded.
func TestReplayResumedAfterATableRewriteLosesNothing(t *testing.T) {
	f := newFixture(t, standardDDL)
	const n = 3000
	var order []int
	for g := range (n + 6) / 7 {
		order = append(order, g)
	}
	insertGroups(t, f, n, 7, order)
	// Rows deleted before the rewrite make it move the others.
	if _, err := f.db.Exec(t.Context(), `DELETE FROM outbox WHERE (payload->>'i')::int % 10 = 9 AND (payload->>'i')::int < 1000`); err != nil {
		t.Fatal(err)
	}
	cfg := replayConfig(f, "r3", pgsource.ReplaySelection{})
	cfg.Batch = 100
	// Of the rows left, 100 of the first 1000 are gone: the 1100th
	// confirmed batch boundary is row 1199.
	interrupted(t, f, cfg, 1150, 1100)
	if _, err := f.db.Exec(t.Context(), `VACUUM FULL outbox`); err != nil {
		t.Fatal(err)
	}
	cfg.Resume, cfg.Selection = true, pgsource.ReplaySelection{}
	rec := &recorder{}
	replayed(t, cfg, rec, false)
	got := payloadsOf(t, rec.got())
	// Row 1199 is in the group of rows 1197 to 1203.
	var want []int
	for i := 1197; i < n; i++ {
		want = append(want, i)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("resumed replay published %d rows from %v, want rows 1197 to %d", len(got), got[:min(5, len(got))], n-1)
	}
}

// TestReplayReadsAPartitionedTableThroughItsParent: the rows of every
// partition, in created_at order across them, as events of the parent.
func TestReplayReadsAPartitionedTableThroughItsParent(t *testing.T) {
	f := newFixture(t, `CREATE TABLE outbox (
		id uuid NOT NULL DEFAULT gen_random_uuid(),
		aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
		payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
		PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
		CREATE TABLE outbox_a PARTITION OF outbox FOR VALUES FROM ('2026-01-01') TO ('2026-01-01 00:05');
		CREATE TABLE outbox_b PARTITION OF outbox FOR VALUES FROM ('2026-01-01 00:05') TO (MAXVALUE)`)
	insertGroups(t, f, 100, 10, []int{7, 2, 9, 0, 5, 3, 8, 1, 6, 4})
	rec := &recorder{}
	replayed(t, replayConfig(f, "r4", pgsource.ReplaySelection{Since: minute(3)}), rec, false)
	var want []int
	for i := 30; i < 100; i++ {
		want = append(want, i)
	}
	evs := rec.got()
	if got := payloadsOf(t, evs); !slices.Equal(got, want) {
		t.Fatalf("replayed %v\nwant %v", got, want)
	}
	for _, ev := range evs {
		if ev.Table != "public.outbox" {
			t.Fatalf("event %s of table %s, want the parent public.outbox", ev.ID, ev.Table)
		}
	}
}

// TestReplayedAndStreamedRowsAreTheSameEvents: a replayed row is the event
// the stream made of it, but for its position and the replay's id.
func TestReplayedAndStreamedRowsAreTheSameEvents(t *testing.T) {
	f := newFixture(t, emptyAndNullDDL)
	f.snapshot = pgsource.SnapshotNever
	f.deadLetter = true
	streamed := &recorder{}
	f.run(t, pgsource.StandardColumns, streamed, emptyAndNullTables...)
	waitSlot(t, f)
	if _, err := f.db.Exec(t.Context(), emptyAndNullRows); err != nil {
		t.Fatal(err)
	}
	want := streamed.through(t, sentinel(t, f))

	var tables []string
	for _, tb := range emptyAndNullTables {
		tables = append(tables, "public."+tb)
	}
	rec := &recorder{}
	replayed(t, replayConfig(f, "r5", pgsource.ReplaySelection{Tables: tables}), rec, true)
	byKey := map[string]*relay.Event{}
	for _, ev := range rec.got() {
		if ev.Replay != "r5" {
			t.Errorf("%s %q: replay %q, want r5", ev.Table, ev.ID, ev.Replay)
		}
		c := *ev
		c.Replay = ""
		byKey[ev.Table+"\x00"+ev.ID] = &c
	}
	if len(byKey) != len(want)+1 { // and the sentinel
		t.Errorf("replayed %d rows, streamed %d and the sentinel", len(byKey), len(want))
	}
	for _, s := range want {
		r := byKey[s.Table+"\x00"+s.ID]
		if r == nil {
			t.Errorf("streamed %s %q was not replayed", s.Table, s.ID)
			continue
		}
		for _, d := range eventDiff(s, r) {
			t.Errorf("%s %q: %s", s.Table, s.ID, d)
		}
	}
}

// TestReplayRefusesWrongRequests: what the request itself gets wrong wraps
// ErrReplayRequest, before anything is published or recorded.
func TestReplayRefusesWrongRequests(t *testing.T) {
	f := newFixture(t, standardDDL+`;
		CREATE TABLE dbz (id bigint PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb)`)
	dbz := map[pgsource.Table]pgsource.Columns{{Schema: "public", Name: "dbz"}: pgsource.DebeziumColumns}
	tests := []struct {
		name string
		cfg  func(*pgsource.ReplayConfig)
	}{
		{"time range without created_at", func(c *pgsource.ReplayConfig) {
			c.TableColumns, c.Selection.Tables, c.Selection.Since = dbz, []string{"public.dbz"}, minute(1)
		}},
		{"id not of the id column's type", func(c *pgsource.ReplayConfig) { c.Selection.FromID = "not-a-uuid" }},
		{"ids in the wrong order", func(c *pgsource.ReplayConfig) {
			c.TableColumns, c.Selection.Tables, c.Selection.FromID, c.Selection.ToID = dbz, []string{"public.dbz"}, "10", "9"
		}},
		{"unknown replay", func(c *pgsource.ReplayConfig) { c.ID, c.Resume = "nope", true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := replayConfig(f, "bad", pgsource.ReplaySelection{})
			tt.cfg(&cfg)
			rep, err := pgsource.OpenReplay(t.Context(), cfg)
			if err == nil {
				rep.Close(context.Background())
			}
			if !errors.Is(err, pgsource.ErrReplayRequest) {
				t.Errorf("OpenReplay: %v, want an ErrReplayRequest", err)
			}
		})
	}
}

// TestOneReplayRunsInOneProcess: a replay being run cannot be opened a
// second time, which would publish its rows twice over.
func TestOneReplayRunsInOneProcess(t *testing.T) {
	f := newFixture(t, standardDDL)
	insertGroups(t, f, 10, 10, []int{0})
	cfg := replayConfig(f, "r6", pgsource.ReplaySelection{})
	first, err := pgsource.OpenReplay(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	closeFirst := func() { once.Do(func() { first.Close(context.Background()) }) }
	defer closeFirst()
	if err := first.Record(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg.Resume, cfg.LockWait = true, 200*time.Millisecond
	if _, err := pgsource.OpenReplay(t.Context(), cfg); !errors.Is(err, pgsource.ErrReplayRequest) || !strings.Contains(err.Error(), "relay replay r6") {
		t.Fatalf("second OpenReplay of a running replay: %v, want an ErrReplayRequest naming the session holding it", err)
	}
	// The first one's session may outlive its connection a moment.
	cfg.LockWait = 10 * time.Second
	closeFirst()
	second, err := pgsource.OpenReplay(t.Context(), cfg)
	if err != nil {
		t.Fatalf("OpenReplay once the first let go: %v", err)
	}
	second.Close(context.Background())
}

// TestReplayKeepsTheStatementOrderOfATransaction: the rows a transaction
// inserted share created_at; a replay sends them in the order of the
// statements that inserted them even where their physical order differs
// (here reversed by CLUSTER; free space a DELETE left does it too).
func TestReplayKeepsTheStatementOrderOfATransaction(t *testing.T) {
	f := newFixture(t, standardDDL+`; CREATE INDEX outbox_i_desc ON outbox (((payload->>'i')::int) DESC)`)
	var b strings.Builder
	b.WriteString("BEGIN;")
	for i := range 20 {
		fmt.Fprintf(&b, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'e', '{"i": %d}');`, i)
	}
	b.WriteString("COMMIT; CLUSTER outbox USING outbox_i_desc")
	if _, err := f.db.Exec(t.Context(), b.String()); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	replayed(t, replayConfig(f, "r7", pgsource.ReplaySelection{}), rec, false)
	var want []int
	for i := range 20 {
		want = append(want, i)
	}
	if got := payloadsOf(t, rec.got()); !slices.Equal(got, want) {
		t.Fatalf("replayed %v, want the insertion order %v", got, want)
	}
}
