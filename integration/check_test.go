//go:build linux

package integration

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay/pgops"
)

// command runs `relay <args>` to completion with the env's variables plus
// kv pairs, and returns its exit code, stdout and stderr.
func (e *env) command(args []string, kv ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	extra := map[string]string{}
	for k, v := range e.extraVars {
		extra[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		extra[kv[i]] = kv[i+1]
	}
	saved := e.extraVars
	e.extraVars = extra
	vars := e.vars()
	e.extraVars = saved

	ctx, cancel := context.WithTimeout(e.t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBin, args...)
	cmd.Env = vars
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		e.t.Fatalf("relay %s: %v", strings.Join(args, " "), err)
	}
	return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
}

// check runs `relay check` and requires exit code want.
func (e *env) check(want int, kv ...string) string {
	e.t.Helper()
	code, out, errOut := e.command([]string{"check"}, kv...)
	e.t.Logf("relay check %q:\n%s", kv, out)
	if code != want {
		e.t.Fatalf("relay check exited %d, want %d; stdout:\n%s\nstderr:\n%s", code, want, out, errOut)
	}
	return out
}

// hasLine requires a line of out that starts with prefix and contains
// every one of parts.
func hasLine(t *testing.T, out, prefix string, parts ...string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		for _, p := range parts {
			if !strings.Contains(line, p) {
				t.Errorf("line %q lacks %q", line, p)
			}
		}
		return
	}
	t.Errorf("no line starts with %q in:\n%s", prefix, out)
}

func noLine(t *testing.T, out, prefix string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, prefix) {
			t.Errorf("unexpected line %q in:\n%s", line, out)
		}
	}
}

// deadAddr is a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	port, err := services.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

func TestCheckPassesOnAHealthySetup(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.bindQueue("#")

	// Before the first start: the slot is missing, and the relay will
	// create it and backfill the rows already there (RELAY_SNAPSHOT=initial).
	out := e.check(0)
	for _, prefix := range []string{"ok    database:", "ok    wal_level: logical", "ok    role ", "ok    replication connection: works",
		"ok    max_replication_slots:", "ok    max_wal_senders:", "ok    table public.outbox: columns id=id (uuid)",
		"ok    publication pub_" + e.name + ":", "ok    rabbitmq: connected to", "ok    exchange " + e.exchange + ": exists"} {
		hasLine(t, out, prefix)
	}
	hasLine(t, out, "ok    slot "+e.slot+": does not exist; the relay will create it and first publish the rows already in the tables")
	hasLine(t, out, "ready to run, 0 warnings")
	noLine(t, out, "FAIL")
	hasLine(t, out, "ok    pgoutput format: binary")
	out = e.check(0, "RELAY_PGOUTPUT_BINARY", "false")
	hasLine(t, out, "ok    pgoutput format: text, as RELAY_PGOUTPUT_BINARY=false asks")
	// Without the backfill, the rows already there are never published.
	out = e.check(0, "RELAY_SNAPSHOT", "never")
	hasLine(t, out, "WARN  slot "+e.slot+": does not exist; the relay will create it, and rows committed before then are not relayed")
	out = e.check(0, "RELAY_DEAD_LETTER", "dlx_"+e.name)
	hasLine(t, out, "ok    dead-letter exchange dlx_"+e.name+": does not exist; the relay will declare it")

	if code, stdout, _ := e.command([]string{"status"}); code != 1 || !strings.Contains(stdout, e.slot+" (does not exist)") {
		t.Errorf("relay status before the first start: exit %d, output\n%s\nwant 1 and the slot missing", code, stdout)
	}

	p := e.startRelay()
	e.insertEvents(50, 10, 5)
	c.waitDistinct(50, time.Minute)

	// While the relay streams, its slot and sender are counted as its own.
	out = e.check(0)
	hasLine(t, out, "ok    max_wal_senders:", "the relay streaming now among them")
	hasLine(t, out, "ok    slot "+e.slot+": pgoutput, wal_status reserved", "active (pid")
	hasLine(t, out, "ready to run, 0 warnings")

	e.stopAndWaitInactive(p)
	out = e.check(0)
	t.Logf("relay check after the relay ran:\n%s", out)
	hasLine(t, out, "ok    slot "+e.slot+": pgoutput", "not active")
	noLine(t, out, "WARN")

	// A slot the relay used, then dropped, is not a first start: the rows
	// deleted meanwhile are missing.
	if _, err := e.db.Exec(t.Context(), "SELECT pg_drop_replication_slot($1)", e.slot); err != nil {
		t.Fatal(err)
	}
	out = e.check(0)
	hasLine(t, out, "WARN  slot "+e.slot+": does not exist, but relay.backfill records that the relay used it", "missing")
}

func TestCheckFailsWhenTheBackfillCannotRecordItsProgress(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// schema/role.sql creates relay.backfill for the role, which may not
	// create it itself (no CREATE on the database).
	e.exec("REVOKE UPDATE ON relay.backfill FROM relay")
	out := e.check(1)
	hasLine(t, out, "FAIL  slot "+e.slot+": does not exist; the relay will create it and first publish the rows already in the tables",
		"role relay may not read and write relay.backfill", `GRANT SELECT, INSERT, UPDATE ON relay.backfill TO "relay";`, "RELAY_SNAPSHOT=never")
	e.exec("DROP TABLE relay.backfill")
	out = e.check(1)
	hasLine(t, out, "FAIL  slot "+e.slot+": does not exist;", "role relay may not create relay.backfill", "apply schema/relay_state.sql")
	out = e.check(0, "RELAY_SNAPSHOT", "never")
	hasLine(t, out, "WARN  slot "+e.slot+": does not exist; the relay will create it, and rows committed before then are not relayed")
}

func TestCheckPassesWithKafka(t *testing.T) {
	t.Parallel()
	e, txnID, checkpoints := newExactlyOnceEnv(t)
	out := e.check(0)
	hasLine(t, out, "ok    kafka: connected to "+kafkaBrokers)
	hasLine(t, out, "ok    topic outbox.{aggregate_type}.", "the relay creates missing topics")
	hasLine(t, out, "ok    checkpoint topic "+checkpoints+": does not exist; the relay will create it")
	hasLine(t, out, "ok    transactional id "+txnID+": a transaction coordinator answers")
	noLine(t, out, "FAIL")
	out = e.check(0, "RELAY_DEAD_LETTER", "dlq."+e.name)
	hasLine(t, out, "ok    dead-letter topic dlq."+e.name+": does not exist; the relay creates missing topics")

	// A topic that is not created, on kfake, which creates none itself.
	out = e.check(0, "RELAY_KAFKA_CREATE_TOPICS", "false", "RELAY_KAFKA_TOPIC", "fixed."+e.name)
	hasLine(t, out, "WARN  topic fixed."+e.name+": does not exist", "fix: create topic fixed."+e.name)
}

func TestCheckFailsWithoutLogicalWAL(t *testing.T) {
	t.Parallel()
	server, err := services.StartPostgres(t.Context(), services.PostgresOptions{Fast: true, ExtraConf: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	e := newEnvOn(t, server)
	out := e.check(1)
	hasLine(t, out, `FAIL  wal_level: "replica"`, "fix: as a superuser: ALTER SYSTEM SET wal_level = logical;")
	hasLine(t, out, "ok    table public.outbox:")
	hasLine(t, out, "1 problem blocks the relay")
}

func TestCheckFailsOnAMissingTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.check(1, "RELAY_TABLES", "public.outbox,public.missing")
	hasLine(t, out, "FAIL  table public.missing: does not exist", "fix: create it", "RELAY_TABLES")
	hasLine(t, out, "ok    table public.outbox:")
}

func TestCheckFailsOnColumnsTheMappingNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.check(1, "RELAY_COLUMN_EVENT_TYPE", "kind")
	hasLine(t, out, "FAIL  table public.outbox: table public.outbox has no column kind", "RELAY_COLUMN_EVENT_TYPE")

	out = e.check(1, "RELAY_COLUMN_PRESET", "debezium")
	hasLine(t, out, "FAIL  table public.outbox: table public.outbox has no column aggregatetype, aggregateid, type")

	out = e.check(1, "RELAY_AMQP_ROUTING_KEY", "{tenant}.{event_type}")
	hasLine(t, out, `FAIL  table public.outbox: RELAY_AMQP_ROUTING_KEY "{tenant}.{event_type}" names {tenant}, which is not a column`)

	// The catalog, not the configuration, is what is compared.
	e.exec("ALTER TABLE outbox ALTER COLUMN aggregate_id DROP NOT NULL, ALTER COLUMN headers TYPE text")
	out = e.check(0)
	hasLine(t, out, "WARN  table public.outbox: column aggregate_id allows NULL", `ALTER COLUMN "aggregate_id" SET NOT NULL`)
	hasLine(t, out, "WARN  table public.outbox: headers column headers is text")
}

func TestCheckFailsForARoleWithoutReplication(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	role := "norepl_" + e.name
	e.exec("CREATE ROLE " + role + " LOGIN")
	e.exec("GRANT USAGE ON SCHEMA public TO " + role)
	e.exec("GRANT SELECT ON outbox TO " + role)
	u, err := url.Parse(e.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	out := e.check(1, "RELAY_DATABASE_URL", u.String())
	hasLine(t, out, "FAIL  role "+role+": has neither REPLICATION nor superuser", "fix: as a superuser: ALTER ROLE "+`"`+role+`"`+" WITH REPLICATION;")
	noLine(t, out, "ok    replication connection")

	// Without SELECT either, and no publication it could create.
	e.exec("REVOKE SELECT ON outbox FROM " + role)
	out = e.check(1, "RELAY_DATABASE_URL", u.String(), "RELAY_PUBLICATION", "other_"+e.name)
	hasLine(t, out, "FAIL  table public.outbox: role "+role+" may not read it", "GRANT SELECT ON")
	hasLine(t, out, "FAIL  publication other_"+e.name+": does not exist, and role "+role+" cannot create it", "CREATE PUBLICATION")
}

func TestCheckReportsABadSlot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec("SELECT pg_create_logical_replication_slot($1, 'test_decoding')", e.slot)
	out := e.check(1)
	hasLine(t, out, "FAIL  slot "+e.slot+`: is a logical slot with plugin "test_decoding"`, "pg_drop_replication_slot('"+e.slot+"')")
}

func TestCheckReportsALostSlot(t *testing.T) {
	t.Parallel()
	server, err := services.StartPostgres(t.Context(), services.PostgresOptions{Fast: true, ExtraConf: map[string]string{"max_slot_wal_keep_size": "1MB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	e := newEnvOn(t, server)
	e.exec("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", e.slot)
	// Push the idle slot's WAL past max_slot_wal_keep_size; a checkpoint
	// then invalidates it.
	eventually(t, time.Minute, func() error {
		e.exec("INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload) SELECT 'a', 'b', 'c', '{}' FROM generate_series(1, 1000)")
		e.exec("SELECT pg_switch_wal()")
		e.exec("CHECKPOINT")
		var status string
		if err := e.db.QueryRow(t.Context(), "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&status); err != nil {
			return err
		}
		if status != "lost" {
			return fmt.Errorf("wal_status %s", status)
		}
		return nil
	})
	out := e.check(1)
	hasLine(t, out, "FAIL  slot "+e.slot+": is lost (wal_status lost)", "pg_drop_replication_slot('"+e.slot+"')")
	// Allowed to recreate it, the relay runs, with the gap said.
	out = e.check(0, "RELAY_SLOT_RECREATE", "true")
	hasLine(t, out, "WARN  slot "+e.slot+": is lost", "the relay will drop and recreate it", "never published")
	code, stdout, _ := e.command([]string{"status"})
	if code != 0 || !regexp.MustCompile(`(?m)^wal_status +lost$`).MatchString(stdout) {
		t.Errorf("relay status: exit %d, output\n%s\nwant 0 and wal_status lost", code, stdout)
	}
}

func TestCheckFailsWhenTheBrokerIsUnreachable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	out := e.check(1, "RELAY_AMQP_URL", "amqp://guest:amqp-secret@"+deadAddr(t)+"/")
	hasLine(t, out, "FAIL  rabbitmq: cannot connect to amqp://guest:xxxxx@", "fix: check RELAY_AMQP_URL")
	hasLine(t, out, "ok    wal_level: logical")

	e.useKafka(deadAddr(t), "")
	out = e.check(1, "RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "u", "RELAY_KAFKA_SASL_PASSWORD", "kafka-secret")
	hasLine(t, out, "FAIL  kafka: no broker of "+e.kafkaBrokers+" answers", "RELAY_KAFKA_BROKERS")
	for _, secret := range []string{"amqp-secret", "kafka-secret"} {
		if strings.Contains(out, secret) {
			t.Errorf("output shows %s:\n%s", secret, out)
		}
	}
}

func TestCheckAndStatusReportAnUnreachableDatabaseWithoutItsPassword(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dbURL := "postgres://relay:db-secret@" + deadAddr(t) + "/app?sslmode=disable"
	out := e.check(1, "RELAY_DATABASE_URL", dbURL)
	hasLine(t, out, "FAIL  database: cannot connect to postgres://relay:xxxxx@", "fix: check RELAY_DATABASE_URL")
	hasLine(t, out, "ok    rabbitmq:")
	code, stdout, stderr := e.command([]string{"status"}, "RELAY_DATABASE_URL", dbURL)
	if code != 1 || !strings.Contains(stderr, "relay status: connect to postgres://relay:xxxxx@") {
		t.Errorf("relay status: exit %d, stderr %q; want 1 and the connection error", code, stderr)
	}
	if all := out + stdout + stderr; strings.Contains(all, "db-secret") {
		t.Errorf("output shows the password:\n%s", all)
	}
}

func TestStatusShowsTheSlotAfterTheRelayRan(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	c := e.bindQueue("#")
	p := e.startRelay()
	e.insertEvents(100, 10, 5)
	c.waitDistinct(100, time.Minute)

	code, out, stderr := e.command([]string{"status"})
	if code != 0 {
		t.Fatalf("relay status exited %d; stderr:\n%s", code, stderr)
	}
	t.Logf("relay status while the relay streams:\n%s", out)
	var pid int
	if err := e.db.QueryRow(t.Context(), "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	hasLine(t, out, "slot ", e.slot+" (logical, pgoutput)")
	hasLine(t, out, "active ", fmt.Sprintf("yes, pid %d", pid))
	// The relay holds the leader lock; pg_locks shows the key split in two.
	key := pgops.LeaderLockKey(e.slot)
	var leader int
	err := e.db.QueryRow(t.Context(), `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
		AND classid = $1 AND objid = $2`, uint32(uint64(key)>>32), uint32(key)).Scan(&leader)
	if err != nil {
		t.Fatalf("find the relay's leader lock: %v", err)
	}
	hasLine(t, out, "leader ", fmt.Sprintf("pid %d (relay, ", leader))

	e.stopAndWaitInactive(p)
	code, out, stderr = e.command([]string{"status"})
	if code != 0 {
		t.Fatalf("relay status exited %d; stderr:\n%s", code, stderr)
	}
	var confirmed string
	if err := e.db.QueryRow(t.Context(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if confirmed == "0/0" {
		t.Fatal("the slot confirmed nothing")
	}
	hasLine(t, out, "active ", "no")
	hasLine(t, out, "confirmed_flush_lsn ", confirmed)
	hasLine(t, out, "wal_status ", "reserved")
	lag, retained := statusBytes(t, out, "lag"), statusBytes(t, out, "retained_wal")
	if lag < 0 || retained < lag {
		t.Errorf("lag %d, retained WAL %d: want 0 <= lag <= retained", lag, retained)
	}
	hasLine(t, out, "leader ", "none")

	// Any session holding the leader lock is the leader, in this database
	// only. It connects as the relay's role, as a relay would, which may see
	// its client address.
	lockIn := func(db, app string) *pgx.Conn {
		u, err := url.Parse(e.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.Path = "/" + db
		q := u.Query()
		q.Set("application_name", app)
		u.RawQuery = q.Encode()
		conn, err := pgx.Connect(t.Context(), u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		var got bool
		if err := conn.QueryRow(t.Context(), "SELECT pg_try_advisory_lock($1)", key).Scan(&got); err != nil || !got {
			t.Fatalf("take the leader lock in %s: %v %v", db, got, err)
		}
		return conn
	}
	other := lockIn("postgres", "elsewhere")
	_, out, _ = e.command([]string{"status"})
	hasLine(t, out, "leader ", "none")
	other.Close(t.Context())

	holder := lockIn(e.name, "lock-holder")
	_, out, _ = e.command([]string{"status"})
	hasLine(t, out, "leader ", fmt.Sprintf("pid %d (lock-holder, 127.0.0.1)", holder.PgConn().PID()))
}

// stopAndWaitInactive stops the relay and waits until its slot is idle.
func (e *env) stopAndWaitInactive(p *relayProc) {
	e.t.Helper()
	p.stop(30 * time.Second)
	eventually(e.t, 30*time.Second, func() error {
		var active bool
		if err := e.db.QueryRow(e.t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&active); err != nil || active {
			return fmt.Errorf("slot %s still active (%v)", e.slot, err)
		}
		return nil
	})
}

// statusBytes reads a byte count line of `relay status`.
func statusBytes(t *testing.T, out, key string) int64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + key + ` +(\d+) bytes`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no %s line in:\n%s", key, out)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}
