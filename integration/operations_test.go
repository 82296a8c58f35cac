//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay/pgops"
)

// Tests of what an operator relies on: metrics and readiness, the leader
// lock and takeover, heartbeats, slot loss and rows that cannot be
// published.

// waitMetric waits until the relay's series satisfies ok, described by want.
func (p *relayProc) waitMetric(t *testing.T, series, want string, ok func(float64) bool, timeout time.Duration) float64 {
	t.Helper()
	var got float64
	eventually(t, timeout, func() error {
		if p.exited() {
			t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
		}
		v, found := p.metric(series)
		got = v
		if !found {
			return fmt.Errorf("/metrics has no %s", series)
		}
		if !ok(v) {
			return fmt.Errorf("%s = %v, want %s", series, v, want)
		}
		return nil
	})
	return got
}

func equals(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

// slotActive returns whether the env's slot has a reader and its pid.
func (e *env) slotActive() (bool, int32) {
	e.t.Helper()
	var active bool
	var pid *int32
	err := e.db.QueryRow(e.t.Context(), "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&active, &pid)
	if err != nil {
		e.t.Fatalf("read slot %s: %v", e.slot, err)
	}
	if pid == nil {
		return active, 0
	}
	return active, *pid
}

// lockHolder returns the backend pid holding the leader lock of the env's
// slot, or 0. pg_locks shows the bigint key split into two oids: classid
// its high 32 bits, objid its low 32 bits, both unsigned.
func (e *env) lockHolder() int32 {
	e.t.Helper()
	var pid int32
	err := e.db.QueryRow(e.t.Context(), `
		SELECT pid FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND objsubid = 1
		  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND classid::bigint = ($1::bigint >> 32) & 4294967295
		  AND objid::bigint = $1::bigint & 4294967295`, pgops.LeaderLockKey(e.slot)).Scan(&pid)
	if err != nil {
		return 0
	}
	return pid
}

// waitLockHolder waits until a session holds the leader lock.
func (e *env) waitLockHolder() int32 {
	e.t.Helper()
	var pid int32
	eventually(e.t, 30*time.Second, func() error {
		if pid = e.lockHolder(); pid == 0 {
			return fmt.Errorf("nobody holds the leader lock of slot %s", e.slot)
		}
		return nil
	})
	return pid
}

// waitMessages waits until c received at least n deliveries.
func waitMessages(t *testing.T, c sinkConsumer, n int) {
	t.Helper()
	eventually(t, time.Minute, func() error {
		if got := len(c.ids()); got < n {
			return fmt.Errorf("%d deliveries, waiting for %d", got, n)
		}
		return nil
	})
}

func TestMetricsAndReadiness(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	q := e.bindQueue("#")
	p := e.startRelay()
	p.waitReady(t, http.StatusOK, "streaming", 30*time.Second)
	if code, body, err := p.get("/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz: %d %q %v", code, body, err)
	}
	before := float64(time.Now().UnixNano()) / 1e9

	const n, perTx = 300, 10
	ids := e.insertEvents(n, perTx, 7)
	msgs := q.waitDistinct(n, time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	end := e.currentLSN()

	// Every event was confirmed once: no retries in a clean run.
	p.waitMetric(t, `relay_events_published_total{sink="rabbitmq",destination="`+e.exchange+`"}`, fmt.Sprint(n), equals(n), 30*time.Second)
	p.waitMetric(t, "relay_commit_to_ack_seconds_count", fmt.Sprint(n), equals(n), 30*time.Second)
	if v, ok := p.metric("relay_transactions_total"); !ok || v < n/perTx {
		t.Errorf("relay_transactions_total = %v (present %v), want at least %d", v, ok, n/perTx)
	}
	if v, ok := p.metric("relay_leader"); !ok || v != 1 {
		t.Errorf("relay_leader = %v (present %v), want 1", v, ok)
	}
	after := float64(time.Now().UnixNano()) / 1e9
	if v, ok := p.metric("relay_last_publish_timestamp_seconds"); !ok || v < before || v > after {
		t.Errorf("relay_last_publish_timestamp_seconds = %f (present %v), want between %f and %f", v, ok, before, after)
	}
	// The gauge shows what the slot confirmed, as a number.
	eventually(t, 30*time.Second, func() error {
		slot := e.slotLSN()
		v, ok := p.metric("relay_confirmed_lsn")
		switch {
		case !ok:
			return fmt.Errorf("/metrics has no relay_confirmed_lsn")
		case slot < end:
			return fmt.Errorf("slot at %X, not yet past the published rows (%X)", slot, end)
		case v != float64(slot):
			return fmt.Errorf("relay_confirmed_lsn = %X, slot confirmed_flush_lsn = %X", uint64(v), slot)
		}
		return nil
	})
	p.waitReady(t, http.StatusOK, "streaming", 10*time.Second)
}

// negativeKeySlot returns a slot name starting with base whose leader lock
// key has its high bit set, as half of all slot names do: pg_locks then
// shows its high half as an oid above 2^31, which a lookup of the holder
// must still match.
func negativeKeySlot(base string) string {
	for i := 0; ; i++ {
		if s := fmt.Sprintf("%s_%d", base, i); pgops.LeaderLockKey(s) < 0 {
			return s
		}
	}
}

func TestStandbyTakesOverWhenTheLeaderIsKilled(t *testing.T) {
	e := newEnv(t)
	e.slot = negativeKeySlot(e.slot)
	q := e.bindQueue("#")
	leader := e.startRelay()
	standby := startRelayWith(t, e.vars())

	// Exactly one streams.
	standby.waitReady(t, http.StatusServiceUnavailable, "standby", 30*time.Second)
	leader.waitReady(t, http.StatusOK, "streaming", 30*time.Second)
	standby.waitMetric(t, "relay_leader", "0", equals(0), 10*time.Second)
	leader.waitMetric(t, "relay_leader", "1", equals(1), 10*time.Second)
	// Once it has tried the lock, the standby names who holds it.
	holder := e.waitLockHolder()
	named := fmt.Sprintf("backend pid %d", holder)
	var reason string
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var code int
		if code, reason = standby.ready(); code != http.StatusServiceUnavailable || !strings.Contains(reason, "standby") {
			t.Fatalf("the standby's /readyz is %d %q", code, reason)
		}
		if strings.Contains(reason, named) {
			break
		}
	}
	if !strings.Contains(reason, named) {
		t.Errorf("the standby's /readyz reason %q does not name the lock holder, %s (slot %s, lock key %d)",
			reason, named, e.slot, pgops.LeaderLockKey(e.slot))
	}

	// Rows commit until the standby streams, so some come across the
	// takeover whenever it happens.
	w := e.startWriter(50, 13)
	waitMessages(t, q, 3000)
	// Frozen, the leader confirms nothing more: the rows committed now are
	// certainly unconfirmed when it dies, and the standby must publish them.
	leader.freeze()
	w.waitRows(500)
	if slot, end := e.slotLSN(), e.currentLSN(); slot >= end {
		t.Fatalf("slot at %X covers rows committed up to %X while the leader was frozen", slot, end)
	}
	_, oldPID := e.slotActive()
	killed := time.Now()
	leader.kill()
	var took time.Duration
	eventually(t, time.Minute, func() error {
		if standby.exited() {
			t.Fatalf("the standby exited (%v); log:\n%s", standby.err, standby.log.String())
		}
		if active, pid := e.slotActive(); !active || pid == oldPID {
			return fmt.Errorf("slot %s: active %v, pid %d (the killed leader's walsender was %d)", e.slot, active, pid, oldPID)
		}
		took = time.Since(killed)
		return nil
	})
	t.Logf("the standby streams %s after the leader was SIGKILLed", took.Round(time.Millisecond))
	if took >= 10*time.Second {
		t.Errorf("the standby took over %s after the leader was killed; the requirement is under 10 s", took)
	}
	ids := w.finish()
	standby.waitMetric(t, "relay_leader", "1", equals(1), 10*time.Second)
	standby.waitReady(t, http.StatusOK, "streaming", 30*time.Second)

	msgs := q.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	t.Logf("%d events, %d deliveries across the takeover", len(ids), len(msgs))
}

func TestLeaderLosingItsConnectionStepsDown(t *testing.T) {
	e := newEnv(t)
	q := e.bindQueue("#")
	first := e.startRelay()
	second := startRelayWith(t, e.vars())
	second.waitReady(t, http.StatusServiceUnavailable, "standby", 30*time.Second)
	first.waitReady(t, http.StatusOK, "streaming", 30*time.Second)

	// Rows commit until the standby streams: those committed after the old
	// leader stopped reading are left to the standby.
	w := e.startWriter(50, 13)
	waitMessages(t, q, 3000)
	lockPID := e.waitLockHolder()
	_, walPID := e.slotActive()
	// The leader's lock connection dies; its replication connection does not.
	e.exec("SELECT pg_terminate_backend($1)", lockPID)
	cut := time.Now()
	var took time.Duration
	eventually(t, time.Minute, func() error {
		for _, p := range []*relayProc{first, second} {
			if p.exited() {
				t.Fatalf("a relay exited (%v); log:\n%s", p.err, p.log.String())
			}
		}
		if v, _ := second.metric("relay_leader"); v != 1 {
			// The old leader must give the standby its chance: taking
			// the lock straight back is no takeover.
			if strings.Contains(first.log.String(), "leader lock was lost") {
				if v, _ := first.metric("relay_leader"); v == 1 {
					t.Fatalf("the old leader took the leader lock back %s after losing it, before the standby took over; old leader's log:\n%s",
						time.Since(cut).Round(time.Millisecond), first.log.String())
				}
			}
			return fmt.Errorf("the standby's relay_leader is %v", v)
		}
		if active, pid := e.slotActive(); !active || pid == walPID {
			return fmt.Errorf("slot %s: active %v, pid %d (the old leader's walsender was %d)", e.slot, active, pid, walPID)
		}
		took = time.Since(cut)
		return nil
	})
	ids := w.finish()
	t.Logf("the standby streams %s after the leader's lock connection was terminated", took.Round(time.Millisecond))
	if took >= 10*time.Second {
		t.Errorf("the standby took over %s after the leader lost its connection; the requirement is under 10 s", took)
	}
	second.waitReady(t, http.StatusOK, "streaming", 30*time.Second)
	// The old leader stepped down and waits, rather than exiting.
	first.waitReady(t, http.StatusServiceUnavailable, "standby", 30*time.Second)
	first.waitMetric(t, "relay_leader", "0", equals(0), 10*time.Second)
	if holder := e.lockHolder(); holder == lockPID || holder == 0 {
		t.Errorf("leader lock held by backend %d after %d was terminated", holder, lockPID)
	}

	msgs := q.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, msgs)
	checkOrder(t, msgs)
	if first.exited() {
		t.Fatalf("the old leader exited (%v)", first.err)
	}
	t.Logf("%d events, %d deliveries across the step-down", len(ids), len(msgs))
}

func TestHeartbeatKeepsRetainedWALBounded(t *testing.T) {
	e := newEnv(t)
	e.extraVars = map[string]string{"RELAY_HEARTBEAT_INTERVAL": "200ms"}
	e.bindQueue("#")
	p := e.startRelay()

	// Writes only elsewhere: an unpublished table of the outbox database,
	// and another database of the cluster.
	ctx := t.Context()
	otherDB := e.name + "_other"
	if err := pg.CreateDatabase(ctx, otherDB); err != nil {
		t.Fatal(err)
	}
	other, err := pgxpool.New(ctx, pg.URL(otherDB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	e.exec("CREATE TABLE unpublished (id bigserial PRIMARY KEY, data text)")
	if _, err := other.Exec(ctx, "CREATE TABLE elsewhere (id bigserial PRIMARY KEY, data text)"); err != nil {
		t.Fatal(err)
	}
	const wrote = 32 << 20
	start, began := e.currentLSN(), time.Now()
	for e.currentLSN()-start < wrote || time.Since(began) < 3*time.Second {
		e.exec("INSERT INTO unpublished (data) SELECT repeat('x', 500) FROM generate_series(1, 1000)")
		if _, err := other.Exec(ctx, "INSERT INTO elsewhere (data) SELECT repeat('y', 500) FROM generate_series(1, 2000)"); err != nil {
			t.Fatal(err)
		}
	}
	end := e.currentLSN()
	t.Logf("wrote %d MB of WAL outside the outbox in %s", (end-start)>>20, time.Since(began).Round(time.Millisecond))

	// Once the writes stop, the slot releases what it held: the WAL it
	// retains ends up far below what was written.
	const bound = 2 << 20
	var retained int64
	eventually(t, 90*time.Second, func() error {
		err := e.db.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&retained)
		if err != nil {
			return err
		}
		if retained >= bound {
			return fmt.Errorf("slot %s retains %d bytes of WAL, want below %d", e.slot, retained, bound)
		}
		if got := e.slotLSN(); got < end {
			return fmt.Errorf("slot confirmed %X, the writes ended at %X", got, end)
		}
		return nil
	})
	t.Logf("the slot retains %d bytes of WAL after %d MB were written elsewhere", retained, (end-start)>>20)
	p.waitMetric(t, "relay_slot_retained_wal_bytes", fmt.Sprintf("below %d", bound), func(v float64) bool { return v < bound }, 30*time.Second)
	if v, ok := p.metric("relay_heartbeats_total"); !ok || v <= 0 {
		t.Fatalf("relay_heartbeats_total = %v (present %v), want heartbeats", v, ok)
	}
}

func TestSlotRecreateAllowsRecreatingADroppedSlot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.extraVars = map[string]string{"RELAY_SLOT_RECREATE": "true"}
	q := e.bindQueue("#")
	p := e.startRelay()
	ids := e.insertEvents(100, 10, 3)
	q.waitDistinct(len(ids), 30*time.Second)
	_, oldPID := e.slotActive()

	e.dropSlotUnder(p)
	// The relay creates the slot again and streams from it.
	eventually(t, time.Minute, func() error {
		if p.exited() {
			t.Fatalf("the relay exited (%v) after its slot was dropped with RELAY_SLOT_RECREATE=true; log:\n%s", p.err, p.log.String())
		}
		var active bool
		var pid *int32
		err := e.db.QueryRow(t.Context(), "SELECT active, active_pid FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&active, &pid)
		if err != nil || !active || pid == nil || *pid == oldPID {
			return fmt.Errorf("slot %s not streaming again (%v)", e.slot, err)
		}
		return nil
	})
	warned := false
	for _, line := range strings.Split(p.log.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, "disappeared") && strings.Contains(line, e.slot) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning naming slot %s says it disappeared; log:\n%s", e.slot, p.log.String())
	}
	more := e.insertEvents(50, 5, 3)
	msgs := q.waitDistinct(len(ids)+len(more), time.Minute)
	checkAll(t, append(ids, more...), msgs)
	p.waitReady(t, http.StatusOK, "streaming", 30*time.Second)
}

// badRowCase is an outbox row that cannot become a message.
type badRowCase struct {
	// vars are extra relay variables.
	vars map[string]string
	// setup runs before the relay starts.
	setup func(e *env)
	// good inserts a publishable row with payload seq=$1 of aggregate
	// agg-0, returning its id; empty when no row can be published under
	// this case's configuration.
	good string
	// bad inserts the bad row, returning its id.
	bad string
	// reason is a part of the error the relay gives for the row.
	reason string
	// amqpURL, when set, is the broker to use instead of the shared one.
	amqpURL string
	// payloadOmitted: the dead letter goes without the payload.
	payloadOmitted bool
}

const goodRow = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
	VALUES ('order', 'agg-0', 'created', jsonb_build_object('agg', 'agg-0', 'seq', $1::int)) RETURNING id`

// runBadRow checks both policies for a bad row: without a dead-letter
// destination the stream stops before it and says why; with one the row
// goes there and the stream goes on. Its tests do not run in parallel:
// the slot may confirm WAL that other databases write between the bad
// row's insert and its commit record, which badRowBlocks would take for
// the slot passing the row.
func runBadRow(t *testing.T, c badRowCase) {
	t.Run("without dead letter the stream stops before it", func(t *testing.T) { badRowBlocks(t, c) })
	t.Run("with dead letter it is dead-lettered", func(t *testing.T) { badRowDeadLettered(t, c) })
}

func newBadRowEnv(t *testing.T, c badRowCase, vars map[string]string) *env {
	e := newEnv(t)
	if c.amqpURL != "" {
		e.amqpURL = c.amqpURL
	}
	e.extraVars = map[string]string{}
	for k, v := range c.vars {
		e.extraVars[k] = v
	}
	for k, v := range vars {
		e.extraVars[k] = v
	}
	if c.setup != nil {
		c.setup(e)
	}
	return e
}

// insertRow commits one row and returns its id.
func (e *env) insertRow(sql string, args ...any) string {
	e.t.Helper()
	var id string
	if err := e.db.QueryRow(e.t.Context(), sql, args...).Scan(&id); err != nil {
		e.t.Fatalf("%s: %v", firstLine(sql), err)
	}
	return id
}

// insertBad commits the bad row alone in its transaction and returns its
// id and a WAL position before the transaction's commit record, which the
// slot must not pass while the row is not published.
func (e *env) insertBad(sql string) (string, uint64) {
	e.t.Helper()
	ctx := e.t.Context()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	var id string
	if err := tx.QueryRow(ctx, sql).Scan(&id); err != nil {
		e.t.Fatalf("%s: %v", firstLine(sql), err)
	}
	var before uint64
	if err := tx.QueryRow(ctx, "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").Scan(&before); err != nil {
		e.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
	return id, before
}

func badRowBlocks(t *testing.T, c badRowCase) {
	e := newBadRowEnv(t, c, map[string]string{"RELAY_BLOCKED_RETRY_INTERVAL": "300ms"})
	q := e.bindQueue("#")
	p := e.startRelay()
	var good []string
	if c.good != "" {
		for seq := 1; seq <= 3; seq++ {
			good = append(good, e.insertRow(c.good, seq))
		}
	}
	id, limit := e.insertBad(c.bad)
	if c.good != "" {
		for seq := 4; seq <= 5; seq++ {
			e.insertRow(c.good, seq)
		}
	}

	// The rows before it are delivered.
	msgs := q.waitDistinct(len(good), 30*time.Second)
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.MessageId] = true
	}
	for _, g := range good {
		if !seen[g] {
			t.Errorf("row %s, committed before the bad row, was not delivered", g)
		}
	}

	// The relay stays up and says which row and why.
	var reason string
	eventually(t, 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
		}
		if m, ok := q.find(id); ok {
			t.Fatalf("the bad row %s was published to %s with routing key %q", id, e.exchange, m.RoutingKey)
		}
		var code int
		code, reason = p.ready()
		if code != http.StatusServiceUnavailable || !strings.Contains(reason, id) {
			return fmt.Errorf("/readyz %d %q, waiting for 503 naming row %s", code, reason, id)
		}
		return nil
	})
	if !strings.Contains(reason, c.reason) {
		t.Errorf("/readyz reason %q does not say %q", reason, c.reason)
	}
	p.waitMetric(t, "relay_blocked", "1", equals(1), 10*time.Second)
	// It retries, and retrying changes nothing.
	restarts := p.waitMetric(t, "relay_session_restarts_total", "at least 1", func(v float64) bool { return v >= 1 }, 10*time.Second)
	p.waitMetric(t, "relay_session_restarts_total", fmt.Sprintf("above %v", restarts), func(v float64) bool { return v > restarts }, 10*time.Second)
	if got := e.slotLSN(); got > limit {
		t.Errorf("slot confirmed %X, past the start of the bad row's commit record (after %X)", got, limit)
	}
	if code, r := p.ready(); code != http.StatusServiceUnavailable || !strings.Contains(r, id) {
		t.Errorf("after retries /readyz is %d %q, want 503 naming row %s", code, r, id)
	}
	if v, _ := p.metric("relay_blocked"); v != 1 {
		t.Errorf("relay_blocked = %v after retries, want 1", v)
	}
	if v, _ := p.metric("relay_dead_lettered_total"); v != 0 {
		t.Errorf("relay_dead_lettered_total = %v without a dead-letter destination", v)
	}
	if log := p.log.String(); !strings.Contains(log, id) {
		t.Errorf("the log does not name row %s:\n%s", id, log)
	}
	q.barrier()
	if m, ok := q.find(id); ok {
		t.Errorf("the bad row %s was published to %s with routing key %q", id, e.exchange, m.RoutingKey)
	}
	if p.exited() {
		t.Fatalf("the relay exited (%v)", p.err)
	}
}

// find returns the first message with id.
func (c *consumer) find(id string) (message, bool) {
	for _, m := range c.messages() {
		if m.MessageId == id {
			return m, true
		}
	}
	return message{}, false
}

func badRowDeadLettered(t *testing.T, c badRowCase) {
	e := newBadRowEnv(t, c, nil)
	dlx := "dead_" + e.name
	e.extraVars["RELAY_DEAD_LETTER"] = dlx
	dead := bindQueueAt(t, e.amqpURL, dlx, "q_"+e.name+"_dead", "#")
	q := e.bindQueue("#")
	p := e.startRelay()
	var good []string
	if c.good != "" {
		for seq := 1; seq <= 3; seq++ {
			good = append(good, e.insertRow(c.good, seq))
		}
	}
	id, _ := e.insertBad(c.bad)
	if c.good != "" {
		for seq := 4; seq <= 6; seq++ {
			good = append(good, e.insertRow(c.good, seq))
		}
	}
	end := e.currentLSN()

	// The rows around it are delivered, in order, and it is not.
	var msgs []message
	if c.good != "" {
		msgs = q.waitDistinct(len(good), 30*time.Second)
	}
	if m, ok := q.find(id); ok {
		t.Fatalf("the bad row %s was published to %s with routing key %q", id, e.exchange, m.RoutingKey)
	}
	if c.good != "" {
		checkAll(t, good, msgs)
		checkOrder(t, msgs)
	}
	dl := dead.waitDistinct(1, 30*time.Second)[0]
	if dl.MessageId != id {
		t.Fatalf("dead letter has message_id %q, want the bad row's id %s", dl.MessageId, id)
	}
	if got, _ := dl.Headers["x-relay-error"].(string); !strings.Contains(got, c.reason) {
		t.Errorf("dead letter x-relay-error %q does not say %q", got, c.reason)
	}
	if _, ok := dl.Headers["x-relay-index"]; !ok {
		t.Errorf("dead letter has no x-relay-index header: %v", dl.Headers)
	}
	if dl.RoutingKey != "public.outbox" {
		t.Errorf("dead letter routing key %q, want the source table public.outbox", dl.RoutingKey)
	}
	if c.payloadOmitted {
		if len(dl.Body) != 0 {
			t.Errorf("dead letter of a row too large for the broker carries %d bytes", len(dl.Body))
		}
		if _, ok := dl.Headers["x-relay-payload-omitted"]; !ok {
			t.Errorf("dead letter has no x-relay-payload-omitted header: %v", dl.Headers)
		}
	}
	p.waitMetric(t, "relay_dead_lettered_total", "1", equals(1), 10*time.Second)
	// The slot passes it.
	e.waitSlotAt(end, 30*time.Second)
	p.waitReady(t, http.StatusOK, "streaming", 10*time.Second)
	if v, _ := p.metric("relay_blocked"); v != 0 {
		t.Errorf("relay_blocked = %v while dead-lettering", v)
	}
	if c.good == "" {
		q.barrier()
		if msgs := q.messages(); len(msgs) != 0 {
			t.Errorf("%d messages reached %s though no row can be routed", len(msgs), e.exchange)
		}
	}
	if log := p.log.String(); !strings.Contains(log, id) {
		t.Errorf("the log does not name the dead-lettered row %s:\n%s", id, log)
	}
}

func TestBadRowNullInAMappedColumn(t *testing.T) {
	runBadRow(t, badRowCase{
		setup: func(e *env) { e.exec("ALTER TABLE outbox ALTER COLUMN aggregate_id DROP NOT NULL") },
		good:  goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', NULL, 'created', '{}') RETURNING id`,
		reason: "aggregate_id is null",
	})
}

func TestBadRowHeadersNotAJSONObject(t *testing.T) {
	runBadRow(t, badRowCase{
		good: goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', 'agg-0', 'created', '{}', '[1]') RETURNING id`,
		reason: "not a JSON object",
	})
}

// With a routing key naming a column the table does not have, no row can
// be routed: the first one stops the stream, or every one is dead-lettered.
func TestBadRowRoutingKeyNamesAMissingColumn(t *testing.T) {
	runBadRow(t, badRowCase{
		vars: map[string]string{"RELAY_AMQP_ROUTING_KEY": "{nope}"},
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', 'agg-0', 'created', '{}') RETURNING id`,
		reason: `"nope"`,
	})
}

func TestBadRowRoutingKeyRendersEmpty(t *testing.T) {
	runBadRow(t, badRowCase{
		vars: map[string]string{"RELAY_AMQP_ROUTING_KEY": "{aggregate_id}"},
		good: goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', '', 'created', '{}') RETURNING id`,
		reason: "empty",
	})
}

func TestBadRowOverTheBrokersMaxMessageSize(t *testing.T) {
	// max_message_size is node-wide: this test has a node of its own.
	node := startOwnRabbit(t, services.RabbitOptions{MaxMessageSize: 4096})
	runBadRow(t, badRowCase{
		amqpURL: node.URL(),
		good:    goodRow,
		bad: `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('order', 'agg-0', 'created', jsonb_build_object('pad', repeat('x', 10000))) RETURNING id`,
		reason:         "max_message_size",
		payloadOmitted: true,
	})
}
