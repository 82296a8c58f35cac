// Command kfake runs a one-broker fake Kafka cluster (franz-go's kfake) as
// a process of its own, so that the integration tests and the demo can
// SIGKILL and restart the broker like a real one while the relay keeps
// running.
//
// It listens on 127.0.0.1 only. With -data-dir it keeps topics, records
// and producer state on disk, so a restart on the same directory finds
// them again, after SIGKILL too: records are written to the OS page cache
// as they are produced (fsynced with -sync), and topics when they are
// created with CreateTopics. (Topics auto-created by a metadata request
// are saved only on a clean shutdown; that is kfake's behaviour.) Once it accepts connections
// it prints one line, "ready <host:port>", on stdout; it shuts down
// cleanly, saving its state, on SIGTERM or SIGINT.
//
// Usage:
//
//	kfake [-port 0] [-data-dir DIR] [-sync] [-partitions N] [-auto-create-topics]
//	      [-c key=value]... [-sasl MECHANISM:user:password] [-log none|error|warn|info|debug]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("kfake", flag.ContinueOnError)
	port := fs.Int("port", 0, "TCP port on 127.0.0.1; 0 picks a free one")
	dataDir := fs.String("data-dir", "", "directory that keeps the cluster's state across restarts; empty keeps it in memory")
	sync := fs.Bool("sync", false, "fsync every produced batch (durable across host crashes, slower)")
	partitions := fs.Int("partitions", 0, "partitions of topics created without a count; 0 keeps kfake's default (10)")
	autoCreate := fs.Bool("auto-create-topics", false, "create unknown topics on metadata requests that ask for it (kfake saves such topics only on a clean shutdown)")
	configs := configFlag{}
	fs.Var(configs, "c", "broker config `key=value`, e.g. message.max.bytes=10000 (repeatable)")
	var sasl saslFlag
	fs.Var(&sasl, "sasl", "require SASL; the superuser is `MECHANISM:user:password`, MECHANISM one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
	logLevel := fs.String("log", "none", "kfake's own log on stderr: none, error, warn, info or debug")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kfake: unexpected arguments %q\n", fs.Args())
		return 2
	}
	level, err := parseLevel(*logLevel)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kfake:", err)
		return 2
	}

	opts := []kfake.Opt{
		kfake.Ports(*port), // one port: one broker
		kfake.WithLogger(kfake.BasicLogger(os.Stderr, level)),
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	if *sync {
		opts = append(opts, kfake.SyncWrites())
	}
	if *partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(*partitions))
	}
	if *autoCreate {
		opts = append(opts, kfake.AllowAutoTopicCreation())
	}
	if len(configs) > 0 {
		opts = append(opts, kfake.BrokerConfigs(configs))
	}
	if sasl.mechanism != "" {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(sasl.mechanism, sasl.user, sasl.password))
	}

	// Signals are caught before the cluster exists so that one arriving
	// during startup still leads to a clean Close.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)

	c, err := kfake.NewCluster(opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kfake:", err)
		return 1
	}
	fmt.Printf("ready %s\n", c.ListenAddrs()[0])

	sig := <-sigs
	fmt.Fprintf(os.Stderr, "kfake: %v, shutting down\n", sig)
	// Close saves the state with a data dir; a second signal skips that.
	done := make(chan struct{})
	go func() {
		c.Close()
		close(done)
	}()
	select {
	case <-done:
		return 0
	case sig := <-sigs:
		fmt.Fprintf(os.Stderr, "kfake: %v during shutdown, exiting without saving\n", sig)
		return 1
	}
}

func parseLevel(s string) (kfake.LogLevel, error) {
	switch strings.ToLower(s) {
	case "none":
		return kfake.LogLevelNone, nil
	case "error":
		return kfake.LogLevelError, nil
	case "warn":
		return kfake.LogLevelWarn, nil
	case "info":
		return kfake.LogLevelInfo, nil
	case "debug":
		return kfake.LogLevelDebug, nil
	}
	return 0, fmt.Errorf("-log %q: want none, error, warn, info or debug", s)
}

// configFlag collects repeated -c key=value broker configs.
type configFlag map[string]string

func (f configFlag) String() string {
	var parts []string
	for k, v := range f {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

func (f configFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q: want key=value", s)
	}
	f[k] = v
	return nil
}

// saslFlag is the -sasl MECHANISM:user:password superuser; the password
// may itself contain colons.
type saslFlag struct{ mechanism, user, password string }

func (f *saslFlag) String() string {
	if f.mechanism == "" {
		return ""
	}
	return f.mechanism + ":" + f.user + ":xxxxx"
}

func (f *saslFlag) Set(s string) error {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 || parts[1] == "" {
		return errors.New("want MECHANISM:user:password")
	}
	mech := strings.ToUpper(parts[0])
	switch mech {
	case "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512":
	default:
		return fmt.Errorf("mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", parts[0])
	}
	*f = saslFlag{mech, parts[1], parts[2]}
	return nil
}
