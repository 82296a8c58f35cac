package main

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
	"github.com/relay-dev/relay/sinks/kafka"
	"github.com/relay-dev/relay/sinks/rabbitmq"
	"github.com/relay-dev/relay/sinks/rabbitmqstream"
)

// runCheck is `relay check`: with the relay's own configuration it checks
// PostgreSQL and the broker without changing either, prints one line per
// check with the fix for each problem, and exits 1 when any problem would
// keep the relay from running or lose or stall events, 0 otherwise
// (warnings included), 2 on invalid configuration.
func runCheck(environ map[string]string, stdout, stderr io.Writer) int {
	cfg, ok := commandConfig(environ, stderr)
	if !ok {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	fs := preflight(ctx, cfg)
	printFindings(stdout, fs, cfg.secrets())
	if ctx.Err() != nil {
		return 1
	}
	for _, f := range fs {
		if f.Status == relay.CheckFail {
			return 1
		}
	}
	return 0
}

// commandConfig loads the configuration as the relay does and, when it is
// invalid, prints every problem as the relay does: a command sees exactly
// the configuration the daemon would.
func commandConfig(environ map[string]string, stderr io.Writer) (config, bool) {
	cfg, err := loadConfig(environ)
	if err != nil {
		fmt.Fprintln(stderr, "relay: invalid configuration:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, "  "+line)
		}
		fmt.Fprintln(stderr, "see relay --help")
		return cfg, false
	}
	return cfg, true
}

// preflight runs the database and the broker checks side by side, so
// that two unreachable servers cost one timeout, and returns the database
// findings first.
func preflight(ctx context.Context, cfg config) []relay.Finding {
	var db, broker []relay.Finding
	var wg sync.WaitGroup
	wg.Go(func() {
		db = pgops.Check(ctx, pgops.CheckConfig{
			Config: pgsource.Config{
				ConnString:   cfg.DatabaseURL,
				Tables:       cfg.tables(),
				Columns:      cfg.columns(),
				TableColumns: cfg.tableColumns(),
				Slot:         cfg.Slot,
				Publication:  cfg.Publication,
				SlotRecreate: cfg.SlotRecreate,
				Snapshot:     cfg.Snapshot,
				TextOnly:     !cfg.PgoutputBinary,
			},
			Templates:      cfg.templates(),
			TableTemplates: cfg.checkTableTemplates(),
			Variable:       cfg.variableFor,
		})
	})
	wg.Go(func() { broker = checkBroker(ctx, cfg) })
	wg.Wait()
	return append(db, broker...)
}

// templates returns the routing template of the configured sink, keyed by
// its variable; loadConfig has validated it.
func (c *config) templates() map[string]*relay.Template {
	key, src := "RELAY_AMQP_ROUTING_KEY", c.AMQPRoutingKey
	switch c.Sink {
	case "kafka":
		key, src = "RELAY_KAFKA_TOPIC", c.KafkaTopic
	case "rabbitmq-stream":
		key, src = "RELAY_RABBITMQ_STREAM", c.Stream
	}
	t, err := relay.ParseTemplate(src)
	if err != nil {
		return nil
	}
	return map[string]*relay.Template{key: t}
}

// checkTableTemplates returns, for each table that sets its own routing
// template, what templates returns for it, keyed by the variable in
// effect: the table's own, or the global one.
func (c *config) checkTableTemplates() map[pgsource.Table]map[string]*relay.Template {
	global := "RELAY_AMQP_ROUTING_KEY"
	switch c.Sink {
	case "kafka":
		global = "RELAY_KAFKA_TOPIC"
	case "rabbitmq-stream":
		global = "RELAY_RABBITMQ_STREAM"
	}
	var out map[pgsource.Table]map[string]*relay.Template
	for _, t := range c.tables() {
		if _, ok := c.perTable[t][global]; !ok {
			continue
		}
		tc := c.forTable(t)
		if out == nil {
			out = map[pgsource.Table]map[string]*relay.Template{}
		}
		for _, tpl := range tc.templates() {
			out[t] = map[string]*relay.Template{c.variableFor(t, global): tpl}
		}
	}
	return out
}

func checkBroker(ctx context.Context, cfg config) []relay.Finding {
	if cfg.Sink == "rabbitmq-stream" {
		name, _ := relay.ParseTemplate(cfg.Stream)
		return rabbitmqstream.Check(ctx, rabbitmqstream.Config{URL: cfg.StreamURL, Stream: name, Streams: cfg.tableTemplates("RELAY_RABBITMQ_STREAM"), DeadLetter: cfg.DeadLetter})
	}
	if cfg.Sink != "kafka" {
		return rabbitmq.Check(ctx, rabbitmq.Config{URL: cfg.AMQPURL, Exchange: cfg.AMQPExchange, Exchanges: cfg.tableExchanges(), DeadLetter: cfg.DeadLetter})
	}
	topic, _ := relay.ParseTemplate(cfg.KafkaTopic)
	kc := kafka.Config{
		Brokers:         cfg.KafkaBrokers,
		Topic:           topic,
		Topics:          cfg.tableTemplates("RELAY_KAFKA_TOPIC"),
		CreateTopics:    cfg.KafkaCreateTopics,
		ExactlyOnce:     cfg.KafkaExactlyOnce,
		TransactionalID: cfg.transactionalID(),
		CheckpointTopic: cfg.KafkaCheckpointTopic,
		DeadLetter:      cfg.DeadLetter,
	}
	var err error
	if cfg.kafkaTLS() {
		if kc.TLS, err = kafka.TLSConfig(cfg.KafkaTLSCAFile, cfg.KafkaTLSCertFile, cfg.KafkaTLSKeyFile); err != nil {
			return []relay.Finding{{Check: "kafka", Status: relay.CheckFail, Detail: err.Error(), Fix: "fix RELAY_KAFKA_TLS_CA_FILE, RELAY_KAFKA_TLS_CERT_FILE or RELAY_KAFKA_TLS_KEY_FILE"}}
		}
	}
	if cfg.KafkaSASLMechanism != "" {
		if kc.SASL, err = kafka.SASLMechanism(cfg.KafkaSASLMechanism, cfg.KafkaSASLUsername, cfg.KafkaSASLPassword); err != nil {
			return []relay.Finding{{Check: "kafka", Status: relay.CheckFail, Detail: err.Error(), Fix: "fix RELAY_KAFKA_SASL_MECHANISM"}}
		}
	}
	return kafka.Check(ctx, kc)
}

// printFindings writes one line per finding, the fix on the same line, and
// a summary. Any secret that an error message might echo is masked.
func printFindings(w io.Writer, fs []relay.Finding, secrets []string) {
	var fails, warns int
	for _, f := range fs {
		line := fmt.Sprintf("%-4s  %s: %s", f.Status, f.Check, f.Detail)
		if f.Fix != "" && f.Status != relay.CheckOK {
			line += " -- fix: " + f.Fix
		}
		fmt.Fprintln(w, mask(line, secrets))
		switch f.Status {
		case relay.CheckFail:
			fails++
		case relay.CheckWarn:
			warns++
		}
	}
	switch {
	case fails == 1:
		fmt.Fprintf(w, "1 problem blocks the relay, %s\n", plural(warns, "warning"))
	case fails > 1:
		fmt.Fprintf(w, "%d problems block the relay, %s\n", fails, plural(warns, "warning"))
	default:
		fmt.Fprintf(w, "ready to run, %s\n", plural(warns, "warning"))
	}
}

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// secrets lists the passwords of the configuration, to be masked in
// anything a command prints.
func (c *config) secrets() []string {
	var plain []string
	if pc, err := pgconn.ParseConfig(c.DatabaseURL); err == nil {
		plain = append(plain, pc.Password)
	}
	for _, raw := range []string{c.AMQPURL, c.StreamURL} {
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			p, _ := u.User.Password()
			plain = append(plain, p)
		}
	}
	plain = append(plain, c.KafkaSASLPassword)
	var s []string
	for _, p := range plain {
		if p != "" {
			// As typed in a URL, too.
			s = append(s, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	return s
}

func mask(s string, secrets []string) string {
	for _, p := range secrets {
		if p != "" {
			s = strings.ReplaceAll(s, p, "xxxxx")
		}
	}
	return s
}
