//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/relay-dev/relay/integration/services"
)

// relayProc is one run of the relay binary, started with nothing in its
// environment but RELAY_* variables, as an operator would run it.
type relayProc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	err     error // valid once done is closed
	logPath string

	mu    sync.Mutex
	tail  []string // last lines of its log, for errors
	pprof string   // base URL of the pprof endpoint, when built with -tags pprof
	ready chan struct{}
}

// clkTck is the kernel's USER_HZ, the unit of utime and stime in
// /proc/<pid>/stat; it is 100 on every Linux architecture Go supports.
const clkTck = 100

// startRelay runs bin with vars, logging to a file named after the scenario
// in dir.
// relayEnv is added to every relay's environment (-relay-env), to compare
// runtime settings such as GOMAXPROCS.
var relayEnv []string

func startRelay(bin, dir, name string, vars []string) (*relayProc, error) {
	p := &relayProc{
		logPath: filepath.Join(dir, name+".relay.log"),
		done:    make(chan struct{}),
		ready:   make(chan struct{}),
	}
	logf, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = vars
	cmd.Env = append(cmd.Env, relayEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	cmd.Stdout = logf
	if err := services.Spawn(cmd); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start relay: %w", err)
	}
	p.cmd, p.started = cmd, time.Now()
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		defer logf.Close()
		p.scan(stderr, logf)
	}()
	go func() {
		// Wait closes the pipe only after the reader is done with it.
		readers.Wait()
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// scan copies the relay's log to w, keeping its tail and noticing the
// pprof endpoint of a -tags pprof build.
func (p *relayProc) scan(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		p.mu.Lock()
		p.tail = append(p.tail, line)
		if len(p.tail) > 20 {
			p.tail = p.tail[1:]
		}
		if addr, ok := strings.CutPrefix(line, "pprof listening on "); ok && p.pprof == "" {
			p.pprof = strings.TrimSpace(addr)
			close(p.ready)
		}
		p.mu.Unlock()
	}
}

func (p *relayProc) pid() int { return p.cmd.Process.Pid }

func (p *relayProc) exited() bool {
	if p == nil {
		return false // no relay: the raw decoder stands in
	}
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// failure describes an early exit with the end of the relay's log.
func (p *relayProc) failure() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return fmt.Errorf("relay exited: %v; log %s ends:\n  %s", p.err, p.logPath, strings.Join(p.tail, "\n  "))
}

// stop sends SIGTERM and waits for a clean exit, which includes the
// relay's final status update to PostgreSQL.
func (p *relayProc) stop() error {
	if p.exited() {
		return p.failure()
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("relay did not stop within 30s of SIGTERM")
	}
	if p.err != nil {
		return p.failure()
	}
	return nil
}

// kill ends the relay regardless, for error paths.
func (p *relayProc) kill() {
	if !p.exited() {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// usage is what /proc says about the relay at one moment.
type usage struct {
	cpu      time.Duration // user + system
	rssKB    int64         // VmRSS
	hwmKB    int64         // VmHWM: peak RSS since start
	sampleAt time.Time
}

func (p *relayProc) usage() (usage, error) {
	u := usage{sampleAt: time.Now()}
	if p == nil {
		return u, nil
	}
	cpu, err := procCPU(p.pid())
	if err != nil {
		return u, err
	}
	u.cpu = cpu
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.pid()) + "/status")
	if err != nil {
		return u, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			u.rssKB = n
		case "VmHWM":
			u.hwmKB = n
		}
	}
	return u, nil
}

// rssSampler records the relay's largest VmRSS between start and stop, for
// a peak over a window rather than since the process began.
type rssSampler struct {
	stopc chan struct{}
	done  chan struct{}
	maxKB int64
}

// procCPU is the user and system CPU process pid has used so far.
func procCPU(pid int) (time.Duration, error) {
	_, cpu, err := procStat(pid)
	return cpu, err
}

// procStat reads process pid's group and CPU so far from /proc.
func procStat(pid int) (pgrp int, cpu time.Duration, err error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// Fields after the command: state is f[0], pgrp (field 5) is f[2],
	// utime (field 14) is f[11].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("short /proc stat: %q", s)
	}
	pgrp, _ = strconv.Atoi(f[2])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return pgrp, time.Duration(ut+st) * time.Second / clkTck, nil
}

// groupCPU is the user and system CPU that the living processes of
// process group pgid have used so far.
func groupCPU(pgid int) (time.Duration, error) {
	if pgid <= 0 {
		return 0, errors.New("no process group")
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		pgrp, cpu, err := procStat(pid)
		if err != nil || pgrp != pgid {
			continue // gone meanwhile, or another group
		}
		total += cpu
	}
	return total, nil
}

func sampleRSS(p *relayProc, every time.Duration) *rssSampler {
	s := &rssSampler{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if u, err := p.usage(); err == nil {
				s.maxKB = max(s.maxKB, u.rssKB)
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() int64 {
	close(s.stopc)
	<-s.done
	return s.maxKB
}

// profile collects a CPU profile of the next seconds and, when ctx's work
// is over, the allocation profile, from a relay built with -tags pprof. It
// returns a function that waits for both and writes them to dir.
func (p *relayProc) profile(ctx context.Context, dir, name string, seconds int) (func() error, error) {
	select {
	case <-p.ready:
	case <-p.done:
		return nil, p.failure()
	case <-time.After(10 * time.Second):
		return nil, fmt.Errorf("relay %s serves no pprof endpoint: build it with -tags pprof (make bench-profile)", p.cmd.Path)
	}
	p.mu.Lock()
	base := p.pprof
	p.mu.Unlock()
	cpuDone := make(chan error, 1)
	go func() {
		cpuDone <- fetch(ctx, base+"/debug/pprof/profile?seconds="+strconv.Itoa(seconds), filepath.Join(dir, name+".cpu.pprof"))
	}()
	return func() error {
		err := fetch(ctx, base+"/debug/pprof/allocs", filepath.Join(dir, name+".allocs.pprof"))
		if cerr := <-cpuDone; err == nil {
			err = cerr
		}
		return err
	}, nil
}

func fetch(ctx context.Context, url, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
