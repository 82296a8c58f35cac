//go:build linux

package services

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

const (
	postgresInstallHint = "apt-get install -y postgresql"
	postgresReadyWithin = 30 * time.Second
	postgresStopWithin  = 30 * time.Second
)

// Postgres is a throwaway PostgreSQL cluster.
//
// The superuser is "postgres" with trust authentication, so URLs need no
// password. The cluster is configured for logical replication because the
// relay reads the WAL through a replication slot.
type Postgres struct {
	// Port is the TCP port on 127.0.0.1; it stays the same across restarts so
	// clients can reconnect with the URL they already have.
	Port int
	// Dir holds the data directory, socket directory and log; Close removes it.
	Dir string

	initdb, postgres string
	dataDir, sockDir string
	logPath          string
	cred             *syscall.Credential

	mu     sync.Mutex
	proc   *proc
	closed bool
}

// PostgresOptions tunes a throwaway cluster.
type PostgresOptions struct {
	// Fast turns fsync off. Only use it where the test does not depend on
	// durability across a host crash; SIGKILL of the server stays safe
	// because the OS page cache survives it.
	Fast bool
	// ExtraConf is appended to postgresql.conf and wins over the defaults
	// set here. Values are quoted for you.
	ExtraConf map[string]string
	// TLS, when set, turns ssl on with this certificate. Connections
	// without TLS are still accepted, except from ClientCertUsers.
	TLS *TLS
	// ClientCertUsers may connect only over TLS with a client certificate
	// whose CN is their name (pg_hba "hostssl … cert"), to databases and
	// for replication; the other users keep trust. Needs TLS.CAFile.
	ClientCertUsers []string
}

// StartPostgres creates a fresh cluster with initdb and starts it on a free
// port, returning once it accepts connections.
//
// PostgreSQL refuses to run as root, so when this process is root the server
// runs as the "postgres" OS user and the directory is chowned to it.
// The caller must Close the cluster; on error nothing is left behind.
func StartPostgres(ctx context.Context, opts PostgresOptions) (*Postgres, error) {
	initdb, postgres, err := findPostgres()
	if err != nil {
		return nil, err
	}
	cred, err := postgresCredential()
	if err != nil {
		return nil, err
	}
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "relaytest-pg-")
	if err != nil {
		return nil, fmt.Errorf("services: postgres temp dir: %w", err)
	}
	p := &Postgres{
		Port:     port,
		Dir:      dir,
		initdb:   initdb,
		postgres: postgres,
		dataDir:  filepath.Join(dir, "data"),
		sockDir:  filepath.Join(dir, "sock"),
		logPath:  filepath.Join(dir, "postgres.log"),
		cred:     cred,
	}
	ok := false
	defer func() {
		if !ok {
			p.Close()
		}
	}()
	if err := os.Mkdir(p.sockDir, 0o700); err != nil {
		return nil, fmt.Errorf("services: postgres socket dir: %w", err)
	}
	if cred != nil {
		for _, d := range []string{dir, p.sockDir} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, fmt.Errorf("services: chown %s to postgres: %w", d, err)
			}
		}
	}
	if err := p.runInitdb(ctx); err != nil {
		return nil, err
	}
	if err := p.writeConf(opts); err != nil {
		return nil, err
	}
	p.mu.Lock()
	err = p.start(ctx)
	p.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ok = true
	return p, nil
}

// findPostgres prefers binaries on PATH (an explicit choice by whoever set
// PATH) and otherwise takes the newest Debian-style install, since Debian
// does not put the server binaries on PATH.
func findPostgres() (initdb, postgres string, err error) {
	if i, err := exec.LookPath("initdb"); err == nil {
		if p := filepath.Join(filepath.Dir(i), "postgres"); isExecutable(p) {
			return i, p, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(a, b int) bool {
		return versionLess(filepath.Base(filepath.Dir(dirs[b])), filepath.Base(filepath.Dir(dirs[a])))
	})
	for _, d := range dirs {
		i, p := filepath.Join(d, "initdb"), filepath.Join(d, "postgres")
		if isExecutable(i) && isExecutable(p) {
			return i, p, nil
		}
	}
	return "", "", fmt.Errorf("services: PostgreSQL server binaries (initdb, postgres) not found on PATH or in /usr/lib/postgresql/*/bin; install them with: %s", postgresInstallHint)
}

func isExecutable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
}

// versionLess compares dotted versions numerically so that 10 sorts after 9.6.
func versionLess(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) || i < len(pb); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x < y
		}
	}
	return false
}

func postgresCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("services: running as root, so PostgreSQL must run as the \"postgres\" OS user, but it does not exist (%v); install it with: %s", err, postgresInstallHint)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("services: bad uid/gid for user postgres: %q/%q", u.Uid, u.Gid)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (p *Postgres) openLog() (*os.File, error) {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("services: postgres log: %w", err)
	}
	return f, nil
}

func (p *Postgres) command(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(bin, args...)
	cmd.Dir = p.Dir
	// PGPORT, PGDATA etc. are meant for the system cluster.
	cmd.Env = cleanEnv("PG")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	return cmd
}

func (p *Postgres) runInitdb(ctx context.Context) error {
	logf, err := p.openLog()
	if err != nil {
		return err
	}
	defer logf.Close()
	// --no-sync only affects initdb's own final flush; the running server's
	// durability is governed by the config written afterwards.
	cmd := p.command(p.initdb, "-D", p.dataDir, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync")
	cmd.Stdout, cmd.Stderr = logf, logf
	pr, err := startProc(cmd)
	if err != nil {
		return fmt.Errorf("services: start initdb: %w", err)
	}
	select {
	case <-pr.done:
	case <-ctx.Done():
		_ = pr.killAll(10 * time.Second)
		return ctx.Err()
	}
	if pr.err != nil {
		return withLog(fmt.Errorf("services: initdb failed: %w", pr.err), p.logPath)
	}
	return nil
}

// writeConf puts the settings into postgresql.conf rather than on the command
// line so Restart, and anyone poking at the cluster by hand, get the same ones.
func (p *Postgres) writeConf(opts PostgresOptions) error {
	conf := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"port":                    strconv.Itoa(p.Port),
		"unix_socket_directories": p.sockDir,
		"wal_level":               "logical",
		"max_replication_slots":   "20",
		"max_wal_senders":         "20",
		"logging_collector":       "off",
		"log_line_prefix":         "%m [%p] ",
	}
	if opts.Fast {
		conf["fsync"] = "off"
	}
	if opts.TLS != nil {
		files, err := opts.TLS.install(p.Dir, p.cred)
		if err != nil {
			return err
		}
		conf["ssl"] = "on"
		conf["ssl_cert_file"] = files.cert
		conf["ssl_key_file"] = files.key
		if files.ca != "" {
			conf["ssl_ca_file"] = files.ca
		}
	}
	if err := p.requireClientCerts(opts); err != nil {
		return err
	}
	for k, v := range opts.ExtraConf {
		conf[k] = v
	}
	keys := make([]string, 0, len(conf))
	for k := range conf {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString("\n# Added by github.com/relay-dev/relay/integration/services.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(conf[k], "'", "''"))
	}
	f, err := os.OpenFile(filepath.Join(p.dataDir, "postgresql.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("services: postgresql.conf: %w", err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("services: postgresql.conf: %w", err)
	}
	return f.Close()
}

// requireClientCerts puts lines for opts.ClientCertUsers before initdb's
// trust lines in pg_hba.conf: the first line that matches decides.
func (p *Postgres) requireClientCerts(opts PostgresOptions) error {
	if len(opts.ClientCertUsers) == 0 {
		return nil
	}
	if opts.TLS == nil || opts.TLS.CAFile == "" {
		return errors.New("services: ClientCertUsers needs TLS with a CAFile")
	}
	path := filepath.Join(p.dataDir, "pg_hba.conf")
	old, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("services: pg_hba.conf: %w", err)
	}
	var b strings.Builder
	b.WriteString("# Added by github.com/relay-dev/relay/integration/services.\n")
	for _, u := range opts.ClientCertUsers {
		for _, db := range []string{"all", "replication"} {
			fmt.Fprintf(&b, "hostssl %s %s 127.0.0.1/32 cert\n", db, u)
			fmt.Fprintf(&b, "host %s %s 127.0.0.1/32 reject\n", db, u)
		}
	}
	// Written in place, so the file keeps its owner.
	if err := os.WriteFile(path, append([]byte(b.String()), old...), 0); err != nil {
		return fmt.Errorf("services: pg_hba.conf: %w", err)
	}
	return nil
}

// start launches the postmaster and waits until it serves queries. p.mu held.
func (p *Postgres) start(ctx context.Context) error {
	logf, err := p.openLog()
	if err != nil {
		return err
	}
	cmd := p.command(p.postgres, "-D", p.dataDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	pr, err := startProc(cmd)
	logf.Close()
	if err != nil {
		return fmt.Errorf("services: start postgres: %w", err)
	}
	p.proc = pr
	err = pollUntil(ctx, postgresReadyWithin, 20*time.Millisecond, func(ctx context.Context) (bool, error) {
		if pr.exited() {
			return false, errFatal{fmt.Errorf("postgres exited during startup: %v", pr.err)}
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, p.URL("postgres"))
		if err != nil {
			return false, err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(cctx, "SELECT 1")
		return err == nil, err
	})
	if err != nil {
		_ = pr.killAll(10 * time.Second)
		p.proc = nil
		return withLog(fmt.Errorf("services: postgres on port %d not ready: %w", p.Port, err), p.logPath)
	}
	return nil
}

// URL returns a connection URL for database db as the superuser.
func (p *Postgres) URL(db string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     "127.0.0.1:" + strconv.Itoa(p.Port),
		Path:     "/" + db,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// SocketURL is URL through the server's Unix socket instead of TCP, for
// user (with password, empty for none) on db.
func (p *Postgres) SocketURL(user, password, db string) string {
	u := &url.URL{Scheme: "postgres", Path: "/" + db}
	if password != "" {
		u.User = url.UserPassword(user, password)
	} else {
		u.User = url.User(user)
	}
	u.RawQuery = url.Values{"host": {p.sockDir}, "port": {strconv.Itoa(p.Port)}, "sslmode": {"disable"}}.Encode()
	return u.String()
}

// CreateDatabase creates database name, since a fresh cluster has only
// "postgres" and tests usually want one database each.
func (p *Postgres) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, p.URL("postgres"))
	if err != nil {
		return fmt.Errorf("services: create database %q: %w", name, err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return fmt.Errorf("services: create database %q: %w", name, err)
	}
	return nil
}

// Psql runs script with psql, the client installed with the server, as the
// superuser on database db, stopping at the first error, from directory dir:
// a relative \i or \ir in the script reads a file there. It returns what
// psql printed.
func (p *Postgres) Psql(ctx context.Context, db, dir, script string) (string, error) {
	psql, err := p.findPsql()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", p.URL(db))
	cmd.Dir = dir
	cmd.Env = cleanEnv("PG")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("services: psql on %s: %w: %s", db, err, out)
	}
	return string(out), nil
}

// findPsql prefers the psql installed with the server's initdb (next to it,
// or next to what a symbolic link named initdb points to), then the one on
// PATH.
func (p *Postgres) findPsql() (string, error) {
	dirs := []string{filepath.Dir(p.initdb)}
	if real, err := filepath.EvalSymlinks(p.initdb); err == nil {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, d := range dirs {
		if psql := filepath.Join(d, "psql"); isExecutable(psql) {
			return psql, nil
		}
	}
	if psql, err := exec.LookPath("psql"); err == nil {
		return psql, nil
	}
	return "", fmt.Errorf("services: psql not found next to %s or on PATH; install it with: %s", p.initdb, postgresInstallHint)
}

// Stop shuts the server down cleanly (SIGINT, PostgreSQL's "fast" mode:
// abort sessions, checkpoint, exit) and waits for it. It falls back to
// SIGKILL if shutdown hangs. Stopping a stopped server is a no-op.
func (p *Postgres) Stop() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stopLocked()
}

func (p *Postgres) stopLocked() error {
	if p.proc == nil {
		return nil
	}
	err := p.proc.stop(syscall.SIGINT, postgresStopWithin)
	p.proc = nil
	return err
}

// Kill SIGKILLs the postmaster and its backends, like a crash or OOM kill,
// and waits until they are gone. The next Restart does crash recovery.
func (p *Postgres) Kill() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	err := p.proc.killAll(10 * time.Second)
	p.proc = nil
	return err
}

// Restart starts the server again on the same port and data directory and
// waits until it is ready. A running server is stopped cleanly first.
func (p *Postgres) Restart(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("services: postgres restart after Close")
	}
	if err := p.stopLocked(); err != nil {
		return err
	}
	p.clearStaleLock()
	return p.start(ctx)
}

// Close stops the server and removes Dir. It is safe to call more than once.
func (p *Postgres) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.stopLocked()
	// After a Kill the SysV shared memory header outlives the processes and
	// would otherwise pile up, one segment per killed test cluster.
	removeStaleShm(filepath.Join(p.dataDir, "postmaster.pid"))
	if rerr := os.RemoveAll(p.Dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// LogPath is the file receiving the server's stderr, including initdb output.
func (p *Postgres) LogPath() string { return p.logPath }

// clearStaleLock handles a postmaster.pid left by Kill. PostgreSQL cleans up
// a stale lock file itself, including its shared memory, unless the recorded
// PID now belongs to some other live process (PID reuse is common in
// containers); then it refuses to start, so the file must go. Our postmaster
// is known to be dead whenever this runs. p.mu held.
func (p *Postgres) clearStaleLock() {
	lock := filepath.Join(p.dataDir, "postmaster.pid")
	b, err := os.ReadFile(lock)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil {
		return
	}
	if pi, ok := readProc(pid); ok && !pi.zombie {
		removeStaleShm(lock)
		_ = os.Remove(lock)
	}
}

// removeStaleShm removes the SysV segment recorded in a postmaster.pid file
// if no process is attached to it. Best effort: it shells out to ipcrm
// because the standard library has no portable shmctl.
func removeStaleShm(lockFile string) {
	b, err := os.ReadFile(lockFile)
	if err != nil {
		return
	}
	lines := strings.Split(string(b), "\n")
	// Line 7 of postmaster.pid is "<shmem key> <shmid>".
	if len(lines) < 7 {
		return
	}
	f := strings.Fields(lines[6])
	if len(f) != 2 {
		return
	}
	key, shmid := f[0], f[1]
	tbl, err := os.ReadFile("/proc/sysvipc/shm")
	if err != nil {
		return
	}
	for _, row := range strings.Split(string(tbl), "\n")[1:] {
		c := strings.Fields(row)
		// key shmid perms size cpid lpid nattch ...
		if len(c) < 7 || c[0] != key || c[1] != shmid || c[6] != "0" {
			continue
		}
		_ = exec.Command("ipcrm", "-m", shmid).Run()
	}
}
