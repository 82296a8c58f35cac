package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
	"github.com/relay-dev/relay/sinks/kafka"
)

// config is every setting of the relay. It is the only place with env
// tags; `relay --help` is generated from it and docs/configuration.md's
// table is checked against it.
type config struct {
	DatabaseURL     string   `env:"RELAY_DATABASE_URL" required:"true" help:"PostgreSQL URL of the outbox database; the replication connection is derived from it; TLS through sslmode, sslrootcert, sslcert, sslkey (required, or RELAY_DATABASE_URL_FILE)"`
	DatabaseURLFile string   `env:"RELAY_DATABASE_URL_FILE" help:"file holding RELAY_DATABASE_URL, e.g. a mounted secret; a trailing newline is ignored"`
	Tables          []string `env:"RELAY_TABLES" envDefault:"public.outbox" help:"comma-separated outbox tables, schema.table"`
	Slot            string   `env:"RELAY_SLOT" envDefault:"outbox_relay" help:"logical replication slot, created when missing"`
	Publication     string   `env:"RELAY_PUBLICATION" envDefault:"outbox_relay" help:"publication of the outbox tables, created when missing"`
	Sink            string   `env:"RELAY_SINK" envDefault:"rabbitmq" help:"broker to publish to: rabbitmq, rabbitmq-stream or kafka"`

	AMQPURL           string `env:"RELAY_AMQP_URL" help:"RabbitMQ URL, amqp:// or amqps://; TLS files through the cacertfile, certfile, keyfile query parameters (required for rabbitmq, or RELAY_AMQP_URL_FILE)"`
	AMQPURLFile       string `env:"RELAY_AMQP_URL_FILE" help:"file holding RELAY_AMQP_URL, e.g. a mounted secret; a trailing newline is ignored"`
	AMQPExchange      string `table:"true" env:"RELAY_AMQP_EXCHANGE" envDefault:"outbox" help:"exchange to publish to; declared durable topic when absent"`
	AMQPRoutingKey    string `table:"true" env:"RELAY_AMQP_ROUTING_KEY" envDefault:"{aggregate_type}.{event_type}" help:"routing key template of {column} placeholders"`
	AMQPConfirmWindow int    `env:"RELAY_AMQP_CONFIRM_WINDOW" envDefault:"2048" help:"publishes awaiting a broker confirm at most"`

	StreamURL            string        `env:"RELAY_RABBITMQ_STREAM_URL" help:"RabbitMQ stream protocol URL, rabbitmq-stream://user:password@host:5552/vhost or rabbitmq-stream+tls://… (required for rabbitmq-stream, or RELAY_RABBITMQ_STREAM_URL_FILE)"`
	StreamURLFile        string        `env:"RELAY_RABBITMQ_STREAM_URL_FILE" help:"file holding RELAY_RABBITMQ_STREAM_URL, e.g. a mounted secret; a trailing newline is ignored"`
	Stream               string        `table:"true" env:"RELAY_RABBITMQ_STREAM" envDefault:"outbox" help:"stream name template of {column} placeholders; streams are created when missing"`
	StreamMaxAge         time.Duration `env:"RELAY_RABBITMQ_STREAM_MAX_AGE" help:"max-age retention of the streams the relay creates, e.g. 168h; empty: the broker's default"`
	StreamMaxLengthBytes int64         `env:"RELAY_RABBITMQ_STREAM_MAX_LENGTH_BYTES" help:"max-length-bytes retention of the streams the relay creates; empty: the broker's default"`
	StreamProducer       string        `env:"RELAY_RABBITMQ_STREAM_PRODUCER" help:"name of the deduplicating producer on each stream; relays of one slot share it, nothing else may use it (default relay-<RELAY_SLOT>)"`

	KafkaBrokers           []string `env:"RELAY_KAFKA_BROKERS" help:"comma-separated Kafka seed brokers, host:port (required for kafka)"`
	KafkaTopic             string   `table:"true" env:"RELAY_KAFKA_TOPIC" envDefault:"outbox.event.{aggregate_type}" help:"topic template of {column} placeholders"`
	KafkaCreateTopics      bool     `env:"RELAY_KAFKA_CREATE_TOPICS" envDefault:"false" help:"create missing topics; else the cluster must have them or auto-create them"`
	KafkaPartitions        int32    `env:"RELAY_KAFKA_PARTITIONS" envDefault:"-1" help:"partitions of created topics; -1: the broker's default"`
	KafkaReplicationFactor int16    `env:"RELAY_KAFKA_REPLICATION_FACTOR" envDefault:"-1" help:"replication factor of created topics; -1: the broker's default"`
	KafkaCompression       string   `env:"RELAY_KAFKA_COMPRESSION" envDefault:"gzip" help:"codec of produced record batches: none, gzip, snappy, lz4 or zstd; every consumer must read it (gzip is the one compression kafkajs reads without plugins)"`
	KafkaKeyFormat         string   `env:"RELAY_KAFKA_KEY_FORMAT" envDefault:"raw" help:"record key encoding: raw (the aggregate id's bytes) or json-string (the aggregate id as a JSON string, as Kafka Connect's JsonConverter with schemas.enable=false writes Debezium's key, so each aggregate keeps its partition); see docs/migrating-from-debezium.md"`
	KafkaValueFormat       string   `env:"RELAY_KAFKA_VALUE_FORMAT" envDefault:"raw" help:"record value encoding with RELAY_FORMAT=raw: raw (the payload's bytes) or json-string (the payload as one JSON string, a NULL payload as null, as JsonConverter with schemas.enable=false writes Debezium's outbox payload); dead letters stay raw"`
	KafkaExactlyOnce       bool     `env:"RELAY_KAFKA_EXACTLY_ONCE" envDefault:"false" help:"produce in Kafka transactions with a checkpoint, so read_committed consumers see each event exactly once"`
	KafkaTransactionalID   string   `env:"RELAY_KAFKA_TRANSACTIONAL_ID" help:"transactional id for exactly-once; one relay per id (default relay-<RELAY_SLOT>)"`
	KafkaMaxTxnEvents      int      `env:"RELAY_KAFKA_MAX_TRANSACTION_EVENTS" envDefault:"4096" help:"with RELAY_KAFKA_EXACTLY_ONCE, the most events of one Kafka transaction, capped at RELAY_MAX_IN_FLIGHT; a Kafka transaction commits only where a database transaction ends, so that read_committed consumers see each one whole, except one of more events than this, which is split into parts of at most this many (logged, relay_transactions_split_total)"`
	KafkaCheckpointTopic   string   `env:"RELAY_KAFKA_CHECKPOINT_TOPIC" envDefault:"relay.checkpoints" help:"compacted topic of exactly-once checkpoints, created when missing"`
	KafkaTLS               bool     `env:"RELAY_KAFKA_TLS" envDefault:"false" help:"connect with TLS, trusting the system roots unless RELAY_KAFKA_TLS_CA_FILE is set (implied by the TLS file variables)"`
	KafkaTLSCAFile         string   `env:"RELAY_KAFKA_TLS_CA_FILE" help:"PEM file of the CAs to trust instead of the system roots"`
	KafkaTLSCertFile       string   `env:"RELAY_KAFKA_TLS_CERT_FILE" help:"PEM client certificate for mutual TLS (with RELAY_KAFKA_TLS_KEY_FILE)"`
	KafkaTLSKeyFile        string   `env:"RELAY_KAFKA_TLS_KEY_FILE" help:"PEM private key of the client certificate"`
	KafkaSASLMechanism     string   `env:"RELAY_KAFKA_SASL_MECHANISM" help:"PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL"`
	KafkaSASLUsername      string   `env:"RELAY_KAFKA_SASL_USERNAME" help:"SASL user name"`
	KafkaSASLPassword      string   `env:"RELAY_KAFKA_SASL_PASSWORD" secret:"true" help:"SASL password (never logged)"`
	KafkaSASLPasswordFile  string   `env:"RELAY_KAFKA_SASL_PASSWORD_FILE" help:"file holding RELAY_KAFKA_SASL_PASSWORD, e.g. a mounted secret; a trailing newline is ignored"`

	Format            string `env:"RELAY_FORMAT" envDefault:"raw" help:"message format: raw (the body is the payload), cloudevents (CloudEvents 1.0 binary mode: the body is the payload, attributes in ce_ (Kafka) or cloudEvents: (AMQP) headers) or cloudevents-structured (the body is the CloudEvents JSON)"`
	CloudEventsSource string `env:"RELAY_CLOUDEVENTS_SOURCE" help:"CloudEvents source attribute, a URI-reference naming the producing service, e.g. /orders or urn:acme:orders (required with the cloudevents formats)"`

	ColumnPreset        string `table:"true" env:"RELAY_COLUMN_PRESET" envDefault:"standard" help:"outbox column layout: standard (schema/outbox.sql) or debezium (id, aggregatetype, aggregateid, type, payload)"`
	ColumnID            string `table:"true" env:"RELAY_COLUMN_ID" help:"column of the event id, the dedup key (default from the preset)"`
	ColumnAggregateType string `table:"true" env:"RELAY_COLUMN_AGGREGATE_TYPE" help:"column of the aggregate type (default from the preset)"`
	ColumnAggregateID   string `table:"true" env:"RELAY_COLUMN_AGGREGATE_ID" help:"column of the aggregate id (default from the preset)"`
	ColumnEventType     string `table:"true" env:"RELAY_COLUMN_EVENT_TYPE" help:"column of the event type (default from the preset)"`
	ColumnPayload       string `table:"true" env:"RELAY_COLUMN_PAYLOAD" help:"column of the payload: jsonb, json, text or bytea (default from the preset)"`
	ColumnHeaders       string `table:"true" env:"RELAY_COLUMN_HEADERS" help:"JSON object column of extra headers; optional (default from the preset)"`
	ColumnCreatedAt     string `table:"true" env:"RELAY_COLUMN_CREATED_AT" help:"timestamp column of the message timestamp; optional, else the commit time (default from the preset)"`
	ColumnDestination   string `table:"true" env:"RELAY_COLUMN_DESTINATION" help:"text column naming a row's own destination, which overrides the routing template; optional (default from the preset: destination in standard, none in debezium)"`

	MaxInFlight      int           `env:"RELAY_MAX_IN_FLIGHT" envDefault:"4096" help:"events handed to the broker and not yet confirmed, at most"`
	MaxInFlightBytes int           `env:"RELAY_MAX_IN_FLIGHT_BYTES" envDefault:"67108864" help:"approximate bytes of those events, at most (the relay reads up to 128 rows more ahead of them)"`
	StatusInterval   time.Duration `env:"RELAY_STATUS_INTERVAL" envDefault:"10s" help:"longest time between two standby status updates to PostgreSQL"`
	ShutdownTimeout  time.Duration `env:"RELAY_SHUTDOWN_TIMEOUT" envDefault:"10s" help:"on SIGINT/SIGTERM, how long to wait for in-flight confirms"`

	DeadLetter        string        `env:"RELAY_DEAD_LETTER" help:"exchange (rabbitmq), stream (rabbitmq-stream) or topic (kafka) for rows that cannot be published, with the reason in header x-relay-error; empty: the stream stops before such a row and retries"`
	BlockedRetry      time.Duration `env:"RELAY_BLOCKED_RETRY_INTERVAL" envDefault:"30s" help:"without RELAY_DEAD_LETTER, how often a stream stopped at a bad row tries again"`
	HeartbeatInterval time.Duration `env:"RELAY_HEARTBEAT_INTERVAL" envDefault:"30s" help:"how often to write a heartbeat to the WAL (pg_logical_emit_message) so the slot advances when only other databases write; 0 disables"`
	Snapshot          string        `env:"RELAY_SNAPSHOT" envDefault:"initial" help:"initial: when the relay creates its slot, publish the rows already in the tables first (progress in relay.backfill, schema/relay_state.sql); never: only rows committed after"`
	MessagePrefix     string        `env:"RELAY_MESSAGE_PREFIX" envDefault:"outbox" help:"prefix of transactional pg_logical_emit_message messages published as events (table-less outbox, schema/outbox_emit.sql); empty: off"`
	Cleanup           string        `env:"RELAY_CLEANUP" help:"after-publish: delete each outbox row once the broker confirmed it, in batches off the hot path; retain: delete confirmed rows once their created_at is older than RELAY_RETENTION, so that relay replay can publish them again until then (the role needs DELETE); empty: the relay never writes the tables"`
	Retention         time.Duration `env:"RELAY_RETENTION" help:"with RELAY_CLEANUP=retain (and only then, required): how long confirmed rows stay in the tables, by their created_at, e.g. 168h"`
	PgoutputBinary    bool          `env:"RELAY_PGOUTPUT_BINARY" envDefault:"true" help:"ask pgoutput for values in their binary form, which costs PostgreSQL less than text, where the server (14+) and every column type of the outbox tables allow it; otherwise, or false, text; messages are the same either way"`
	SlotRecreate      bool          `env:"RELAY_SLOT_RECREATE" envDefault:"false" help:"recreate a slot that disappeared or was invalidated (wal_status lost) instead of stopping; rows committed in between are then never published"`

	LogLevel  string `env:"RELAY_LOG_LEVEL" envDefault:"info" help:"debug, info, warn or error"`
	LogFormat string `env:"RELAY_LOG_FORMAT" envDefault:"json" help:"json or text"`
	HTTPAddr  string `env:"RELAY_HTTP_ADDR" envDefault:":8080" help:"address of the HTTP server for /healthz, /readyz and /metrics; empty disables it"`

	// retentionSet tells a RELAY_RETENTION given as 0 from one not given.
	retentionSet bool

	// perTable holds the per-table variables (tables.go), by table and
	// the global variable each overrides; env does not read them, as
	// their names depend on RELAY_TABLES.
	perTable map[pgsource.Table]map[string]tableOverride
}

// configError lists every bad variable, one per line.
type configError []string

func (e configError) Error() string { return strings.Join(e, "\n") }

var identRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// loadConfig parses the environment and validates every setting, so that
// all problems are reported at once, before connecting anywhere.
func loadConfig(environ map[string]string) (config, error) {
	var cfg config
	var bad configError
	if err := env.ParseWithOptions(&cfg, env.Options{Environment: environ}); err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return cfg, configError{err.Error()}
		}
		for _, e := range agg.Errors {
			bad = append(bad, describeEnvError(e))
		}
	}
	// env substitutes envDefault for a variable set to the empty string, but
	// an empty RELAY_HTTP_ADDR is documented to disable the HTTP server.
	if v, ok := environ["RELAY_HTTP_ADDR"]; ok && v == "" {
		cfg.HTTPAddr = ""
	}
	cfg.retentionSet = environ["RELAY_RETENTION"] != ""
	bad = append(bad, cfg.readSecretFiles()...)
	bad = append(bad, cfg.readTableVariables(environ)...)
	reported := map[string]bool{}
	for _, line := range bad {
		key, _, _ := strings.Cut(line, ":")
		reported[key] = true
	}
	for _, line := range append(cfg.validate(), cfg.validateTables()...) {
		// A variable that did not parse holds its zero value: it is
		// reported already, with the value given.
		if key, _, _ := strings.Cut(line, ":"); !reported[key] {
			bad = append(bad, line)
		}
	}
	if len(bad) > 0 {
		return cfg, bad
	}
	return cfg, nil
}

func describeEnvError(err error) string {
	var parseErr env.ParseError
	if errors.As(err, &parseErr) {
		if f, ok := reflect.TypeFor[config]().FieldByName(parseErr.Name); ok {
			key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
			return fmt.Sprintf("%s: cannot parse as %s: %v", key, parseErr.Type, parseErr.Err)
		}
	}
	var notSet env.VarIsNotSetError
	if errors.As(err, &notSet) {
		return fmt.Sprintf("%s: required, not set", notSet.Key)
	}
	var empty env.EmptyVarError
	if errors.As(err, &empty) {
		return fmt.Sprintf("%s: must not be empty", empty.Key)
	}
	return err.Error()
}

func (c *config) validate() []string {
	var bad []string
	add := func(key, format string, args ...any) {
		bad = append(bad, key+": "+fmt.Sprintf(format, args...))
	}
	switch {
	case c.DatabaseURL != "":
		if _, err := pgsource.New(pgsource.Config{ConnString: c.DatabaseURL}); err != nil {
			add(fromFile("RELAY_DATABASE_URL", c.DatabaseURLFile), "not a PostgreSQL connection string: %v", errors.Unwrap(err))
		}
	case c.DatabaseURLFile == "":
		add("RELAY_DATABASE_URL", "required: set it or RELAY_DATABASE_URL_FILE")
	}
	if len(c.Tables) == 0 {
		add("RELAY_TABLES", "at least one table is required")
	}
	seen := map[pgsource.Table]bool{}
	for _, s := range c.Tables {
		t, err := pgsource.ParseTable(s)
		if err != nil {
			add("RELAY_TABLES", "%v", err)
			continue
		}
		if seen[t] {
			add("RELAY_TABLES", "table %s listed twice", t)
		}
		seen[t] = true
	}
	if !identRE.MatchString(c.Slot) {
		add("RELAY_SLOT", "%q: use lower-case letters, digits and _, at most 63", c.Slot)
	}
	if !identRE.MatchString(c.Publication) {
		add("RELAY_PUBLICATION", "%q: use lower-case letters, digits and _, at most 63", c.Publication)
	}
	if c.Sink != "rabbitmq" && c.Sink != "rabbitmq-stream" && c.Sink != "kafka" {
		add("RELAY_SINK", "%q: want rabbitmq, rabbitmq-stream or kafka", c.Sink)
	}
	// The RabbitMQ settings are checked even when RELAY_SINK is wrong, so
	// that fixing it does not reveal a second round of problems.
	if c.AMQPURL == "" {
		if c.Sink == "rabbitmq" && c.AMQPURLFile == "" {
			add("RELAY_AMQP_URL", "required when RELAY_SINK=rabbitmq (or set RELAY_AMQP_URL_FILE)")
		}
	} else if u, err := url.Parse(c.AMQPURL); err != nil || (u.Scheme != "amqp" && u.Scheme != "amqps") {
		add(fromFile("RELAY_AMQP_URL", c.AMQPURLFile), "want amqp://user:password@host:port/vhost or amqps://…")
	}
	if c.AMQPExchange == "" {
		add("RELAY_AMQP_EXCHANGE", "must not be empty")
	}
	if _, err := relay.ParseTemplate(c.AMQPRoutingKey); err != nil {
		add("RELAY_AMQP_ROUTING_KEY", "%v", err)
	}
	if c.AMQPConfirmWindow < 1 || c.AMQPConfirmWindow > 65535 {
		add("RELAY_AMQP_CONFIRM_WINDOW", "%d: want 1 to 65535", c.AMQPConfirmWindow)
	}
	bad = append(bad, c.validateStream()...)
	bad = append(bad, c.validateKafka()...)
	if f, err := relay.ParseFormat(c.Format); err != nil {
		add("RELAY_FORMAT", "%v", err)
	} else if f != relay.FormatRaw && c.CloudEventsSource == "" {
		add("RELAY_CLOUDEVENTS_SOURCE", "required with RELAY_FORMAT=%s: a URI-reference naming the producing service, e.g. /orders", c.Format)
	}
	if c.CloudEventsSource != "" {
		if _, err := url.Parse(c.CloudEventsSource); err != nil {
			add("RELAY_CLOUDEVENTS_SOURCE", "%q: not a URI-reference", c.CloudEventsSource)
		}
	}
	if c.ColumnPreset != "standard" && c.ColumnPreset != "debezium" {
		add("RELAY_COLUMN_PRESET", "%q: want standard or debezium", c.ColumnPreset)
	}
	if c.MaxInFlight < 1 {
		add("RELAY_MAX_IN_FLIGHT", "%d: must be at least 1", c.MaxInFlight)
	}
	if c.MaxInFlightBytes < 1<<16 {
		add("RELAY_MAX_IN_FLIGHT_BYTES", "%d: must be at least 65536", c.MaxInFlightBytes)
	}
	if c.StatusInterval < 100*time.Millisecond || c.StatusInterval > 50*time.Second {
		add("RELAY_STATUS_INTERVAL", "%s: want 100ms to 50s (below wal_sender_timeout)", c.StatusInterval)
	}
	if c.ShutdownTimeout < 0 {
		add("RELAY_SHUTDOWN_TIMEOUT", "%s: must not be negative", c.ShutdownTimeout)
	}
	if c.Snapshot != pgsource.SnapshotInitial && c.Snapshot != pgsource.SnapshotNever {
		add("RELAY_SNAPSHOT", "%q: want initial or never", c.Snapshot)
	}
	switch c.Cleanup {
	case "", "after-publish":
		if c.retentionSet {
			add("RELAY_RETENTION", "%s: only with RELAY_CLEANUP=retain, which deletes rows by age (RELAY_CLEANUP is %q)", c.Retention, c.Cleanup)
		}
	case "retain":
		switch {
		case !c.retentionSet:
			add("RELAY_RETENTION", "required with RELAY_CLEANUP=retain: how long confirmed rows stay, e.g. 168h")
		case c.Retention <= 0:
			add("RELAY_RETENTION", "%s: must be positive", c.Retention)
		}
		// The age of a row is its created_at: a table without one
		// would never be cleaned.
		for _, t := range c.tables() {
			if tc := c.forTable(t); tc.columns().CreatedAt == "" {
				add(c.variableFor(t, "RELAY_COLUMN_CREATED_AT"), "required with RELAY_CLEANUP=retain, which deletes rows of %s by the age this column gives (the %s preset names none)", t, tc.ColumnPreset)
			}
		}
	default:
		add("RELAY_CLEANUP", "%q: want after-publish, retain or empty", c.Cleanup)
	}
	if c.BlockedRetry < 100*time.Millisecond {
		add("RELAY_BLOCKED_RETRY_INTERVAL", "%s: must be at least 100ms", c.BlockedRetry)
	}
	if c.HeartbeatInterval < 0 || c.HeartbeatInterval > 0 && c.HeartbeatInterval < 100*time.Millisecond {
		add("RELAY_HEARTBEAT_INTERVAL", "%s: want 0 (off) or at least 100ms", c.HeartbeatInterval)
	}
	if len(c.DeadLetter) > 249 {
		add("RELAY_DEAD_LETTER", "%d characters: at most 249", len(c.DeadLetter))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		add("RELAY_LOG_LEVEL", "%v", err)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		add("RELAY_LOG_FORMAT", "%q: want json or text", c.LogFormat)
	}
	if c.HTTPAddr != "" {
		if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			add("RELAY_HTTP_ADDR", "%q: want host:port or :port", c.HTTPAddr)
		}
	}
	return bad
}

// validateStream checks the RabbitMQ streams settings; like the others,
// they are checked whatever the sink, except for the URL it requires.
func (c *config) validateStream() []string {
	var bad []string
	add := func(key, format string, args ...any) {
		bad = append(bad, key+": "+fmt.Sprintf(format, args...))
	}
	if c.StreamURL == "" {
		if c.Sink == "rabbitmq-stream" && c.StreamURLFile == "" {
			add("RELAY_RABBITMQ_STREAM_URL", "required when RELAY_SINK=rabbitmq-stream (or set RELAY_RABBITMQ_STREAM_URL_FILE)")
		}
	} else if u, err := url.Parse(c.StreamURL); err != nil || (u.Scheme != "rabbitmq-stream" && u.Scheme != "rabbitmq-stream+tls") {
		add(fromFile("RELAY_RABBITMQ_STREAM_URL", c.StreamURLFile), "want rabbitmq-stream://user:password@host:5552/vhost or rabbitmq-stream+tls://…")
	}
	if _, err := relay.ParseTemplate(c.Stream); err != nil {
		add("RELAY_RABBITMQ_STREAM", "%v", err)
	}
	if c.StreamMaxAge < 0 || c.StreamMaxAge > 0 && c.StreamMaxAge < time.Second {
		add("RELAY_RABBITMQ_STREAM_MAX_AGE", "%s: want at least 1s, or empty", c.StreamMaxAge)
	}
	if c.StreamMaxLengthBytes < 0 {
		add("RELAY_RABBITMQ_STREAM_MAX_LENGTH_BYTES", "%d: must not be negative", c.StreamMaxLengthBytes)
	}
	if p := c.streamProducer(); len(p) > 255 {
		add("RELAY_RABBITMQ_STREAM_PRODUCER", "%d bytes: at most 255", len(p))
	}
	return bad
}

// streamProducer is the deduplicating producer's name: by default derived
// from the slot, as one slot is read by one relay at a time.
func (c *config) streamProducer() string {
	if c.StreamProducer != "" {
		return c.StreamProducer
	}
	return "relay-" + c.Slot
}

// validateKafka checks the Kafka settings; like the RabbitMQ ones, they are
// checked whatever the sink, except for what only the Kafka sink requires.
func (c *config) validateKafka() []string {
	var bad []string
	add := func(key, format string, args ...any) {
		bad = append(bad, key+": "+fmt.Sprintf(format, args...))
	}
	if len(c.KafkaBrokers) == 0 && c.Sink == "kafka" {
		add("RELAY_KAFKA_BROKERS", "required when RELAY_SINK=kafka")
	}
	for _, b := range c.KafkaBrokers {
		if _, port, err := net.SplitHostPort(b); err != nil || port == "" {
			add("RELAY_KAFKA_BROKERS", "%q: want host:port", b)
		}
	}
	if _, err := relay.ParseTemplate(c.KafkaTopic); err != nil {
		add("RELAY_KAFKA_TOPIC", "%v", err)
	}
	if id := c.transactionalID(); c.KafkaExactlyOnce && (len(id) > 249 || strings.ContainsAny(id, " \t\n")) {
		add("RELAY_KAFKA_TRANSACTIONAL_ID", "%q: at most 249 characters, no whitespace", id)
	}
	if !topicRE.MatchString(c.KafkaCheckpointTopic) {
		add("RELAY_KAFKA_CHECKPOINT_TOPIC", "%q: want 1 to 249 of a-z, A-Z, 0-9, '.', '_', '-'", c.KafkaCheckpointTopic)
	}
	if !slices.Contains(kafka.Compressions, c.KafkaCompression) {
		add("RELAY_KAFKA_COMPRESSION", "%q: want one of %s", c.KafkaCompression, strings.Join(kafka.Compressions, ", "))
	}
	for _, f := range []struct{ key, value string }{
		{"RELAY_KAFKA_KEY_FORMAT", c.KafkaKeyFormat},
		{"RELAY_KAFKA_VALUE_FORMAT", c.KafkaValueFormat},
	} {
		if !slices.Contains(kafka.Encodings, f.value) {
			add(f.key, "%q: want one of %s", f.value, strings.Join(kafka.Encodings, ", "))
		}
	}
	// In the CloudEvents formats the value is the event's data (binary
	// mode) or the event (structured): as a JSON string it would be
	// another value than the one the event declares.
	if f, err := relay.ParseFormat(c.Format); err == nil && f != relay.FormatRaw && c.KafkaValueFormat == kafka.EncodingJSONString {
		add("RELAY_KAFKA_VALUE_FORMAT", "%s cannot be combined with RELAY_FORMAT=%s: the CloudEvents value would become a JSON string; set RELAY_KAFKA_VALUE_FORMAT=%s or RELAY_FORMAT=raw",
			kafka.EncodingJSONString, c.Format, kafka.EncodingRaw)
	}
	if c.KafkaMaxTxnEvents < 1 {
		add("RELAY_KAFKA_MAX_TRANSACTION_EVENTS", "%d: must be at least 1", c.KafkaMaxTxnEvents)
	}
	if c.KafkaPartitions == 0 || c.KafkaPartitions < -1 {
		add("RELAY_KAFKA_PARTITIONS", "%d: want -1 (the broker's default) or at least 1", c.KafkaPartitions)
	}
	if c.KafkaReplicationFactor == 0 || c.KafkaReplicationFactor < -1 {
		add("RELAY_KAFKA_REPLICATION_FACTOR", "%d: want -1 (the broker's default) or at least 1", c.KafkaReplicationFactor)
	}
	for _, f := range []struct{ key, path string }{
		{"RELAY_KAFKA_TLS_CA_FILE", c.KafkaTLSCAFile},
		{"RELAY_KAFKA_TLS_CERT_FILE", c.KafkaTLSCertFile},
		{"RELAY_KAFKA_TLS_KEY_FILE", c.KafkaTLSKeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.ReadFile(f.path); err != nil {
			add(f.key, "cannot read: %v", errors.Unwrap(err))
		}
	}
	if (c.KafkaTLSCertFile == "") != (c.KafkaTLSKeyFile == "") {
		if c.KafkaTLSCertFile == "" {
			add("RELAY_KAFKA_TLS_CERT_FILE", "required with RELAY_KAFKA_TLS_KEY_FILE")
		} else {
			add("RELAY_KAFKA_TLS_KEY_FILE", "required with RELAY_KAFKA_TLS_CERT_FILE")
		}
	}
	if c.KafkaSASLMechanism != "" {
		if _, err := kafka.SASLMechanism(c.KafkaSASLMechanism, "", ""); err != nil {
			add("RELAY_KAFKA_SASL_MECHANISM", "%q: want one of %s", c.KafkaSASLMechanism, strings.Join(kafka.SASLMechanisms, ", "))
		}
		if c.KafkaSASLUsername == "" {
			add("RELAY_KAFKA_SASL_USERNAME", "required with RELAY_KAFKA_SASL_MECHANISM")
		}
		if c.KafkaSASLPassword == "" && c.KafkaSASLPasswordFile == "" {
			add("RELAY_KAFKA_SASL_PASSWORD", "required with RELAY_KAFKA_SASL_MECHANISM")
		}
	} else if c.KafkaSASLUsername != "" || c.KafkaSASLPassword != "" || c.KafkaSASLPasswordFile != "" {
		add("RELAY_KAFKA_SASL_MECHANISM", "required with RELAY_KAFKA_SASL_USERNAME and RELAY_KAFKA_SASL_PASSWORD")
	}
	return bad
}

// secretFiles pairs each secret variable with its _FILE twin, which names
// a file holding the value, as Kubernetes and Docker mount secrets.
var secretFiles = []struct {
	key   string
	value func(*config) (secret, file *string)
}{
	{"RELAY_DATABASE_URL", func(c *config) (*string, *string) { return &c.DatabaseURL, &c.DatabaseURLFile }},
	{"RELAY_AMQP_URL", func(c *config) (*string, *string) { return &c.AMQPURL, &c.AMQPURLFile }},
	{"RELAY_RABBITMQ_STREAM_URL", func(c *config) (*string, *string) { return &c.StreamURL, &c.StreamURLFile }},
	{"RELAY_KAFKA_SASL_PASSWORD", func(c *config) (*string, *string) { return &c.KafkaSASLPassword, &c.KafkaSASLPasswordFile }},
}

// readSecretFiles sets each secret given as a file from that file. Its
// problems name the variables and the file, never the content.
func (c *config) readSecretFiles() []string {
	var bad []string
	for _, s := range secretFiles {
		secret, file := s.value(c)
		if *file == "" {
			continue
		}
		if *secret != "" {
			bad = append(bad, fmt.Sprintf("%s_FILE: set either it or %s, not both", s.key, s.key))
			continue
		}
		b, err := os.ReadFile(*file)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s_FILE: cannot read %s: %v", s.key, *file, errors.Unwrap(err)))
			continue
		}
		// Files written by editors and `echo` end in a newline that is no
		// part of the secret.
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			bad = append(bad, fmt.Sprintf("%s_FILE: %s is empty", s.key, *file))
			continue
		}
		*secret = v
	}
	return bad
}

// fromFile is the variable to name in a problem with a secret's value:
// its _FILE twin when the value came from a file.
func fromFile(key, file string) string {
	if file != "" {
		return key + "_FILE"
	}
	return key
}

// topicRE is what Kafka accepts as a topic name.
var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// transactionalID is the exactly-once transactional id: by default derived
// from the slot, as one slot is read by one relay at a time.
func (c *config) transactionalID() string {
	if c.KafkaTransactionalID != "" {
		return c.KafkaTransactionalID
	}
	return "relay-" + c.Slot
}

// kafkaTLS reports whether the Kafka connection uses TLS.
func (c *config) kafkaTLS() bool {
	return c.KafkaTLS || c.KafkaTLSCAFile != "" || c.KafkaTLSCertFile != ""
}

// format is RELAY_FORMAT, valid once validate passed.
func (c *config) format() relay.Format {
	f, _ := relay.ParseFormat(c.Format)
	return f
}

// columns resolves the preset and the per-column overrides.
func (c *config) columns() pgsource.Columns {
	cols := pgsource.StandardColumns
	if c.ColumnPreset == "debezium" {
		cols = pgsource.DebeziumColumns
	}
	for _, o := range []struct {
		v   string
		dst *string
	}{
		{c.ColumnID, &cols.ID}, {c.ColumnAggregateType, &cols.AggregateType}, {c.ColumnAggregateID, &cols.AggregateID},
		{c.ColumnEventType, &cols.EventType}, {c.ColumnPayload, &cols.Payload}, {c.ColumnHeaders, &cols.Headers},
		{c.ColumnCreatedAt, &cols.CreatedAt}, {c.ColumnDestination, &cols.Destination},
	} {
		if o.v != "" {
			*o.dst = o.v
		}
	}
	return cols
}

func (c *config) tables() []pgsource.Table {
	ts := make([]pgsource.Table, 0, len(c.Tables))
	for _, s := range c.Tables {
		if t, err := pgsource.ParseTable(s); err == nil {
			ts = append(ts, t)
		}
	}
	return ts
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("%q: want debug, info, warn or error", s)
	}
	return l, nil
}

// logAttrs is the effective configuration for the startup log line, with
// passwords redacted.
func (c *config) logAttrs() []any {
	var attrs []any
	v := reflect.ValueOf(*c)
	for i := range v.NumField() {
		f := v.Type().Field(i)
		if !f.IsExported() {
			continue
		}
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		val := fmt.Sprint(v.Field(i).Interface())
		if val == "" || val == "[]" {
			continue
		}
		switch {
		case f.Tag.Get("secret") == "true":
			val = "xxxxx"
		case strings.HasSuffix(key, "_URL"):
			val = relay.RedactURL(val)
		}
		attrs = append(attrs, strings.ToLower(strings.TrimPrefix(key, "RELAY_")), val)
	}
	return append(attrs, c.tableLogAttrs()...)
}

// variable is one documented environment variable.
type variable struct {
	Name, Default, Help string
	Required            bool
}

// variables lists the configuration's variables in declaration order.
func variables() []variable {
	t := reflect.TypeFor[config]()
	vars := make([]variable, 0, t.NumField())
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("env"), ",")
		// required:"true" marks a variable that is required unless its
		// _FILE twin is set, which env's own option cannot express.
		vars = append(vars, variable{
			Name:     name,
			Default:  f.Tag.Get("envDefault"),
			Help:     f.Tag.Get("help"),
			Required: slices.Contains(strings.Split(opts, ","), "required") || f.Tag.Get("required") == "true",
		})
	}
	return vars
}

func printHelp(w io.Writer) {
	fmt.Fprint(w, `relay publishes committed PostgreSQL outbox rows to RabbitMQ or Kafka, at least once,
in order per aggregate, with the outbox id as the dedup key (exactly once into
RabbitMQ streams and, with RELAY_KAFKA_EXACTLY_ONCE, Kafka).

Usage:
  relay            run until SIGINT or SIGTERM
  relay check      check PostgreSQL and the broker against the configuration;
                   print each problem with its fix; exit 1 if any blocks the relay
  relay status     print the slot's confirmed position, lag, retained WAL and
                   which session holds the leader lock
  relay replay     publish rows still in the outbox tables again, selected by
                   the flags below, beside the running relay; resumable
  relay version    print the version
  relay --help     print this help

Configuration is read from the environment only:

`)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  VARIABLE\tDEFAULT\tDESCRIPTION")
	for _, v := range variables() {
		def := v.Default
		if def == "" {
			def = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	tw.Flush()
	printTableHelp(w)
	fmt.Fprint(w, `
relay replay flags (the configuration is the relay's; see docs/operations.md, Replay and retention):
`)
	printReplayFlags(w)
	fmt.Fprint(w, `
GOMAXPROCS: the relay runs its Go code on one core unless GOMAXPROCS is set
(the stream is capped by PostgreSQL's single-threaded decoding; see
docs/benchmarks.md).

Exit codes: 0 after a clean stop, 1 on an error retrying cannot fix,
2 on invalid configuration (before connecting).
`)
}
