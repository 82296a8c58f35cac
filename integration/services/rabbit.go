//go:build linux

package services

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

const (
	rabbitInstallHint = "apt-get install -y rabbitmq-server"
	// The plain server script, not /usr/sbin/rabbitmq-server: that wrapper
	// switches to the rabbitmq user, which could not write our temp dir.
	rabbitServerScript = "/usr/lib/rabbitmq/bin/rabbitmq-server"
	rabbitCtlScript    = "/usr/lib/rabbitmq/bin/rabbitmqctl"
	rabbitReadyWithin  = 60 * time.Second
	rabbitStopWithin   = 30 * time.Second
)

var rabbitSeq atomic.Int64

// Rabbit is a throwaway RabbitMQ node.
//
// It runs its own epmd on a private port, so its node name can never clash
// with the system node (rabbit@localhost) or with other test nodes, and it
// loads no plugins, so startup stays in the seconds range.
type Rabbit struct {
	// Port is the AMQP port on 127.0.0.1, kept across restarts.
	Port int
	// TLSPort is the AMQPS port on 127.0.0.1 with RabbitOptions.TLS; else 0.
	TLSPort int
	// StreamPort is the stream protocol port on 127.0.0.1 with
	// RabbitOptions.Stream; else 0.
	StreamPort int
	// Dir holds the node's Mnesia database, message store, configuration,
	// Erlang cookie and log; Close removes it.
	Dir string

	distPort, epmdPort int
	nodeName           string
	epmdBin            string
	logPath            string

	mu     sync.Mutex
	beam   *proc
	epmd   *proc
	closed bool
	frozen bool // beam was SIGSTOPped: it cannot stop gracefully
}

// RabbitOptions tunes a throwaway node.
type RabbitOptions struct {
	// TLS, when set, adds a TLS listener on TLSPort beside the plain one.
	TLS *TLS
	// RequireClientCert makes the TLS listener refuse clients without a
	// certificate from TLS.CAFile (verify_peer, fail_if_no_peer_cert).
	RequireClientCert bool
	// MaxMessageSize, when positive, is the node's max_message_size in
	// bytes: tests of oversized messages need a limit they can exceed
	// cheaply, and the setting is node-wide, so such tests get a node.
	MaxMessageSize int
	// Stream enables the rabbitmq_stream plugin, listening on StreamPort
	// and advertising 127.0.0.1 there, so that clients that connect to
	// the advertised leader reach it on loopback.
	Stream bool
}

// StartRabbit starts a fresh node on free ports and returns once an AMQP
// connection as guest/guest succeeds. The caller must Close it; on error
// nothing is left behind.
func StartRabbit(ctx context.Context) (*Rabbit, error) {
	return StartRabbitWith(ctx, RabbitOptions{})
}

// StartRabbitWith is StartRabbit with options.
func StartRabbitWith(ctx context.Context, opts RabbitOptions) (*Rabbit, error) {
	if !isExecutable(rabbitServerScript) {
		return nil, fmt.Errorf("services: RabbitMQ not found (%s is missing); install it with: %s", rabbitServerScript, rabbitInstallHint)
	}
	epmdBin, err := exec.LookPath("epmd")
	if err != nil {
		matches, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd")
		if len(matches) == 0 {
			return nil, fmt.Errorf("services: Erlang's epmd not found; install it with: %s", rabbitInstallHint)
		}
		epmdBin = matches[len(matches)-1]
	}
	var portList [3]int
	for i := range portList {
		if portList[i], err = FreePort(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp("", "relaytest-rabbit-")
	if err != nil {
		return nil, fmt.Errorf("services: rabbitmq temp dir: %w", err)
	}
	r := &Rabbit{
		Port:     portList[0],
		Dir:      dir,
		distPort: portList[1],
		epmdPort: portList[2],
		nodeName: fmt.Sprintf("relaytest-%d-%d@localhost", os.Getpid(), rabbitSeq.Add(1)),
		epmdBin:  epmdBin,
		logPath:  filepath.Join(dir, "rabbitmq.log"),
	}
	ok := false
	defer func() {
		if !ok {
			r.Close()
		}
	}()
	if opts.TLS != nil {
		if r.TLSPort, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if opts.Stream {
		if r.StreamPort, err = FreePort(); err != nil {
			return nil, err
		}
	}
	if err := r.writeConfig(opts); err != nil {
		return nil, err
	}
	r.mu.Lock()
	err = r.start(ctx)
	r.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ok = true
	return r, nil
}

func (r *Rabbit) path(name string) string { return filepath.Join(r.Dir, name) }

// writeConfig gives the node its own copy of every file it would otherwise
// read from /etc/rabbitmq, notably rabbitmq-env.conf, whose NODENAME would
// otherwise make this node impersonate the system one.
func (r *Rabbit) writeConfig(opts RabbitOptions) error {
	tlsConf, err := r.tlsConfig(opts)
	if err != nil {
		return err
	}
	maxSize := ""
	if opts.MaxMessageSize > 0 {
		maxSize = fmt.Sprintf("max_message_size = %d\n", opts.MaxMessageSize)
	}
	plugins, streamConf := "[].\n", ""
	if opts.Stream {
		plugins = "[rabbitmq_stream].\n"
		streamConf = fmt.Sprintf("stream.listeners.tcp.1 = 127.0.0.1:%d\nstream.advertised_host = 127.0.0.1\nstream.advertised_port = %d\n", r.StreamPort, r.StreamPort)
	}
	files := map[string]string{
		"rabbitmq-env.conf": "",
		"rabbitmq.conf": "# Throwaway test node.\n" +
			// tmpfs-backed /tmp on CI can be small; the default 50MB limit
			// would block publishers with a disk alarm.
			"disk_free_limit.absolute = 1MB\n" + tlsConf + maxSize + streamConf,
		"advanced.config": "[].\n",
		// No management plugin: it adds seconds to every start; the
		// stream plugin only where a test asks for it.
		"enabled_plugins": plugins,
	}
	for name, content := range files {
		if err := os.WriteFile(r.path(name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("services: rabbitmq config: %w", err)
		}
	}
	for _, d := range []string{"conf.d", "mnesia", "log"} {
		if err := os.Mkdir(r.path(d), 0o755); err != nil {
			return fmt.Errorf("services: rabbitmq dir: %w", err)
		}
	}
	return nil
}

// tlsConfig is the rabbitmq.conf part of the TLS listener, if any.
func (r *Rabbit) tlsConfig(opts RabbitOptions) (string, error) {
	if opts.TLS == nil {
		return "", nil
	}
	if opts.RequireClientCert && opts.TLS.CAFile == "" {
		return "", errors.New("services: RequireClientCert needs TLS.CAFile")
	}
	files, err := opts.TLS.install(r.Dir, nil)
	if err != nil {
		return "", err
	}
	conf := fmt.Sprintf("listeners.ssl.default = 127.0.0.1:%d\nssl_options.certfile = %s\nssl_options.keyfile = %s\n",
		r.TLSPort, files.cert, files.key)
	if files.ca != "" {
		conf += fmt.Sprintf("ssl_options.cacertfile = %s\n", files.ca)
	}
	if opts.RequireClientCert {
		conf += "ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n"
	} else {
		conf += "ssl_options.verify = verify_none\n"
	}
	return conf, nil
}

func (r *Rabbit) env() []string {
	// Inherited RABBITMQ_*/ERL_* settings belong to the system node, HOME
	// would share its Erlang cookie, and NOTIFY_SOCKET would make the script
	// believe it runs under systemd.
	env := cleanEnv("RABBITMQ_", "ERL_", "HOME=", "NOTIFY_SOCKET=", "detached=")
	return append(env,
		"HOME="+r.Dir, // the Erlang cookie is created here
		"RABBITMQ_NODENAME="+r.nodeName,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(r.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(r.distPort),
		"ERL_EPMD_PORT="+strconv.Itoa(r.epmdPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}",
		"RABBITMQ_CONF_ENV_FILE="+r.path("rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+r.path("rabbitmq.conf"),
		"RABBITMQ_CONFIG_FILES="+r.path("conf.d"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+r.path("advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+r.path("enabled_plugins"),
		"RABBITMQ_MNESIA_BASE="+r.path("mnesia"),
		"RABBITMQ_LOG_BASE="+r.path("log"),
		"RABBITMQ_LOGS=-", // to stdout, i.e. into LogPath
		"RABBITMQ_PID_FILE="+r.path("rabbitmq.pid"),
		"RABBITMQ_MOTD_FILE="+r.path("motd"),
		// Makes the script exec the VM instead of running it as a background
		// child of a shell. Pdeathsig is only set on the process we start,
		// so without this the VM would survive a killed test binary.
		"detached=true",
	)
}

func (r *Rabbit) openLog() (*os.File, error) {
	f, err := os.OpenFile(r.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("services: rabbitmq log: %w", err)
	}
	return f, nil
}

// start runs epmd and the node and waits until AMQP works. r.mu held.
//
// epmd is run by us, in the foreground, because the one Erlang would start
// itself daemonizes with setsid() and so escapes both process-group kills and
// Pdeathsig, lingering after every test.
func (r *Rabbit) start(ctx context.Context) error {
	logf, err := r.openLog()
	if err != nil {
		return err
	}
	defer logf.Close()

	epmd := exec.Command(r.epmdBin, "-port", strconv.Itoa(r.epmdPort), "-address", "127.0.0.1")
	epmd.Dir = r.Dir
	epmd.Env = r.env()
	epmd.Stdout, epmd.Stderr = logf, logf
	r.epmd, err = startProc(epmd)
	if err != nil {
		return fmt.Errorf("services: start epmd: %w", err)
	}
	epmdAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.epmdPort))
	err = pollUntil(ctx, 10*time.Second, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		if r.epmd.exited() {
			return false, errFatal{fmt.Errorf("epmd exited: %v", r.epmd.err)}
		}
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", epmdAddr)
		if err != nil {
			return false, err
		}
		c.Close()
		return true, nil
	})
	if err != nil {
		r.killLocked()
		return withLog(fmt.Errorf("services: epmd on port %d not ready: %w", r.epmdPort, err), r.logPath)
	}

	server := exec.Command(rabbitServerScript)
	server.Dir = r.Dir
	server.Env = r.env()
	server.Stdout, server.Stderr = logf, logf
	r.beam, err = startProc(server)
	if err != nil {
		r.killLocked()
		return fmt.Errorf("services: start rabbitmq-server: %w", err)
	}
	beam := r.beam
	err = pollUntil(ctx, rabbitReadyWithin, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
		if beam.exited() {
			return false, errFatal{fmt.Errorf("rabbitmq-server exited during startup: %v", beam.err)}
		}
		conn, err := amqp.DialConfig(r.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err != nil {
			return false, err
		}
		conn.Close()
		return true, nil
	})
	if err != nil {
		r.killLocked()
		return withLog(fmt.Errorf("services: rabbitmq node %s on port %d not ready: %w", r.nodeName, r.Port, err), r.logPath)
	}
	for _, port := range []int{r.TLSPort, r.StreamPort} {
		if port == 0 {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		err = pollUntil(ctx, rabbitReadyWithin, 50*time.Millisecond, func(ctx context.Context) (bool, error) {
			c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", addr)
			if err != nil {
				return false, err
			}
			c.Close()
			return true, nil
		})
		if err != nil {
			r.killLocked()
			return withLog(fmt.Errorf("services: rabbitmq listener on port %d (TLS or stream) not ready: %w", port, err), r.logPath)
		}
	}
	return nil
}

// URL returns the AMQP URL for the default guest user, which RabbitMQ allows
// from loopback only — which is where the node listens.
func (r *Rabbit) URL() string {
	return "amqp://guest:guest@127.0.0.1:" + strconv.Itoa(r.Port) + "/"
}

// Kill SIGKILLs the node — the Erlang VM, its helper processes and its epmd —
// like a crash, and waits until they are gone. Restart brings it back with
// its durable state.
//
// What counts as durable is RabbitMQ's business, and it has a sharp edge:
// topology changes (queue, exchange and binding declarations) are written to
// Mnesia through Erlang's disk_log, which buffers writes in memory for up to
// 2 s. A durable queue declared just before Kill can therefore vanish, taking
// its confirmed messages with it. Tests that need the queue to survive
// declare it, then SyncTopology (or Restart: a graceful restart flushes
// everything), before killing. Confirmed persistent messages in a queue
// whose declaration is already on disk do survive.
func (r *Rabbit) Kill() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killLocked()
}

// SyncTopology writes the topology changes made so far (queue, exchange and
// binding declarations) to disk now, rather than within disk_log's 2 s, so
// that they survive a Kill from then on.
func (r *Rabbit) SyncTopology(ctx context.Context) error {
	out, err := r.Ctl(ctx, "eval", "mnesia:sync_log().")
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(out); got != "ok" {
		return fmt.Errorf("services: rabbitmq: mnesia:sync_log() returned %q", got)
	}
	return nil
}

// Ctl runs rabbitmqctl against the node, e.g. to add a user with limited
// permissions, and returns what it printed.
func (r *Rabbit) Ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, rabbitCtlScript, append([]string{"-n", r.nodeName}, args...)...)
	cmd.Dir = r.Dir
	cmd.Env = r.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("services: rabbitmqctl %v: %w: %s", args, err, out)
	}
	return string(out), nil
}

// StreamURL returns the stream protocol URL for the guest user; empty
// without RabbitOptions.Stream.
func (r *Rabbit) StreamURL() string {
	if r.StreamPort == 0 {
		return ""
	}
	return "rabbitmq-stream://guest:guest@127.0.0.1:" + strconv.Itoa(r.StreamPort) + "/"
}

// URLAs is URL for another user of the node.
func (r *Rabbit) URLAs(user, password string) string {
	return "amqp://" + user + ":" + password + "@127.0.0.1:" + strconv.Itoa(r.Port) + "/"
}

// Freeze SIGSTOPs the node's processes: from then on it reads, routes and
// confirms nothing, like a hung broker, while its connections stay open.
// Thaw, Kill and Restart end it. Tests use it to hold confirms back, so that a
// fault certainly lands with publishes in flight however fast the relay is.
func (r *Rabbit) Freeze() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.beam == nil || r.beam.exited() {
		return errors.New("services: rabbitmq is not running")
	}
	if err := r.beam.freeze(); err != nil {
		return fmt.Errorf("services: freeze rabbitmq: %w", err)
	}
	r.frozen = true
	return nil
}

// Thaw lets a frozen node run again.
func (r *Rabbit) Thaw() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.beam == nil || !r.frozen {
		return errors.New("services: rabbitmq is not frozen")
	}
	r.beam.thaw()
	r.frozen = false
	return nil
}

// Pid is the process id of the node's server process, the leader of the
// process group that holds the Erlang VM and its helpers (epmd apart);
// 0 when the node is down.
func (r *Rabbit) Pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.beam == nil {
		return 0
	}
	return r.beam.cmd.Process.Pid
}

func (r *Rabbit) killLocked() error {
	r.frozen = false
	var errs []error
	if r.beam != nil {
		errs = append(errs, r.beam.killAll(10*time.Second))
		r.beam = nil
	}
	if r.epmd != nil {
		errs = append(errs, r.epmd.killAll(10*time.Second))
		r.epmd = nil
	}
	return errors.Join(errs...)
}

// Restart starts the node again with the same name, ports and data
// directory, so durable queues and persistent messages survive, and waits
// until AMQP works. A running node is first shut down gracefully (SIGTERM),
// a frozen one killed.
func (r *Rabbit) Restart(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("services: rabbitmq restart after Close")
	}
	if r.beam != nil && !r.frozen {
		_ = r.beam.stop(syscall.SIGTERM, rabbitStopWithin)
	}
	if err := r.killLocked(); err != nil {
		return err
	}
	return r.start(ctx)
}

// Close kills the node and removes Dir. It is safe to call more than once.
func (r *Rabbit) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.killLocked()
	if rerr := os.RemoveAll(r.Dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// LogPath is the file receiving the node's log and the output of epmd and
// the start script.
func (r *Rabbit) LogPath() string { return r.logPath }
