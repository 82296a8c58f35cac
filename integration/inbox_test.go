//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
)

// TestInboxAppliesEachEventExactlyOnce runs the whole path with package
// inbox at the end: outbox rows carrying amounts for accounts, the relay
// (SIGKILLed twice mid-stream and restarted, each time with rows routed
// that the slot had not confirmed, so it republishes them), RabbitMQ,
// and two consumer processes (integration/inboxconsumer) applying each
// message to a balances table in the transaction that claims its id. The
// consumers kill themselves between committing and acknowledging, several
// times, so committed messages come again. The balances must equal the
// sums of the outbox amounts exactly, and the inbox must hold each id once.
func TestInboxAppliesEachEventExactlyOnce(t *testing.T) {
	const (
		minEvents    = 6000 // the writer stops after the last kill and this many
		perTx        = 20
		accounts     = 25
		consumers    = 2
		crashRuns    = 6 // per consumer slot, before it runs without crashing
		consumerName = "ledger"
	)
	e := newEnv(t)
	ctx := t.Context()
	consumerBin := buildInboxConsumer(t)

	// The consumer's own database: the inbox table and the balances.
	consumerDBName := e.name + "_ledger"
	if err := pg.CreateDatabase(ctx, consumerDBName); err != nil {
		t.Fatal(err)
	}
	ledger, err := pgxpool.New(ctx, pg.URL(consumerDBName))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ledger.Close)
	inboxSQL, err := os.ReadFile("../schema/inbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ledger.Exec(ctx, string(inboxSQL)); err != nil {
		t.Fatalf("apply schema/inbox.sql: %v", err)
	}
	if _, err := ledger.Exec(ctx, "CREATE TABLE balances (account text PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
		t.Fatal(err)
	}

	queue := "q_" + e.name + "_ledger"
	declareInboxQueue(t, e.amqpURL, e.exchange, queue, "account.#")
	relay := e.startRelay()

	// Consumers: each slot runs crashRuns processes that die between a
	// commit and its ack, then one that runs until the end.
	out := &consumerOutput{}
	var (
		procsMu  sync.Mutex
		procs    []*exec.Cmd
		stopping = make(chan struct{})
		slotErrs = make(chan error, consumers)
		slots    sync.WaitGroup
	)
	startConsumer := func(crashAfter int) (*exec.Cmd, error) {
		cmd := exec.Command(consumerBin, "-database", pg.URL(consumerDBName), "-amqp", e.amqpURL,
			"-queue", queue, "-consumer", consumerName, "-crash-after", strconv.Itoa(crashAfter), "-prefetch", "50")
		cmd.Stdout, cmd.Stderr = out.stdout(), out.stderr()
		procsMu.Lock()
		defer procsMu.Unlock()
		select {
		case <-stopping:
			return nil, nil
		default:
		}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		procs = append(procs, cmd)
		return cmd, nil
	}
	for slot := range consumers {
		slots.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(slot), 7))
			for run := 0; ; run++ {
				crashAfter := 0
				if run < crashRuns {
					crashAfter = 20 + rng.IntN(130)
				}
				cmd, err := startConsumer(crashAfter)
				if err != nil {
					slotErrs <- fmt.Errorf("consumer slot %d: start: %w", slot, err)
					return
				}
				if cmd == nil {
					return
				}
				err = cmd.Wait()
				select {
				case <-stopping:
					return
				default:
				}
				ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if crashAfter == 0 || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
					slotErrs <- fmt.Errorf("consumer slot %d run %d (crash after %d) ended: %v", slot, run, crashAfter, err)
					return
				}
			}
		})
	}
	stopConsumers := func() {
		procsMu.Lock()
		select {
		case <-stopping:
		default:
			close(stopping)
		}
		for _, p := range procs {
			p.Process.Signal(syscall.SIGTERM)
		}
		procsMu.Unlock()
		slots.Wait()
	}
	t.Cleanup(func() {
		stopConsumers()
		if t.Failed() {
			t.Logf("consumer stderr:\n%s", out.stderrBuf.String())
		}
	})

	// Insert while the relay streams, and SIGKILL it twice mid-stream, each
	// time with rows in the queue that the slot had not confirmed, so that
	// its successor certainly republishes them. A queue of the test's own,
	// bound like the consumers' one, shows what the broker routed.
	observed := e.bindQueue("account.#")
	rng := rand.New(rand.NewPCG(42, 42))
	committed := 0
	w := e.startWriterFunc(func(ctx context.Context) ([]string, error) {
		ids, err := commitAccountEvents(ctx, e.db, rng, committed, perTx, accounts)
		committed += len(ids)
		// A pause keeps the volume to what the consumers apply in time.
		time.Sleep(5 * time.Millisecond)
		return ids, err
	})
	k := &replayKiller{e: e, delivered: observed.highestRelayLSN}
	for _, at := range []int{minEvents / 3, 2 * minEvents / 3} {
		waitMessages(t, observed, at)
		relay = k.kill(relay)
	}
	// Rows commit until after the last restart.
	eventually(t, time.Minute, func() error {
		if n := w.rows(); n < minEvents {
			return fmt.Errorf("%d of at least %d events committed", n, minEvents)
		}
		return nil
	})
	w.waitRows(500)
	events := len(w.finish())

	// Every event applied, the queue drained and the consumers idle, so
	// they hold no unacknowledged delivery when they stop.
	countInbox := func() int {
		var n int
		if err := ledger.QueryRow(ctx, "SELECT count(*) FROM inbox WHERE consumer = $1", consumerName).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	eventually(t, 3*time.Minute, func() error {
		select {
		case err := <-slotErrs:
			t.Fatal(err)
		default:
		}
		if n := countInbox(); n < events {
			return fmt.Errorf("%d of %d events applied", n, events)
		}
		if ready, err := queueDepth(e.amqpURL, queue); err != nil || ready > 0 {
			return fmt.Errorf("queue holds %d messages (%v)", ready, err)
		}
		if !out.quietFor(time.Second) {
			return fmt.Errorf("consumers still busy")
		}
		return nil
	})
	stopConsumers()
	select {
	case err := <-slotErrs:
		t.Fatal(err)
	default:
	}
	// Stopped consumers hand their unacknowledged deliveries back: none.
	if ready, err := queueDepth(e.amqpURL, queue); err != nil || ready != 0 {
		t.Fatalf("after the consumers stopped the queue holds %d messages (%v): some were never acknowledged", ready, err)
	}

	// The balances are the sums of the outbox amounts, exactly.
	want := map[string]int64{}
	rows, err := e.db.Query(ctx, "SELECT payload->>'account', sum((payload->>'amount')::bigint)::bigint FROM outbox GROUP BY 1")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a string
		var sum int64
		if err := rows.Scan(&a, &sum); err != nil {
			t.Fatal(err)
		}
		want[a] = sum
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	rows, err = ledger.Query(ctx, "SELECT account, balance FROM balances")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a string
		var b int64
		if err := rows.Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		got[a] = b
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(want) != accounts || len(got) != len(want) {
		t.Errorf("%d accounts in balances, %d in the outbox, want %d", len(got), len(want), accounts)
	}
	for a, w := range want {
		if got[a] != w {
			t.Errorf("account %s: balance %d, outbox sum %d", a, got[a], w)
		}
	}

	// The inbox holds each outbox id once, and nothing else.
	outboxIDs := queryStrings(t, e.db, "SELECT id::text FROM outbox ORDER BY 1")
	inboxIDs := queryStrings(t, ledger, "SELECT message_id FROM inbox WHERE consumer = $1 ORDER BY 1", consumerName)
	if len(outboxIDs) != events || !slices.Equal(outboxIDs, inboxIDs) {
		t.Fatalf("inbox holds %d ids, outbox %d (want %d), and they differ", len(inboxIDs), len(outboxIDs), events)
	}

	// The path was exercised: every crash after a commit was redelivered and
	// skipped, and each id was applied by exactly one delivery.
	applied, duplicates, crashes := out.tally()
	if len(crashes) != consumers*crashRuns {
		t.Errorf("%d consumer crashes after commit, want %d", len(crashes), consumers*crashRuns)
	}
	for _, id := range crashes {
		if duplicates[id] == 0 {
			t.Errorf("message %s, committed by a consumer that died before acking, was not redelivered as a duplicate", id)
		}
	}
	for id, n := range applied {
		if n != 1 {
			t.Errorf("message %s reported applied %d times", id, n)
		}
	}
	if len(applied) != events {
		t.Errorf("%d ids reported applied, want %d", len(applied), events)
	}
	dup := 0
	for _, n := range duplicates {
		dup += n
	}
	// Each crash accounts for one duplicate; the rest were republished by
	// the relay after its kills, which left rows to republish.
	if dup <= len(crashes) {
		t.Errorf("%d duplicates for %d consumer crashes: the relay's restarts republished nothing, although %d kills left rows to republish", dup, len(crashes), k.replays)
	}
	t.Logf("%d events over %d accounts: %d deliveries, %d duplicates skipped (%d after consumers died between commit and ack, %d more from %d relay SIGKILLs, %d with a replay due)",
		events, accounts, len(applied)+dup, dup, len(crashes), dup-len(crashes), k.kills, k.replays)
}

// buildInboxConsumer builds integration/inboxconsumer into a temporary
// directory.
func buildInboxConsumer(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "inboxconsumer")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "./inboxconsumer")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build inboxconsumer: %v\n%s", err, out)
	}
	return bin
}

// declareInboxQueue is declareQueue for the inbox consumers, deleting the
// queue when the test ends.
func declareInboxQueue(t *testing.T, url, exchange, queue, binding string) {
	t.Helper()
	declareQueue(t, url, exchange, queue, binding)
	t.Cleanup(func() {
		if conn, err := amqp.Dial(url); err == nil {
			if ch, err := conn.Channel(); err == nil {
				ch.QueueDelete(queue, false, false, false)
			}
			conn.Close()
		}
	})
}

// queueDepth returns how many messages queue holds ready for delivery.
func queueDepth(url, queue string) (int, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, err
	}
	return q.Messages, nil
}

// commitAccountEvents commits one transaction of n outbox rows, each an
// amount (negative ones too) for one of the accounts, the first ones one
// for each account, done rows having been committed before, and returns
// their ids.
func commitAccountEvents(ctx context.Context, db *pgxpool.Pool, rng *rand.Rand, done, n, accounts int) ([]string, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	ids := make([]string, 0, n)
	for i := range n {
		account := fmt.Sprintf("acct-%02d", rng.IntN(accounts))
		if done+i < accounts {
			account = fmt.Sprintf("acct-%02d", done+i) // every account gets events
		}
		var id string
		err := tx.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('account', $1, 'credited', jsonb_build_object('account', $1::text, 'amount', $2::bigint))
			RETURNING id::text`, account, rng.Int64N(1500)-500).Scan(&id)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	return ids, nil
}

func queryStrings(t *testing.T, db *pgxpool.Pool, sql string, args ...any) []string {
	t.Helper()
	rows, err := db.Query(t.Context(), sql, args...)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// consumerOutput collects what every inboxconsumer process reported.
type consumerOutput struct {
	mu        sync.Mutex
	lines     []string
	last      time.Time // when the last line arrived
	stderrBuf lockedBuffer
}

// stdout returns a writer for one process's standard output. As the
// process's Stdout (not a pipe read separately), it is fully copied before
// Wait returns, so the line a consumer writes just before it kills itself
// is never lost.
func (o *consumerOutput) stdout() io.Writer { return &lineWriter{o: o} }

func (o *consumerOutput) stderr() io.Writer { return &o.stderrBuf }

// quietFor reports whether no line arrived during the last d.
func (o *consumerOutput) quietFor(d time.Duration) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return time.Since(o.last) >= d
}

type lineWriter struct {
	o       *consumerOutput
	partial []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	w.o.mu.Lock()
	defer w.o.mu.Unlock()
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		w.o.lines = append(w.o.lines, string(w.partial[:i]))
		w.o.last = time.Now()
		w.partial = w.partial[i+1:]
	}
}

// tally counts, per message id, the deliveries that applied it and those
// skipped as duplicates, and lists the ids after whose commit a consumer
// killed itself.
func (o *consumerOutput) tally() (applied, duplicates map[string]int, crashes []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	applied, duplicates = map[string]int{}, map[string]int{}
	for _, line := range o.lines {
		kind, id, _ := strings.Cut(line, " ")
		switch kind {
		case "applied":
			applied[id]++
		case "duplicate":
			duplicates[id]++
		case "crash":
			crashes = append(crashes, id)
		}
	}
	return applied, duplicates, crashes
}
