//go:build linux

package pgops_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
)

// TestCheckTakesPartitionsForTheirTable: relay check on a partitioned
// outbox finds nothing wrong with the table or a publication of either
// kind, takes the leaf partitions a publication lists for the outbox, and
// says the publication it would create sends rows under the partitioned
// table.
func TestCheckTakesPartitionsForTheirTable(t *testing.T) {
	for _, tt := range []struct {
		name string
		with string // CREATE PUBLICATION … FOR TABLE outbox WITH (with); empty: the relay creates it
		want string // in the publication's finding
	}{
		{"relay's own publication", "", "publish_via_partition_root = true"},
		{"publish_via_partition_root", "publish = 'insert', publish_via_partition_root = true", `publishes inserts of "public"."outbox"`},
		{"rows under their leaf partitions", "publish = 'insert'", `publishes inserts of "public"."outbox"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, partitionedDDL)
			if tt.with != "" {
				if _, err := f.db.Exec(t.Context(), fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE outbox WITH (%s)", f.slot, tt.with)); err != nil {
					t.Fatal(err)
				}
			}
			findings := pgops.Check(t.Context(), pgops.CheckConfig{Config: pgsource.Config{
				ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns,
				Slot: f.slot, Publication: f.slot, Snapshot: pgsource.SnapshotNever,
			}})
			byCheck := map[string]relay.Finding{}
			for _, fd := range findings {
				if fd.Status == relay.CheckFail {
					t.Errorf("FAIL %s: %s (fix %s)", fd.Check, fd.Detail, fd.Fix)
				}
				if _, ok := byCheck[fd.Check]; !ok {
					byCheck[fd.Check] = fd
				}
			}
			if fd := byCheck["table public.outbox"]; !strings.Contains(fd.Detail, "partitioned") {
				t.Errorf("table finding %q does not say the table is partitioned", fd.Detail)
			}
			if pub := byCheck["publication "+f.slot]; !strings.Contains(pub.Detail, tt.want) {
				t.Errorf("publication finding %q, want it to say %q", pub.Detail, tt.want)
			}
		})
	}
}

// TestCheckSaysATableAndItsPartitionAreNotTwoOutboxes: RELAY_TABLES
// listing a partitioned table and one of its partitions, which stops the
// relay at start, fails relay check, naming the table to keep.
func TestCheckSaysATableAndItsPartitionAreNotTwoOutboxes(t *testing.T) {
	f := newFixture(t, partitionedDDL)
	findings := pgops.Check(t.Context(), pgops.CheckConfig{Config: pgsource.Config{
		ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox_current_1"}, {Schema: "public", Name: "outbox"}},
		Columns: pgsource.StandardColumns, Slot: f.slot, Publication: f.slot, Snapshot: pgsource.SnapshotNever,
	}})
	if !slices.ContainsFunc(findings, func(fd relay.Finding) bool {
		return fd.Status == relay.CheckFail && fd.Check == "table public.outbox_current_1" && strings.Contains(fd.Detail, "is a partition of public.outbox") && strings.Contains(fd.Fix, "list only public.outbox")
	}) {
		t.Errorf("no finding says public.outbox_current_1 is a partition of public.outbox: %+v", findings)
	}
}
