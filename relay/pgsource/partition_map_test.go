package pgsource

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
)

// TestPlaceMapsLeavesToTheirTable: the relations of Relation messages are
// placed on the outbox table they belong to, from the partition trees read
// at the session's start, else from the catalog now, else, for a
// relation gone from every tree, on the only partitioned outbox table.
func TestPlaceMapsLeavesToTheirTable(t *testing.T) {
	t.Parallel()
	outbox := Table{"public", "outbox"}
	audit := Table{"public", "audit"}
	plain := Table{"sales", "outbox"}
	leaf := Table{"public", "outbox_2026_12"}
	const known, attached, gone = 100, 200, 300
	tests := []struct {
		name        string
		tables      []Table
		partitioned []Table
		oid         uint32
		named       Table
		facts       relationFacts
		lookupErr   error
		want        Table
		wantOK      bool
		wantErr     string // substring; wantPerm: relay.Permanent
		wantPerm    bool
		wantLookups int
	}{
		{name: "a partition read at the start", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: known, named: leaf, want: outbox, wantOK: true},
		{name: "a table of RELAY_TABLES by name", tables: []Table{outbox, plain}, partitioned: []Table{outbox}, oid: 7, named: plain, want: plain, wantOK: true},
		{name: "a partition attached since, with sub-partitions", tables: []Table{outbox, plain}, partitioned: []Table{outbox}, oid: attached, named: Table{"public", "outbox_2027_01_a"},
			facts: relationFacts{ancestors: []Table{{"public", "outbox_2027_01_a"}, {"public", "outbox_2027_01"}, outbox}, published: true}, want: outbox, wantOK: true, wantLookups: 1},
		{name: "a partition of the second partitioned table", tables: []Table{outbox, audit}, partitioned: []Table{outbox, audit}, oid: attached, named: Table{"public", "audit_1"},
			facts: relationFacts{ancestors: []Table{{"public", "audit_1"}, audit}}, want: audit, wantOK: true, wantLookups: 1},
		{name: "a table not in RELAY_TABLES", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: attached, named: Table{"public", "orders"},
			facts: relationFacts{ancestors: []Table{{"public", "orders"}}, published: true}, wantErr: "streams table public.orders, which is not in RELAY_TABLES", wantPerm: true, wantLookups: 1},
		{name: "a partition of a table not in RELAY_TABLES", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: attached, named: Table{"public", "orders_1"},
			facts: relationFacts{ancestors: []Table{{"public", "orders_1"}, {"public", "orders"}}, published: true}, wantErr: "orders_1 (a partition of public.orders), which is not in RELAY_TABLES", wantPerm: true, wantLookups: 1},
		{name: "dropped, one partitioned table", tables: []Table{outbox, plain}, partitioned: []Table{outbox}, oid: gone, named: Table{"public", "outbox_2019"},
			want: outbox, wantOK: true, wantLookups: 1},
		{name: "detached, one partitioned table", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: gone, named: Table{"public", "outbox_2019"},
			facts: relationFacts{ancestors: []Table{{"public", "outbox_2019"}}}, want: outbox, wantOK: true, wantLookups: 1},
		{name: "detached and attached elsewhere", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: gone, named: Table{"public", "outbox_2019"},
			facts: relationFacts{ancestors: []Table{{"public", "outbox_2019"}, {"archive", "outbox"}}}, want: outbox, wantOK: true, wantLookups: 1},
		{name: "dropped, two partitioned tables", tables: []Table{outbox, audit}, partitioned: []Table{outbox, audit}, oid: gone, named: Table{"public", "audit_2019"},
			wantOK: false, wantLookups: 1},
		{name: "dropped, no partitioned table", tables: []Table{plain}, oid: gone, named: Table{"public", "orders"},
			wantOK: false, wantLookups: 1},
		{name: "the catalog cannot be read", tables: []Table{outbox}, partitioned: []Table{outbox}, oid: attached, named: leaf,
			lookupErr: errors.New("connection refused"), wantErr: "connection refused", wantLookups: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			lookups := 0
			p := &partitions{
				tables:      tt.tables,
				partitioned: tt.partitioned,
				roots:       map[uint32]Table{known: outbox},
				lookup: func(_ context.Context, oid uint32) (relationFacts, error) {
					lookups++
					if oid != tt.oid {
						t.Errorf("looked up oid %d, want %d", oid, tt.oid)
					}
					return tt.facts, tt.lookupErr
				},
				log: slog.New(slog.DiscardHandler),
			}
			got, ok, err := p.place(t.Context(), tt.oid, tt.named, "outbox_relay")
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("place: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("place = %v, want an error saying %q", err, tt.wantErr)
			case err != nil && relay.IsPermanent(err) != tt.wantPerm:
				t.Fatalf("place = %v, permanent %v, want %v", err, relay.IsPermanent(err), tt.wantPerm)
			case ok != tt.wantOK || got != tt.want:
				t.Fatalf("place = %s, %v; want %s, %v", got, ok, tt.want, tt.wantOK)
			case lookups != tt.wantLookups:
				t.Fatalf("%d catalog lookups, want %d", lookups, tt.wantLookups)
			}
			if ok {
				// Placed once, a relation costs no lookup again.
				if again, _, _ := p.place(t.Context(), tt.oid, tt.named, "outbox_relay"); again != got || lookups != tt.wantLookups {
					t.Errorf("placed again as %s after %d lookups", again, lookups)
				}
			}
		})
	}
}

// TestUnplacedRowSaysWhy: a row under a relation placed on no table stops
// the stream with the reason and the fix.
func TestUnplacedRowSaysWhy(t *testing.T) {
	t.Parallel()
	e := &errUnplaced{rel: Table{"public", "audit_2019"}, oid: 300, publication: "outbox_relay", partitioned: []Table{{"public", "outbox"}, {"public", "audit"}}}
	for _, want := range []string{"public.audit_2019 (oid 300)", "no longer a partition of public.outbox or public.audit", "publish_via_partition_root = true"} {
		if !strings.Contains(e.Error(), want) {
			t.Errorf("%q does not say %q", e, want)
		}
	}
	plain := &errUnplaced{rel: Table{"public", "orders"}, publication: "outbox_relay"}
	if want := "publication outbox_relay streams table public.orders, which is not in RELAY_TABLES"; plain.Error() != want {
		t.Errorf("%q, want %q", plain, want)
	}
}
