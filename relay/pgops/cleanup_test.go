//go:build linux

package pgops_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
)

// insertRows commits one row into public.outbox for each timestamp of
// createdAt and each aggregate type, and returns their ids.
func insertRows(t *testing.T, f *fixture, createdAt, types []string) []string {
	t.Helper()
	rows, err := f.db.Query(t.Context(), `
		INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT typ, 'agg-' || typ, 'happened', '{}', at FROM unnest($1::timestamptz[]) at, unnest($2::text[]) typ
		RETURNING id::text`, createdAt, types)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// runCleaner runs c until the test ends.
func runCleaner(t *testing.T, c *pgops.Cleaner) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// TestCleanerDeletesThroughThePartitionedTable: RELAY_CLEANUP deletes the
// confirmed rows of a partitioned outbox, whichever partition holds them,
// by id through the partitioned table, and only those.
func TestCleanerDeletesThroughThePartitionedTable(t *testing.T) {
	f := newFixture(t, partitionedDDL)
	ids := insertRows(t, f, []string{"2023-12-15", "2024-03-01", "now"}, []string{"order", "invoice", "user", "cart"})
	var leaves int
	if err := f.db.QueryRow(t.Context(), "SELECT count(DISTINCT tableoid) FROM outbox").Scan(&leaves); err != nil || leaves != 3 {
		t.Fatalf("rows in %d partitions (%v), want all 3", leaves, err)
	}

	cleaner := pgops.NewCleaner(f.url, pgsource.StandardColumns, nil, nil)
	runCleaner(t, cleaner)
	// Events as the stream hands them on: under the partitioned table.
	kept := map[string]bool{}
	for i, id := range ids {
		if i%3 == 0 {
			kept[id] = true
			continue
		}
		cleaner.Published(&relay.Event{Table: "public.outbox", ID: id})
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		rows, err := f.db.Query(t.Context(), "SELECT id::text FROM outbox")
		if err != nil {
			t.Fatal(err)
		}
		left, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range left {
			if !kept[id] && time.Now().After(deadline) {
				t.Fatalf("row %s is still in the outbox 20 s after the cleaner had its event", id)
			}
		}
		if len(left) == len(kept) {
			for _, id := range left {
				if !kept[id] {
					t.Fatalf("row %s, never confirmed, was deleted", id)
				}
			}
			break
		}
		if len(left) < len(kept) {
			t.Fatalf("%d rows left, %d never confirmed: the cleaner deleted unconfirmed rows", len(left), len(kept))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCleanerDeletesEachTableByItsOwnIDColumn: of two tables, the second
// with a mapping of its own (as in pgsource.Config.TableColumns), the
// cleaner deletes each table's rows by its own id column.
func TestCleanerDeletesEachTableByItsOwnIDColumn(t *testing.T) {
	// Only the id columns matter to the cleaner; billing has no column id.
	f := newFixture(t, `
		CREATE SCHEMA sales;
		CREATE TABLE sales.outbox (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), payload jsonb NOT NULL);
		CREATE SCHEMA billing;
		CREATE TABLE billing.outbox (event_id text PRIMARY KEY, payload jsonb);
		INSERT INTO sales.outbox (payload) VALUES ('{"n": 1}'), ('{"n": 2}');
		INSERT INTO billing.outbox VALUES ('b-1', '{"n": 1}'), ('b-2', '{"n": 2}')`)
	billing := pgsource.Table{Schema: "billing", Name: "outbox"}
	billingCols := pgsource.DebeziumColumns
	billingCols.ID = "event_id"
	// The events as the stream hands them on: each row's id column as text.
	rows, err := f.db.Query(t.Context(), `SELECT 'sales.outbox', id::text FROM sales.outbox UNION ALL SELECT 'billing.outbox', event_id FROM billing.outbox`)
	if err != nil {
		t.Fatal(err)
	}
	evs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (*relay.Event, error) {
		ev := &relay.Event{}
		return ev, r.Scan(&ev.Table, &ev.ID)
	})
	if err != nil || len(evs) != 4 {
		t.Fatalf("%d events (%v), want 4", len(evs), err)
	}

	cleaner := pgops.NewCleaner(f.url, pgsource.StandardColumns, map[pgsource.Table]pgsource.Columns{billing: billingCols}, nil)
	runCleaner(t, cleaner)
	for _, ev := range evs {
		cleaner.Published(ev)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := f.db.QueryRow(t.Context(), "SELECT (SELECT count(*) FROM sales.outbox) + (SELECT count(*) FROM billing.outbox)").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d rows left after the cleaner had every event", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestCleanerFindsARowVisibleOnlyAfterItsConfirm: the walsender sends a
// transaction once its commit record is flushed, a moment before other
// sessions see it, so the relay can hear a row confirmed before a DELETE
// can find it. A row the cleaner is told of while its transaction is still
// open, and that becomes visible a sweep or two later, is deleted all the
// same; before, the first DELETE found nothing and the row stayed for good.
func TestCleanerFindsARowVisibleOnlyAfterItsConfirm(t *testing.T) {
	f := newFixture(t, standardDDL)
	cleaner := pgops.NewCleaner(f.url, pgsource.StandardColumns, nil, nil)
	runCleaner(t, cleaner)
	tx, err := f.db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	var id string
	if err := tx.QueryRow(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
		VALUES ('order', 'o-1', 'placed', '{}') RETURNING id::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	cleaner.Published(&relay.Event{Table: "public.outbox", ID: id})
	// Two sweeps (half a second apart) miss it while it is invisible.
	time.Sleep(1200 * time.Millisecond)
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := f.db.QueryRow(t.Context(), "SELECT count(*) FROM outbox WHERE id = $1", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("row %s is still in the outbox 20 s after it became visible", id)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
