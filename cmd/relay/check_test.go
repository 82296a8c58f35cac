package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
)

func TestCommandsRejectInvalidConfigurationWithExitTwo(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"check", "status"} {
		var stdout, stderr bytes.Buffer
		code := run([]string{cmd}, envWith("RELAY_SLOT", "Bad-Slot"), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), "RELAY_SLOT") || stdout.Len() != 0 {
			t.Errorf("relay %s with a bad RELAY_SLOT: exit %d, stdout %q, stderr %q; want 2 naming RELAY_SLOT", cmd, code, stdout.String(), stderr.String())
		}
	}
}

func TestPrintFindings(t *testing.T) {
	t.Parallel()
	fs := []relay.Finding{
		{Check: "wal_level", Status: relay.CheckOK, Detail: "logical", Fix: "never shown for ok"},
		{Check: "slot s", Status: relay.CheckWarn, Detail: "does not exist", Fix: "none"},
		{Check: "rabbitmq", Status: relay.CheckFail, Detail: "cannot connect to amqp://guest:hunter2@host/: refused", Fix: "check RELAY_AMQP_URL"},
	}
	var out bytes.Buffer
	printFindings(&out, fs, []string{"hunter2"})
	want := `ok    wal_level: logical
WARN  slot s: does not exist -- fix: none
FAIL  rabbitmq: cannot connect to amqp://guest:xxxxx@host/: refused -- fix: check RELAY_AMQP_URL
1 problem blocks the relay, 1 warning
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	out.Reset()
	printFindings(&out, fs[:2], nil)
	if !strings.HasSuffix(out.String(), "ready to run, 1 warning\n") {
		t.Errorf("got\n%s\nwant a ready summary", out.String())
	}
}

func TestSecretsCoverEveryPassword(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(envWith(
		"RELAY_DATABASE_URL", "postgres://u:pg%2Fpass@127.0.0.1:5432/db",
		"RELAY_AMQP_URL", "amqp://guest:amqp%40pass@127.0.0.1:5672/",
		"RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "u", "RELAY_KAFKA_SASL_PASSWORD", "sasl-pass",
	))
	if err != nil {
		t.Fatal(err)
	}
	text := "pg/pass pg%2Fpass amqp@pass amqp%40pass sasl-pass"
	if got := mask(text, cfg.secrets()); strings.Contains(got, "pass") {
		t.Errorf("mask left a password: %q", got)
	}
}

func TestPrintStatus(t *testing.T) {
	t.Parallel()
	lsn, _ := relay.ParseLSN("0/16B3748")
	st := pgops.SlotStatus{
		Slot: "outbox_relay", Exists: true, Type: "logical", Plugin: "pgoutput", WALStatus: "reserved",
		Active: true, ActivePID: 42, Confirmed: lsn, Lag: 3 << 20, Retained: 100,
		Leader: &pgops.LockHolder{PID: 41, ApplicationName: "relay", ClientAddr: "10.0.0.7", Since: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)},
	}
	var out bytes.Buffer
	printStatus(&out, st)
	want := `slot                 outbox_relay (logical, pgoutput)
active               yes, pid 42
confirmed_flush_lsn  0/16B3748
lag                  3145728 bytes (3.0 MiB)
retained_wal         100 bytes
wal_status           reserved
leader               pid 41 (relay, 10.0.0.7), connected since 2025-01-02T03:04:05Z
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	out.Reset()
	printStatus(&out, pgops.SlotStatus{Slot: "gone", Lag: -1, Retained: -1})
	want = `slot    gone (does not exist)
leader  none (no session holds the leader lock)
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
