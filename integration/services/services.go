//go:build linux

// Package services starts throwaway PostgreSQL, RabbitMQ and Kafka-protocol
// (kfake) instances for tests, the demo and benchmarks.
//
// Every instance is private: it lives in its own temporary directory, listens
// only on 127.0.0.1 on ports chosen at start, and never talks to the machine's
// own PostgreSQL (5432), RabbitMQ (5672) or epmd (4369). That isolation is the
// point: tests can SIGKILL and restart a server to exercise crash paths without
// disturbing anything else on the host, and parallel test binaries cannot
// trample each other's state.
//
// Child processes are started in their own process group with
// Pdeathsig=SIGKILL from a dedicated, permanently locked OS thread, so the
// servers die with the test binary even when it is killed before Close runs.
//
// The package is Linux-only because it relies on Pdeathsig and /proc.
package services

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

var ports struct {
	mu    sync.Mutex
	given map[int]bool
}

// FreePort returns a TCP port on 127.0.0.1 that nothing is listening on.
//
// Ports are picked below the kernel's ephemeral range when possible: services
// here are killed and restarted on the same port, and a port from the
// ephemeral range could meanwhile be taken as the source port of some outgoing
// connection, making the restart fail with EADDRINUSE. A port is never handed
// out twice by one process, so several services started together cannot
// collide with each other.
func FreePort() (int, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.given == nil {
		ports.given = map[int]bool{}
	}
	try := func(port int) (int, bool) {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			return 0, false
		}
		got := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if ports.given[got] {
			return 0, false
		}
		ports.given[got] = true
		return got, true
	}
	const lowest = 10000
	if ephemeralLow := ephemeralPortLow(); ephemeralLow > lowest+1000 {
		for range 100 {
			if p, ok := try(lowest + rand.IntN(ephemeralLow-lowest)); ok {
				return p, nil
			}
		}
	}
	for range 100 {
		if p, ok := try(0); ok {
			return p, nil
		}
	}
	return 0, errors.New("services: no free TCP port found on 127.0.0.1")
}

func ephemeralPortLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0
	}
	n, _ := strconv.Atoi(f[0])
	return n
}

// Pdeathsig is delivered when the *thread* that forked the child exits, not
// the process. Go may retire OS threads, so all children are forked from one
// goroutine that locks its thread and never returns: that thread then lives
// exactly as long as the test binary.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd *exec.Cmd
	err chan error
}

// Spawn starts cmd from that thread. A cmd with Pdeathsig set then dies
// with this process, even when the process is killed.
func Spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread()
			for r := range spawner.reqs {
				r.err <- r.cmd.Start()
			}
		}()
	})
	r := spawnReq{cmd: cmd, err: make(chan error, 1)}
	spawner.reqs <- r
	return <-r.err
}

// proc is one started server process plus the bookkeeping needed to be sure
// it and everything it forked are gone.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid once done is closed
}

// startProc starts cmd in a new process group that dies with this process.
func startProc(cmd *exec.Cmd) (*proc, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := Spawn(cmd); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// freeze SIGSTOPs the process and its descendants: they keep their
// sockets open and do nothing until killed.
func (p *proc) freeze() error {
	root := p.pid()
	if err := syscall.Kill(root, syscall.SIGSTOP); err != nil {
		return err
	}
	for _, pid := range related(root, true) {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	return nil
}

// thaw SIGCONTs what freeze stopped.
func (p *proc) thaw() {
	root := p.pid()
	for _, pid := range related(root, true) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
	_ = syscall.Kill(root, syscall.SIGCONT)
}

// stop asks the process to exit with sig and falls back to killAll after
// timeout. Leftovers in its process group are swept either way.
func (p *proc) stop(sig syscall.Signal, timeout time.Duration) error {
	if !p.exited() {
		_ = syscall.Kill(p.pid(), sig)
		select {
		case <-p.done:
		case <-time.After(timeout):
		}
	}
	return p.killAll(10 * time.Second)
}

// killAll SIGKILLs the process, its process group and all its descendants and
// waits until none of them runs any more.
//
// The group alone is not enough: PostgreSQL backends call setsid(), so they
// leave the postmaster's group, and a surviving backend keeps the old shared
// memory attached, which makes the next start refuse to run. The root is
// stopped first so it cannot fork while its children are being collected.
func (p *proc) killAll(timeout time.Duration) error {
	root := p.pid()
	alive := !p.exited()
	if alive {
		_ = syscall.Kill(root, syscall.SIGSTOP)
	}
	victims := related(root, alive)
	for _, pid := range victims {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if alive {
		_ = syscall.Kill(root, syscall.SIGKILL)
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		return fmt.Errorf("services: pid %d did not exit within %v of SIGKILL", root, timeout)
	}
	return waitGone(victims, timeout)
}

type procInfo struct {
	pid, ppid, pgrp int
	zombie          bool
}

func readProcs() []procInfo {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pi, ok := readProc(pid); ok {
			out = append(out, pi)
		}
	}
	return out
}

func readProc(pid int) (procInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procInfo{}, false
	}
	// comm may contain spaces and parentheses; fields resume after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 3 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgrp, _ := strconv.Atoi(f[2])
	return procInfo{pid: pid, ppid: ppid, pgrp: pgrp, zombie: f[0] == "Z" || f[0] == "X"}, true
}

// related lists live descendants of root and members of root's process group.
// Descendants are only looked up while root is unreaped: afterwards its pid
// may belong to someone else.
func related(root int, rootAlive bool) []int {
	procs := readProcs()
	children := map[int][]int{}
	set := map[int]bool{}
	for _, pi := range procs {
		children[pi.ppid] = append(children[pi.ppid], pi.pid)
		if pi.pgrp == root && pi.pid != root && !pi.zombie {
			set[pi.pid] = true
		}
	}
	if rootAlive {
		queue := []int{root}
		for len(queue) > 0 {
			n := queue[0]
			queue = queue[1:]
			for _, c := range children[n] {
				if !set[c] {
					set[c] = true
					queue = append(queue, c)
				}
			}
		}
	}
	out := make([]int, 0, len(set))
	for pid := range set {
		out = append(out, pid)
	}
	return out
}

// waitGone polls until every pid has exited. Zombies count as gone because
// orphans are reparented to PID 1, which in some containers never reaps them.
func waitGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range pids {
			if pi, ok := readProc(pid); ok && !pi.zombie {
				left = append(left, pid)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("services: processes %v still running %v after SIGKILL", left, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pollUntil calls check every interval until it reports done, returns an
// error, ctx ends or timeout passes. It exists so that waiting for a server
// never depends on a guessed fixed sleep.
func pollUntil(ctx context.Context, timeout, interval time.Duration, check func(ctx context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(interval)
	defer t.Stop()
	var last error
	for {
		done, err := check(ctx)
		if done {
			return nil
		}
		var fatal errFatal
		if errors.As(err, &fatal) {
			return fatal.err
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// errFatal wraps an error that makes further polling pointless.
type errFatal struct{ err error }

func (e errFatal) Error() string { return e.err.Error() }

// logTail returns the end of a log file so start errors carry the server's
// own explanation instead of just "timed out".
func logTail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 4000
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(st.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	s := string(b)
	if len(b) == max {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return strings.TrimSpace(s)
}

// withLog appends the log tail to err.
func withLog(err error, path string) error {
	tail := logTail(path)
	if tail == "" {
		return fmt.Errorf("%w (log: %s)", err, path)
	}
	var b strings.Builder
	sc := bufio.NewScanner(strings.NewReader(tail))
	for sc.Scan() {
		b.WriteString("\n    | ")
		b.WriteString(sc.Text())
	}
	return fmt.Errorf("%w\nlast lines of %s:%s", err, path, b.String())
}

// cleanEnv returns the environment minus variables with any of the given
// prefixes, so settings meant for the system servers (PGPORT, RABBITMQ_*,
// ERL_FLAGS, ...) cannot leak into private instances.
func cleanEnv(dropPrefixes ...string) []string {
	var out []string
next:
	for _, kv := range os.Environ() {
		for _, p := range dropPrefixes {
			if strings.HasPrefix(kv, p) {
				continue next
			}
		}
		out = append(out, kv)
	}
	return out
}
