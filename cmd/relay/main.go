// Command relay publishes committed PostgreSQL outbox rows to a message
// broker. It is configured through environment variables only; run
// `relay --help` for the list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgops"
	"github.com/relay-dev/relay/relay/pgsource"
	"github.com/relay-dev/relay/sinks/kafka"
	"github.com/relay-dev/relay/sinks/rabbitmq"
	"github.com/relay-dev/relay/sinks/rabbitmqstream"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	env := environ()
	oneProc(env)
	os.Exit(run(os.Args[1:], env, os.Stdout, os.Stderr))
}

func environ() map[string]string {
	m := make(map[string]string)
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

func run(args []string, environ map[string]string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help", "help":
			printHelp(stdout)
			return 0
		case "version", "--version":
			fmt.Fprintln(stdout, "relay", version)
			return 0
		case "check":
			return runCheck(environ, stdout, stderr)
		case "status":
			return runStatus(environ, stdout, stderr)
		case "replay":
			return runReplay(args[1:], environ, stdout, stderr)
		default:
			fmt.Fprintf(stderr, "relay: unknown argument %q; see relay --help\n", args[0])
			return 2
		}
	}
	cfg, err := loadConfig(environ)
	if err != nil {
		fmt.Fprintln(stderr, "relay: invalid configuration:")
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(stderr, "  "+line)
		}
		for _, u := range unknownVariables(environ) {
			fmt.Fprintln(stderr, "  "+u.String())
		}
		fmt.Fprintln(stderr, "see relay --help")
		return 2
	}
	log := newLogger(cfg, stderr)
	warnUnknownVariables(log, environ)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("relay stopped", "error", err)
		return 1
	}
	log.Info("relay stopped")
	return 0
}

func newLogger(cfg config, w io.Writer) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// serve wires the configuration to the parts and runs until ctx ends.
func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	log.Info("starting relay", append([]any{"version", version}, cfg.logAttrs()...)...)

	reg := prometheus.NewRegistry()
	m := metrics.New(reg, cfg.Sink)
	var tables []string
	for _, t := range cfg.tables() {
		tables = append(tables, t.String())
	}
	if cfg.MessagePrefix != "" {
		tables = append(tables, pgsource.MessageTable)
	}
	m.Tables(tables...)
	src, err := pgsource.New(pgsource.Config{
		ConnString:      cfg.DatabaseURL,
		Tables:          cfg.tables(),
		Columns:         cfg.columns(),
		TableColumns:    cfg.tableColumns(),
		Slot:            cfg.Slot,
		Publication:     cfg.Publication,
		StatusInterval:  cfg.StatusInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		SlotRecreate:    cfg.SlotRecreate,
		TextOnly:        !cfg.PgoutputBinary,
		MessagePrefix:   cfg.MessagePrefix,
		Snapshot:        cfg.Snapshot,
		Metrics:         m,
		Logger:          log,
	})
	if err != nil {
		return err
	}

	// The HTTP server reads the state while the rest changes it.
	var (
		current atomic.Pointer[connectedSink] // of the leader's term
		running atomic.Pointer[relay.Relay]
		standby atomic.Pointer[string] // why this relay does not stream
	)
	ready := func() (bool, string) {
		if why := standby.Load(); why != nil {
			return false, *why
		}
		cur := current.Load()
		r := running.Load()
		switch {
		case cur == nil:
			return false, "connecting to the broker"
		case r != nil && r.Blocked() != nil:
			re := r.Blocked()
			return false, fmt.Sprintf("blocked at row %s (lsn %s, index %d): %v", re.Row(), re.LSN, re.Index, re.Err)
		case !(*cur).Connected():
			return false, "broker connection lost"
		case !src.Streaming():
			return false, "replication is not streaming"
		}
		return true, "streaming"
	}
	var httpErr chan error
	if cfg.HTTPAddr != "" {
		srv, err := startHTTP(cfg.HTTPAddr, ready, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("http listening", "addr", srv.ln.Addr().String())
		httpErr = make(chan error, 1)
		go func() { httpErr <- srv.Serve() }()
	}

	leader := pgops.NewLeader(pgops.LeaderConfig{
		ConnString: cfg.DatabaseURL,
		Slot:       cfg.Slot,
		Heartbeat:  cfg.HeartbeatInterval,
		Position:   src.Confirmed,
		Metrics:    m,
		Logger:     log,
	})
	defer leader.Release()
	m.Leader(false)
	for {
		why := "standby: waiting for the leader lock"
		standby.Store(&why)
		err := leader.Acquire(ctx, func(reason string) { standby.Store(&reason) })
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		standby.Store(nil)
		err = lead(ctx, cfg, log, m, src, leader, &current, &running, httpErr)
		current.Store(nil)
		running.Store(nil)
		leader.Release()
		if ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, errLostLeadership) {
			return err
		}
		log.Warn("stopped streaming: the leader lock was lost; standing by", "error", err)
		// Give a waiting standby, which tries every second, the first
		// chance at the lock.
		if !relay.Sleep(ctx, 2*time.Second) {
			return nil
		}
	}
}

var errLostLeadership = errors.New("lost the leader lock")

// errCleanup stops the relay when RELAY_CLEANUP cannot work as configured.
var errCleanup = errors.New("cleanup")

// lead streams while this relay holds the leader lock. The sink is created
// here, not before: a standby must not connect as a producer (an
// exactly-once one would fence the leader's transactions).
func lead(ctx context.Context, cfg config, log *slog.Logger, m *metrics.Metrics, src *pgsource.Source, leader *pgops.Leader,
	current *atomic.Pointer[connectedSink], running *atomic.Pointer[relay.Relay], httpErr <-chan error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	held := make(chan struct{})
	go func() {
		defer close(held)
		if err := leader.Hold(ctx); err != nil {
			cancel(fmt.Errorf("%w: %w", errLostLeadership, err))
		}
	}()
	defer func() { cancel(nil); <-held }()

	systemID, database := leader.Stream()
	sink, err := newSink(ctx, cfg, log, m, rabbitmq.FenceQueue(cfg.Slot, systemID, database))
	if err != nil {
		if cause := context.Cause(ctx); ctx.Err() != nil && cause != ctx.Err() {
			return cause
		}
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	current.Store(&sink)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := sink.Close(cctx); err != nil {
			log.Warn("closing the broker connection", "error", err)
		}
	}()

	var onPublished func(*relay.Event)
	switch cfg.Cleanup {
	case "after-publish":
		cleaner := pgops.NewCleaner(cfg.DatabaseURL, cfg.columns(), cfg.tableColumns(), log)
		onPublished = cleaner.Published
		cleaned := make(chan struct{})
		go func() {
			defer close(cleaned)
			cleaner.Run(ctx)
		}()
		defer func() { cancel(nil); <-cleaned }()
	case "retain":
		retainer := pgops.NewRetainer(pgops.RetainConfig{
			ConnString:   cfg.DatabaseURL,
			Slot:         cfg.Slot,
			Tables:       cfg.tables(),
			Columns:      cfg.columns(),
			TableColumns: cfg.tableColumns(),
			Retention:    cfg.Retention,
			Logger:       log,
		})
		retained := make(chan struct{})
		go func() {
			defer close(retained)
			// Only what no retry fixes comes back: it stops the relay.
			if err := retainer.Run(ctx); err != nil {
				cancel(fmt.Errorf("%w: %w", errCleanup, err))
			}
		}()
		defer func() { cancel(nil); <-retained }()
	}
	r := relay.New(relay.Config{
		Source:           src,
		OnPublished:      onPublished,
		Sink:             sink,
		MaxInFlight:      cfg.MaxInFlight,
		MaxInFlightBytes: cfg.MaxInFlightBytes,
		DeadLetter:       cfg.DeadLetter != "",
		BlockedRetry:     cfg.BlockedRetry,
		Observer:         m,
		Logger:           log,
	})
	running.Store(r)
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case err := <-runErr:
		if cause := context.Cause(ctx); errors.Is(cause, errLostLeadership) || errors.Is(cause, errCleanup) {
			return cause
		}
		return err
	case err := <-httpErr:
		cancel(nil)
		<-runErr
		return fmt.Errorf("http server: %w", err)
	}
}

// newSink connects to the configured broker, retrying until ctx ends.
// fence is the RabbitMQ sink's fence queue (rabbitmq.FenceQueue).
func newSink(ctx context.Context, cfg config, log *slog.Logger, m *metrics.Metrics, fence string) (connectedSink, error) {
	switch cfg.Sink {
	case "kafka":
		topic, err := relay.ParseTemplate(cfg.KafkaTopic)
		if err != nil {
			return nil, err
		}
		kc := kafka.Config{
			Brokers:           cfg.KafkaBrokers,
			Topic:             topic,
			Topics:            cfg.tableTemplates("RELAY_KAFKA_TOPIC"),
			CreateTopics:      cfg.KafkaCreateTopics,
			Partitions:        cfg.KafkaPartitions,
			ReplicationFactor: cfg.KafkaReplicationFactor,
			Compression:       cfg.KafkaCompression,
			ExactlyOnce:       cfg.KafkaExactlyOnce,
			TransactionalID:   cfg.transactionalID(),
			CheckpointTopic:   cfg.KafkaCheckpointTopic,
			// A transaction cannot hold more events than the relay lets
			// into flight: none is confirmed before it commits.
			TransactionMaxEvents: min(cfg.KafkaMaxTxnEvents, cfg.MaxInFlight),
			DeadLetter:           cfg.DeadLetter,
			Format:               cfg.format(),
			CloudEventsSource:    cfg.CloudEventsSource,
			KeyFormat:            cfg.KafkaKeyFormat,
			ValueFormat:          cfg.KafkaValueFormat,
			Metrics:              m,
			Logger:               log,
		}
		if cfg.kafkaTLS() {
			if kc.TLS, err = kafka.TLSConfig(cfg.KafkaTLSCAFile, cfg.KafkaTLSCertFile, cfg.KafkaTLSKeyFile); err != nil {
				return nil, relay.Permanent(err)
			}
		}
		if cfg.KafkaSASLMechanism != "" {
			if kc.SASL, err = kafka.SASLMechanism(cfg.KafkaSASLMechanism, cfg.KafkaSASLUsername, cfg.KafkaSASLPassword); err != nil {
				return nil, relay.Permanent(err)
			}
		}
		return kafka.New(ctx, kc)
	case "rabbitmq-stream":
		name, err := relay.ParseTemplate(cfg.Stream)
		if err != nil {
			return nil, err
		}
		return rabbitmqstream.New(ctx, rabbitmqstream.Config{
			URL:               cfg.StreamURL,
			Stream:            name,
			Streams:           cfg.tableTemplates("RELAY_RABBITMQ_STREAM"),
			Producer:          cfg.streamProducer(),
			MaxAge:            cfg.StreamMaxAge,
			MaxLengthBytes:    cfg.StreamMaxLengthBytes,
			Window:            cfg.MaxInFlight,
			DeadLetter:        cfg.DeadLetter,
			Format:            cfg.format(),
			CloudEventsSource: cfg.CloudEventsSource,
			Metrics:           m,
			Logger:            log,
		})
	default:
		routingKey, err := relay.ParseTemplate(cfg.AMQPRoutingKey)
		if err != nil {
			return nil, err
		}
		return rabbitmq.New(ctx, rabbitmq.Config{
			URL:               cfg.AMQPURL,
			Exchange:          cfg.AMQPExchange,
			RoutingKey:        routingKey,
			Exchanges:         cfg.tableExchanges(),
			RoutingKeys:       cfg.tableTemplates("RELAY_AMQP_ROUTING_KEY"),
			ConfirmWindow:     cfg.AMQPConfirmWindow,
			DeadLetter:        cfg.DeadLetter,
			Format:            cfg.format(),
			CloudEventsSource: cfg.CloudEventsSource,
			Fence:             fence,
			Metrics:           m,
			Logger:            log,
		})
	}
}

// connectedSink is a sink that can tell readiness checks whether it holds a
// broker connection.
type connectedSink interface {
	relay.Sink
	Connected() bool
}

type httpServer struct {
	srv *http.Server
	ln  net.Listener
}

func (h *httpServer) Serve() error {
	if err := h.srv.Serve(h.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (h *httpServer) Close() { h.srv.Close() }

// startHTTP listens before returning, so a taken port fails at start.
func startHTTP(addr string, ready func() (bool, string), metrics http.Handler) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, relay.Permanent(fmt.Errorf("listen on RELAY_HTTP_ADDR %s: %w", addr, err))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ok, reason := ready()
		// Orchestrators wait for replicas to be ready before they roll out
		// or drain, which a standby never is; ?standby=ok lets their probe
		// count a healthy standby as ready, while monitors see the truth.
		if !ok && r.URL.Query().Get("standby") == "ok" && strings.HasPrefix(reason, "standby") {
			ok = true
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
	})
	return &httpServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}
