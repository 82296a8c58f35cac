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
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// kafkaPackage is the kfake main of this module; it is built on first
	// use, so a test needs nothing but the Go toolchain.
	kafkaPackage     = "github.com/relay-dev/relay/integration/kfake"
	kafkaBuildWithin = 5 * time.Minute
	kafkaReadyWithin = 30 * time.Second
	kafkaStopWithin  = 30 * time.Second
)

// Kafka is a throwaway one-broker Kafka cluster: franz-go's kfake, run as a
// process of its own (integration/kfake) so that it can be SIGKILLed and
// restarted under a running client, like a real broker.
//
// It speaks the Kafka protocol well enough for producers and consumers
// (idempotent produce, fetch, metadata, topic creation, SASL) but is not
// Kafka: it has one broker, no replication, and its durability is its own.
type Kafka struct {
	// Port is the broker's port on 127.0.0.1, kept across restarts.
	Port int
	// Dir holds the data directory and the log; Close removes it.
	Dir string

	bin     string
	args    []string
	logPath string

	mu     sync.Mutex
	proc   *proc
	closed bool
	frozen bool // proc was SIGSTOPped: it cannot stop gracefully
}

// KafkaOptions tunes a throwaway cluster.
type KafkaOptions struct {
	// Configs are broker configs, e.g. "message.max.bytes": "10000".
	Configs map[string]string
	// SyncWrites fsyncs every produced batch. Without it records reach the
	// OS page cache as they are acknowledged, which survives Kill (not a
	// host crash).
	SyncWrites bool
	// Partitions is the partition count of topics created without one
	// (auto-created, or created with -1); 0 keeps kfake's default of 10.
	Partitions int
	// AutoCreateTopics lets metadata requests create unknown topics, as
	// Kafka's auto.create.topics.enable does. Off by default. kfake does
	// not write topics created this way to disk until it shuts down
	// cleanly, so Kill loses them and their records: a test that kills
	// the broker should create its topics with CreateTopics.
	AutoCreateTopics bool
	// SASL, when its Mechanism is set, makes the broker require SASL and
	// accept this user, a superuser.
	SASL KafkaSASL
}

// KafkaSASL is a SASL user. Mechanism is PLAIN, SCRAM-SHA-256 or
// SCRAM-SHA-512.
type KafkaSASL struct {
	Mechanism, User, Password string
}

// StartKafka builds the kfake command (once per process, while any Kafka is
// open), starts it on a free port with a data directory of its own, and
// returns once it accepts connections. The caller must Close it; on error
// nothing is left behind.
func StartKafka(ctx context.Context, opts KafkaOptions) (*Kafka, error) {
	bin, err := kafkaBin.acquire(ctx)
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		kafkaBin.release()
		return nil, err
	}
	dir, err := os.MkdirTemp("", "relaytest-kafka-")
	if err != nil {
		kafkaBin.release()
		return nil, fmt.Errorf("services: kafka temp dir: %w", err)
	}
	k := &Kafka{
		Port:    port,
		Dir:     dir,
		bin:     bin,
		logPath: filepath.Join(dir, "kafka.log"),
	}
	k.args = []string{"-port", strconv.Itoa(port), "-data-dir", filepath.Join(dir, "data"), "-log", "warn"}
	if opts.SyncWrites {
		k.args = append(k.args, "-sync")
	}
	if opts.Partitions > 0 {
		k.args = append(k.args, "-partitions", strconv.Itoa(opts.Partitions))
	}
	if opts.AutoCreateTopics {
		k.args = append(k.args, "-auto-create-topics")
	}
	keys := make([]string, 0, len(opts.Configs))
	for key := range opts.Configs {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		k.args = append(k.args, "-c", key+"="+opts.Configs[key])
	}
	if opts.SASL.Mechanism != "" {
		k.args = append(k.args, "-sasl", opts.SASL.Mechanism+":"+opts.SASL.User+":"+opts.SASL.Password)
	}
	ok := false
	defer func() {
		if !ok {
			k.Close()
		}
	}()
	k.mu.Lock()
	err = k.start(ctx)
	k.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ok = true
	return k, nil
}

// kafkaBin is the built kfake command, shared by every Kafka of this
// process. It is removed when the last one closes rather than cached for
// the process's lifetime, which has no hook to remove it at exit; a
// rebuild after that is only a link step thanks to Go's build cache.
var kafkaBin = sharedBinary{pkg: kafkaPackage, name: "kfake"}

// sharedBinary is the command of package pkg, built into a temporary
// directory that lives while anyone uses it.
type sharedBinary struct {
	pkg, name string

	mu    sync.Mutex
	dir   string
	users int
}

func (b *sharedBinary) acquire(ctx context.Context) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dir == "" {
		dir, err := os.MkdirTemp("", "relaytest-"+b.name+"-bin-")
		if err != nil {
			return "", fmt.Errorf("services: build dir: %w", err)
		}
		ctx, cancel := context.WithTimeout(ctx, kafkaBuildWithin)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, b.name), b.pkg)
		if out, err := cmd.CombinedOutput(); err != nil {
			os.RemoveAll(dir)
			return "", fmt.Errorf("services: go build %s (run from inside the module): %w\n%s", b.pkg, err, strings.TrimSpace(string(out)))
		}
		b.dir = dir
	}
	b.users++
	return filepath.Join(b.dir, b.name), nil
}

func (b *sharedBinary) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.users--
	if b.users == 0 {
		os.RemoveAll(b.dir)
		b.dir = ""
	}
}

// start runs kfake and waits for its "ready" line. k.mu held.
func (k *Kafka) start(ctx context.Context) error {
	logf, err := os.OpenFile(k.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("services: kafka log: %w", err)
	}
	// Stdout goes through a pipe we read to find the ready line; stderr,
	// kfake's own log, goes straight to the file.
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return fmt.Errorf("services: kafka stdout pipe: %w", err)
	}
	cmd := exec.Command(k.bin, k.args...)
	cmd.Dir = k.Dir
	cmd.Stdout, cmd.Stderr = pw, logf
	p, err := startProc(cmd)
	pw.Close()
	if err != nil {
		pr.Close()
		logf.Close()
		return fmt.Errorf("services: start kfake: %w", err)
	}
	k.proc = p
	ready := make(chan string, 1)
	go func() {
		defer logf.Close()
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if addr, ok := strings.CutPrefix(line, "ready "); ok {
				select {
				case ready <- addr:
				default:
				}
			}
		}
	}()
	want := "127.0.0.1:" + strconv.Itoa(k.Port)
	var fail error
	select {
	case addr := <-ready:
		if addr == want {
			return nil
		}
		fail = fmt.Errorf("kfake listens on %s, want %s", addr, want)
	case <-p.done:
		fail = fmt.Errorf("kfake exited during startup: %v", p.err)
	case <-time.After(kafkaReadyWithin):
		fail = fmt.Errorf("kfake not ready within %s", kafkaReadyWithin)
	case <-ctx.Done():
		fail = ctx.Err()
	}
	_ = p.killAll(10 * time.Second)
	k.proc = nil
	return withLog(fmt.Errorf("services: kafka on port %d: %w", k.Port, fail), k.logPath)
}

// Brokers returns the seed broker list, host:port, for clients.
func (k *Kafka) Brokers() string { return "127.0.0.1:" + strconv.Itoa(k.Port) }

// Pid is the broker's process id, 0 when it is down.
func (k *Kafka) Pid() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil {
		return 0
	}
	return k.proc.cmd.Process.Pid
}

// Kill SIGKILLs the broker, like a crash, and waits until it is gone.
// Restart brings it back with every record it acknowledged before (kfake
// writes each batch before acknowledging it; the OS page cache survives
// the kill).
func (k *Kafka) Kill() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.killLocked()
}

// Freeze SIGSTOPs the broker: from then on it answers no request, like a
// hung broker, while its connections stay open. Thaw, Kill and Restart end it.
// Tests use it to hold acknowledgements back, so that a fault certainly
// lands with records in flight however fast the relay is.
func (k *Kafka) Freeze() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil || k.proc.exited() {
		return errors.New("services: kafka is not running")
	}
	if err := k.proc.freeze(); err != nil {
		return fmt.Errorf("services: freeze kafka: %w", err)
	}
	k.frozen = true
	return nil
}

// Thaw lets a frozen broker run again.
func (k *Kafka) Thaw() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.proc == nil || !k.frozen {
		return errors.New("services: kafka is not frozen")
	}
	k.proc.thaw()
	k.frozen = false
	return nil
}

func (k *Kafka) killLocked() error {
	k.frozen = false
	if k.proc == nil {
		return nil
	}
	err := k.proc.killAll(10 * time.Second)
	k.proc = nil
	return err
}

// Restart starts the broker again on the same port and data directory and
// waits until it accepts connections. A running broker is first shut down
// cleanly (SIGTERM), which saves all its state.
func (k *Kafka) Restart(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errors.New("services: kafka restart after Close")
	}
	if k.frozen {
		if err := k.killLocked(); err != nil {
			return err
		}
	}
	if k.proc != nil {
		err := k.proc.stop(syscall.SIGTERM, kafkaStopWithin)
		k.proc = nil
		if err != nil {
			return err
		}
	}
	return k.start(ctx)
}

// Close kills the broker and removes Dir. It is safe to call more than once.
func (k *Kafka) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	err := k.killLocked()
	if rerr := os.RemoveAll(k.Dir); rerr != nil && err == nil {
		err = rerr
	}
	kafkaBin.release()
	return err
}

// LogPath is the file receiving kfake's output: its ready line and its
// warnings and errors.
func (k *Kafka) LogPath() string { return k.logPath }
