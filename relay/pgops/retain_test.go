//go:build linux

package pgops_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
)

// TestRetentionDeletesOnlyConfirmedRowsPastIt: with rows old and young,
// confirmed (the slot advanced past them) and not, a sweep deletes the old
// confirmed ones only, through a partitioned table's parent as through a
// plain table.
func TestRetentionDeletesOnlyConfirmedRowsPastIt(t *testing.T) {
	for _, tt := range []struct{ name, ddl string }{
		{"plain table", standardDDL},
		{"partitioned table", `CREATE TABLE outbox (
			id uuid NOT NULL DEFAULT gen_random_uuid(),
			aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
			payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
			CREATE TABLE outbox_old PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO (now() - interval '90 minutes');
			CREATE TABLE outbox_new PARTITION OF outbox FOR VALUES FROM (now() - interval '90 minutes') TO (MAXVALUE)`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.ddl)
			insert := func(kind string, n int, age string) {
				t.Helper()
				_, err := f.db.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
					SELECT $1, i::text, 'e', '{}', now() - $3::interval FROM generate_series(1, $2::int) i`, kind, n, age)
				if err != nil {
					t.Fatal(err)
				}
			}
			if _, err := f.db.Exec(t.Context(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, f.slot); err != nil {
				t.Fatal(err)
			}
			// More old confirmed rows than one DELETE removes.
			insert("old-confirmed", 2500, "2 hours")
			insert("young-confirmed", 100, "0")
			// The checkpoint logs the running transactions, which lets
			// the slot's catalog_xmin move once it is confirmed past.
			if _, err := f.db.Exec(t.Context(), `CHECKPOINT`); err != nil {
				t.Fatal(err)
			}
			if _, err := f.db.Exec(t.Context(), `SELECT pg_replication_slot_advance($1, pg_current_wal_lsn())`, f.slot); err != nil {
				t.Fatal(err)
			}
			insert("old-unconfirmed", 100, "3 hours")

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			done := make(chan error, 1)
			ret := pgops.NewRetainer(pgops.RetainConfig{ConnString: f.url, Slot: f.slot, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}},
				Columns: pgsource.StandardColumns, Retention: time.Hour, Every: 50 * time.Millisecond})
			go func() { done <- ret.Run(ctx) }()
			deadline := time.Now().Add(30 * time.Second)
			for counts(t, f)["old-confirmed"] > 0 {
				if time.Now().After(deadline) {
					t.Fatalf("old confirmed rows not deleted within 30 s: %v", counts(t, f))
				}
				time.Sleep(20 * time.Millisecond)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// The sweep that deleted the old confirmed rows saw these.
			if got := counts(t, f); got["young-confirmed"] != 100 || got["old-unconfirmed"] != 100 {
				t.Errorf("rows left %v, want 100 young-confirmed and 100 old-unconfirmed", got)
			}
		})
	}
}

func counts(t *testing.T, f *fixture) map[string]int {
	t.Helper()
	rows, err := f.db.Query(t.Context(), `SELECT aggregate_type, count(*) FROM outbox GROUP BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	return out
}

// TestRetentionWithoutTheTimestampColumnStops: a table without the column
// the retention counts from stops the retainer with an error naming it.
func TestRetentionWithoutTheTimestampColumnStops(t *testing.T) {
	f := newFixture(t, `CREATE TABLE outbox (id uuid PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload jsonb)`)
	ret := pgops.NewRetainer(pgops.RetainConfig{ConnString: f.url, Slot: f.slot, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}},
		Columns: pgsource.StandardColumns, Retention: time.Hour})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := ret.Run(ctx)
	if err == nil || !relay.IsPermanent(err) || !strings.Contains(err.Error(), `"created_at"`) {
		t.Fatalf("Run = %v, want a permanent error naming created_at", err)
	}
}
