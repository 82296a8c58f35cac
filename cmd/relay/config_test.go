package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
	"github.com/relay-dev/relay/sinks/kafka"
)

// minimalEnv is the smallest valid environment.
func minimalEnv() map[string]string {
	return map[string]string{
		"RELAY_DATABASE_URL": "postgres://u:p@127.0.0.1:5432/db",
		"RELAY_AMQP_URL":     "amqp://guest:secret@127.0.0.1:5672/",
	}
}

func envWith(kv ...string) map[string]string {
	e := minimalEnv()
	for i := 0; i+1 < len(kv); i += 2 {
		e[kv[i]] = kv[i+1]
	}
	return e
}

func TestLoadConfigDefaults(t *testing.T) {
	cfg, err := loadConfig(minimalEnv())
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	want := config{
		DatabaseURL:            "postgres://u:p@127.0.0.1:5432/db",
		Tables:                 []string{"public.outbox"},
		Slot:                   "outbox_relay",
		Publication:            "outbox_relay",
		Sink:                   "rabbitmq",
		AMQPURL:                "amqp://guest:secret@127.0.0.1:5672/",
		AMQPExchange:           "outbox",
		AMQPRoutingKey:         "{aggregate_type}.{event_type}",
		AMQPConfirmWindow:      2048,
		Stream:                 "outbox",
		KafkaTopic:             "outbox.event.{aggregate_type}",
		KafkaMaxTxnEvents:      4096,
		KafkaCheckpointTopic:   "relay.checkpoints",
		KafkaPartitions:        -1,
		KafkaReplicationFactor: -1,
		KafkaCompression:       "gzip",
		KafkaKeyFormat:         "raw",
		KafkaValueFormat:       "raw",
		Format:                 "raw",
		ColumnPreset:           "standard",
		MaxInFlight:            4096,
		MaxInFlightBytes:       64 << 20,
		StatusInterval:         10 * time.Second,
		ShutdownTimeout:        10 * time.Second,
		BlockedRetry:           30 * time.Second,
		HeartbeatInterval:      30 * time.Second,
		MessagePrefix:          "outbox",
		Snapshot:               "initial",
		PgoutputBinary:         true,
		LogLevel:               "info",
		LogFormat:              "json",
		HTTPAddr:               ":8080",
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("loadConfig(minimal) =\n%+v\nwant\n%+v", cfg, want)
	}

	// Every envDefault tag is what the field holds when its variable is
	// unset, and every field without one is empty.
	v := reflect.ValueOf(cfg)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() {
			if !v.Field(i).IsZero() {
				t.Errorf("%s is set without per-table variables", f.Name)
			}
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if _, set := minimalEnv()[name]; set {
			continue
		}
		def, hasDef := f.Tag.Lookup("envDefault")
		var got string
		switch x := v.Field(i).Interface().(type) {
		case []string:
			got = strings.Join(x, ",")
		case time.Duration:
			got = x.String()
		default:
			got = fmt.Sprint(x)
		}
		if !hasDef {
			if !v.Field(i).IsZero() {
				t.Errorf("%s has no default but is %q", name, got)
			}
			continue
		}
		if got != def {
			t.Errorf("%s = %q, want its envDefault %q", name, got, def)
		}
	}

	if got, want := cfg.tables(), []pgsource.Table{{Schema: "public", Name: "outbox"}}; !slices.Equal(got, want) {
		t.Errorf("tables() = %v, want %v", got, want)
	}
	if got := cfg.columns(); got != pgsource.StandardColumns {
		t.Errorf("columns() = %+v, want StandardColumns", got)
	}
	if l, err := parseLevel(cfg.LogLevel); err != nil || l.String() != "INFO" {
		t.Errorf("parseLevel(%q) = %v, %v", cfg.LogLevel, l, err)
	}
}

func TestLoadConfigValid(t *testing.T) {
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c config)
	}{
		{
			name: "several tables with spaces",
			env:  envWith("RELAY_TABLES", "outbox, sales.outbox ,Billing.Outbox"),
			check: func(t *testing.T, c config) {
				want := []pgsource.Table{{Schema: "public", Name: "outbox"}, {Schema: "sales", Name: "outbox"}, {Schema: "Billing", Name: "Outbox"}}
				if got := c.tables(); !slices.Equal(got, want) {
					t.Errorf("tables() = %v, want %v", got, want)
				}
			},
		},
		{
			name: "keyword/value database url",
			env:  envWith("RELAY_DATABASE_URL", "host=127.0.0.1 port=5432 user=u password=p dbname=db"),
		},
		{
			name: "amqps url",
			env:  envWith("RELAY_AMQP_URL", "amqps://u:p@rabbit.example:5671/vhost"),
		},
		{
			name: "durations and limits at their bounds",
			env: envWith("RELAY_STATUS_INTERVAL", "100ms", "RELAY_SHUTDOWN_TIMEOUT", "0s", "RELAY_MAX_IN_FLIGHT", "1",
				"RELAY_MAX_IN_FLIGHT_BYTES", "65536", "RELAY_AMQP_CONFIRM_WINDOW", "65535"),
			check: func(t *testing.T, c config) {
				if c.StatusInterval != 100*time.Millisecond || c.ShutdownTimeout != 0 || c.MaxInFlight != 1 ||
					c.MaxInFlightBytes != 65536 || c.AMQPConfirmWindow != 65535 {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name: "upper status interval bound",
			env:  envWith("RELAY_STATUS_INTERVAL", "50s"),
		},
		{
			name: "text logs at debug",
			env:  envWith("RELAY_LOG_FORMAT", "text", "RELAY_LOG_LEVEL", "debug"),
		},
		{
			name: "warn and error levels",
			env:  envWith("RELAY_LOG_LEVEL", "error"),
		},
		{
			name: "http on a host and port",
			env:  envWith("RELAY_HTTP_ADDR", "127.0.0.1:9090"),
		},
		{
			name: "empty http address disables the server",
			env:  envWith("RELAY_HTTP_ADDR", ""),
			check: func(t *testing.T, c config) {
				if c.HTTPAddr != "" {
					t.Errorf("HTTPAddr = %q, want empty (documented to disable the server)", c.HTTPAddr)
				}
			},
		},
		{
			name: "routing key from a column and literal text",
			env:  envWith("RELAY_AMQP_ROUTING_KEY", "outbox.{tenant}.{event_type}"),
		},
		{
			name: "cloudevents with a source",
			env:  envWith("RELAY_FORMAT", "cloudevents", "RELAY_CLOUDEVENTS_SOURCE", "/orders"),
			check: func(t *testing.T, c config) {
				if c.format() != relay.FormatCloudEvents || c.CloudEventsSource != "/orders" {
					t.Errorf("format %v, source %q", c.format(), c.CloudEventsSource)
				}
			},
		},
		{
			name: "structured cloudevents with a URN source",
			env:  envWith("RELAY_FORMAT", "cloudevents-structured", "RELAY_CLOUDEVENTS_SOURCE", "urn:acme:orders"),
			check: func(t *testing.T, c config) {
				if c.format() != relay.FormatCloudEventsStructured {
					t.Errorf("format %v", c.format())
				}
			},
		},
		{
			name: "kafka compression none",
			env:  envWith("RELAY_SINK", "kafka", "RELAY_KAFKA_BROKERS", "127.0.0.1:9092", "RELAY_KAFKA_COMPRESSION", "none"),
			check: func(t *testing.T, c config) {
				if c.KafkaCompression != "none" {
					t.Errorf("KafkaCompression = %q", c.KafkaCompression)
				}
			},
		},
		{
			name: "rabbitmq-stream",
			env:  envWith("RELAY_SINK", "rabbitmq-stream", "RELAY_RABBITMQ_STREAM_URL", "rabbitmq-stream+tls://u:p@h:5551/v", "RELAY_RABBITMQ_STREAM", "outbox.{aggregate_type}", "RELAY_RABBITMQ_STREAM_MAX_AGE", "168h", "RELAY_SLOT", "orders"),
			check: func(t *testing.T, c config) {
				if c.streamProducer() != "relay-orders" || c.StreamMaxAge != 168*time.Hour {
					t.Errorf("producer %q, max age %s", c.streamProducer(), c.StreamMaxAge)
				}
			},
		},
		{
			name: "kafka compression zstd",
			env:  envWith("RELAY_KAFKA_COMPRESSION", "zstd"),
		},
		{
			name: "kafka key and value as JsonConverter writes Debezium's",
			env:  envWith("RELAY_SINK", "kafka", "RELAY_KAFKA_BROKERS", "127.0.0.1:9092", "RELAY_KAFKA_KEY_FORMAT", "json-string", "RELAY_KAFKA_VALUE_FORMAT", "json-string"),
			check: func(t *testing.T, c config) {
				if c.KafkaKeyFormat != kafka.EncodingJSONString || c.KafkaValueFormat != kafka.EncodingJSONString {
					t.Errorf("key format %q, value format %q", c.KafkaKeyFormat, c.KafkaValueFormat)
				}
			},
		},
		{
			// The key is no part of the CloudEvent.
			name: "kafka json-string key with cloudevents",
			env:  envWith("RELAY_KAFKA_KEY_FORMAT", "json-string", "RELAY_FORMAT", "cloudevents-structured", "RELAY_CLOUDEVENTS_SOURCE", "/orders"),
		},
		{
			name: "slot at 63 characters",
			env:  envWith("RELAY_SLOT", "_"+strings.Repeat("a", 62), "RELAY_PUBLICATION", "pub_2"),
		},
		{
			name: "cleanup after publish",
			env:  envWith("RELAY_CLEANUP", "after-publish"),
		},
		{
			name: "retain a week",
			env:  envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "168h"),
			check: func(t *testing.T, c config) {
				if c.Cleanup != "retain" || c.Retention != 168*time.Hour {
					t.Errorf("cleanup %q, retention %s", c.Cleanup, c.Retention)
				}
			},
		},
		{
			// The retention counts from the created_at column, which
			// the debezium preset does not name: naming one is enough.
			name: "retain with a debezium table and its timestamp column",
			env:  envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "1h", "RELAY_COLUMN_PRESET", "debezium", "RELAY_COLUMN_CREATED_AT", "ts"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(tt.env)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func TestLoadConfigInvalid(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string // variable names the error must name
	}{
		{name: "no environment", env: map[string]string{}, want: []string{"RELAY_DATABASE_URL", "RELAY_AMQP_URL"}},
		{name: "empty database url", env: envWith("RELAY_DATABASE_URL", ""), want: []string{"RELAY_DATABASE_URL"}},
		{name: "bad database url", env: envWith("RELAY_DATABASE_URL", "postgres://u:p@host:notaport/db"), want: []string{"RELAY_DATABASE_URL"}},
		{name: "http url for amqp", env: envWith("RELAY_AMQP_URL", "http://guest:secret@127.0.0.1:5672/"), want: []string{"RELAY_AMQP_URL"}},
		{name: "empty amqp url", env: envWith("RELAY_AMQP_URL", ""), want: []string{"RELAY_AMQP_URL"}},
		{name: "bad table", env: envWith("RELAY_TABLES", "a.b.c"), want: []string{"RELAY_TABLES"}},
		{name: "table listed twice", env: envWith("RELAY_TABLES", "outbox,public.outbox"), want: []string{"RELAY_TABLES"}},
		{name: "empty table in list", env: envWith("RELAY_TABLES", "outbox,,x"), want: []string{"RELAY_TABLES"}},
		{name: "slot upper case", env: envWith("RELAY_SLOT", "Bad-Name"), want: []string{"RELAY_SLOT"}},
		{name: "slot too long", env: envWith("RELAY_SLOT", strings.Repeat("a", 64)), want: []string{"RELAY_SLOT"}},
		{name: "slot starts with a digit", env: envWith("RELAY_SLOT", "1slot"), want: []string{"RELAY_SLOT"}},
		{name: "publication with a quote", env: envWith("RELAY_PUBLICATION", "pub'; drop"), want: []string{"RELAY_PUBLICATION"}},
		{name: "unknown sink", env: envWith("RELAY_SINK", "pulsar"), want: []string{"RELAY_SINK"}},
		{name: "kafka without brokers", env: envWith("RELAY_SINK", "kafka"), want: []string{"RELAY_KAFKA_BROKERS"}},
		{name: "rabbitmq-stream without URL", env: envWith("RELAY_SINK", "rabbitmq-stream"), want: []string{"RELAY_RABBITMQ_STREAM_URL"}},
		{name: "rabbitmq-stream URL of another scheme", env: envWith("RELAY_SINK", "rabbitmq-stream", "RELAY_RABBITMQ_STREAM_URL", "amqp://h:5672/"), want: []string{"RELAY_RABBITMQ_STREAM_URL"}},
		{name: "rabbitmq-stream bad template and retention", env: envWith("RELAY_RABBITMQ_STREAM", "{", "RELAY_RABBITMQ_STREAM_MAX_AGE", "-1s", "RELAY_RABBITMQ_STREAM_MAX_LENGTH_BYTES", "-5"), want: []string{"RELAY_RABBITMQ_STREAM", "RELAY_RABBITMQ_STREAM_MAX_AGE", "RELAY_RABBITMQ_STREAM_MAX_LENGTH_BYTES"}},
		{name: "kafka broker without port", env: envWith("RELAY_KAFKA_BROKERS", "localhost"), want: []string{"RELAY_KAFKA_BROKERS"}},
		{name: "kafka topic unclosed brace", env: envWith("RELAY_KAFKA_TOPIC", "outbox.{aggregate_type"), want: []string{"RELAY_KAFKA_TOPIC"}},
		{name: "kafka checkpoint topic", env: envWith("RELAY_KAFKA_CHECKPOINT_TOPIC", "bad topic"), want: []string{"RELAY_KAFKA_CHECKPOINT_TOPIC"}},
		{name: "kafka partitions zero", env: envWith("RELAY_KAFKA_PARTITIONS", "0"), want: []string{"RELAY_KAFKA_PARTITIONS"}},
		{name: "kafka replication factor", env: envWith("RELAY_KAFKA_REPLICATION_FACTOR", "-2"), want: []string{"RELAY_KAFKA_REPLICATION_FACTOR"}},
		{name: "kafka compression unknown", env: envWith("RELAY_KAFKA_COMPRESSION", "brotli"), want: []string{"RELAY_KAFKA_COMPRESSION"}},
		{name: "kafka compression upper case", env: envWith("RELAY_KAFKA_COMPRESSION", "GZIP"), want: []string{"RELAY_KAFKA_COMPRESSION"}},
		{name: "kafka compression snappy typo", env: envWith("RELAY_KAFKA_COMPRESSION", "snapy"), want: []string{"RELAY_KAFKA_COMPRESSION"}},
		{name: "kafka key format unknown", env: envWith("RELAY_KAFKA_KEY_FORMAT", "json"), want: []string{"RELAY_KAFKA_KEY_FORMAT"}},
		{name: "kafka key format string", env: envWith("RELAY_KAFKA_KEY_FORMAT", "string"), want: []string{"RELAY_KAFKA_KEY_FORMAT"}},
		{name: "kafka value format unknown", env: envWith("RELAY_KAFKA_VALUE_FORMAT", "JSON-STRING"), want: []string{"RELAY_KAFKA_VALUE_FORMAT"}},
		{name: "kafka json-string value with cloudevents", env: envWith("RELAY_KAFKA_VALUE_FORMAT", "json-string", "RELAY_FORMAT", "cloudevents", "RELAY_CLOUDEVENTS_SOURCE", "/orders"), want: []string{"RELAY_KAFKA_VALUE_FORMAT"}},
		{name: "kafka json-string value with structured cloudevents", env: envWith("RELAY_KAFKA_VALUE_FORMAT", "json-string", "RELAY_FORMAT", "cloudevents-structured", "RELAY_CLOUDEVENTS_SOURCE", "/orders"), want: []string{"RELAY_KAFKA_VALUE_FORMAT"}},
		{name: "kafka CA file missing", env: envWith("RELAY_KAFKA_TLS_CA_FILE", "/nonexistent/ca.pem"), want: []string{"RELAY_KAFKA_TLS_CA_FILE"}},
		{name: "kafka key without cert", env: envWith("RELAY_KAFKA_TLS_KEY_FILE", "/etc/hostname"), want: []string{"RELAY_KAFKA_TLS_CERT_FILE"}},
		{name: "kafka SASL mechanism", env: envWith("RELAY_KAFKA_SASL_MECHANISM", "GSSAPI", "RELAY_KAFKA_SASL_USERNAME", "u", "RELAY_KAFKA_SASL_PASSWORD", "p"), want: []string{"RELAY_KAFKA_SASL_MECHANISM"}},
		{name: "kafka SASL without password", env: envWith("RELAY_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", "RELAY_KAFKA_SASL_USERNAME", "u"), want: []string{"RELAY_KAFKA_SASL_PASSWORD"}},
		{name: "kafka password without mechanism", env: envWith("RELAY_KAFKA_SASL_PASSWORD", "p"), want: []string{"RELAY_KAFKA_SASL_MECHANISM"}},
		{name: "routing key unclosed brace", env: envWith("RELAY_AMQP_ROUTING_KEY", "{aggregate_type"), want: []string{"RELAY_AMQP_ROUTING_KEY"}},
		{name: "routing key empty placeholder", env: envWith("RELAY_AMQP_ROUTING_KEY", "a.{}"), want: []string{"RELAY_AMQP_ROUTING_KEY"}},
		{name: "confirm window zero", env: envWith("RELAY_AMQP_CONFIRM_WINDOW", "0"), want: []string{"RELAY_AMQP_CONFIRM_WINDOW"}},
		{name: "confirm window too big", env: envWith("RELAY_AMQP_CONFIRM_WINDOW", "65536"), want: []string{"RELAY_AMQP_CONFIRM_WINDOW"}},
		{name: "unknown format", env: envWith("RELAY_FORMAT", "avro"), want: []string{"RELAY_FORMAT"}},
		{name: "cloudevents without a source", env: envWith("RELAY_FORMAT", "cloudevents"), want: []string{"RELAY_CLOUDEVENTS_SOURCE"}},
		{name: "structured cloudevents without a source", env: envWith("RELAY_FORMAT", "cloudevents-structured"), want: []string{"RELAY_CLOUDEVENTS_SOURCE"}},
		{name: "cloudevents source not a URI", env: envWith("RELAY_FORMAT", "cloudevents", "RELAY_CLOUDEVENTS_SOURCE", "/orders%zz"), want: []string{"RELAY_CLOUDEVENTS_SOURCE"}},
		{name: "unknown column preset", env: envWith("RELAY_COLUMN_PRESET", "kafka-connect"), want: []string{"RELAY_COLUMN_PRESET"}},
		{name: "max in flight zero", env: envWith("RELAY_MAX_IN_FLIGHT", "0"), want: []string{"RELAY_MAX_IN_FLIGHT"}},
		{name: "max in flight negative", env: envWith("RELAY_MAX_IN_FLIGHT", "-5"), want: []string{"RELAY_MAX_IN_FLIGHT"}},
		{name: "max in flight bytes small", env: envWith("RELAY_MAX_IN_FLIGHT_BYTES", "65535"), want: []string{"RELAY_MAX_IN_FLIGHT_BYTES"}},
		{name: "max in flight bytes not a number", env: envWith("RELAY_MAX_IN_FLIGHT_BYTES", "64MB"), want: []string{"RELAY_MAX_IN_FLIGHT_BYTES"}},
		{name: "status interval too short", env: envWith("RELAY_STATUS_INTERVAL", "99ms"), want: []string{"RELAY_STATUS_INTERVAL"}},
		{name: "status interval too long", env: envWith("RELAY_STATUS_INTERVAL", "51s"), want: []string{"RELAY_STATUS_INTERVAL"}},
		{name: "shutdown timeout negative", env: envWith("RELAY_SHUTDOWN_TIMEOUT", "-1s"), want: []string{"RELAY_SHUTDOWN_TIMEOUT"}},
		{name: "shutdown timeout without unit", env: envWith("RELAY_SHUTDOWN_TIMEOUT", "10"), want: []string{"RELAY_SHUTDOWN_TIMEOUT"}},
		{name: "log format", env: envWith("RELAY_LOG_FORMAT", "logfmt"), want: []string{"RELAY_LOG_FORMAT"}},
		{name: "log level", env: envWith("RELAY_LOG_LEVEL", "verbose"), want: []string{"RELAY_LOG_LEVEL"}},
		{name: "http address without port", env: envWith("RELAY_HTTP_ADDR", "localhost"), want: []string{"RELAY_HTTP_ADDR"}},
		{name: "unknown cleanup", env: envWith("RELAY_CLEANUP", "sometimes"), want: []string{"RELAY_CLEANUP"}},
		{name: "retention without retain", env: envWith("RELAY_RETENTION", "168h"), want: []string{"RELAY_RETENTION"}},
		{name: "retention with after-publish", env: envWith("RELAY_CLEANUP", "after-publish", "RELAY_RETENTION", "1h"), want: []string{"RELAY_RETENTION"}},
		{name: "retain without a retention", env: envWith("RELAY_CLEANUP", "retain"), want: []string{"RELAY_RETENTION"}},
		{name: "retention zero", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "0s"), want: []string{"RELAY_RETENTION"}},
		{name: "retention negative", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "-1h"), want: []string{"RELAY_RETENTION"}},
		{name: "retention without unit", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "168"), want: []string{"RELAY_RETENTION"}},
		{name: "retention in days", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "7d"), want: []string{"RELAY_RETENTION"}},
		{name: "retain without a timestamp column", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "1h", "RELAY_COLUMN_PRESET", "debezium"), want: []string{"RELAY_COLUMN_CREATED_AT"}},
		{name: "retain with a table without a timestamp column", env: envWith("RELAY_CLEANUP", "retain", "RELAY_RETENTION", "1h", "RELAY_TABLES", "public.outbox,billing.outbox",
			"RELAY_TABLE_BILLING_OUTBOX_COLUMN_PRESET", "debezium"), want: []string{"RELAY_TABLE_BILLING_OUTBOX_COLUMN_CREATED_AT"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(tt.env)
			if err == nil {
				t.Fatal("loadConfig succeeded, want an error")
			}
			var ce configError
			if !errors.As(err, &ce) {
				t.Errorf("error %T is not a configError", err)
			}
			for _, name := range tt.want {
				if !strings.Contains(err.Error(), name+":") {
					t.Errorf("error does not name %s:\n%v", name, err)
				}
			}
			// Only the variables at fault are named.
			for _, line := range ce {
				key, _, _ := strings.Cut(line, ":")
				if !slices.Contains(tt.want, key) {
					t.Errorf("unexpected problem %q", line)
				}
			}
		})
	}
}

// TestKafkaValueFormatAgainstFormatNamesBoth: the refusal of a json-string
// value with a CloudEvents format names both variables, either of which
// the operator may mean to change.
func TestKafkaValueFormatAgainstFormatNamesBoth(t *testing.T) {
	_, err := loadConfig(envWith("RELAY_KAFKA_VALUE_FORMAT", "json-string", "RELAY_FORMAT", "cloudevents", "RELAY_CLOUDEVENTS_SOURCE", "/orders"))
	var ce configError
	if !errors.As(err, &ce) || len(ce) != 1 {
		t.Fatalf("loadConfig: %v; want one problem", err)
	}
	if !strings.HasPrefix(ce[0], "RELAY_KAFKA_VALUE_FORMAT: ") || !strings.Contains(ce[0], "RELAY_FORMAT=cloudevents") {
		t.Errorf("problem %q does not name RELAY_KAFKA_VALUE_FORMAT and RELAY_FORMAT=cloudevents", ce[0])
	}
}

// badEnv has many bad variables at once; each must be reported.
func badEnv() (map[string]string, []string) {
	env := map[string]string{
		"RELAY_SINK":              "nats",
		"RELAY_MAX_IN_FLIGHT":     "abc",
		"RELAY_STATUS_INTERVAL":   "5",
		"RELAY_LOG_LEVEL":         "loud",
		"RELAY_SLOT":              "Bad-Name",
		"RELAY_AMQP_ROUTING_KEY":  "{aggregate_type}.{event_type",
		"RELAY_HTTP_ADDR":         "nonsense",
		"RELAY_AMQP_URL":          "amqp://guest:s3cr3tpw@127.0.0.1:1/",
		"RELAY_KAFKA_COMPRESSION": "brotli",
	}
	return env, []string{
		"RELAY_DATABASE_URL", "RELAY_SINK", "RELAY_MAX_IN_FLIGHT", "RELAY_STATUS_INTERVAL",
		"RELAY_LOG_LEVEL", "RELAY_SLOT", "RELAY_AMQP_ROUTING_KEY", "RELAY_HTTP_ADDR",
		"RELAY_KAFKA_COMPRESSION",
	}
}

func TestLoadConfigReportsEveryProblem(t *testing.T) {
	env, names := badEnv()
	_, err := loadConfig(env)
	if err == nil {
		t.Fatal("loadConfig succeeded, want an error")
	}
	var ce configError
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not a configError", err)
	}
	for _, name := range names {
		if !strings.Contains(err.Error(), name+":") {
			t.Errorf("error does not name %s", name)
		}
	}
	for _, line := range ce {
		key, msg, ok := strings.Cut(line, ": ")
		if !ok || !slices.Contains(names, key) || strings.TrimSpace(msg) == "" {
			t.Errorf("problem %q is not \"VARIABLE: reason\" for a bad variable", line)
		}
		if strings.Contains(line, "<nil>") {
			t.Errorf("problem %q has no reason", line)
		}
		if strings.Contains(line, "s3cr3tpw") {
			t.Errorf("problem %q shows a password", line)
		}
	}
	if !strings.Contains(err.Error(), "unclosed") {
		t.Errorf("routing key problem does not say the brace is unclosed:\n%v", err)
	}
	if got := strings.Count(err.Error(), "\n") + 1; got != len(ce) {
		t.Errorf("error has %d lines for %d problems", got, len(ce))
	}
	// A value that does not parse is reported once, with what was given,
	// not again as the zero value it leaves behind.
	for _, name := range []string{"RELAY_MAX_IN_FLIGHT", "RELAY_STATUS_INTERVAL"} {
		n := 0
		for _, line := range ce {
			if strings.HasPrefix(line, name+":") {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%s reported %d times:\n%v", name, n, err)
		}
	}
	t.Logf("reported:\n%v", err)
}

func TestConfigColumns(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want pgsource.Columns
	}{
		{name: "standard by default", env: minimalEnv(), want: pgsource.StandardColumns},
		{name: "standard preset", env: envWith("RELAY_COLUMN_PRESET", "standard"), want: pgsource.StandardColumns},
		{name: "debezium preset", env: envWith("RELAY_COLUMN_PRESET", "debezium"), want: pgsource.DebeziumColumns},
		{
			name: "standard with overrides",
			env:  envWith("RELAY_COLUMN_ID", "event_id", "RELAY_COLUMN_PAYLOAD", "body", "RELAY_COLUMN_CREATED_AT", "ts"),
			want: pgsource.Columns{
				ID: "event_id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type",
				Payload: "body", Headers: "headers", CreatedAt: "ts", Destination: "destination",
			},
		},
		{
			name: "debezium with optional columns added",
			env:  envWith("RELAY_COLUMN_PRESET", "debezium", "RELAY_COLUMN_HEADERS", "meta", "RELAY_COLUMN_CREATED_AT", "timestamp"),
			want: pgsource.Columns{
				ID: "id", AggregateType: "aggregatetype", AggregateID: "aggregateid", EventType: "type",
				Payload: "payload", Headers: "meta", CreatedAt: "timestamp",
			},
		},
		{
			name: "every column overridden",
			env: envWith("RELAY_COLUMN_PRESET", "debezium", "RELAY_COLUMN_ID", "a", "RELAY_COLUMN_AGGREGATE_TYPE", "b",
				"RELAY_COLUMN_AGGREGATE_ID", "c", "RELAY_COLUMN_EVENT_TYPE", "d", "RELAY_COLUMN_PAYLOAD", "e",
				"RELAY_COLUMN_HEADERS", "f", "RELAY_COLUMN_CREATED_AT", "g"),
			want: pgsource.Columns{ID: "a", AggregateType: "b", AggregateID: "c", EventType: "d", Payload: "e", Headers: "f", CreatedAt: "g"},
		},
		{
			name: "unicode column names kept",
			env:  envWith("RELAY_COLUMN_EVENT_TYPE", "тип_события"),
			want: pgsource.Columns{
				ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "тип_события",
				Payload: "payload", Headers: "headers", CreatedAt: "created_at", Destination: "destination",
			},
		},
		{
			name: "destination column renamed",
			env:  envWith("RELAY_COLUMN_DESTINATION", "send_to"),
			want: func() pgsource.Columns { c := pgsource.StandardColumns; c.Destination = "send_to"; return c }(),
		},
		{
			name: "destination column added to debezium",
			env:  envWith("RELAY_COLUMN_PRESET", "debezium", "RELAY_COLUMN_DESTINATION", "destination"),
			want: func() pgsource.Columns { c := pgsource.DebeziumColumns; c.Destination = "destination"; return c }(),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(tt.env)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if got := c.columns(); got != tt.want {
				t.Errorf("columns() = %+v, want %+v", got, tt.want)
			}
		})
	}
	// The presets themselves are not modified by overrides.
	if pgsource.StandardColumns.ID != "id" || pgsource.DebeziumColumns.Headers != "" {
		t.Error("columns() modified a preset")
	}
}

func TestLogAttrsRedactsPasswords(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		passwords []string
		want      []string // key=value pairs the attributes hold
	}{
		{
			name:      "urls",
			env:       envWith("RELAY_DATABASE_URL", "postgres://app:s3cr3tpw@127.0.0.1:5432/db", "RELAY_AMQP_URL", "amqp://guest:amqpPw9x@127.0.0.1:5672/"),
			passwords: []string{"s3cr3tpw", "amqpPw9x"},
			want:      []string{"database_url=postgres://app:xxxxx@127.0.0.1:5432/db", "amqp_url=amqp://guest:xxxxx@127.0.0.1:5672/"},
		},
		{
			name:      "keyword/value database url",
			env:       envWith("RELAY_DATABASE_URL", "host=127.0.0.1 user=app password=kvS3cretPw dbname=db"),
			passwords: []string{"kvS3cretPw"},
			want:      []string{"database_url=host=127.0.0.1 user=app password=xxxxx dbname=db"},
		},
		{
			name:      "quoted keyword/value password",
			env:       envWith("RELAY_DATABASE_URL", "host=127.0.0.1 password='quoted s3cr3t' dbname=db"),
			passwords: []string{"quoted", "s3cr3t"},
		},
		{
			name:      "kafka SASL password",
			env:       envWith("RELAY_SINK", "kafka", "RELAY_KAFKA_BROKERS", "127.0.0.1:9092", "RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "app", "RELAY_KAFKA_SASL_PASSWORD", "kfkS3cretPw"),
			passwords: []string{"kfkS3cretPw"},
			want:      []string{"kafka_sasl_password=xxxxx", "kafka_sasl_username=app"},
		},
		{
			name:      "password in the url query",
			env:       envWith("RELAY_DATABASE_URL", "postgres://127.0.0.1:5432/db?user=app&password=qryS3cret"),
			passwords: []string{"qryS3cret"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(tt.env)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			attrs := c.logAttrs()
			if len(attrs)%2 != 0 {
				t.Fatalf("logAttrs has %d elements, want key/value pairs", len(attrs))
			}
			var pairs []string
			for i := 0; i < len(attrs); i += 2 {
				key, ok := attrs[i].(string)
				if !ok || key == "" || key != strings.ToLower(key) || strings.HasPrefix(key, "relay_") {
					t.Errorf("attribute key %v is not a lower-case name without RELAY_", attrs[i])
				}
				pairs = append(pairs, fmt.Sprintf("%s=%v", attrs[i], attrs[i+1]))
			}
			all := strings.Join(pairs, " ")
			for _, pw := range tt.passwords {
				if strings.Contains(all, pw) {
					t.Errorf("logAttrs shows password %q: %s", pw, all)
				}
			}
			for _, w := range tt.want {
				if !slices.Contains(pairs, w) {
					t.Errorf("logAttrs lacks %q: %s", w, all)
				}
			}
			for _, w := range []string{"slot=outbox_relay", "tables=[public.outbox]", "max_in_flight=4096", "status_interval=10s"} {
				if !slices.Contains(pairs, w) {
					t.Errorf("logAttrs lacks %q: %s", w, all)
				}
			}
			// Unset optional settings are left out.
			for _, p := range pairs {
				if strings.HasPrefix(p, "column_id=") {
					t.Errorf("logAttrs has an unset setting: %s", p)
				}
			}
		})
	}
}

func TestVariables(t *testing.T) {
	vars := variables()
	byName := map[string]variable{}
	for _, v := range vars {
		if _, dup := byName[v.Name]; dup {
			t.Errorf("variable %s listed twice", v.Name)
		}
		byName[v.Name] = v
		if !strings.HasPrefix(v.Name, "RELAY_") {
			t.Errorf("variable %q lacks the RELAY_ prefix", v.Name)
		}
		if strings.TrimSpace(v.Help) == "" {
			t.Errorf("variable %s has no help", v.Name)
		}
	}
	typ := reflect.TypeFor[config]()
	n := 0
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag, ok := f.Tag.Lookup("env")
		if !ok {
			continue
		}
		n++
		name, _, _ := strings.Cut(tag, ",")
		v, ok := byName[name]
		if !ok {
			t.Errorf("field %s (%s) is not in variables()", f.Name, name)
			continue
		}
		if v.Default != f.Tag.Get("envDefault") {
			t.Errorf("%s default = %q, want %q", name, v.Default, f.Tag.Get("envDefault"))
		}
		if v.Help != f.Tag.Get("help") {
			t.Errorf("%s help = %q, want the help tag", name, v.Help)
		}
		if v.Required != (name == "RELAY_DATABASE_URL") {
			t.Errorf("%s Required = %v", name, v.Required)
		}
	}
	if n != len(vars) {
		t.Errorf("variables() has %d entries for %d env fields", len(vars), n)
	}
	// Declaration order.
	if vars[0].Name != "RELAY_DATABASE_URL" || vars[len(vars)-1].Name != "RELAY_HTTP_ADDR" {
		t.Errorf("variables() not in declaration order: first %s, last %s", vars[0].Name, vars[len(vars)-1].Name)
	}
}

func TestPrintHelp(t *testing.T) {
	var b bytes.Buffer
	printHelp(&b)
	out := b.String()
	for _, v := range variables() {
		line := lineWith(out, "  "+v.Name+" ")
		if line == "" {
			t.Errorf("help has no line for %s", v.Name)
			continue
		}
		def := v.Default
		if def == "" {
			def = "-"
		}
		if !strings.Contains(line, " "+def+" ") {
			t.Errorf("help line for %s lacks its default %q: %q", v.Name, def, line)
		}
		if !strings.HasSuffix(line, v.Help) {
			t.Errorf("help line for %s lacks its help: %q", v.Name, line)
		}
	}
	for _, s := range []string{"Usage:", "--help", "version", "Exit codes"} {
		if !strings.Contains(out, s) {
			t.Errorf("help lacks %q", s)
		}
	}
}

func lineWith(text, s string) string {
	for line := range strings.Lines(text) {
		if strings.Contains(line, s) {
			return strings.TrimRight(line, "\n")
		}
	}
	return ""
}

func TestRunArguments(t *testing.T) {
	env, _ := badEnv()
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{name: "--help", args: []string{"--help"}, wantCode: 0, wantStdout: []string{"Usage:", "RELAY_DATABASE_URL", "RELAY_HTTP_ADDR"}},
		{name: "-h", args: []string{"-h"}, wantCode: 0, wantStdout: []string{"Usage:"}},
		{name: "help", args: []string{"help"}, wantCode: 0, wantStdout: []string{"Usage:"}},
		{name: "version", args: []string{"version"}, wantCode: 0, wantStdout: []string{"relay " + version}},
		{name: "--version", args: []string{"--version"}, wantCode: 0, wantStdout: []string{"relay " + version}},
		{name: "unknown argument", args: []string{"--frobnicate"}, wantCode: 2, wantStderr: []string{`"--frobnicate"`, "relay --help"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			// The environment is bad: arguments are handled before it is read.
			code := run(tt.args, env, &out, &errOut)
			if code != tt.wantCode {
				t.Errorf("run(%q) = %d, want %d; stderr:\n%s", tt.args, code, tt.wantCode, errOut.String())
			}
			for _, s := range tt.wantStdout {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, out.String())
				}
			}
			for _, s := range tt.wantStderr {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut.String())
				}
			}
			if tt.wantCode == 0 && errOut.Len() > 0 {
				t.Errorf("stderr not empty: %s", errOut.String())
			}
		})
	}
	var out bytes.Buffer
	run([]string{"--help"}, nil, &out, &bytes.Buffer{})
	for _, v := range variables() {
		if !strings.Contains(out.String(), v.Name) {
			t.Errorf("--help lacks %s", v.Name)
		}
	}
}

// runQuickly runs run in a goroutine and fails the test when it does not
// return within a few seconds: a bad configuration must be refused before
// connecting anywhere.
func runQuickly(t *testing.T, args []string, env map[string]string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	start := time.Now()
	go func() { done <- run(args, env, &out, &errOut) }()
	select {
	case code = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return within 5s: it seems to connect despite a bad configuration")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("run took %v", d)
	}
	return code, out.String(), errOut.String()
}

func TestRunBadConfig(t *testing.T) {
	env, names := badEnv()
	code, stdout, stderr := runQuickly(t, nil, env)
	if code != 2 {
		t.Errorf("run = %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, name := range names {
		if !strings.Contains(stderr, name) {
			t.Errorf("stderr does not name %s:\n%s", name, stderr)
		}
	}
	if !strings.Contains(stderr, "relay --help") {
		t.Errorf("stderr does not point at --help:\n%s", stderr)
	}
	if stdout != "" {
		t.Errorf("stdout = %q, want nothing", stdout)
	}
}

func TestRunBadConfigWithUnreachableDatabase(t *testing.T) {
	env, names := badEnv()
	env["RELAY_DATABASE_URL"] = "postgres://u:dbS3cretPw@127.0.0.1:1/db"
	names = slices.DeleteFunc(names, func(n string) bool { return n == "RELAY_DATABASE_URL" })
	code, _, stderr := runQuickly(t, nil, env)
	if code != 2 {
		t.Errorf("run = %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, name := range names {
		if !strings.Contains(stderr, name) {
			t.Errorf("stderr does not name %s:\n%s", name, stderr)
		}
	}
	for _, pw := range []string{"dbS3cretPw", "s3cr3tpw"} {
		if strings.Contains(stderr, pw) {
			t.Errorf("stderr shows password %q:\n%s", pw, stderr)
		}
	}
}

// URLs that do not parse are refused without echoing their password.
func TestRunBadURLsDoNotShowPasswords(t *testing.T) {
	for _, tc := range []struct{ db, amqp, pw string }{
		{db: "postgres://u:pw#S3cret1@127.0.0.1:1/db", amqp: "amqp://guest:guest@127.0.0.1:1/", pw: "S3cret1"},
		{db: "postgres://u:S3cret2@127.0.0.1:notaport/db", amqp: "amqp://guest:guest@127.0.0.1:1/", pw: "S3cret2"},
		{db: "postgres://u:p@127.0.0.1:1/db", amqp: "amqp://guest:S3cret3 x@127.0.0.1:1/", pw: "S3cret3"},
		{db: "postgres://u:p@127.0.0.1:1/db", amqp: "http://guest:S3cret4@127.0.0.1:1/", pw: "S3cret4"},
	} {
		env := map[string]string{"RELAY_DATABASE_URL": tc.db, "RELAY_AMQP_URL": tc.amqp, "RELAY_SLOT": "Bad"}
		code, _, stderr := runQuickly(t, nil, env)
		if code != 2 {
			t.Errorf("run = %d, want 2; stderr:\n%s", code, stderr)
		}
		if strings.Contains(stderr, tc.pw) {
			t.Errorf("stderr shows password %q:\n%s", tc.pw, stderr)
		}
	}
}

// writeSecret writes content to a file of the test's and returns its path.
func writeSecret(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSecretFiles(t *testing.T) {
	kafkaSASL := func(kv ...string) map[string]string {
		e := envWith("RELAY_SINK", "kafka", "RELAY_KAFKA_BROKERS", "127.0.0.1:9092",
			"RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "app")
		delete(e, "RELAY_AMQP_URL")
		for i := 0; i+1 < len(kv); i += 2 {
			e[kv[i]] = kv[i+1]
		}
		return e
	}
	tests := []struct {
		name string
		env  func(t *testing.T) map[string]string
		want config // only the three secrets are compared
	}{
		{
			name: "database url from a file, trailing newline ignored",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_DATABASE_URL_FILE", writeSecret(t, "postgres://app:fileDbPw@db:5432/app\n"))
				delete(e, "RELAY_DATABASE_URL")
				return e
			},
			want: config{DatabaseURL: "postgres://app:fileDbPw@db:5432/app", AMQPURL: "amqp://guest:secret@127.0.0.1:5672/"},
		},
		{
			name: "amqp url from a file with CRLF",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_AMQP_URL_FILE", writeSecret(t, "amqps://app:fileAmqpPw@mq:5671/?cacertfile=/ca.pem\r\n"))
				delete(e, "RELAY_AMQP_URL")
				return e
			},
			want: config{DatabaseURL: "postgres://u:p@127.0.0.1:5432/db", AMQPURL: "amqps://app:fileAmqpPw@mq:5671/?cacertfile=/ca.pem"},
		},
		{
			name: "only the trailing newline goes",
			env: func(t *testing.T) map[string]string {
				return kafkaSASL("RELAY_KAFKA_SASL_PASSWORD_FILE", writeSecret(t, " pass word \n"))
			},
			want: config{DatabaseURL: "postgres://u:p@127.0.0.1:5432/db", KafkaSASLPassword: " pass word "},
		},
		{
			name: "empty variable beside its file counts as unset",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_DATABASE_URL", "", "RELAY_DATABASE_URL_FILE", writeSecret(t, "postgres://db/app"))
			},
			want: config{DatabaseURL: "postgres://db/app", AMQPURL: "amqp://guest:secret@127.0.0.1:5672/"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(tt.env(t))
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if c.DatabaseURL != tt.want.DatabaseURL || c.AMQPURL != tt.want.AMQPURL || c.KafkaSASLPassword != tt.want.KafkaSASLPassword {
				t.Errorf("secrets = %q, %q, %q; want %q, %q, %q", c.DatabaseURL, c.AMQPURL, c.KafkaSASLPassword,
					tt.want.DatabaseURL, tt.want.AMQPURL, tt.want.KafkaSASLPassword)
			}
			// A secret read from a file is redacted like one given directly.
			attrs := fmt.Sprint(c.logAttrs()...)
			for _, pw := range []string{"fileDbPw", "fileAmqpPw", "pass word"} {
				if strings.Contains(attrs, pw) {
					t.Errorf("logAttrs shows %q: %s", pw, attrs)
				}
			}
		})
	}
}

func TestSecretFilesInvalid(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-secret")
	tests := []struct {
		name  string
		env   func(t *testing.T) map[string]string
		want  string   // the one variable at fault
		words []string // the problem also says these
	}{
		{
			name: "database url and its file",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_DATABASE_URL_FILE", writeSecret(t, "postgres://db/app"))
			},
			want: "RELAY_DATABASE_URL_FILE", words: []string{"RELAY_DATABASE_URL,", "not both"},
		},
		{
			name: "amqp url and its file",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_AMQP_URL_FILE", writeSecret(t, "amqp://mq/"))
			},
			want: "RELAY_AMQP_URL_FILE", words: []string{"RELAY_AMQP_URL,", "not both"},
		},
		{
			name: "sasl password and its file",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "u",
					"RELAY_KAFKA_SASL_PASSWORD", "p", "RELAY_KAFKA_SASL_PASSWORD_FILE", writeSecret(t, "p"))
			},
			want: "RELAY_KAFKA_SASL_PASSWORD_FILE", words: []string{"RELAY_KAFKA_SASL_PASSWORD,", "not both"},
		},
		{
			name: "missing database url file",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_DATABASE_URL_FILE", missing)
				delete(e, "RELAY_DATABASE_URL")
				return e
			},
			want: "RELAY_DATABASE_URL_FILE", words: []string{missing, "no such file"},
		},
		{
			name: "amqp url file is a directory",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_AMQP_URL_FILE", t.TempDir())
				delete(e, "RELAY_AMQP_URL")
				return e
			},
			want: "RELAY_AMQP_URL_FILE", words: []string{"cannot read"},
		},
		{
			name: "missing sasl password file",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_KAFKA_SASL_MECHANISM", "PLAIN", "RELAY_KAFKA_SASL_USERNAME", "u", "RELAY_KAFKA_SASL_PASSWORD_FILE", missing)
			},
			want: "RELAY_KAFKA_SASL_PASSWORD_FILE", words: []string{"cannot read"},
		},
		{
			name: "empty file",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_DATABASE_URL_FILE", writeSecret(t, "\n"))
				delete(e, "RELAY_DATABASE_URL")
				return e
			},
			want: "RELAY_DATABASE_URL_FILE", words: []string{"empty"},
		},
		{
			// The file's content is a secret: a bad value is reported
			// against the file variable without echoing it.
			name: "bad database url in the file",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_DATABASE_URL_FILE", writeSecret(t, "postgres://u:fileS3cretPw@db:notaport/app\n"))
				delete(e, "RELAY_DATABASE_URL")
				return e
			},
			want: "RELAY_DATABASE_URL_FILE", words: []string{"not a PostgreSQL connection string"},
		},
		{
			name: "bad amqp url in the file",
			env: func(t *testing.T) map[string]string {
				e := envWith("RELAY_AMQP_URL_FILE", writeSecret(t, "http://guest:fileS3cretPw@mq/"))
				delete(e, "RELAY_AMQP_URL")
				return e
			},
			want: "RELAY_AMQP_URL_FILE", words: []string{"amqps://"},
		},
		{
			name: "neither database url nor its file",
			env: func(t *testing.T) map[string]string {
				e := minimalEnv()
				delete(e, "RELAY_DATABASE_URL")
				return e
			},
			want: "RELAY_DATABASE_URL", words: []string{"required", "RELAY_DATABASE_URL_FILE"},
		},
		{
			name: "password file without a mechanism",
			env: func(t *testing.T) map[string]string {
				return envWith("RELAY_KAFKA_SASL_PASSWORD_FILE", writeSecret(t, "p"))
			},
			want: "RELAY_KAFKA_SASL_MECHANISM",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := loadConfig(tt.env(t))
			var ce configError
			if !errors.As(err, &ce) {
				t.Fatalf("loadConfig error = %v, want a configError", err)
			}
			if len(ce) != 1 {
				t.Fatalf("want one problem, got:\n%v", err)
			}
			key, msg, _ := strings.Cut(ce[0], ": ")
			if key != tt.want {
				t.Errorf("problem %q names %s, want %s", ce[0], key, tt.want)
			}
			for _, w := range tt.words {
				if !strings.Contains(msg, w) {
					t.Errorf("problem %q does not say %q", ce[0], w)
				}
			}
			if strings.Contains(ce[0], "fileS3cretPw") {
				t.Errorf("problem %q shows the file's secret", ce[0])
			}
		})
	}
}

// Both a secret and its file, or neither database URL: exit code 2 before
// connecting, naming the variables.
func TestRunSecretFileConflict(t *testing.T) {
	env := envWith("RELAY_AMQP_URL_FILE", writeSecret(t, "amqp://guest:fileS3cretPw@127.0.0.1:1/\n"))
	code, _, stderr := runQuickly(t, nil, env)
	if code != 2 {
		t.Errorf("run = %d, want 2; stderr:\n%s", code, stderr)
	}
	for _, s := range []string{"RELAY_AMQP_URL_FILE", "RELAY_AMQP_URL,"} {
		if !strings.Contains(stderr, s) {
			t.Errorf("stderr does not name %s:\n%s", s, stderr)
		}
	}
	if strings.Contains(stderr, "fileS3cretPw") || strings.Contains(stderr, "secret@") {
		t.Errorf("stderr shows a password:\n%s", stderr)
	}

	env = minimalEnv()
	delete(env, "RELAY_DATABASE_URL")
	code, _, stderr = runQuickly(t, nil, env)
	if code != 2 || !strings.Contains(stderr, "RELAY_DATABASE_URL: required") {
		t.Errorf("run without a database URL = %d, want 2 naming RELAY_DATABASE_URL; stderr:\n%s", code, stderr)
	}
}

// TestKafkaCompressionAgreesWithTheSink: the relay accepts every codec the
// sink knows, and its default is the sink's, which every client reads.
func TestKafkaCompressionAgreesWithTheSink(t *testing.T) {
	for _, name := range kafka.Compressions {
		c, err := loadConfig(envWith("RELAY_KAFKA_COMPRESSION", name))
		if err != nil {
			t.Errorf("RELAY_KAFKA_COMPRESSION=%s: %v", name, err)
		} else if c.KafkaCompression != name {
			t.Errorf("RELAY_KAFKA_COMPRESSION=%s read as %q", name, c.KafkaCompression)
		}
	}
	f, _ := reflect.TypeFor[config]().FieldByName("KafkaCompression")
	if def := f.Tag.Get("envDefault"); def != kafka.DefaultCompression {
		t.Errorf("RELAY_KAFKA_COMPRESSION defaults to %q, the sink to %q", def, kafka.DefaultCompression)
	}
}
