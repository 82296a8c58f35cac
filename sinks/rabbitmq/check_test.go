//go:build linux

package rabbitmq_test

import (
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

func TestCheckFindsAnExistingExchange(t *testing.T) {
	b := dialBroker(t)
	exchange := "relaytest.check." + suffix()
	if err := b.ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.ch.ExchangeDelete(exchange, false, false) })
	fs := rabbitmq.Check(testContext(t, 30*time.Second), rabbitmq.Config{URL: amqpURL, Exchange: exchange})
	want := []string{"ok rabbitmq: connected to", "ok exchange " + exchange + ": exists"}
	expectFindings(t, fs, want)
}

func TestCheckDeclaresNothing(t *testing.T) {
	exchange := "relaytest.check." + suffix()
	fs := rabbitmq.Check(testContext(t, 30*time.Second), rabbitmq.Config{URL: amqpURL, Exchange: exchange, DeadLetter: exchange + ".dlx"})
	expectFindings(t, fs, []string{"ok rabbitmq: connected to", "ok exchange " + exchange + ": does not exist; the relay will declare it",
		"ok dead-letter exchange " + exchange + ".dlx: does not exist; the relay will declare it"})
	b := dialBroker(t)
	err := b.ch.ExchangeDeclarePassive(exchange, amqp.ExchangeTopic, true, false, false, false, nil)
	if err == nil {
		b.ch.ExchangeDelete(exchange, false, false)
		t.Fatal("Check declared the exchange")
	}
}

func TestCheckReportsAnUnreachableBroker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	fs := rabbitmq.Check(testContext(t, 30*time.Second), rabbitmq.Config{URL: "amqp://guest:s3cret@" + addr + "/", Exchange: "outbox"})
	expectFindings(t, fs, []string{"FAIL rabbitmq: cannot connect to amqp://guest:xxxxx@" + addr + "/"})
	if fs[0].Fix == "" {
		t.Error("no fix given")
	}
}

func TestCheckReportsAWrongPasswordWithoutIt(t *testing.T) {
	u, err := url.Parse(amqpURL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "not-the-password")
	fs := rabbitmq.Check(testContext(t, 30*time.Second), rabbitmq.Config{URL: u.String(), Exchange: "outbox"})
	expectFindings(t, fs, []string{"FAIL rabbitmq: cannot connect to"})
	for _, f := range fs {
		if strings.Contains(f.Detail+f.Fix, "not-the-password") {
			t.Errorf("finding shows the password: %+v", f)
		}
	}
}

// expectFindings compares "status check: detail" prefixes.
func expectFindings(t *testing.T, fs []relay.Finding, want []string) {
	t.Helper()
	if len(fs) != len(want) {
		t.Fatalf("got %d findings %+v, want %d", len(fs), fs, len(want))
	}
	for i, f := range fs {
		got := f.Status.String() + " " + f.Check + ": " + f.Detail
		if !strings.HasPrefix(got, want[i]) {
			t.Errorf("finding %d is %q, want it to start with %q", i, got, want[i])
		}
	}
}
