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

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
	"github.com/relay-dev/relay/sinks/kafka"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// version is stamped at build time with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
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

	src, err := pgsource.New(pgsource.Config{
		ConnString:      cfg.DatabaseURL,
		Tables:          cfg.tables(),
		Columns:         cfg.columns(),
		Slot:            cfg.Slot,
		Publication:     cfg.Publication,
		StatusInterval:  cfg.StatusInterval,
		ShutdownTimeout: cfg.ShutdownTimeout,
		Logger:          log,
	})
	if err != nil {
		return err
	}

	var httpErr chan error
	// The HTTP server reads the sink while it is being created.
	var current atomic.Value // connectedSink
	ready := func() (bool, string) {
		sink, _ := current.Load().(connectedSink)
		switch {
		case sink == nil:
			return false, "connecting to the broker"
		case !sink.Connected():
			return false, "broker connection lost"
		case !src.Streaming():
			return false, "replication is not streaming"
		}
		return true, "streaming"
	}
	if cfg.HTTPAddr != "" {
		srv, err := startHTTP(cfg.HTTPAddr, ready)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("http listening", "addr", srv.ln.Addr().String())
		httpErr = make(chan error, 1)
		go func() { httpErr <- srv.Serve() }()
	}

	sink, err := newSink(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	current.Store(sink)
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer cancel()
		if err := sink.Close(cctx); err != nil {
			log.Warn("closing the broker connection", "error", err)
		}
	}()

	r := relay.New(relay.Config{
		Source:           src,
		Sink:             sink,
		MaxInFlight:      cfg.MaxInFlight,
		MaxInFlightBytes: cfg.MaxInFlightBytes,
		Logger:           log,
	})
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	select {
	case err := <-runErr:
		return err
	case err := <-httpErr:
		return fmt.Errorf("http server: %w", err)
	}
}

// newSink connects to the configured broker, retrying until ctx ends.
func newSink(ctx context.Context, cfg config, log *slog.Logger) (connectedSink, error) {
	switch cfg.Sink {
	case "kafka":
		topic, err := relay.ParseTemplate(cfg.KafkaTopic)
		if err != nil {
			return nil, err
		}
		kc := kafka.Config{
			Brokers:           cfg.KafkaBrokers,
			Topic:             topic,
			CreateTopics:      cfg.KafkaCreateTopics,
			Partitions:        cfg.KafkaPartitions,
			ReplicationFactor: cfg.KafkaReplicationFactor,
			ExactlyOnce:       cfg.KafkaExactlyOnce,
			TransactionalID:   cfg.transactionalID(),
			CheckpointTopic:   cfg.KafkaCheckpointTopic,
			// A transaction cannot hold more events than the relay lets
			// into flight; half keeps the next one filling meanwhile.
			TransactionMaxEvents: max(cfg.MaxInFlight/2, 1),
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
	default:
		routingKey, err := relay.ParseTemplate(cfg.AMQPRoutingKey)
		if err != nil {
			return nil, err
		}
		return rabbitmq.New(ctx, rabbitmq.Config{
			URL:           cfg.AMQPURL,
			Exchange:      cfg.AMQPExchange,
			RoutingKey:    routingKey,
			ConfirmWindow: cfg.AMQPConfirmWindow,
			Logger:        log,
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
func startHTTP(addr string, ready func() (bool, string)) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, relay.Permanent(fmt.Errorf("listen on RELAY_HTTP_ADDR %s: %w", addr, err))
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := ready()
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		fmt.Fprintln(w, reason)
	})
	return &httpServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln}, nil
}
