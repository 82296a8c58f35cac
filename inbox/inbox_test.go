//go:build linux

package inbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relay-dev/relay/inbox"
)

var tableSeq atomic.Int64

// newInbox returns an inbox of consumer on a table of this test only, and a
// pool of the test database.
func newInbox(t *testing.T, consumer string) (*inbox.Inbox, *pgxpool.Pool) {
	t.Helper()
	db := connect(t)
	ib, err := inbox.New(consumer, inbox.WithTable(fmt.Sprintf("inbox_%d", tableSeq.Add(1))))
	if err != nil {
		t.Fatal(err)
	}
	if err := ib.CreateTable(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	return ib, db
}

func connect(t *testing.T) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testDBURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	db, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

func claim(t *testing.T, db *pgxpool.Pool, ib *inbox.Inbox, id string) bool {
	t.Helper()
	tx, err := db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	first, err := ib.Claim(t.Context(), tx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	return first
}

func count(t *testing.T, db *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func TestSchemaFileIsTheDefaultSchema(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../schema/inbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	var file []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			file = append(file, line)
		}
	}
	ib, err := inbox.New("any")
	if err != nil {
		t.Fatal(err)
	}
	// The file writes names bare; Schema quotes them.
	normalize := func(s string) string { return strings.Join(strings.Fields(strings.ReplaceAll(s, `"`, "")), " ") }
	if got, want := normalize(strings.Join(file, "\n")), normalize(ib.Schema()); got != want {
		t.Fatalf("schema/inbox.sql differs from (*Inbox).Schema:\nfile:   %s\nSchema: %s", got, want)
	}
}

func TestNewRejectsBadNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		consumer string
		opts     []inbox.Option
		wantErr  bool
	}{
		{name: "default table", consumer: "billing"},
		{name: "schema-qualified table", consumer: "billing", opts: []inbox.Option{inbox.WithTable("app.inbox")}},
		{name: "no consumer", consumer: "", wantErr: true},
		{name: "empty table", consumer: "billing", opts: []inbox.Option{inbox.WithTable("")}, wantErr: true},
		{name: "three parts", consumer: "billing", opts: []inbox.Option{inbox.WithTable("db.app.inbox")}, wantErr: true},
		{name: "empty schema", consumer: "billing", opts: []inbox.Option{inbox.WithTable(".inbox")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := inbox.New(tt.consumer, tt.opts...)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v, want error: %v", err, tt.wantErr)
			}
		})
	}
}

func TestCreateTableInASchemaTwice(t *testing.T) {
	t.Parallel()
	db := connect(t)
	schema := fmt.Sprintf("app_%d", tableSeq.Add(1))
	if _, err := db.Exec(t.Context(), "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	ib, err := inbox.New("billing", inbox.WithTable(schema+".Inbox"))
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := ib.CreateTable(t.Context(), db); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db, "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'Inbox'", schema); n != 2 {
		t.Fatalf("%d indexes on %s.\"Inbox\", want 2 (primary key, retention)", n, schema)
	}
	if !claim(t, db, ib, "m1") || claim(t, db, ib, "m1") {
		t.Fatal("claims on a schema-qualified, mixed-case table are wrong")
	}
}

func TestClaimIsFirstOnceThenDuplicate(t *testing.T) {
	t.Parallel()
	ib, db := newInbox(t, "billing")
	if !claim(t, db, ib, "m1") {
		t.Fatal("first claim of m1 reported a duplicate")
	}
	if claim(t, db, ib, "m1") {
		t.Fatal("second claim of m1 reported first")
	}
	if !claim(t, db, ib, "m2") {
		t.Fatal("first claim of m2 reported a duplicate")
	}
	// Another consumer of the same table applies the message once too.
	shipping, err := inbox.New("shipping", inbox.WithTable(strings.Trim(ib.Table(), `"`)))
	if err != nil {
		t.Fatal(err)
	}
	if !claim(t, db, shipping, "m1") || claim(t, db, shipping, "m1") {
		t.Fatal("consumer shipping does not get its own claim of m1")
	}
	if n := count(t, db, "SELECT count(*) FROM "+ib.Table()); n != 3 {
		t.Fatalf("%d rows, want 3", n)
	}

	tx, err := db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(t.Context())
	if _, err := ib.Claim(t.Context(), tx, ""); !errors.Is(err, inbox.ErrNoMessageID) {
		t.Fatalf("claim of an empty id: %v, want ErrNoMessageID", err)
	}
}

func TestRollbackUnclaims(t *testing.T) {
	t.Parallel()
	ib, db := newInbox(t, "billing")
	effects := strings.Replace(ib.Table(), "inbox", "effects", 1)
	if _, err := db.Exec(t.Context(), "CREATE TABLE "+effects+" (message_id text)"); err != nil {
		t.Fatal(err)
	}
	apply := func(fail error) func(tx pgx.Tx) error {
		return func(tx pgx.Tx) error {
			if _, err := tx.Exec(t.Context(), "INSERT INTO "+effects+" VALUES ('m1')"); err != nil {
				return err
			}
			return fail
		}
	}

	// A claim in a transaction that rolls back is gone.
	tx, err := db.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if first, err := ib.Claim(t.Context(), tx, "m1"); err != nil || !first {
		t.Fatalf("claim: %v %v", first, err)
	}
	if err := tx.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}

	// A handler that fails rolls back its claim with its side effect.
	boom := errors.New("boom")
	applied, err := ib.Process(t.Context(), db, "m1", apply(boom))
	if !errors.Is(err, boom) || applied {
		t.Fatalf("Process with a failing handler: applied %v, err %v; want false, boom", applied, err)
	}
	if n := count(t, db, "SELECT count(*) FROM "+effects); n != 0 {
		t.Fatalf("%d side effects of a failed handler were committed", n)
	}
	if n := count(t, db, "SELECT count(*) FROM "+ib.Table()); n != 0 {
		t.Fatalf("%d claims survived rollbacks", n)
	}

	// So the redelivery applies it, once.
	for i, want := range []bool{true, false} {
		applied, err := ib.Process(t.Context(), db, "m1", apply(nil))
		if err != nil || applied != want {
			t.Fatalf("Process #%d: applied %v, err %v; want %v", i+1, applied, err, want)
		}
	}
	if n := count(t, db, "SELECT count(*) FROM "+effects); n != 1 {
		t.Fatalf("%d side effects, want 1", n)
	}
	if _, err := ib.Process(t.Context(), db, "", apply(nil)); !errors.Is(err, inbox.ErrNoMessageID) {
		t.Fatalf("Process of an empty id: %v, want ErrNoMessageID", err)
	}
}

// TestConcurrentClaimWaitsForTheFirst holds one claim open and shows that a
// second transaction claiming the same key blocks on it, then reports a
// duplicate if the first commits and claims the key if it rolls back.
func TestConcurrentClaimWaitsForTheFirst(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		commit     bool
		wantSecond bool
	}{
		{name: "first commits", commit: true, wantSecond: false},
		{name: "first rolls back", commit: false, wantSecond: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			ib, db := newInbox(t, "billing")
			tx1, err := db.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx1.Rollback(ctx)
			if first, err := ib.Claim(ctx, tx1, "m1"); err != nil || !first {
				t.Fatalf("first claim: %v %v", first, err)
			}
			tx2, err := db.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx2.Rollback(ctx)
			pid2 := tx2.Conn().PgConn().PID()
			type result struct {
				first bool
				err   error
			}
			second := make(chan result, 1)
			go func() {
				first, err := ib.Claim(ctx, tx2, "m1")
				second <- result{first, err}
			}()
			deadline := time.Now().Add(10 * time.Second)
			for count(t, db, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", pid2) != 1 {
				select {
				case r := <-second:
					t.Fatalf("second claim returned (%v, %v) while the first transaction was open", r.first, r.err)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("second claim is not waiting on a lock")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if tt.commit {
				err = tx1.Commit(ctx)
			} else {
				err = tx1.Rollback(ctx)
			}
			if err != nil {
				t.Fatal(err)
			}
			r := <-second
			if r.err != nil || r.first != tt.wantSecond {
				t.Fatalf("second claim: (%v, %v), want (%v, nil)", r.first, r.err, tt.wantSecond)
			}
			if err := tx2.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, "SELECT count(*) FROM "+ib.Table()); n != 1 {
				t.Fatalf("%d rows, want 1", n)
			}
		})
	}
}

// TestConcurrentConsumersApplyEachMessageOnce has workers process the same
// messages at the same time, in different orders, as consumers sharing a
// queue do with redeliveries.
func TestConcurrentConsumersApplyEachMessageOnce(t *testing.T) {
	t.Parallel()
	ib, db := newInbox(t, "billing")
	effects := strings.Replace(ib.Table(), "inbox", "effects", 1)
	if _, err := db.Exec(t.Context(), "CREATE TABLE "+effects+" (message_id text)"); err != nil {
		t.Fatal(err)
	}
	const workers, messages = 8, 300
	var applied [messages]atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			for _, m := range rand.New(rand.NewPCG(uint64(w), 1)).Perm(messages) {
				id := fmt.Sprintf("m%d", m)
				ok, err := ib.Process(t.Context(), db, id, func(tx pgx.Tx) error {
					_, err := tx.Exec(t.Context(), "INSERT INTO "+effects+" VALUES ($1)", id)
					return err
				})
				if err != nil {
					errs <- err
					return
				}
				if ok {
					applied[m].Add(1)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for m := range applied {
		if n := applied[m].Load(); n != 1 {
			t.Fatalf("message m%d applied %d times", m, n)
		}
	}
	if n := count(t, db, "SELECT count(DISTINCT message_id) FROM "+effects); n != messages {
		t.Fatalf("%d distinct side effects, want %d", n, messages)
	}
	if n := count(t, db, "SELECT count(*) FROM "+effects); n != messages {
		t.Fatalf("%d side effects for %d messages", n, messages)
	}
}

// deleteCounter records the rows each DELETE removed.
type deleteCounter struct {
	inbox.Querier
	mu      sync.Mutex
	deletes []int64
}

func (d *deleteCounter) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := d.Querier.Exec(ctx, sql, args...)
	if err == nil && strings.HasPrefix(sql, "DELETE") {
		d.mu.Lock()
		d.deletes = append(d.deletes, tag.RowsAffected())
		d.mu.Unlock()
	}
	return tag, err
}

func TestPruneRemovesOnlyOldRowsInBatches(t *testing.T) {
	t.Parallel()
	ib, db := newInbox(t, "billing")
	table := ib.Table()
	for _, rows := range []struct {
		consumer, prefix, age string
		n                     int
	}{
		{"billing", "old", "2 hours", 2500},
		{"billing", "recent", "50 minutes", 100},
		{"billing", "new", "0 seconds", 10},
		{"shipping", "old", "2 hours", 50},
	} {
		_, err := db.Exec(t.Context(), "INSERT INTO "+table+` (consumer, message_id, received_at)
			SELECT $1, $2 || g, now() - $3::interval FROM generate_series(1, $4::int) g`, rows.consumer, rows.prefix, rows.age, rows.n)
		if err != nil {
			t.Fatal(err)
		}
	}
	dc := &deleteCounter{Querier: db}
	deleted, err := ib.Prune(t.Context(), dc, time.Hour, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if deleted != 2500 {
		t.Fatalf("deleted %d rows, want 2500", deleted)
	}
	if got := fmt.Sprint(dc.deletes); got != "[1000 1000 500]" {
		t.Fatalf("rows per DELETE %s, want [1000 1000 500]", got)
	}
	for _, c := range []struct {
		consumer, prefix string
		want             int
	}{{"billing", "old", 0}, {"billing", "recent", 100}, {"billing", "new", 10}, {"shipping", "old", 50}} {
		if n := count(t, db, "SELECT count(*) FROM "+table+" WHERE consumer = $1 AND message_id LIKE $2 || '%'", c.consumer, c.prefix); n != c.want {
			t.Errorf("%s %s rows: %d left, want %d", c.consumer, c.prefix, n, c.want)
		}
	}
	// A pruned key is claimable again: that is why retention must outlast redeliveries.
	if !claim(t, db, ib, "old1") || claim(t, db, ib, "recent1") {
		t.Fatal("claims after pruning are wrong")
	}

	for _, bad := range []struct {
		olderThan time.Duration
		batch     int
	}{{0, 10}, {-time.Hour, 10}, {time.Hour, 0}} {
		if _, err := ib.Prune(t.Context(), db, bad.olderThan, bad.batch); err == nil {
			t.Errorf("Prune(%s, %d) succeeded", bad.olderThan, bad.batch)
		}
	}
}

func TestRunPrunerPrunesUntilCanceled(t *testing.T) {
	t.Parallel()
	ib, db := newInbox(t, "billing")
	table := ib.Table()
	insertOld := func(n int) {
		t.Helper()
		_, err := db.Exec(t.Context(), "INSERT INTO "+table+` (consumer, message_id, received_at)
			SELECT 'billing', gen_random_uuid()::text, now() - interval '1 day' FROM generate_series(1, $1::int)`, n)
		if err != nil {
			t.Fatal(err)
		}
	}
	waitEmpty := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for count(t, db, "SELECT count(*) FROM "+table+" WHERE received_at < now() - interval '1 hour'") > 0 {
			if time.Now().After(deadline) {
				t.Fatal("old rows are still there after 10s")
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := ib.RunPruner(t.Context(), db, inbox.PrunerConfig{}); err == nil {
		t.Fatal("RunPruner without a retention started")
	}

	insertOld(35)
	if !claim(t, db, ib, "fresh") {
		t.Fatal("claim of fresh failed")
	}
	var logs bytes.Buffer
	var mu sync.Mutex
	logger := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), nil))
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- ib.RunPruner(ctx, db, inbox.PrunerConfig{Retention: time.Hour, Interval: 20 * time.Millisecond, BatchSize: 10, Logger: logger})
	}()
	waitEmpty()
	insertOld(7)
	waitEmpty()
	// The rows are gone once the DELETE commits, a moment before the
	// pruner hears so and logs it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		logged := strings.Contains(logs.String(), "deleted=7")
		mu.Unlock()
		if logged || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunPruner returned %v after cancel, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunPruner did not return within 5s of cancel")
	}
	if count(t, db, "SELECT count(*) FROM "+table+" WHERE message_id = 'fresh'") != 1 {
		t.Fatal("the pruner deleted a fresh claim")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"msg=pruned", "component=inbox_pruner", "deleted=35", "deleted=7"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, logs.String())
		}
	}
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
