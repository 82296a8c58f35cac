package kafka

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/relay-dev/relay/relay"
)

// FuzzCheckpointRoundTrip: every position and owner a relay writes reads
// back as itself. Owners are host/pid/random (kafka.go); one that is not
// UTF-8 would not survive JSON, so the property holds for UTF-8 owners.
func FuzzCheckpointRoundTrip(f *testing.F) {
	f.Add(uint64(0), 0, "")
	f.Add(uint64(0x16B3748), 3, "host-1/4242/9f3a2b1c")
	f.Add(uint64(0xFFFFFFFFFFFFFFFF), int(^uint(0)>>1), "ünïcødé/1/0")
	f.Add(uint64(1)<<32, 1, "\"quoted\"\\ \u2028 <&>")
	f.Fuzz(func(t *testing.T, lsn uint64, index int, owner string) {
		if index < 0 || !utf8.ValidString(owner) {
			return
		}
		want := position{relay.LSN(lsn), index}
		b := want.checkpoint(owner)
		got, gotOwner, err := parseCheckpoint(b)
		if err != nil || got != want || gotOwner != owner {
			t.Fatalf("checkpoint %s of %v, owner %q, reads as %v, %q, %v", b, want, owner, got, gotOwner, err)
		}
	})
}

// FuzzParseCheckpoint: whatever the checkpoint topic holds under the
// relay's key, parseCheckpoint either refuses it or returns a position a
// relay could have written (an LSN and an index from 0, both present), and
// that position written again reads as itself. A checkpoint trusted
// wrongly would skip events that were never committed.
func FuzzParseCheckpoint(f *testing.F) {
	// testdata/fuzz/FuzzParseCheckpoint holds the cases this found.
	for _, s := range []string{
		`{"lsn":"0/16B3748","index":3,"owner":"host/1/ab"}`, `{"lsn":"0/0","index":0}`,
		`{"lsn":"FFFFFFFF/FFFFFFFF","index":9223372036854775807}`,
		`{"index":1}`, `{"lsn":null,"index":1}`, `{"lsn":"0/1","index":1.5}`,
		`{"lsn":"0/1","index":"1"}`, `{"lsn":"0/1","index":1e2}`, `{"lsn":"0/1","index":99999999999999999999}`,
		`{"lsn":"1/2/3","index":0}`, `{"lsn":"x/0","index":0}`, `{"lsn":"100000000/0","index":0}`, `{"lsn":"0/1","index":1,"owner":5}`,
		`{"LSN":"0/1","Index":2,"OWNER":"o"}`, `{"lsn":"0/1","lsn":"0/2","index":1}`, `{"lsn":"0/1","index":1} x`,
		`{"lsn":"0/1","index":1,"extra":{"a":[1]}}`, "{\"lsn\":\"0/1\",\"index\":1,\"owner\":\"\xff\"}",
		`null`, `[]`, `""`, ``, `{`, `{}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		pos, owner, err := parseCheckpoint(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("parseCheckpoint modified its input")
		}
		if err != nil {
			if pos != (position{}) || owner != "" {
				t.Errorf("parseCheckpoint(%q) returned %v, %q with its error %v", b, pos, owner, err)
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("parseCheckpoint(%q) accepted what is not JSON: %v", b, pos)
		}
		var fields map[string]json.RawMessage
		if err := json.Unmarshal(b, &fields); err != nil || fields == nil {
			t.Fatalf("parseCheckpoint(%q) accepted what is not a JSON object: %v", b, pos)
		}
		for _, name := range []string{"lsn", "index"} {
			present := false
			for k, v := range fields {
				// encoding/json matches field names case-insensitively.
				present = present || strings.EqualFold(k, name) && string(v) != "null"
			}
			if !present {
				t.Fatalf("parseCheckpoint(%q) = %v without %q: a relay always writes it", b, pos, name)
			}
		}
		if pos.Index < 0 {
			t.Fatalf("parseCheckpoint(%q) = %v: indexes within a transaction count from 0", b, pos)
		}
		again, againOwner, err := parseCheckpoint(pos.checkpoint(owner))
		if err != nil || again != pos || againOwner != owner {
			t.Fatalf("parseCheckpoint(%q) = %v, %q, written again reads as %v, %q, %v", b, pos, owner, again, againOwner, err)
		}
	})
}
