//go:build linux

package pgsource_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

var (
	pg     *services.Postgres
	dbSeq  atomic.Int64
	startM sync.Mutex
)

func TestMain(m *testing.M) {
	code := m.Run()
	if pg != nil {
		pg.Close()
	}
	os.Exit(code)
}

// postgres starts one throwaway server for the package on first use; a
// failure to start fails the test.
func postgres(t *testing.T) *services.Postgres {
	t.Helper()
	startM.Lock()
	defer startM.Unlock()
	if pg == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		p, err := services.StartPostgres(ctx, services.PostgresOptions{Fast: true})
		if err != nil {
			t.Fatalf("start postgres: %v", err)
		}
		pg = p
	}
	return pg
}

// recorder is a sink that confirms every event at once (or fails the ones
// reject picks) and keeps them.
type recorder struct {
	mu     sync.Mutex
	events []*relay.Event
	reject func(*relay.Event) error
}

func (r *recorder) Publish(_ context.Context, ev *relay.Event) error {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	if r.reject != nil {
		if err := r.reject(ev); err != nil {
			ev.Done(err)
			return nil
		}
	}
	ev.Done(nil)
	return nil
}

func (r *recorder) Close(context.Context) error { return nil }

func (r *recorder) got() []*relay.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*relay.Event(nil), r.events...)
}

func (r *recorder) wait(t *testing.T, n int) []*relay.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := r.got()
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d events, want %d", len(evs), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type fixture struct {
	db   *pgx.Conn
	url  string
	slot string
	// relay is the one run last started; deadLetter is given to it.
	relay         *relay.Relay
	deadLetter    bool
	messagePrefix string
	snapshot      string
	// tableColumns is the sources's Config.TableColumns.
	tableColumns map[pgsource.Table]pgsource.Columns
}

func newFixture(t *testing.T, ddl string) *fixture {
	t.Helper()
	p := postgres(t)
	name := fmt.Sprintf("src_%d", dbSeq.Add(1))
	if err := p.CreateDatabase(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	db, err := pgx.Connect(t.Context(), p.URL(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	if _, err := db.Exec(t.Context(), ddl); err != nil {
		t.Fatal(err)
	}
	return &fixture{db: db, url: p.URL(name), slot: "slot_" + name}
}

// run starts a relay over the source in the background; the returned
// channel receives Run's result, and the relay is stopped at cleanup.
func (f *fixture) run(t *testing.T, cols pgsource.Columns, sink relay.Sink, tables ...string) <-chan error {
	t.Helper()
	var ts []pgsource.Table
	for _, s := range tables {
		tb, err := pgsource.ParseTable(s)
		if err != nil {
			t.Fatal(err)
		}
		ts = append(ts, tb)
	}
	src, err := pgsource.New(pgsource.Config{ConnString: f.url, Tables: ts, Columns: cols, TableColumns: f.tableColumns, Slot: f.slot, Publication: f.slot, StatusInterval: 200 * time.Millisecond, MessagePrefix: f.messagePrefix, Snapshot: f.snapshot})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	f.relay = relay.New(relay.Config{Source: src, Sink: sink, DeadLetter: f.deadLetter, BlockedRetry: 200 * time.Millisecond})
	r := f.relay
	go func() {
		defer close(finished)
		done <- r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-finished
	})
	return done
}

const standardDDL = `CREATE TABLE outbox (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	aggregate_type text NOT NULL, aggregate_id text NOT NULL, event_type text NOT NULL,
	payload jsonb NOT NULL, headers jsonb NOT NULL DEFAULT '{}', created_at timestamptz NOT NULL DEFAULT now())`

func TestDecodesStandardRows(t *testing.T) {
	f := newFixture(t, standardDDL)
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "public.outbox")
	// The slot is created by the source; rows committed after that arrive.
	waitSlot(t, f)
	_, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers, created_at) VALUES
		('00000000-0000-0000-0000-000000000001', 'örder', 'ä-1', 'created', '{"b": 2, "a": "ü✓🚀"}', '{"z": "last", "a": 1, "t": "x y"}', '2026-01-02 03:04:05.123456+02'),
		('00000000-0000-0000-0000-000000000002', 'order', 'a-1', 'paid', '[1,2]', '{}', '2026-01-02 03:04:06+00')`)
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.wait(t, 2)
	e := evs[0]
	if e.ID != "00000000-0000-0000-0000-000000000001" || e.AggregateType != "örder" || e.AggregateID != "ä-1" || e.EventType != "created" || e.Table != "public.outbox" {
		t.Errorf("fields: %+v", e)
	}
	if string(e.Payload) != `{"a": "ü✓🚀", "b": 2}` || e.ContentType != relay.ContentTypeJSON {
		t.Errorf("payload %q content type %q", e.Payload, e.ContentType)
	}
	want := []relay.Header{{Key: "a", Value: "1", JSON: true}, {Key: "t", Value: "x y"}, {Key: "z", Value: "last"}}
	if fmt.Sprint(e.Headers) != fmt.Sprint(want) {
		t.Errorf("headers %v, want %v", e.Headers, want)
	}
	if !e.CreatedAt.Equal(time.Date(2026, 1, 2, 1, 4, 5, 123456000, time.UTC)) {
		t.Errorf("created_at %s", e.CreatedAt)
	}
	if e.CommitLSN == 0 || e.CommitLSN != evs[1].CommitLSN || e.Index != 0 || evs[1].Index != 1 {
		t.Errorf("positions: %s/%d and %s/%d", e.CommitLSN, e.Index, evs[1].CommitLSN, evs[1].Index)
	}
	if v, ok := e.Field("event_type"); !ok || v != "created" {
		t.Errorf("Field(event_type) = %q", v)
	}
}

func TestDebeziumLayoutAndPayloadTypes(t *testing.T) {
	f := newFixture(t, `
		CREATE TABLE outboxevent (id uuid PRIMARY KEY, aggregatetype varchar(255) NOT NULL, aggregateid varchar(255) NOT NULL, type varchar(255) NOT NULL, payload jsonb);
		CREATE TABLE blobs (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload bytea);
		CREATE TABLE texts (id text PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text NOT NULL, payload text)`)
	rec := &recorder{}
	f.run(t, pgsource.DebeziumColumns, rec, "outboxevent", "public.blobs", "texts")
	waitSlot(t, f)
	_, err := f.db.Exec(t.Context(), `
		INSERT INTO outboxevent VALUES ('00000000-0000-0000-0000-00000000000a', 'Order', '7', 'OrderCreated', '{"x": 1}');
		INSERT INTO blobs VALUES ('b1', 'Blob', '8', 'Stored', '\x00ff4142'::bytea);
		INSERT INTO texts VALUES ('t1', 'Text', '9', 'Said', 'plain ✓ text');
		INSERT INTO outboxevent VALUES ('00000000-0000-0000-0000-00000000000b', 'Order', '7', 'OrderDeleted', NULL)`)
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.wait(t, 4)
	if string(evs[0].Payload) != `{"x": 1}` || evs[0].ContentType != relay.ContentTypeJSON || evs[0].EventType != "OrderCreated" || evs[0].AggregateType != "Order" {
		t.Errorf("debezium row: %+v", evs[0])
	}
	if string(evs[1].Payload) != "\x00\xffAB" || evs[1].ContentType != "" || evs[1].Table != "public.blobs" {
		t.Errorf("bytea payload %q content type %q", evs[1].Payload, evs[1].ContentType)
	}
	if string(evs[2].Payload) != "plain ✓ text" || evs[2].ContentType != "" {
		t.Errorf("text payload %q", evs[2].Payload)
	}
	if evs[3].Payload != nil {
		t.Errorf("NULL payload became %q", evs[3].Payload)
	}
	// Without created_at the timestamp is the commit time.
	if evs[0].CreatedAt.IsZero() || !evs[0].CreatedAt.Equal(evs[0].CommitTime) {
		t.Errorf("created_at %s, commit time %s", evs[0].CreatedAt, evs[0].CommitTime)
	}
}

func TestBadRowStopsWithItsID(t *testing.T) {
	f := newFixture(t, `CREATE TABLE outbox (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload jsonb, headers jsonb, created_at timestamptz)`)
	rec := &recorder{}
	done := f.run(t, pgsource.StandardColumns, rec, "outbox")
	waitSlot(t, f)
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('bad-1', 'order', NULL, 'x', '{}')`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var re *relay.RowError
	for ; re == nil; re = f.relay.Blocked() {
		if time.Now().After(deadline) {
			t.Fatal("the relay does not report itself blocked at the bad row")
		}
		select {
		case err := <-done:
			t.Fatalf("the relay stopped (%v) instead of waiting at the bad row", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if re.ID != "bad-1" || !strings.Contains(re.Error(), "aggregate_id") {
		t.Fatalf("blocked at %v: want the row bad-1 and the column aggregate_id", re)
	}
	if n := len(rec.got()); n != 0 {
		t.Errorf("the sink got %d events; a bad row is never published as it is", n)
	}
	// Nothing past the bad row was confirmed: a restart meets it again.
	var confirmed, end pgLSN
	f.db.QueryRow(t.Context(), "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", f.slot).Scan(&confirmed)
	f.db.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()").Scan(&end)
	if confirmed >= end {
		t.Fatalf("slot confirmed %s past the bad row (WAL end %s)", confirmed, end)
	}
}

func TestBadRowIsDeadLettered(t *testing.T) {
	f := newFixture(t, `CREATE TABLE outbox (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload jsonb, headers jsonb, created_at timestamptz)`)
	f.deadLetter = true
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "outbox")
	waitSlot(t, f)
	_, err := f.db.Exec(t.Context(), `
		INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('ok-1', 'order', '1', 'x', '{}');
		INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload, headers) VALUES ('bad-2', 'order', '1', 'x', '{}', '[1]');
		INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('ok-3', 'order', '1', 'x', '{}')`)
	if err != nil {
		t.Fatal(err)
	}
	evs := rec.wait(t, 3)
	for i, want := range []string{"ok-1", "bad-2", "ok-3"} {
		if evs[i].ID != want {
			t.Fatalf("event %d is %s, want %s", i, evs[i].ID, want)
		}
	}
	if evs[0].DeadLetter != "" || evs[2].DeadLetter != "" {
		t.Errorf("good rows dead-lettered: %q, %q", evs[0].DeadLetter, evs[2].DeadLetter)
	}
	if !strings.Contains(evs[1].DeadLetter, "headers") {
		t.Errorf("the bad row's dead letter says %q, want the reason naming the headers column", evs[1].DeadLetter)
	}
	// The stream went on: the slot passes all three rows.
	var end pgLSN
	f.db.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()").Scan(&end)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var confirmed pgLSN
		f.db.QueryRow(t.Context(), "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", f.slot).Scan(&confirmed)
		if confirmed >= end {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot at %s, not past the dead-lettered row (WAL end %s)", confirmed, end)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBrokerFailureKeepsSlot(t *testing.T) {
	f := newFixture(t, standardDDL)
	failing := &recorder{reject: func(ev *relay.Event) error { return relay.Permanent(fmt.Errorf("broker refused %s", ev.ID)) }}
	done := f.run(t, pgsource.StandardColumns, failing, "outbox")
	waitSlot(t, f)
	var before pgLSN
	f.db.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()").Scan(&before)
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('o', '1', 'x', '{}')`); err != nil {
		t.Fatal(err)
	}
	err := waitErr(t, done)
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), "broker refused") {
		t.Fatalf("error %v", err)
	}
	var confirmed pgLSN
	f.db.QueryRow(t.Context(), "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", f.slot).Scan(&confirmed)
	if confirmed > before {
		t.Fatalf("slot confirmed %s, past the refused row's transaction (which starts after %s)", confirmed, before)
	}
	// A new relay on the same slot gets the row again.
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "outbox")
	if evs := rec.wait(t, 1); evs[0].AggregateID != "1" {
		t.Fatalf("redelivered %+v", evs[0])
	}
}

func TestWalLevelReplicaIsAClearError(t *testing.T) {
	ctx := t.Context()
	p, err := services.StartPostgres(ctx, services.PostgresOptions{Fast: true, ExtraConf: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	defer p.Close()
	src, err := pgsource.New(pgsource.Config{ConnString: p.URL("postgres"), Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns, Slot: "s", Publication: "s"})
	if err != nil {
		t.Fatal(err)
	}
	err = relay.New(relay.Config{Source: src, Sink: &recorder{}}).Run(ctx)
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), "wal_level") || !strings.Contains(err.Error(), "ALTER SYSTEM SET wal_level = logical") {
		t.Fatalf("error %v: want one that says how to set wal_level", err)
	}
}

func TestMissingTableAndColumnsAreNamed(t *testing.T) {
	f := newFixture(t, `CREATE TABLE outbox (id uuid PRIMARY KEY, aggregate_type text, payload jsonb)`)
	src, err := pgsource.New(pgsource.Config{ConnString: f.url, Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}, {Schema: "sales", Name: "outbox"}}, Columns: pgsource.StandardColumns, Slot: f.slot, Publication: f.slot})
	if err != nil {
		t.Fatal(err)
	}
	err = relay.New(relay.Config{Source: src, Sink: &recorder{}}).Run(t.Context())
	for _, want := range []string{"aggregate_id", "event_type", "sales.outbox does not exist"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not mention %q", err, want)
		}
	}
	if !relay.IsPermanent(err) {
		t.Errorf("error %v is not permanent", err)
	}
}

type pgLSN uint64

func (l *pgLSN) Scan(src any) error {
	s, ok := src.(string)
	if !ok {
		return fmt.Errorf("lsn: %T", src)
	}
	v, err := relay.ParseLSN(s)
	*l = pgLSN(v)
	return err
}

func (l pgLSN) String() string { return relay.LSN(l).String() }

func waitSlot(t *testing.T, f *fixture) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		// Active and consistent: a slot still being created has no
		// confirmed_flush_lsn, and goes if its creator stops.
		var ready bool
		err := f.db.QueryRow(t.Context(), "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1", f.slot).Scan(&ready)
		if err == nil && ready {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot %s not active: %v", f.slot, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sentinelID marks the row sentinel commits.
const sentinelID = "00000000-0000-0000-0000-00000000ffff"

// sentinel commits a row into the standard outbox after everything the test
// committed before, and returns its id.
func sentinel(t *testing.T, f *fixture) string {
	t.Helper()
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ($1, 'sentinel', '0', 'sentinel', '{}')`, sentinelID); err != nil {
		t.Fatal(err)
	}
	return sentinelID
}

// through waits for the event id and returns the events before it. The
// stream is in commit order, so when id was committed last, nothing more
// can arrive.
func (r *recorder) through(t *testing.T, id string) []*relay.Event {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		evs := r.got()
		for i, ev := range evs {
			if ev.ID == id {
				if i != len(evs)-1 {
					t.Fatalf("events %v after %s, which was committed last", ids(evs[i+1:]), id)
				}
				return evs[:i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not published within 30 s; got %d events", id, len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitErr waits for Run to return on its own.
func waitErr(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("relay did not stop")
		return nil
	}
}

func TestTransactionalMessagesArePublished(t *testing.T) {
	f := newFixture(t, standardDDL)
	f.messagePrefix = "outbox"
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "outbox")
	waitSlot(t, f)
	ddl, err := os.ReadFile("../../schema/outbox_emit.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.db.Exec(t.Context(), string(ddl)); err != nil {
		t.Fatal(err)
	}
	// An aborted transaction's message never arrives; messages with
	// other prefixes (the relay's heartbeats among them) are not events.
	tx, err := f.db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(t.Context(), `SELECT outbox_emit('order', '1', 'order.aborted', '{"n": 0}', NULL, 'aborted-1')`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	_, err = f.db.Exec(t.Context(), `
		SELECT pg_logical_emit_message(false, 'relay-heartbeat', 'x');
		SELECT pg_logical_emit_message(true, 'someone-else', 'not json');
		BEGIN;
		INSERT INTO outbox (id, aggregate_type, aggregate_id, event_type, payload) VALUES ('00000000-0000-0000-0000-000000000001', 'order', '1', 'row', '{}');
		SELECT outbox_emit('order', '1', 'order.created', '{"n": 1}', '{"tenant": "acme", "n": 2}', 'msg-1');
		SELECT outbox_emit('order', '1', 'order.paid', '{"n": 2}', NULL, NULL);
		COMMIT;`)
	if err != nil {
		t.Fatal(err)
	}
	// The stream is in commit order: once a row committed last arrives,
	// anything the messages above could have wrongly produced has too.
	evs := rec.through(t, sentinel(t, f))
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3 (the row and two messages): %v", len(evs), ids(evs))
	}
	row, m1, m2 := evs[0], evs[1], evs[2]
	if row.ID != "00000000-0000-0000-0000-000000000001" || m1.ID != "msg-1" {
		t.Fatalf("events %v, want the row then msg-1", ids(evs))
	}
	if m1.Table != pgsource.MessageTable || m1.AggregateType != "order" || m1.AggregateID != "1" || m1.EventType != "order.created" ||
		string(m1.Payload) != `{"n": 1}` || m1.ContentType != relay.ContentTypeJSON {
		t.Errorf("message event %+v", m1)
	}
	if len(m1.Headers) != 2 || m1.Headers[0] != (relay.Header{Key: "n", Value: "2", JSON: true}) || m1.Headers[1] != (relay.Header{Key: "tenant", Value: "acme"}) {
		t.Errorf("message headers %v", m1.Headers)
	}
	if m1.CommitLSN != row.CommitLSN || m1.Index != 1 || m2.Index != 2 {
		t.Errorf("positions: row %s#%d, messages %s#%d and #%d: want one transaction, in order", row.CommitLSN, row.Index, m1.CommitLSN, m1.Index, m2.Index)
	}
	// Without an id the dedup key is the message's position, the same
	// on every delivery.
	if want := fmt.Sprintf("%s/2", m2.CommitLSN); m2.ID != want {
		t.Errorf("message without id has id %q, want %q", m2.ID, want)
	}
	if v, ok := m1.Field("event_type"); !ok || v != "order.created" {
		t.Errorf("templates cannot read the message's event_type: %q %v", v, ok)
	}
}

func TestNonTransactionalOutboxMessageStopsTheStream(t *testing.T) {
	f := newFixture(t, standardDDL)
	f.messagePrefix = "outbox"
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "outbox")
	waitSlot(t, f)
	var lsn pgLSN
	if err := f.db.QueryRow(t.Context(), `SELECT pg_logical_emit_message(false, 'outbox', '{"id": "nt-1"}')`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	var re *relay.RowError
	for ; re == nil; re = f.relay.Blocked() {
		if time.Now().After(deadline) {
			t.Fatal("the relay does not report itself blocked at the non-transactional message")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(re.Error(), "non-transactional") || !strings.Contains(re.Error(), relay.LSN(lsn).String()) {
		t.Fatalf("blocked at %v: want the non-transactional message named by its LSN %s", re, relay.LSN(lsn))
	}
	if n := len(rec.got()); n != 0 {
		t.Errorf("the sink got %d events", n)
	}
}

func ids(evs []*relay.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.ID
	}
	return out
}

func TestInitialBackfillPublishesExistingRowsOnceThenStreams(t *testing.T) {
	f := newFixture(t, standardDDL)
	f.snapshot = pgsource.SnapshotInitial
	const existing = 5000
	if _, err := f.db.Exec(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
		SELECT 'order', (i % 7)::text, 'old', jsonb_build_object('i', i), now() - interval '1 hour' + i * interval '1 ms'
		FROM generate_series(1, $1) i`, existing); err != nil {
		t.Fatal(err)
	}
	// Rows keep coming from before the relay starts until one was streamed:
	// some are certainly in the slot's snapshot, and so backfilled, some
	// certainly committed after it, and so streamed. Each must be in
	// exactly one of the two.
	writer, err := pgx.Connect(t.Context(), f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.Background())
	stop := make(chan struct{})
	var committed atomic.Int64
	inserted := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				inserted <- nil
				return
			default:
			}
			if _, err := writer.Exec(context.Background(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) VALUES ('order', '1', 'new', '{}')`); err != nil {
				inserted <- err
				return
			}
			committed.Add(1)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
			<-inserted
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for committed.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the writer committed no row")
		}
		time.Sleep(time.Millisecond)
	}
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, "outbox")
	// Backfilled events sit at the slot's consistent point, streamed ones
	// after it.
	start := rec.wait(t, 1)[0].CommitLSN
	deadline = time.Now().Add(time.Minute)
	for streamed := false; !streamed; {
		evs := rec.got()
		streamed = evs[len(evs)-1].CommitLSN > start
		if !streamed && time.Now().After(deadline) {
			t.Fatalf("nothing streamed after %d events", len(evs))
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	if err := <-inserted; err != nil {
		t.Fatal(err)
	}
	n := int(committed.Load())
	evs := rec.through(t, sentinel(t, f))
	seen := map[string]int{}
	var backfilled, streamed int
	for _, ev := range evs {
		seen[ev.ID]++
		if ev.EventType == "new" {
			if ev.CommitLSN == start {
				backfilled++
			} else {
				streamed++
			}
		}
	}
	var want int
	if err := f.db.QueryRow(t.Context(), "SELECT count(*) FROM outbox WHERE id <> $1", sentinelID).Scan(&want); err != nil {
		t.Fatal(err)
	}
	if len(seen) != want || len(evs) != want {
		t.Fatalf("%d events, %d distinct, %d rows in the table (%d inserted around the backfill): want each row exactly once", len(evs), len(seen), want, n)
	}
	if backfilled == 0 || streamed == 0 {
		t.Fatalf("of %d rows inserted around the backfill, %d were backfilled and %d streamed: want some of each", n, backfilled, streamed)
	}
	t.Logf("of %d rows inserted around the backfill, %d were backfilled and %d streamed", n, backfilled, streamed)
	// The existing rows come first, in insertion order, before any new one.
	for i, ev := range evs[:existing] {
		if ev.EventType != "old" || string(ev.Payload) != fmt.Sprintf(`{"i": %d}`, i+1) {
			t.Fatalf("event %d is %s %s, want the existing row %d in insertion order", i, ev.EventType, ev.Payload, i+1)
		}
		if i > 0 && !(ev.CommitLSN == evs[i-1].CommitLSN && ev.Index == evs[i-1].Index+1) {
			t.Fatalf("backfilled event %d at %s#%d after %s#%d: positions must follow each other", i, ev.CommitLSN, ev.Index, evs[i-1].CommitLSN, evs[i-1].Index)
		}
	}
	var done bool
	if err := f.db.QueryRow(t.Context(), "SELECT bool_and(done) FROM relay.backfill WHERE slot_name = $1", f.slot).Scan(&done); err != nil || !done {
		t.Errorf("relay.backfill says done=%v (%v)", done, err)
	}
}

// emptyAndNullDDL has a table for each payload type the outbox supports,
// with text, varchar and char columns for the outbox fields and a few other
// types whose text form a routing template may read.
const emptyAndNullDDL = `
	CREATE TABLE outbox (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload jsonb, headers jsonb, created_at timestamptz, destination text,
		flag boolean, addr inet, code char(3), note varchar(10), n numeric, tags text[], x float8, r real, iv interval, ts timestamp);
	CREATE TABLE t_json (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload json, headers json, created_at timestamptz, destination text);
	CREATE TABLE t_text (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload text, headers text, created_at timestamp, destination text);
	CREATE TABLE t_varchar (id varchar(40) PRIMARY KEY, aggregate_type varchar(255), aggregate_id varchar(255), event_type varchar(255), payload varchar(100), headers varchar(100), created_at timestamptz, destination varchar(50));
	CREATE TABLE t_char (id char(10) PRIMARY KEY, aggregate_type char(8), aggregate_id char(8), event_type char(8), payload char(4), headers jsonb, created_at timestamptz, destination char(5));
	CREATE TABLE t_bytea (id text PRIMARY KEY, aggregate_type text, aggregate_id text, event_type text, payload bytea, headers jsonb, created_at timestamptz, destination text)`

// emptyAndNullRows inserts rows with empty strings in every text column and
// NULL in every optional one into each table of emptyAndNullDDL, with a bad
// row (a NULL required column) and an ordinary one for comparison.
const emptyAndNullRows = `
	INSERT INTO outbox VALUES
		('', '', '', '', '""', '{}', '2026-01-02 03:04:05.5+00', '', false, '10.0.0.1', '', '', 0, '{}', 0.1, 0.1, '1 day 02:03:04.5', '2026-01-02 03:04:05'),
		('empty', '', '', '', '""', '{"": ""}', '2026-01-02 03:04:05+00', '', false, '10.0.0.1', '', '', 1.50, '{""}', 1e300, 3.4e38, '-1 mon', '-infinity'),
		('nulls', '', '', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		('bad', NULL, '1', 'x', '{}', '{}', '2026-01-02 03:04:05+00', NULL, true, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
		('plain', 'örder', 'ä-1', 'created', '{"a": [1, "ü"]}', '{"k": "v"}', '2026-01-02 03:04:05.123456+02', 'elsewhere', true, '::1', 'ab', 'x y', 2.5e3, '{a,"b c"}', 'NaN', '-0', '1 year 2 mons 3 days', '2026-01-02 03:04:05.123456');
	INSERT INTO t_json VALUES
		('', '', '', '', '""', '{}', '2026-01-02 03:04:05+00', ''),
		('empty', '', '', '', '""', '{"":""}', '2026-01-02 03:04:05+00', ''),
		('nulls', '', '', '', NULL, NULL, NULL, NULL),
		('bad', '', NULL, '', '{}', '{}', NULL, NULL),
		('plain', 'o', '1', 'e', '{ "spaced" : 1 }', '{"k": "v", "n": 2}', '2026-01-02 03:04:05+00', 'd');
	INSERT INTO t_text VALUES
		('', '', '', '', '', '{}', '2026-01-02 03:04:05', ''),
		('empty', '', '', '', '', '', '2026-01-02 03:04:05', ''),
		('nulls', '', '', '', NULL, NULL, NULL, NULL),
		('bad', '', '', NULL, '', NULL, NULL, NULL),
		('plain', 'o', '1', 'e', 'plain ✓ text', '{"k": "v"}', '2026-01-02 03:04:05.000001', 'd');
	INSERT INTO t_varchar VALUES
		('', '', '', '', '', '{}', '2026-01-02 03:04:05+00', ''),
		('empty', '', '', '', '', '', '2026-01-02 03:04:05+00', ''),
		('nulls', '', '', '', NULL, NULL, NULL, NULL),
		('bad', NULL, NULL, NULL, '', NULL, NULL, NULL),
		('plain', 'o', '1', 'e', 'v', '{"k": "v"}', '2026-01-02 03:04:05+00', 'd');
	INSERT INTO t_char VALUES
		('', '', '', '', '', '{}', '2026-01-02 03:04:05+00', ''),
		('empty', '', '', '', '', '{"": ""}', '2026-01-02 03:04:05+00', ''),
		('nulls', '', '', '', NULL, NULL, NULL, NULL),
		('bad', '', NULL, '', '', NULL, NULL, NULL),
		('plain', 'o', '1', 'e', 'v', '{"k": "v"}', '2026-01-02 03:04:05+00', 'd');
	INSERT INTO t_bytea VALUES
		('', '', '', '', '', '{}', '2026-01-02 03:04:05+00', ''),
		('empty', '', '', '', '\x00', '{"": ""}', '2026-01-02 03:04:05+00', ''),
		('nulls', '', '', '', NULL, NULL, NULL, NULL),
		('bad', '', '', '', '\x00', '[1]', NULL, NULL),
		('plain', 'o', '1', 'e', '\x00ff4142', '{"k": "v"}', '2026-01-02 03:04:05+00', 'd');`

var emptyAndNullTables = []string{"outbox", "t_json", "t_text", "t_varchar", "t_char", "t_bytea"}

// TestBackfilledAndStreamedRowsAreTheSameEvents reads the same rows twice,
// once through the initial backfill and once streamed, and requires the
// same events: an empty string stays an empty string (not NULL, which
// would make a required column a bad row and an empty payload a
// tombstone), and every column's text is what pgoutput sends.
func TestBackfilledAndStreamedRowsAreTheSameEvents(t *testing.T) {
	f := newFixture(t, emptyAndNullDDL)
	f.snapshot = pgsource.SnapshotInitial
	f.deadLetter = true
	if _, err := f.db.Exec(t.Context(), emptyAndNullRows); err != nil {
		t.Fatal(err)
	}
	var rows int
	for _, tb := range emptyAndNullTables {
		var n int
		if err := f.db.QueryRow(t.Context(), "SELECT count(*) FROM "+tb).Scan(&n); err != nil {
			t.Fatal(err)
		}
		rows += n
	}
	rec := &recorder{}
	f.run(t, pgsource.StandardColumns, rec, emptyAndNullTables...)
	rec.wait(t, rows)
	waitSlot(t, f)
	// The same rows again, streamed: the publication sends inserts only.
	var del strings.Builder
	for _, tb := range emptyAndNullTables {
		fmt.Fprintf(&del, "DELETE FROM %s;", tb)
	}
	if _, err := f.db.Exec(t.Context(), del.String()+emptyAndNullRows); err != nil {
		t.Fatal(err)
	}
	evs := rec.through(t, sentinel(t, f))
	if len(evs) != 2*rows {
		t.Fatalf("%d events, want %d backfilled and %d streamed", len(evs), rows, rows)
	}
	backfilled, streamed := evs[:rows], evs[rows:]
	start := backfilled[0].CommitLSN
	byKey := map[string]*relay.Event{}
	for _, ev := range backfilled {
		if ev.CommitLSN != start {
			t.Fatalf("event %s of %s at %s after the backfill began at %s, before the rows were streamed", ev.ID, ev.Table, ev.CommitLSN, start)
		}
		byKey[ev.Table+"\x00"+ev.ID] = ev
	}
	// Bad in both paths: a NULL required column, and an empty string
	// where a headers column of a text type must hold a JSON object.
	wantDead := map[string]bool{"public.t_text\x00empty": true, "public.t_varchar\x00empty": true}
	for _, tb := range emptyAndNullTables {
		wantDead["public."+tb+"\x00bad"] = true
	}
	for _, s := range streamed {
		b := byKey[s.Table+"\x00"+s.ID]
		if b == nil {
			t.Errorf("streamed %s %q was not backfilled", s.Table, s.ID)
			continue
		}
		if s.CommitLSN == start {
			t.Errorf("streamed %s %q at the backfill's position", s.Table, s.ID)
		}
		if key := s.Table + "\x00" + strings.TrimSpace(s.ID); wantDead[key] != (s.DeadLetter != "") {
			t.Errorf("%s %q dead-lettered %v (%s), want %v", s.Table, s.ID, s.DeadLetter != "", s.DeadLetter, wantDead[key])
		}
		for _, d := range eventDiff(b, s) {
			t.Errorf("%s %q: %s", s.Table, s.ID, d)
		}
	}
	// And what both give: an empty string is a value, NULL is none.
	for _, s := range streamed {
		switch strings.TrimSpace(s.ID) {
		case "":
			if s.DeadLetter != "" || s.AggregateID != "" && s.Table != "public.t_char" {
				t.Errorf("%s %q: empty strings are values, not NULL: aggregate id %q, dead letter %q", s.Table, s.ID, s.AggregateID, s.DeadLetter)
			}
			if s.Table == "public.t_text" && (s.Payload == nil || len(s.Payload) != 0) {
				t.Errorf("%s: an empty text payload became %#v, want an empty body, not a tombstone", s.Table, s.Payload)
			}
		case "nulls":
			if s.Payload != nil || s.Headers != nil || s.To != "" {
				t.Errorf("%s: NULL payload, headers, destination became %#v, %#v, %q", s.Table, s.Payload, s.Headers, s.To)
			}
		}
	}
}

// eventDiff lists the fields in which two events of one row differ, but
// for the position (CommitLSN, Index, CommitTime). A nil and an empty
// slice differ: nil is SQL NULL, and an empty payload is a body while a
// nil one is a tombstone. CreatedAt is compared only where the event was
// read from a created_at: without one it is the commit time, which a
// backfill cannot know, and the decoding of a bad row may stop before it.
func eventDiff(a, b *relay.Event) []string {
	var out []string
	va, vb := reflect.ValueOf(a).Elem(), reflect.ValueOf(b).Elem()
	for i := range va.NumField() {
		f := va.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		x, y := va.Field(i).Interface(), vb.Field(i).Interface()
		switch f.Name {
		case "CommitLSN", "Index", "CommitTime":
			continue
		case "CreatedAt":
			if _, ok := a.Row.Get("created_at"); !ok || a.DeadLetter != "" {
				if a.CreatedAt.IsZero() || b.CreatedAt.IsZero() {
					out = append(out, fmt.Sprintf("CreatedAt %s and %s: want a time on both", a.CreatedAt, b.CreatedAt))
				}
				continue
			}
			if !a.CreatedAt.Equal(b.CreatedAt) {
				out = append(out, fmt.Sprintf("CreatedAt %s, then %s", a.CreatedAt, b.CreatedAt))
			}
			continue
		case "Invalid":
			if fmt.Sprint(x) != fmt.Sprint(y) {
				out = append(out, fmt.Sprintf("Invalid %v, then %v", x, y))
			}
			continue
		case "Row":
			if !reflect.DeepEqual(a.Row.Names, b.Row.Names) {
				out = append(out, fmt.Sprintf("columns %q, then %q", a.Row.Names, b.Row.Names))
				continue
			}
			for j, n := range a.Row.Names {
				x, y := a.Row.Values[j], b.Row.Values[j]
				if (x == nil) != (y == nil) || !bytes.Equal(x, y) {
					out = append(out, fmt.Sprintf("column %s %s, then %s", n, showBytes(x), showBytes(y)))
				}
			}
			continue
		}
		if !reflect.DeepEqual(x, y) {
			out = append(out, fmt.Sprintf("%s %#v, then %#v", f.Name, x, y))
		}
	}
	return out
}

func showBytes(b []byte) string {
	if b == nil {
		return "NULL"
	}
	return fmt.Sprintf("%q", b)
}

// TestRelaysStartingTogetherOnAFreshDatabase starts several relays at once,
// for the first time on a database: each creates what it needs (the
// publication they share, or the table's place in it, its slot,
// relay.backfill for the initial backfill) while the others do, and every
// one must come up at the first attempt, not after a retry. Its own server
// has room for their slots whatever the package's other tests leave behind.
func TestRelaysStartingTogetherOnAFreshDatabase(t *testing.T) {
	const relays = 8
	p, err := services.StartPostgres(t.Context(), services.PostgresOptions{Fast: true})
	if err != nil {
		t.Fatalf("start postgres: %v", err)
	}
	defer p.Close()
	for round := range 5 {
		name := fmt.Sprintf("together_%d", round)
		if err := p.CreateDatabase(t.Context(), name); err != nil {
			t.Fatal(err)
		}
		db, err := pgx.Connect(t.Context(), p.URL(name))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close(context.Background())
		if _, err := db.Exec(t.Context(), standardDDL); err != nil {
			t.Fatal(err)
		}
		if round%2 == 1 {
			// A publication made ahead, which the relays complete.
			if _, err := db.Exec(t.Context(), "CREATE PUBLICATION "+name+" WITH (publish = 'insert')"); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(t.Context())
		srcs := make([]*pgsource.Source, relays)
		errs := make(chan error, relays)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range srcs {
			src, err := pgsource.New(pgsource.Config{ConnString: p.URL(name), Tables: []pgsource.Table{{Schema: "public", Name: "outbox"}}, Columns: pgsource.StandardColumns,
				Slot: fmt.Sprintf("%s_%d", name, i), Publication: name, Snapshot: pgsource.SnapshotInitial})
			if err != nil {
				t.Fatal(err)
			}
			srcs[i] = src
			wg.Go(func() {
				<-start
				// Any session that ends while the test runs is an
				// error: the core would retry it, the test does not.
				var failed atomic.Bool
				log := slog.New(&errorHandler{report: func(msg string, err any) {
					if failed.CompareAndSwap(false, true) {
						errs <- fmt.Errorf("relay %d: %s: %v", i, msg, err)
					}
				}})
				err := relay.New(relay.Config{Source: src, Sink: &recorder{}, Logger: log}).Run(ctx)
				if ctx.Err() == nil && failed.CompareAndSwap(false, true) {
					errs <- fmt.Errorf("relay %d stopped: %w", i, err)
				}
			})
		}
		close(start)
		deadline := time.Now().Add(time.Minute)
		for up := 0; up < relays; {
			select {
			case err := <-errs:
				cancel()
				wg.Wait()
				t.Fatalf("round %d: %v", round, err)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				cancel()
				wg.Wait()
				t.Fatalf("round %d: %d of %d relays streaming after a minute", round, up, relays)
			}
			up = 0
			for _, s := range srcs {
				if s.Streaming() {
					up++
				}
			}
		}
		cancel()
		wg.Wait()
		// The next round's slots need the room.
		for deadline := time.Now().Add(30 * time.Second); ; {
			var left int
			err := db.QueryRow(t.Context(), `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&left)
			if err == nil && left == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d slots left (%v)", round, left, err)
			}
			db.Exec(t.Context(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND NOT active`)
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// errorHandler reports every record at level warn and above, with its
// error attribute.
type errorHandler struct {
	report func(msg string, err any)
}

func (h *errorHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *errorHandler) Handle(_ context.Context, r slog.Record) error {
	var err any
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			err = a.Value.Any()
		}
		return true
	})
	h.report(r.Message, err)
	return nil
}

func (h *errorHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorHandler) WithGroup(string) slog.Handler      { return h }
