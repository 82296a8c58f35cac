package pgsource

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func TestParseTable(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Table
		wantErr bool
	}{
		{name: "bare name in public", in: "outbox", want: Table{Schema: "public", Name: "outbox"}},
		{name: "schema and name", in: "sales.outbox", want: Table{Schema: "sales", Name: "outbox"}},
		{name: "explicit public", in: "public.outbox", want: Table{Schema: "public", Name: "outbox"}},
		{name: "surrounding space trimmed", in: " sales.outbox\t", want: Table{Schema: "sales", Name: "outbox"}},
		{name: "case kept", in: "Sales.OutBox", want: Table{Schema: "Sales", Name: "OutBox"}},
		{name: "unicode", in: "продажи.исходящие_🚀", want: Table{Schema: "продажи", Name: "исходящие_🚀"}},
		{name: "quote characters kept as stored", in: `we"ird.out"box`, want: Table{Schema: `we"ird`, Name: `out"box`}},
		{name: "empty", in: "", wantErr: true},
		{name: "blank", in: "   ", wantErr: true},
		{name: "no schema", in: ".x", wantErr: true},
		{name: "no name", in: "x.", wantErr: true},
		{name: "dot only", in: ".", wantErr: true},
		{name: "three parts", in: "a.b.c", wantErr: true},
		{name: "two dots", in: "a..b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseTable(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseTable(%q) = %+v, want error", tt.in, got)
				}
				if !strings.Contains(err.Error(), fmt.Sprintf("%q", strings.TrimSpace(tt.in))) {
					t.Errorf("error %q does not quote the input", err)
				}
				if got != (Table{}) {
					t.Errorf("ParseTable(%q) = %+v with an error, want the zero Table", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseTable(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseTable(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

func TestTableString(t *testing.T) {
	tests := []struct {
		name      string
		table     Table
		wantStr   string
		wantIdent string
	}{
		{name: "plain", table: Table{"public", "outbox"}, wantStr: "public.outbox", wantIdent: `"public"."outbox"`},
		{name: "upper case", table: Table{"Sales", "OutBox"}, wantStr: "Sales.OutBox", wantIdent: `"Sales"."OutBox"`},
		{name: "space", table: Table{"my schema", "out box"}, wantStr: "my schema.out box", wantIdent: `"my schema"."out box"`},
		{name: "quote doubled", table: Table{`we"ird`, `a"b`}, wantStr: `we"ird.a"b`, wantIdent: `"we""ird"."a""b"`},
		{name: "dot inside a quoted name", table: Table{"a.b", "c"}, wantStr: "a.b.c", wantIdent: `"a.b"."c"`},
		{name: "injection attempt", table: Table{"public", `x"; DROP TABLE t; --`}, wantStr: `public.x"; DROP TABLE t; --`, wantIdent: `"public"."x""; DROP TABLE t; --"`},
		{name: "unicode", table: Table{"продажи", "🚀"}, wantStr: "продажи.🚀", wantIdent: `"продажи"."🚀"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.table.String(); got != tt.wantStr {
				t.Errorf("String() = %q, want %q", got, tt.wantStr)
			}
			if got := tt.table.ident(); got != tt.wantIdent {
				t.Errorf("ident() = %q, want %q", got, tt.wantIdent)
			}
		})
	}
}

func TestParseTableRoundTrip(t *testing.T) {
	for _, s := range []string{"public.outbox", "sales.outbox", "Ümlaut.表"} {
		tb, err := ParseTable(s)
		if err != nil {
			t.Fatalf("ParseTable(%q): %v", s, err)
		}
		if tb.String() != s {
			t.Errorf("ParseTable(%q).String() = %q", s, tb.String())
		}
	}
}

func TestSourceTables(t *testing.T) {
	s, err := New(Config{ConnString: "postgres://u:p@127.0.0.1:1/db", Tables: []Table{{"public", "outbox"}, {"sales", "Outbox"}}})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := s.tableNames(), []string{"public.outbox", "sales.Outbox"}; !slices.Equal(got, want) {
		t.Errorf("tableNames() = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		schema, name string
		want         bool
	}{
		{"public", "outbox", true}, {"sales", "Outbox", true}, {"sales", "outbox", false}, {"public", "Outbox", false}, {"other", "outbox", false},
	} {
		// Names are compared as stored, case and all; the catalog knows
		// nothing of the others here.
		p := &partitions{tables: s.cfg.Tables, roots: map[uint32]Table{}, lookup: func(context.Context, uint32) (relationFacts, error) { return relationFacts{}, nil }}
		named := Table{tc.schema, tc.name}
		if got, ok, err := p.place(t.Context(), 1, named, "pub"); err != nil || ok != tc.want || (ok && got != named) {
			t.Errorf("place(%s) = %s, %v, %v; want it placed: %v", named, got, ok, err, tc.want)
		}
	}
}
