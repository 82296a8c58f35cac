//go:build linux

package pgsource_test

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay/pgsource"
)

// TestBinaryTextMatchesTheServer has PostgreSQL send each value in both its
// text and its binary form, in a session set up like the walsender's, and
// checks that the source rebuilds the text from the binary form byte for
// byte: the edge values of each type and a spread of random ones.
func TestBinaryTextMatchesTheServer(t *testing.T) {
	p := postgres(t)
	name := fmt.Sprintf("bin_%d", dbSeq.Add(1))
	if err := p.CreateDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	cfg, err := pgx.ParseConfig(p.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	db, err := pgx.ConnectConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(t.Context())

	const random = 3000
	tests := []struct {
		typ    string
		oid    uint32
		values string // an SQL expression of a set of values
	}{
		{"uuid", 2950, `unnest(ARRAY['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11']::uuid[])
			UNION ALL SELECT gen_random_uuid() FROM generate_series(1, 100)`},
		{"timestamptz", 1184, `unnest(ARRAY['infinity', '-infinity', '4714-11-24 00:00:00+00 BC', '294276-12-31 23:59:59.999999+00',
			'0001-01-01 00:00:00+00', '0001-12-31 23:59:59.999999+00 BC', '0001-01-01 00:00:00+00 BC', '0044-03-15 12:00:00+00 BC', '9999-12-31 23:59:59.999999+00', '10000-01-01 00:00:00+00',
			'1999-12-31 23:59:59.999999+00', '2000-01-01 00:00:00+00', '2000-01-01 00:00:00.000001+00', '1970-01-01 00:00:00.1+00',
			'2026-12-03 13:00:00.123456+14', '2026-12-03 13:00:00.12+05:30', '1900-02-28 23:59:59.5-11:30', '2024-02-29 12:00:00+00',
			'0999-06-01 00:00:00+00', '1582-10-10 00:00:00+00']::timestamptz[])
			UNION ALL SELECT to_timestamp((random() * 2e10 - 1e10)::numeric(20,6)::float8) FROM generate_series(1, ` + fmt.Sprint(random) + `)
			UNION ALL SELECT '2000-01-01'::timestamptz + random() * interval '1000000 days' - interval '500000 days' FROM generate_series(1, ` + fmt.Sprint(random) + `)`},
		{"timestamp", 1114, `unnest(ARRAY['infinity', '-infinity', '4714-11-24 00:00:00 BC', '294276-12-31 23:59:59.999999',
			'0001-01-01 00:00:00', '0001-01-01 00:00:00 BC', '9999-12-31 23:59:59.999999', '10000-01-01 00:00:00', '2026-12-03 13:00:00.000010']::timestamp[])
			UNION ALL SELECT '2000-01-01'::timestamp + random() * interval '1000000 days' - interval '500000 days' FROM generate_series(1, ` + fmt.Sprint(random) + `)`},
		{"int2", 21, `unnest(ARRAY[-32768, -1, 0, 1, 32767]::int2[])`},
		{"int4", 23, `unnest(ARRAY[-2147483648, -1, 0, 7, 2147483647]::int4[])`},
		{"int8", 20, `unnest(ARRAY[-9223372036854775808, -1, 0, 42, 9223372036854775807]::int8[])`},
		{"bool", 16, `unnest(ARRAY[true, false])`},
		{"text", 25, `unnest(ARRAY['', 'a', 'ü✓🚀', E'tab\there "q" \\ back', repeat('x', 100000)])`},
		{"varchar", 1043, `unnest(ARRAY['', 'Order', 'ä'])::varchar(20)`},
		{"bpchar", 1042, `unnest(ARRAY['', 'ab', 'ä'])::char(4)`},
		{"json", 114, `unnest(ARRAY['{}', '{"b":1,  "a" : [1, 2.50, "x\u00e9\n"]}', '"s"', 'null', '  [ ]  '])::json`},
		{"jsonb", 3802, `unnest(ARRAY['{}', '{"b":1,  "a" : [1, 2.50, "x\u00e9\n"]}', '"s"', 'null', '{"ключ": "значение 🚀", "e": "\"\\\/\b\f\n\r\t\u0001"}', '1e100', '[1.0, -0.0]'])::jsonb`},
		{"bytea", 17, `unnest(ARRAY[''::bytea, '\x00'::bytea, '\x00ff4142'::bytea, convert_to('ü', 'UTF8'), decode(repeat('ab', 70000), 'hex')])`},
	}
	for _, tt := range tests {
		t.Run(tt.typ, func(t *testing.T) {
			// The same value twice: the first column in text, the second
			// in binary, as pgoutput sends them.
			sql := fmt.Sprintf(`SELECT v, v FROM (SELECT %s) s(v)`, tt.values)
			rr := db.PgConn().ExecParams(t.Context(), sql, nil, nil, nil, []int16{0, 1}).Read()
			if rr.Err != nil {
				t.Fatal(rr.Err)
			}
			if len(rr.Rows) == 0 {
				t.Fatal("no values")
			}
			if got := rr.FieldDescriptions[0].DataTypeOID; got != tt.oid {
				t.Fatalf("values of type %d, want %d", got, tt.oid)
			}
			for _, row := range rr.Rows {
				want, bin := row[0], row[1]
				got, err := pgsource.BinaryText(tt.oid, bin)
				if err != nil {
					t.Fatalf("%s %q (binary %x): %v", tt.typ, want, bin, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s binary %x: text %q, want %q", tt.typ, bin, got, want)
				}
				if tt.oid != 1184 && tt.oid != 1114 {
					continue
				}
				// What the event takes from a created_at column.
				wantT, wantErr := pgsource.DecodeTimestamp(want)
				if gotT, ok := pgsource.BinaryTime(bin); ok {
					if wantErr != nil || gotT != wantT {
						t.Fatalf("%s %q: binary time %v, text gives %v, %v", tt.typ, want, gotT, wantT, wantErr)
					}
				} else if wantErr == nil {
					t.Fatalf("%s %q: no binary time, text gives %v", tt.typ, want, wantT)
				}
			}
		})
	}
}
