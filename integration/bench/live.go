//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// liveClients is how many sessions commit outbox rows in the live scenario.
const liveClients = 16

// load commits one outbox row per transaction (durably: synchronous_commit
// stays on, as in an application) from liveClients sessions: rate rows a
// second, spread evenly, or as fast as the sessions can when rate is 0. It
// returns when dur has passed and every started insert has committed, with
// when each row's commit was acknowledged, by row number.
func load(ctx context.Context, db *database, rate int, dur time.Duration, next *atomic.Int64, committed *atomic.Int64) (map[int64]time.Time, error) {
	conns := make([]*pgx.Conn, liveClients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.WithoutCancel(ctx))
			}
		}
	}()
	for i := range conns {
		c, err := pgx.Connect(ctx, db.url)
		if err != nil {
			return nil, err
		}
		conns[i] = c
		if _, err := c.Prepare(ctx, "insert", liveInsertSQL); err != nil {
			return nil, err
		}
	}
	type commit struct {
		n  int64
		at time.Time
	}
	acks := make([][]commit, len(conns))
	end := time.Now().Add(dur)
	var jobs chan struct{}
	if rate > 0 {
		jobs = make(chan struct{}, liveClients)
	}
	var wg sync.WaitGroup
	errs := make(chan error, liveClients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if jobs != nil {
					if _, ok := <-jobs; !ok {
						return
					}
				} else if time.Now().After(end) {
					return
				}
				n := next.Add(1)
				if _, err := c.Exec(ctx, "insert", n); err != nil {
					errs <- err
					return
				}
				acks[i] = append(acks[i], commit{n, time.Now()})
				committed.Add(1)
			}
		}()
	}
	if jobs != nil {
		start := time.Now()
		issued := 0
		t := time.NewTicker(time.Millisecond)
	dispatch:
		for now := range t.C {
			if now.After(end) || ctx.Err() != nil {
				break
			}
			// When the sessions fall behind, sends block and the achieved
			// rate, reported, falls short of the target.
			for due := int(float64(rate) * now.Sub(start).Seconds()); issued < due; issued++ {
				if time.Now().After(end) {
					break dispatch
				}
				select {
				case jobs <- struct{}{}:
				case <-ctx.Done():
					break dispatch
				}
			}
		}
		t.Stop()
		close(jobs)
	}
	wg.Wait()
	select {
	case err := <-errs:
		return nil, err
	default:
	}
	at := make(map[int64]time.Time, committed.Load())
	for _, l := range acks {
		for _, c := range l {
			at[c.n] = c.at
		}
	}
	return at, ctx.Err()
}

// liveRun is one rate of the live scenario against a running relay.
type liveRun struct {
	rate       int // 0: as fast as liveClients sessions can
	committed  int64
	seconds    float64
	lat        []time.Duration // from the commit's acknowledgement to receipt
	latInsert  []time.Duration // from the insert statement (payload ts) to receipt
	lagSamples []int64         // committed - received, every 100 ms while loading
	lagEnd     int64           // when loading stopped
	catchup    time.Duration
	cpu        time.Duration // the relay's
	pgCPU      time.Duration // the walsender's
	brokerCPU  time.Duration
	rssMaxKB   int64
}

// meter reads the CPU used so far by the walsender of the stream and by
// the broker (0 where there is none).
type meter func(context.Context) (pg, broker time.Duration)

// runLive drives one rate against the relay p (nil: the raw decoder
// reads the slot) whose rows rc receives, and waits until rc has every
// row.
func runLive(ctx context.Context, db *database, p *relayProc, rc *receiver, m meter, rate int, dur time.Duration, next *atomic.Int64) (liveRun, error) {
	run := liveRun{rate: rate}
	var committed atomic.Int64
	base := rc.received.Load()
	rc.take()
	u0, err := p.usage()
	if err != nil {
		return run, err
	}
	pg0, broker0 := m(ctx)
	rss := sampleRSS(p, 100*time.Millisecond)
	lagDone := make(chan struct{})
	stopLag := make(chan struct{})
	go func() {
		defer close(lagDone)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopLag:
				return
			case <-t.C:
				run.lagSamples = append(run.lagSamples, committed.Load()-(rc.received.Load()-base))
			}
		}
	}()
	start := time.Now()
	commits, err := load(ctx, db, rate, dur, next, &committed)
	run.seconds = time.Since(start).Seconds()
	close(stopLag)
	<-lagDone
	run.committed = committed.Load()
	run.lagEnd = run.committed - (rc.received.Load() - base)
	if err != nil {
		rss.stop()
		return run, fmt.Errorf("load at %d/s: %w", rate, err)
	}
	loaded := time.Now()
	deadline := loaded.Add(2 * time.Minute)
	for rc.received.Load()-base < run.committed {
		if p.exited() {
			rss.stop()
			return run, p.failure()
		}
		if time.Now().After(deadline) {
			rss.stop()
			return run, fmt.Errorf("live %d/s: %d of %d rows received two minutes after the load stopped", rate, rc.received.Load()-base, run.committed)
		}
		time.Sleep(5 * time.Millisecond)
	}
	run.catchup = time.Since(loaded)
	run.rssMaxKB = rss.stop()
	u1, err := p.usage()
	if err != nil {
		return run, err
	}
	run.cpu = u1.cpu - u0.cpu
	pg1, broker1 := m(ctx)
	run.pgCPU, run.brokerCPU = pg1-pg0, broker1-broker0
	for _, r := range rc.take() {
		c, ok := commits[r.n]
		if !ok {
			return run, fmt.Errorf("received row %d, which this run did not commit", r.n)
		}
		// The relay can receive a row before the commit's acknowledgement
		// reaches the session; that counts as no latency.
		run.lat = append(run.lat, max(r.at.Sub(c), 0))
		run.latInsert = append(run.latInsert, r.at.Sub(time.UnixMicro(r.ts)))
	}
	if n := rc.bad.Load(); n > 0 {
		return run, fmt.Errorf("%d messages without ts or order_id in their payload", n)
	}
	if got := rc.received.Load() - base; got != run.committed {
		return run, fmt.Errorf("live %d/s: %d rows committed, %d received (duplicates?)", rate, run.committed, got)
	}
	if len(run.lat) == 0 {
		return run, errors.New("no latencies recorded")
	}
	return run, nil
}

// percentile of sorted latencies, in milliseconds.
func percentile(sorted []time.Duration, p float64) float64 {
	i := min(int(p*float64(len(sorted))), len(sorted)-1)
	return float64(sorted[i]) / float64(time.Millisecond)
}

// bounded judges the lag over a run: it is bounded when the second half
// of the run never fell further behind than the first half did (with a
// margin of a tenth of a second of the achieved rate) and the relay caught
// up within two seconds of the load stopping. A relay slower than the
// insert rate fails both.
func (r liveRun) bounded() bool {
	n := len(r.lagSamples)
	if n < 4 {
		return r.catchup < 2*time.Second
	}
	first := slices.Max(r.lagSamples[:n/2])
	second := slices.Max(r.lagSamples[n/2:])
	margin := int64(float64(r.committed)/r.seconds/10) + 100
	return second <= first+margin && r.catchup < 2*time.Second
}
