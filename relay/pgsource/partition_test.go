//go:build linux

package pgsource_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// partitionedDDL is a time-partitioned outbox: an old month, a year, and
// the current range sub-partitioned by aggregate type. Its primary key
// holds every partitioning column, as PostgreSQL requires.
const partitionedDDL = `CREATE TABLE outbox (
	id uuid NOT NULL DEFAULT gen_random_uuid(),
	aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
	payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (id, created_at, aggregate_type)) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_2023_12 PARTITION OF outbox FOR VALUES FROM ('2023-12-01') TO ('2024-01-01');
CREATE TABLE outbox_2024 PARTITION OF outbox FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE outbox_current PARTITION OF outbox FOR VALUES FROM ('2025-01-01') TO ('2100-01-01') PARTITION BY HASH (aggregate_type);
CREATE TABLE outbox_current_0 PARTITION OF outbox_current FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE outbox_current_1 PARTITION OF outbox_current FOR VALUES WITH (MODULUS 2, REMAINDER 1)`

// publicationModes are the publications a partitioned outbox is streamed
// through: the one the relay creates, and one created beforehand with
// rows sent under the root or under each leaf partition.
var publicationModes = []struct {
	name string
	ddl  string // creates publication %[1]s; empty: the relay creates it
}{
	{name: "relay's own publication"},
	{name: "publish_via_partition_root", ddl: `CREATE PUBLICATION %[1]s FOR TABLE outbox WITH (publish = 'insert', publish_via_partition_root = true)`},
	{name: "rows under their leaf partitions", ddl: `CREATE PUBLICATION %[1]s FOR TABLE outbox WITH (publish = 'insert')`},
}

// newPartitionFixture is newFixture for a test that drops its slot when it
// ends, after its relays stopped: the package's tests share one server and
// its max_replication_slots.
func newPartitionFixture(t *testing.T, ddl string) *fixture {
	t.Helper()
	f := newFixture(t, ddl)
	t.Cleanup(func() {
		ctx := context.Background()
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			var dropped bool
			err := f.db.QueryRow(ctx, `SELECT coalesce(bool_and(pg_drop_replication_slot(slot_name) IS NULL), true) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, f.slot).Scan(&dropped)
			var left bool
			if err == nil {
				err = f.db.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, f.slot).Scan(&left)
			}
			if err == nil && !left {
				return
			}
		}
		t.Logf("slot %s not dropped: still active", f.slot)
	})
	return f
}

// partitionRows commits one transaction of rows, one per created_at
// (SQL, e.g. '2024-03-01' or now()) and aggregate type, and returns their
// ids in commit order.
func partitionRows(t *testing.T, f *fixture, table string, createdAt []string, types ...string) []string {
	t.Helper()
	var values []string
	for _, at := range createdAt {
		for _, typ := range types {
			values = append(values, fmt.Sprintf("('%s', 'agg-%s', 'happened', jsonb_build_object('at', %s::text), %s)", typ, typ, at, at))
		}
	}
	rows, err := f.db.Query(t.Context(), "INSERT INTO "+table+" (aggregate_type, aggregate_id, event_type, payload, created_at) VALUES "+strings.Join(values, ", ")+" RETURNING id::text")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return ids
}

// waitIDs waits until every id arrived and returns the events so far.
func (r *recorder) waitIDs(t *testing.T, ids []string) []*relay.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := r.got()
		got := map[string]bool{}
		for _, ev := range evs {
			got[ev.ID] = true
		}
		missing := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return got[id] })
		if len(missing) == 0 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d events missing after 30 s, e.g. %s; got %d events", len(missing), len(ids), missing[0], len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkOneOutbox checks that evs are the rows want, each once, in commit
// order, all from public.outbox however many partitions they were in.
func checkOneOutbox(t *testing.T, evs []*relay.Event, want []string) {
	t.Helper()
	if got := ids(evs); !slices.Equal(got, want) {
		t.Fatalf("got %d events %v,\nwant the %d rows in commit order %v", len(got), got, len(want), want)
	}
	for _, ev := range evs {
		if ev.Table != "public.outbox" {
			t.Fatalf("event %s has table %q, want public.outbox, the partitioned table its partition belongs to", ev.ID, ev.Table)
		}
	}
}

// TestPartitionedOutboxIsOneTable: RELAY_TABLES names a partitioned outbox
// whose current range is itself partitioned. Rows in every partition
// arrive as public.outbox's, through each kind of publication, also rows
// in partitions attached (or created) while the relay streams, and
// detaching and dropping partitions changes nothing for the rest.
func TestPartitionedOutboxIsOneTable(t *testing.T) {
	for _, mode := range publicationModes {
		t.Run(mode.name, func(t *testing.T) {
			f := newPartitionFixture(t, partitionedDDL)
			if mode.ddl != "" {
				if _, err := f.db.Exec(t.Context(), fmt.Sprintf(mode.ddl, f.slot)); err != nil {
					t.Fatal(err)
				}
			}
			rec := &recorder{}
			done := f.run(t, pgsource.StandardColumns, rec, "public.outbox")
			waitSlot(t, f)
			if mode.ddl == "" {
				var viaRoot bool
				if err := f.db.QueryRow(t.Context(), "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", f.slot).Scan(&viaRoot); err != nil || !viaRoot {
					t.Errorf("the relay's publication has publish_via_partition_root = %v (%v), want true", viaRoot, err)
				}
			}

			var want []string
			want = append(want, partitionRows(t, f, "outbox", []string{"'2023-12-15'", "'2024-03-01'", "now()"}, "order", "invoice", "user", "cart")...)
			var leaves int
			if err := f.db.QueryRow(t.Context(), "SELECT count(DISTINCT tableoid) FROM outbox_current").Scan(&leaves); err != nil || leaves != 2 {
				t.Fatalf("rows in %d sub-partitions of outbox_current (%v), want both", leaves, err)
			}
			// Attached and created while streaming: a plain table, and a
			// partition partitioned itself.
			if _, err := f.db.Exec(t.Context(), `
				CREATE TABLE outbox_2022 (LIKE outbox INCLUDING DEFAULTS);
				ALTER TABLE outbox ATTACH PARTITION outbox_2022 FOR VALUES FROM ('2022-01-01') TO ('2023-12-01');
				CREATE TABLE outbox_2021 PARTITION OF outbox FOR VALUES FROM ('2021-01-01') TO ('2022-01-01') PARTITION BY LIST (aggregate_type);
				CREATE TABLE outbox_2021_orders PARTITION OF outbox_2021 FOR VALUES IN ('order');
				CREATE TABLE outbox_2021_rest PARTITION OF outbox_2021 DEFAULT`); err != nil {
				t.Fatal(err)
			}
			want = append(want, partitionRows(t, f, "outbox", []string{"'2022-06-01'", "'2021-06-01'", "now()"}, "order", "invoice")...)
			// Written to a partition directly, as some applications do.
			want = append(want, partitionRows(t, f, "outbox_2021_orders", []string{"'2021-07-01'"}, "order")...)
			rec.waitIDs(t, want)

			if _, err := f.db.Exec(t.Context(), `
				ALTER TABLE outbox DETACH PARTITION outbox_2022;
				DROP TABLE outbox_2023_12`); err != nil {
				t.Fatal(err)
			}
			want = append(want, partitionRows(t, f, "outbox", []string{"'2024-04-01'", "'2021-08-01'", "now()"}, "order", "user")...)
			checkOneOutbox(t, rec.through(t, sentinel(t, f)), want)
			select {
			case err := <-done:
				t.Fatalf("the relay stopped: %v", err)
			default:
			}
		})
	}
}

// runUntilStopped is fixture.run with a stop: it returns once the relay
// streams from the slot, and stop cancels it and waits for it to end.
func (f *fixture) runUntilStopped(t *testing.T, sink relay.Sink, tables ...string) (done <-chan error, stop func()) {
	t.Helper()
	var ts []pgsource.Table
	for _, s := range tables {
		tb, err := pgsource.ParseTable(s)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tb)
	}
	src, err := pgsource.New(pgsource.Config{ConnString: f.url, Tables: ts, Columns: pgsource.StandardColumns, Slot: f.slot, Publication: f.slot, StatusInterval: 200 * time.Millisecond, Snapshot: f.snapshot})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	finished := make(chan struct{})
	r := relay.New(relay.Config{Source: src, Sink: sink, BlockedRetry: 200 * time.Millisecond})
	go func() {
		defer close(finished)
		result <- r.Run(ctx)
	}()
	stop = sync.OnceFunc(func() {
		cancel()
		<-finished
	})
	t.Cleanup(stop)
	return result, stop
}

// TestPartitionsGoneBeforeTheRelayReadThem: while the relay is stopped,
// partitions are attached, written to, and then detached or dropped, so
// that the stream has rows under relations the catalog no longer places
// in the outbox. Through each kind of publication they arrive as
// public.outbox's rows. With two partitioned outbox tables and rows sent
// under the leaf partitions nothing says which table a dropped partition
// was part of: the relay stops at its first row and says why; with
// publish_via_partition_root the rows name their table.
func TestPartitionsGoneBeforeTheRelayReadThem(t *testing.T) {
	gone := func(t *testing.T, f *fixture, table string) []string {
		t.Helper()
		if _, err := f.db.Exec(t.Context(), fmt.Sprintf(`
			CREATE TABLE %[1]s_2019 (LIKE %[1]s INCLUDING DEFAULTS);
			ALTER TABLE %[1]s ATTACH PARTITION %[1]s_2019 FOR VALUES FROM ('2019-01-01') TO ('2020-01-01');
			CREATE TABLE %[1]s_2020 PARTITION OF %[1]s FOR VALUES FROM ('2020-01-01') TO ('2021-01-01')`, table)); err != nil {
			t.Fatal(err)
		}
		ids := partitionRows(t, f, table, []string{"'2019-05-01'", "'2020-05-01'", "now()"}, "order", "invoice")
		if _, err := f.db.Exec(t.Context(), fmt.Sprintf(`
			ALTER TABLE %[1]s DETACH PARTITION %[1]s_2019;
			DROP TABLE %[1]s_2020`, table)); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	for _, mode := range publicationModes {
		t.Run(mode.name, func(t *testing.T) {
			f := newPartitionFixture(t, partitionedDDL)
			if mode.ddl != "" {
				if _, err := f.db.Exec(t.Context(), fmt.Sprintf(mode.ddl, f.slot)); err != nil {
					t.Fatal(err)
				}
			}
			rec := &recorder{}
			_, stop := f.runUntilStopped(t, rec, "public.outbox")
			waitSlot(t, f)
			want := partitionRows(t, f, "outbox", []string{"now()"}, "order")
			rec.waitIDs(t, want)
			stop()

			want = append(want, gone(t, f, "outbox")...)
			rec2 := &recorder{}
			done := f.run(t, pgsource.StandardColumns, rec2, "public.outbox")
			evs := rec2.through(t, sentinel(t, f))
			select {
			case err := <-done:
				t.Fatalf("the relay stopped: %v", err)
			default:
			}
			// The first row may come again: the slot confirms within 20 ms.
			if len(evs) > 0 && evs[0].ID == want[0] {
				evs = evs[1:]
			}
			checkOneOutbox(t, evs, want[1:])
		})
	}

	twoOutboxes := partitionedDDL + `;
		CREATE TABLE audit (LIKE outbox INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (created_at);
		CREATE TABLE audit_current PARTITION OF audit FOR VALUES FROM ('2025-01-01') TO ('2100-01-01')`
	for _, tt := range []struct {
		name, with string
		wantErr    string // empty: every row arrives
	}{
		{name: "two partitioned outboxes, rows under their leaf partitions", with: "publish = 'insert'",
			wantErr: "which is no longer a partition of public.outbox or public.audit"},
		{name: "two partitioned outboxes, publish_via_partition_root", with: "publish = 'insert', publish_via_partition_root = true"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newPartitionFixture(t, twoOutboxes)
			if _, err := f.db.Exec(t.Context(), fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE outbox, audit WITH (%s)", f.slot, tt.with)); err != nil {
				t.Fatal(err)
			}
			rec := &recorder{}
			_, stop := f.runUntilStopped(t, rec, "public.outbox", "public.audit")
			waitSlot(t, f)
			stop()
			want := gone(t, f, "audit")
			done := f.run(t, pgsource.StandardColumns, rec, "public.outbox", "public.audit")
			if tt.wantErr != "" {
				err := waitErr(t, done)
				if !relay.IsPermanent(err) || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "publish_via_partition_root") {
					t.Fatalf("the relay stopped with %v; want a permanent error saying %q and naming the fix", err, tt.wantErr)
				}
				return
			}
			evs := rec.through(t, sentinel(t, f))
			if got := ids(evs); !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
			for _, ev := range evs {
				if ev.Table != "public.audit" {
					t.Fatalf("event %s has table %q, want public.audit", ev.ID, ev.Table)
				}
			}
		})
	}
}

// TestBackfillReadsThroughThePartitionedTable: rows already in a
// partitioned outbox when the slot is created are read through the
// partitioned table, every partition and sub-partition, each once and
// each aggregate's in insertion order, then the stream follows. Most share
// one created_at in two sub-partitions, where physical positions repeat
// (each partition numbers its own), and a page ends between two rows at
// the same position: a page key of created_at and position alone skips
// the second.
func TestBackfillReadsThroughThePartitionedTable(t *testing.T) {
	f := newPartitionFixture(t, partitionedDDL)
	f.snapshot = pgsource.SnapshotInitial
	const types = 10
	var existing []string
	rows, err := f.db.Query(t.Context(), `
		INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT 'type-' || (i % $1), 'agg-' || (i % $1), 'old', jsonb_build_object('seq', 1000 + i / $1),
			CASE WHEN i < 31 THEN timestamptz '2024-06-01' + i * interval '1 s' ELSE timestamptz '2026-01-01' END
		FROM generate_series(0, 4999) i
		RETURNING id::text`, types)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		existing = append(existing, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	var leafRows []int
	if err := f.db.QueryRow(t.Context(), `
		SELECT array_agg(n ORDER BY n) FROM (SELECT count(*) AS n FROM outbox_current WHERE created_at = '2026-01-01' GROUP BY tableoid) c`).Scan(&leafRows); err != nil {
		t.Fatal(err)
	}
	// Rows of one size fill the pages of both sub-partitions alike, so
	// their rows at 2026-01-01 come in pairs at the same position; after
	// the 31 earlier rows the first page ends inside such a pair.
	if len(leafRows) != 2 || leafRows[0] < 1000 {
		t.Fatalf("rows at 2026-01-01 per sub-partition: %v; want two sub-partitions of over 1,000 rows each", leafRows)
	}
	rec := &recorder{}
	done := f.run(t, pgsource.StandardColumns, rec, "public.outbox")
	rec.waitIDs(t, existing)
	waitSlot(t, f)
	streamed := partitionRows(t, f, "outbox", []string{"'2024-07-01'", "now()"}, "type-1", "type-2")
	evs := rec.through(t, sentinel(t, f))
	select {
	case err := <-done:
		t.Fatalf("the relay stopped: %v", err)
	default:
	}
	seen := map[string]int{}
	for _, ev := range evs {
		seen[ev.ID]++
	}
	for _, id := range append(slices.Clone(existing), streamed...) {
		if seen[id] != 1 {
			t.Fatalf("row %s arrived %d times, want once; %d events for %d rows", id, seen[id], len(evs), len(existing)+len(streamed))
		}
	}
	if len(evs) != len(existing)+len(streamed) {
		t.Fatalf("%d events, want %d", len(evs), len(existing)+len(streamed))
	}
	checkOneOutbox(t, evs[len(existing):], streamed)
	last := map[string]int{}
	for _, ev := range evs[:len(existing)] {
		if ev.Table != "public.outbox" {
			t.Fatalf("backfilled event %s has table %q, want public.outbox", ev.ID, ev.Table)
		}
		var seq int
		if _, err := fmt.Sscanf(string(ev.Payload), `{"seq": %d}`, &seq); err != nil {
			t.Fatalf("payload %s: %v", ev.Payload, err)
		}
		if prev, ok := last[ev.AggregateID]; ok && seq <= prev {
			t.Fatalf("aggregate %s: row %d backfilled after row %d", ev.AggregateID, seq, prev)
		}
		last[ev.AggregateID] = seq
	}
}

// TestATableAndItsPartitionAreNotTwoOutboxes: RELAY_TABLES listing a
// partitioned table and one of its partitions stops the relay at start
// (pgops TestCheckSaysATableAndItsPartitionAreNotTwoOutboxes: and relay
// check says so).
func TestATableAndItsPartitionAreNotTwoOutboxes(t *testing.T) {
	f := newPartitionFixture(t, partitionedDDL)
	done := f.run(t, pgsource.StandardColumns, &recorder{}, "public.outbox_current_1", "public.outbox")
	err := waitErr(t, done)
	if want := "table public.outbox_current_1 is a partition of public.outbox, and RELAY_TABLES lists both"; !relay.IsPermanent(err) || !strings.Contains(err.Error(), want) {
		t.Fatalf("the relay stopped with %v; want a permanent error saying %q", err, want)
	}
}
