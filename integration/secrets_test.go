//go:build linux

package integration

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/relay-dev/relay/integration/services"
)

// TestNoSecretInDebugOutput runs the relay at debug level through its
// working path and through each connection failure, where a careless error
// message would carry the URL, and checks that no password shows up in its
// output. The passwords are distinctive, so a match cannot be a coincidence.
func TestNoSecretInDebugOutput(t *testing.T) {
	t.Parallel()
	const (
		dbPw   = "dbPw-Zq81vXk"
		amqpPw = "amqpPw-Kp47mWd"
		saslPw = "saslPw-Rt93nBy"
	)
	secrets := []string{dbPw, amqpPw, saslPw}
	kafkaNode := startOwnKafka(t, services.KafkaOptions{SASL: services.KafkaSASL{Mechanism: "SCRAM-SHA-256", User: "relay", Password: saslPw}})
	closed, err := services.FreePort() // nothing listens there
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := "127.0.0.1:" + strconv.Itoa(closed)
	amqpHost := hostOf(t, amqpURL)
	e := newEnv(t)
	// The test servers trust loopback connections: any password logs in.
	dbURL := func(host string) string {
		u, err := url.Parse(e.dbURL)
		if err != nil {
			t.Fatal(err)
		}
		u.User, u.Host = url.UserPassword("relay", dbPw), host
		return u.String()
	}
	secretFile := func(name, content string) string {
		path := filepath.Join(t.TempDir(), name)
		if err := os.WriteFile(path, []byte(content+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	kafkaVars := func(brokers, password string) map[string]string {
		return map[string]string{
			"RELAY_SINK": "kafka", "RELAY_KAFKA_BROKERS": brokers, "RELAY_KAFKA_CREATE_TOPICS": "true",
			"RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "RELAY_KAFKA_SASL_USERNAME": "relay", "RELAY_KAFKA_SASL_PASSWORD": password,
			"RELAY_AMQP_URL": "",
		}
	}

	for _, tc := range []struct {
		name string
		vars map[string]string
		// until is what the log shows once the path under test has run.
		until string
		// publish: the relay works; it streams and publishes rows first.
		publish bool
	}{
		{
			name: "publishing to Kafka with SASL, secrets from files",
			vars: func() map[string]string {
				v := kafkaVars(kafkaNode.Brokers(), "")
				v["RELAY_DATABASE_URL"] = ""
				v["RELAY_DATABASE_URL_FILE"] = secretFile("db-url", dbURL(hostOf(t, e.dbURL)))
				v["RELAY_KAFKA_SASL_PASSWORD_FILE"] = secretFile("sasl-password", saslPw)
				return v
			}(),
			publish: true,
		},
		{
			name:  "PostgreSQL port closed",
			vars:  map[string]string{"RELAY_DATABASE_URL": dbURL(closedAddr), "RELAY_AMQP_URL": "amqp://guest:" + amqpPw + "@" + closedAddr + "/"},
			until: "connection refused",
		},
		{
			name:  "RabbitMQ refuses the password",
			vars:  map[string]string{"RELAY_DATABASE_URL": dbURL(hostOf(t, e.dbURL)), "RELAY_AMQP_URL": "amqp://guest:" + amqpPw + "@" + amqpHost + "/"},
			until: "cannot connect to RabbitMQ",
		},
		{
			name:  "RabbitMQ port closed",
			vars:  map[string]string{"RELAY_DATABASE_URL": dbURL(hostOf(t, e.dbURL)), "RELAY_AMQP_URL": "amqp://guest:" + amqpPw + "@" + closedAddr + "/"},
			until: "cannot connect to RabbitMQ",
		},
		{
			name:  "Kafka refuses the SASL password",
			vars:  kafkaVars(kafkaNode.Brokers(), saslPw+"-wrong"),
			until: "level=WARN",
		},
		{
			name:  "Kafka port closed",
			vars:  kafkaVars(closedAddr, saslPw),
			until: "cannot reach a Kafka broker",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			e.sink = ""
			e.extraVars = map[string]string{"RELAY_LOG_LEVEL": "debug"}
			for k, v := range tc.vars {
				e.extraVars[k] = v
			}
			var p *relayProc
			if tc.publish {
				e.useKafka(kafkaNode.Brokers(), "outbox.{aggregate_type}."+e.name)
				c := e.consumeKafka(kgo.SASL(scram.Auth{User: "relay", Pass: saslPw}.AsSha256Mechanism()))
				p = e.startRelay()
				ids := e.insertEvents(20, 5, 3)
				c.waitDistinct(len(ids), time.Minute)
			} else {
				p = startRelayWith(t, e.vars())
				eventually(t, time.Minute, func() error {
					if out := p.log.String(); !strings.Contains(out, tc.until) && !p.exited() {
						return fmt.Errorf("the log does not show %q yet", tc.until)
					}
					return nil
				})
			}
			// The shutdown path logs too.
			if !p.exited() {
				p.stop(30 * time.Second)
			}
			out := p.log.String()
			if !strings.Contains(out, tc.until) {
				t.Fatalf("the relay exited without taking the path under test (%q):\n%s", tc.until, out)
			}
			if !strings.Contains(out, "log_level=debug") {
				t.Errorf("the relay did not run at debug level:\n%s", out)
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Errorf("the output shows the secret %q:\n%s", s, out)
				}
			}
		})
	}
}

// hostOf is the host:port of a URL.
func hostOf(t *testing.T, rawURL string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}
