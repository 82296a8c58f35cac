//go:build linux

package pgops_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/integration/services"
)

var (
	// pg is the package's throwaway PostgreSQL.
	pg        *services.Postgres
	databases atomic.Int64
)

// TestMain starts pg for the tests; a server that cannot start fails the
// run.
func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var err error
	if pg, err = services.StartPostgres(ctx, services.PostgresOptions{Fast: true}); err != nil {
		fmt.Fprintln(os.Stderr, "start postgres:", err)
		return 1
	}
	defer pg.Close()
	return m.Run()
}

// fixture is a database of its own for one test, with ddl applied, and a
// slot name no other test uses.
type fixture struct {
	db        *pgx.Conn
	url, slot string
}

func newFixture(t *testing.T, ddl string) *fixture {
	t.Helper()
	name := fmt.Sprintf("ops_%d", databases.Add(1))
	if err := pg.CreateDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	f := &fixture{url: pg.URL(name), slot: "slot_" + name}
	var err error
	if f.db, err = pgx.Connect(t.Context(), f.url); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.db.Close(context.Background()) })
	if _, err := f.db.Exec(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	return f
}

// standardDDL is schema/outbox.sql's table.
const standardDDL = `CREATE TABLE outbox (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
	payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now())`

// partitionedDDL is an outbox partitioned by time whose current range is
// partitioned again, by aggregate type: one table whose rows lie in
// partitions two levels deep. Its primary key holds every partitioning
// column, as PostgreSQL requires.
const partitionedDDL = `CREATE TABLE outbox (
	id uuid NOT NULL DEFAULT gen_random_uuid(),
	aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
	payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (id, created_at, aggregate_type)) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_before_2025 PARTITION OF outbox FOR VALUES FROM (MINVALUE) TO ('2025-01-01');
CREATE TABLE outbox_current PARTITION OF outbox FOR VALUES FROM ('2025-01-01') TO (MAXVALUE) PARTITION BY HASH (aggregate_type);
CREATE TABLE outbox_current_0 PARTITION OF outbox_current FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE outbox_current_1 PARTITION OF outbox_current FOR VALUES WITH (MODULUS 2, REMAINDER 1)`
