//go:build linux

package pgops_test

import (
	"strings"
	"testing"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
)

// TestCheckSaysWhichPgoutputFormat: relay check says whether the stream
// will ask for pgoutput's binary format and, when not, which setting or
// column keeps it in text.
func TestCheckSaysWhichPgoutputFormat(t *testing.T) {
	for _, tt := range []struct {
		name     string
		ddl      string
		textOnly bool
		want     string
	}{
		{"standard outbox", standardDDL, false, "binary"},
		{"binary off", standardDDL, true, "text, as RELAY_PGOUTPUT_BINARY=false asks"},
		{"a numeric column", strings.Replace(standardDDL, "created_at timestamptz", "amount numeric(10, 2), created_at timestamptz", 1), false,
			"text: column amount of public.outbox has type numeric(10,2), which the relay reads only as text"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, tt.ddl)
			findings := pgops.Check(t.Context(), pgops.CheckConfig{Config: pgsource.Config{
				ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns,
				Slot: f.slot, Publication: f.slot, Snapshot: pgsource.SnapshotNever, TextOnly: tt.textOnly,
			}})
			for _, fd := range findings {
				if fd.Check != "pgoutput format" {
					continue
				}
				if fd.Status != relay.CheckOK || fd.Detail != tt.want {
					t.Errorf("got %s %q, want ok %q", fd.Status, fd.Detail, tt.want)
				}
				return
			}
			t.Errorf("no pgoutput format finding in %+v", findings)
		})
	}
}
