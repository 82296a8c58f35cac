//go:build linux

package services

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
)

// These tests deliberately fail rather than skip when a server cannot be
// started: a silently skipped integration suite looks exactly like a passing
// one.

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// treePids lists a running proc and everything it spawned, for checking
// that Kill and Close leave nothing behind.
func treePids(p *proc) []int {
	return append(related(p.pid(), true), p.pid())
}

func dumpLogOnFailure(t *testing.T, path string) {
	if t.Failed() {
		t.Logf("tail of %s:\n%s", path, logTail(path))
	}
}

func assertGone(t *testing.T, what string, pids []int) {
	t.Helper()
	if err := waitGone(pids, 5*time.Second); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

func TestPostgres(t *testing.T) {
	ctx := testContext(t)

	t0 := time.Now()
	pg, err := StartPostgres(ctx, PostgresOptions{})
	if err != nil {
		t.Fatalf("StartPostgres: %v", err)
	}
	t.Logf("StartPostgres took %v (port %d, dir %s)", time.Since(t0).Round(time.Millisecond), pg.Port, pg.Dir)
	t.Cleanup(func() { dumpLogOnFailure(t, pg.LogPath()); pg.Close() })
	if pg.Port == 5432 {
		t.Fatal("private cluster must not use the system port 5432")
	}

	if err := pg.CreateDatabase(ctx, "relaytest"); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, pg.URL("relaytest"))
	if err != nil {
		t.Fatal(err)
	}
	var walLevel, fsync string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel); err != nil {
		t.Fatal(err)
	}
	if walLevel != "logical" {
		t.Fatalf("wal_level = %q, want logical", walLevel)
	}
	if err := conn.QueryRow(ctx, "SHOW fsync").Scan(&fsync); err != nil {
		t.Fatal(err)
	}
	if fsync != "on" {
		t.Errorf("fsync = %q without Fast, want on", fsync)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE survivor (id int PRIMARY KEY, note text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "INSERT INTO survivor VALUES (1, 'before crash')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)

	pids := treePids(pg.proc)
	if len(pids) < 2 {
		t.Errorf("expected postmaster plus auxiliary processes, got %v", pids)
	}
	if err := pg.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	assertGone(t, "postgres after Kill", pids)
	if c, err := pgx.Connect(ctx, pg.URL("relaytest")+"&connect_timeout=2"); err == nil {
		c.Close(ctx)
		t.Fatal("connected after Kill")
	}

	t0 = time.Now()
	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	t.Logf("Restart after Kill took %v", time.Since(t0).Round(time.Millisecond))
	checkSurvivor(ctx, t, pg)
	if log, _ := os.ReadFile(pg.LogPath()); !strings.Contains(string(log), "not properly shut down") {
		t.Errorf("log does not show crash recovery; was the server really SIGKILLed?")
	}

	if err := pg.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := pg.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	t0 = time.Now()
	if err := pg.Restart(ctx); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	t.Logf("Restart after Stop took %v", time.Since(t0).Round(time.Millisecond))
	checkSurvivor(ctx, t, pg)

	pids = treePids(pg.proc)
	if err := pg.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertGone(t, "postgres after Close", pids)
	if _, err := os.Stat(pg.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir still exists after Close: %v", err)
	}
	if err := pg.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func checkSurvivor(ctx context.Context, t *testing.T, pg *Postgres) {
	t.Helper()
	conn, err := pgx.Connect(ctx, pg.URL("relaytest"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var note string
	if err := conn.QueryRow(ctx, "SELECT note FROM survivor WHERE id = 1").Scan(&note); err != nil {
		t.Fatalf("table created before the restart is gone: %v", err)
	}
	if note != "before crash" {
		t.Fatalf("note = %q", note)
	}
}

func TestPostgresOptions(t *testing.T) {
	ctx := testContext(t)
	pg, err := StartPostgres(ctx, PostgresOptions{
		Fast:      true,
		ExtraConf: map[string]string{"max_connections": "42", "application_name": "it's quoted"},
	})
	if err != nil {
		t.Fatalf("StartPostgres: %v", err)
	}
	defer pg.Close()
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for setting, want := range map[string]string{
		"fsync":                 "off",
		"max_connections":       "42",
		"max_replication_slots": "20",
		"max_wal_senders":       "20",
		"listen_addresses":      "127.0.0.1",
	} {
		var got string
		if err := conn.QueryRow(ctx, "SHOW "+setting).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
}

func TestRabbit(t *testing.T) {
	ctx := testContext(t)

	t0 := time.Now()
	r, err := StartRabbit(ctx)
	if err != nil {
		t.Fatalf("StartRabbit: %v", err)
	}
	t.Logf("StartRabbit took %v (port %d, node %s, dir %s)", time.Since(t0).Round(time.Millisecond), r.Port, r.nodeName, r.Dir)
	t.Cleanup(func() { dumpLogOnFailure(t, r.LogPath()); r.Close() })
	if r.Port == 5672 {
		t.Fatal("private node must not use the system port 5672")
	}

	// open dials the node and opens a channel; the caller closes the
	// connection, and the test closes it in the end too.
	open := func() (*amqp.Connection, *amqp.Channel) {
		t.Helper()
		conn, err := amqp.Dial(r.URL())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		return conn, ch
	}

	const queue = "relaytest.durable"
	conn, ch := open()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()

	// RabbitMQ keeps fresh metadata (the queue declaration) in Mnesia's
	// disk_log write cache for up to 2 s, so a SIGKILL right after declaring
	// can lose the queue itself. A graceful restart flushes it, and
	// exercises Restart of a running node on the way.
	t0 = time.Now()
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("graceful Restart: %v", err)
	}
	t.Logf("graceful Restart took %v", time.Since(t0).Round(time.Millisecond))

	conn, ch = open()
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil); err != nil {
		t.Fatalf("durable queue lost across graceful Restart: %v", err)
	}
	dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", queue, false, false, amqp.Publishing{
		DeliveryMode: amqp.Persistent,
		ContentType:  "text/plain",
		Body:         []byte("survives SIGKILL"),
	})
	if err != nil {
		t.Fatal(err)
	}
	// Only a confirmed persistent message is promised to be on disk.
	if acked, err := dc.WaitContext(ctx); err != nil || !acked {
		t.Fatalf("publish not confirmed: acked=%v err=%v", acked, err)
	}

	pids := append(treePids(r.beam), treePids(r.epmd)...)
	if err := r.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	assertGone(t, "rabbitmq after Kill", pids)
	select {
	case <-conn.NotifyClose(make(chan *amqp.Error, 1)):
	case <-time.After(10 * time.Second):
		t.Error("client connection still open 10s after Kill")
	}
	if c, err := amqp.DialConfig(r.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)}); err == nil {
		c.Close()
		t.Fatal("connected after Kill")
	}

	t0 = time.Now()
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	t.Logf("Restart after Kill took %v", time.Since(t0).Round(time.Millisecond))

	conn, ch = open()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		t.Fatalf("durable queue lost across Kill+Restart: %v", err)
	}
	if q.Messages != 1 {
		t.Fatalf("queue has %d messages after restart, want 1", q.Messages)
	}
	msg, ok, err := ch.Get(queue, true)
	if err != nil || !ok {
		t.Fatalf("Get: ok=%v err=%v", ok, err)
	}
	if string(msg.Body) != "survives SIGKILL" {
		t.Fatalf("body = %q", msg.Body)
	}

	// A declaration synced with SyncTopology survives a SIGKILL right
	// after.
	const synced = "relaytest.synced"
	if _, err := ch.QueueDeclare(synced, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if err := r.SyncTopology(ctx); err != nil {
		t.Fatalf("SyncTopology: %v", err)
	}
	if err := r.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatalf("Restart after SyncTopology and Kill: %v", err)
	}
	conn, ch = open()
	if _, err := ch.QueueDeclarePassive(synced, true, false, false, false, nil); err != nil {
		t.Fatalf("durable queue declared, synced and killed at once is lost: %v", err)
	}
	conn.Close()

	pids = append(treePids(r.beam), treePids(r.epmd)...)
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertGone(t, "rabbitmq after Close", pids)
	if _, err := os.Stat(r.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Dir still exists after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

const orphanEnv = "RELAY_SERVICES_ORPHAN_CHILD"

// TestOrphanedServersDie checks the Pdeathsig promise: when a test binary is
// SIGKILLed before it can call Close, its servers die too instead of piling
// up on the machine.
func TestOrphanedServersDie(t *testing.T) {
	if os.Getenv(orphanEnv) != "" {
		t.Skip("running as the child of TestOrphanedServersDie")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOrphanChild$", "-test.v")
	cmd.Env = append(os.Environ(), orphanEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()

	var pids []int
	var dirs []string
	ready := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "PID "):
			pid, _ := strconv.Atoi(strings.TrimPrefix(line, "PID "))
			pids = append(pids, pid)
		case strings.HasPrefix(line, "DIR "):
			dirs = append(dirs, strings.TrimPrefix(line, "DIR "))
		case line == "READY":
			ready = true
		}
		if ready {
			break
		}
	}
	// The child's leftovers are ours to clean up, whatever happens below.
	defer func() {
		for _, d := range dirs {
			removeStaleShm(filepath.Join(d, "data", "postmaster.pid"))
			os.RemoveAll(d)
		}
	}()
	if !ready {
		t.Fatalf("child did not start its servers (see its output above)")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	t0 := time.Now()
	if err := waitGone(pids, 20*time.Second); err != nil {
		t.Fatalf("servers outlived the killed test binary: %v", err)
	}
	t.Logf("all %d server processes gone %v after the test binary was SIGKILLed", len(pids), time.Since(t0).Round(time.Millisecond))
}

// TestHelperOrphanChild is the child half of TestOrphanedServersDie.
func TestHelperOrphanChild(t *testing.T) {
	if os.Getenv(orphanEnv) == "" {
		t.Skip("only runs as the child of TestOrphanedServersDie")
	}
	ctx := testContext(t)
	pg, err := StartPostgres(ctx, PostgresOptions{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("DIR", pg.Dir)
	// Start a backend too: backends leave the postmaster's process group.
	conn, err := pgx.Connect(ctx, pg.URL("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	r, err := StartRabbit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println("DIR", r.Dir)
	for _, p := range []*proc{pg.proc, r.beam, r.epmd} {
		for _, pid := range treePids(p) {
			fmt.Println("PID", pid)
		}
	}
	fmt.Println("READY")
	<-ctx.Done()
}
