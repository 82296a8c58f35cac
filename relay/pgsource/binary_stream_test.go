//go:build linux

package pgsource_test

import (
	"bytes"
	"context"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// logBuffer collects a source's log lines, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// binaryDDL has an outbox of each payload type and created_at type, and
// extra columns of every type whose binary form the source reads, which
// routing templates can name.
const binaryDDL = `
	CREATE TABLE outbox (
		id uuid PRIMARY KEY, aggregate_type text, aggregate_id varchar(300), event_type char(12),
		payload jsonb, headers jsonb, created_at timestamptz, destination varchar,
		n2 int2, n4 int4, n8 int8, flag bool, ts timestamp, note text, doc json, blob bytea);
	CREATE TABLE blobs (
		id int8 PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text,
		payload bytea, headers json, created_at timestamp);
	CREATE TABLE texts (
		id text PRIMARY KEY, aggregate_type varchar, aggregate_id text, event_type text,
		payload text, headers jsonb, created_at timestamptz);
	CREATE TABLE jsons (
		id int4 PRIMARY KEY, aggregate_type text, aggregate_id int2, event_type text,
		payload json, created_at timestamptz)`

// binaryRows are adversarial rows for each table: NULLs, empty strings,
// infinite and BC timestamps and the years around the ones created_at
// can hold, microseconds, offsets, large values, Unicode and escapes.
const binaryRows = `
	INSERT INTO outbox VALUES
		('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'order', '42', 'placed', '{"b": 1, "a": [1, 2.50, "x"]}', '{"trace": "abc", "n": 1}', '2026-12-03 13:00:00.123456+02', NULL, -32768, 2147483647, -9223372036854775808, true, '2026-12-03 13:00:00.000001', '', '{"k" :  "v"}', '\x00ff'),
		('00000000-0000-0000-0000-000000000000', '', '', '', '{}', '{}', '0001-01-01 00:00:00+00', 'to/queue', 0, 0, 0, false, 'infinity', 'ü✓🚀', 'null', ''),
		('ffffffff-ffff-ffff-ffff-ffffffffffff', 'order', repeat('ä', 300), 'x', '{"ключ": "значение 🚀", "e": "\"\\\/\b\f\n\r\t\u0001"}', '{"ключ": "значение", "q": "a\"b", "arr": [1, {"x": null}]}', '9999-12-31 23:59:59.999999+00', '', NULL, NULL, NULL, NULL, '4714-11-24 00:00:00 BC', NULL, NULL, NULL),
		('11111111-1111-1111-1111-111111111111', 'order', '1', 'bc', '"s"', '{}', '0044-03-15 12:00:00+00 BC', NULL, 1, 1, 1, true, '294276-12-31 23:59:59.999999', 'n', '[]', decode(repeat('00ff', 50000), 'hex')),
		('22222222-2222-2222-2222-222222222222', 'order', '1', 'inf', 'null', NULL, 'infinity', NULL, 2, 2, 2, true, '-infinity', 'n', '1', '\x'),
		('33333333-3333-3333-3333-333333333333', 'order', '1', 'future', '[]', '[1]', '10000-01-01 00:00:00+00', NULL, 3, 3, 3, true, NULL, NULL, NULL, NULL),
		('44444444-4444-4444-4444-444444444444', 'order', '1', 'nulls', NULL, '{"a": "1", "a": "2"}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		('55555555-5555-5555-5555-555555555555', NULL, '1', 'null agg', '{}', '{}', '1999-12-31 23:59:59.999999-11:30', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		('66666666-6666-6666-6666-666666666666', 'order', '1', 'us', '{}', '{}', '2000-01-01 00:00:00.000001+00', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
	INSERT INTO blobs VALUES
		(1, 'blob', '1', 'stored', '\x00ff4142', '{"a" : "b",  "n" : [1]}', '2026-12-03 13:00:00.5'),
		(-9223372036854775808, 'blob', '2', 'empty', '', '{}', '-infinity'),
		(9223372036854775807, 'blob', '3', 'big', decode(repeat('0123456789abcdef', 20000), 'hex'), NULL, '0001-01-01 00:00:00 BC'),
		(0, 'blob', '4', 'null', NULL, 'null', NULL);
	INSERT INTO texts VALUES
		('t1', 'text', '1', 'said', 'plain ✓ text', '{}', now()),
		('', 'text', '', '', '', '{"": ""}', '2026-06-30 23:59:59.999999+14'),
		('t3', 'text', '3', 'big', repeat('long ', 100000), NULL, NULL);
	INSERT INTO jsons VALUES
		(-2147483648, 'json', -32768, 'j', '{"b":1,  "a" : [1, 2.50, "x\u00e9\n"]}', '2026-12-03 13:00:00+00'),
		(2147483647, 'json', 32767, 'j', '  "padded"  ', NULL);
	INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('` + sentinelID + `', 'sentinel', '0', 'sentinel', '{}')`

// runRelay runs a relay in the background until the test ends.
func runRelay(t *testing.T, cfg relay.Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		relay.New(cfg).Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// eventView is everything a sink can read of an event.
type eventView struct {
	ID, Table, AggregateType, AggregateID, EventType string
	Payload                                          []byte
	ContentType                                      string
	Headers                                          []relay.Header
	CreatedAt, CommitTime                            time.Time
	CommitLSN                                        relay.LSN
	Index                                            int
	Row                                              relay.Row
	To, Route                                        string
	Invalid, DeadLetter                              string
}

func viewOf(ev *relay.Event) eventView {
	v := eventView{
		ID: ev.ID, Table: ev.Table, AggregateType: ev.AggregateType, AggregateID: ev.AggregateID, EventType: ev.EventType,
		Payload: ev.Payload, ContentType: ev.ContentType, Headers: ev.Headers, CreatedAt: ev.CreatedAt, CommitTime: ev.CommitTime,
		CommitLSN: ev.CommitLSN, Index: ev.Index, Row: ev.Row, To: ev.To, Route: ev.Route(), DeadLetter: ev.DeadLetter,
	}
	if ev.Invalid != nil {
		v.Invalid = ev.Invalid.Error()
	}
	return v
}

// TestBinaryAndTextSessionsMakeTheSameEvents streams the same WAL once in
// pgoutput's binary format and once in text, and requires the same events,
// field for field and byte for byte, bad rows and their reasons included.
func TestBinaryAndTextSessionsMakeTheSameEvents(t *testing.T) {
	f := newFixture(t, binaryDDL)
	tables := []pgsource.Table{{Schema: "public", Name: "outbox"}, {Schema: "public", Name: "blobs"}, {Schema: "public", Name: "texts"}, {Schema: "public", Name: "jsons"}}
	if _, err := f.db.Exec(t.Context(), `CREATE PUBLICATION `+f.slot+` FOR TABLE outbox, blobs, texts, jsons WITH (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	modes := []struct {
		name     string
		textOnly bool
	}{{"binary", false}, {"text", true}}
	for _, m := range modes {
		if _, err := f.db.Exec(t.Context(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, f.slot+"_"+m.name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.db.Exec(t.Context(), binaryRows); err != nil {
		t.Fatal(err)
	}

	got := map[string][]*relay.Event{}
	for _, m := range modes {
		var logs logBuffer
		src, err := pgsource.New(pgsource.Config{
			ConnString: f.url, Tables: tables, Columns: pgsource.StandardColumns,
			Slot: f.slot + "_" + m.name, Publication: f.slot, StatusInterval: 200 * time.Millisecond,
			TextOnly: m.textOnly, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		rec := &recorder{}
		ctx, cancel := context.WithCancel(t.Context())
		r := relay.New(relay.Config{Source: src, Sink: rec, DeadLetter: true, BlockedRetry: 200 * time.Millisecond})
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		got[m.name] = rec.through(t, sentinelID)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if want := "pgoutput_format=" + m.name; !strings.Contains(logs.String(), want) {
			t.Fatalf("%s session: no %q in its log:\n%s", m.name, want, logs.String())
		}
	}
	bin, text := got["binary"], got["text"]
	if len(text) != 18 {
		t.Fatalf("text session: %d events, want 18", len(text))
	}
	if len(bin) != len(text) {
		t.Fatalf("binary session: %d events, text session %d", len(bin), len(text))
	}
	var bad int
	for i := range text {
		b, x := viewOf(bin[i]), viewOf(text[i])
		if !reflect.DeepEqual(b, x) {
			t.Errorf("event %d differs:\nbinary %+v\ntext   %+v", i, b, x)
		}
		if x.DeadLetter != "" {
			bad++
		}
	}
	// Infinite, BC and five-digit created_at, a NULL aggregate type,
	// headers that are no object.
	if bad < 6 {
		t.Errorf("%d dead letters, want the bad rows' 6 or more", bad)
	}
}

// TestBinaryModeNeedsTypesItReads: one column of a type whose binary form
// the source does not read keeps the session in text mode, and says why.
func TestBinaryModeNeedsTypesItReads(t *testing.T) {
	f := newFixture(t, strings.Replace(standardDDL, "created_at timestamptz NOT NULL DEFAULT now()", "created_at timestamptz NOT NULL DEFAULT now(), tags text[], amount numeric", 1))
	var logs logBuffer
	src, err := pgsource.New(pgsource.Config{
		ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns,
		Slot: f.slot, Publication: f.slot, StatusInterval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	runRelay(t, relay.Config{Source: src, Sink: rec})
	waitSlot(t, f)
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, tags, amount) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'order', '1', 'x', '{}', '{a,"b c"}', 1.50)`); err != nil {
		t.Fatal(err)
	}
	ev := rec.wait(t, 1)[0]
	if v, _ := ev.Field("tags"); v != `{a,"b c"}` {
		t.Errorf("tags column %q", v)
	}
	for _, want := range []string{"pgoutput_format=text", "column tags of public.outbox has type text[], which the relay reads only as text"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
}

// TestBinarySessionFallsBackToTextForAnOldRelation: the catalog allows
// binary mode, but the stream still holds rows written while the table had
// a column of another type; the session gives way to a text one, and every
// row arrives as text mode reads it.
func TestBinarySessionFallsBackToTextForAnOldRelation(t *testing.T) {
	f := newFixture(t, strings.Replace(standardDDL, "created_at timestamptz NOT NULL DEFAULT now()", "created_at timestamptz NOT NULL DEFAULT now(), amount numeric", 1))
	if _, err := f.db.Exec(t.Context(), `CREATE PUBLICATION `+f.slot+` FOR TABLE outbox WITH (publish = 'insert')`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(t.Context(), `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, f.slot); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, amount) VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'order', '1', 'old', '{}', 1.50);
		ALTER TABLE outbox DROP COLUMN amount`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('`+sentinelID+`', 'sentinel', '0', 'sentinel', '{}')`); err != nil {
		t.Fatal(err)
	}
	var logs logBuffer
	src, err := pgsource.New(pgsource.Config{
		ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns,
		Slot: f.slot, Publication: f.slot, StatusInterval: 200 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	runRelay(t, relay.Config{Source: src, Sink: rec, Backoff: relay.NewBackoff(10*time.Millisecond, 10*time.Millisecond)})
	evs := rec.through(t, sentinelID)
	if len(evs) != 1 || evs[0].EventType != "old" {
		t.Fatalf("events %v, want the old row", ids(evs))
	}
	if v, _ := evs[0].Field("amount"); v != "1.50" {
		t.Errorf("amount %q, want 1.50", v)
	}
	for _, want := range []string{"pgoutput_format=binary", "column amount of public.outbox has type 1700, which the relay reads only as text", "pgoutput_format=text"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
}
