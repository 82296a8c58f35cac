package relay

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The core without PostgreSQL or a broker: a fake source sends rows, one
// transaction each, and a fake sink gives the broker's verdicts.

// fakeSource sends copies of its events, one transaction each, with the
// mark of each transaction's end (CommitLSN+1), in every session; fail, when set, ends
// a session with its error after sending. It reports every position the
// core gives it on positions, and on shutdown waits up to a second for
// its rows, as a real source does.
type fakeSource struct {
	events    []*Event
	fail      func(session int) error
	sessions  atomic.Int32
	positions chan LSN
	// final is the position the source read when it stopped.
	final atomic.Uint64
}

func (s *fakeSource) Stream(ctx context.Context, out chan<- Item, pos *Progress) error {
	session := int(s.sessions.Add(1))
	var sent uint64
	defer func() {
		close(out)
		wctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = pos.Wait(wctx, sent)
		s.final.Store(uint64(pos.LSN()))
	}()
	// Each transaction's end goes with the next row, as pgsource sends
	// it, and the last one alone.
	var mark LSN
	for _, tmpl := range s.events {
		ev := *tmpl // a session reads its own events
		select {
		case out <- Item{Mark: mark, Event: &ev}:
		case <-ctx.Done():
			return ctx.Err()
		}
		mark = ev.CommitLSN + 1
		sent++
	}
	select {
	case out <- Item{Mark: mark}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if s.fail != nil {
		if err := s.fail(session); err != nil {
			return err
		}
	}
	last := LSN(0)
	for {
		if p := pos.LSN(); p != last {
			last = p
			select {
			case s.positions <- p:
			default:
			}
		}
		select {
		case <-pos.Changed():
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// fakeSink records what it is given and answers with verdict: nil
// confirms; an error refuses. n counts the earlier publishes of the same
// row as the same kind (row, dead letter, bare dead letter). With hold
// the answers wait for release; sync, when set, is Publish's own error.
type fakeSink struct {
	verdict func(ev *Event, n int) error
	sync    func(ev *Event) error
	hold    bool

	mu     sync.Mutex
	got    []Event
	counts map[string]int
	held   []*Event
	errs   map[*Event]error
}

func kind(ev *Event) string {
	switch {
	case strings.Contains(ev.DeadLetter, "its dead letter was refused too"):
		return ev.ID + "/bare"
	case ev.DeadLetter != "":
		return ev.ID + "/dead"
	}
	return ev.ID
}

func (s *fakeSink) Publish(_ context.Context, ev *Event) error {
	ev.Destination = "events"
	if ev.DeadLetter != "" {
		ev.Destination = "dead"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, *ev)
	if s.sync != nil {
		if err := s.sync(ev); err != nil {
			return err
		}
	}
	if s.counts == nil {
		s.counts, s.errs = map[string]int{}, map[*Event]error{}
	}
	var err error
	if s.verdict != nil {
		err = s.verdict(ev, s.counts[kind(ev)])
	}
	s.counts[kind(ev)]++
	if s.hold {
		s.held = append(s.held, ev)
		s.errs[ev] = err
		return nil
	}
	go ev.Done(err)
	return nil
}

func (s *fakeSink) Close(context.Context) error { return nil }

// release answers the held events, last first.
func (s *fakeSink) release(t *testing.T, pos func() LSN) {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
	for i := len(held) - 1; i >= 0; i-- {
		held[i].Done(s.errs[held[i]])
	}
}

func (s *fakeSink) published() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, ev := range s.got {
		out = append(out, kind(&ev))
	}
	return out
}

func (s *fakeSink) heldCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.held)
}

// fakeObserver counts what the core reports.
type fakeObserver struct {
	mu           sync.Mutex
	published    map[string]int // by destination
	errors       map[string]int // by reason
	deadLettered int
	blocked      []bool
	restarts     int
}

func (o *fakeObserver) Published(_, destination string, _ time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.published == nil {
		o.published = map[string]int{}
	}
	o.published[destination]++
}

func (o *fakeObserver) PublishError(_, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.errors == nil {
		o.errors = map[string]int{}
	}
	o.errors[reason]++
}

func (o *fakeObserver) DeadLettered(string) { o.mu.Lock(); o.deadLettered++; o.mu.Unlock() }
func (o *fakeObserver) InFlight(int)        {}
func (o *fakeObserver) Blocked(on bool) {
	o.mu.Lock()
	o.blocked = append(o.blocked, on)
	o.mu.Unlock()
}
func (o *fakeObserver) SessionRestart() { o.mu.Lock(); o.restarts++; o.mu.Unlock() }

func (o *fakeObserver) snapshot() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprintf("published %v, errors %v, dead-lettered %d, blocked %v, restarts %d", o.published, o.errors, o.deadLettered, o.blocked, o.restarts)
}

func rows(ids ...string) []*Event {
	evs := make([]*Event, len(ids))
	for i, id := range ids {
		evs[i] = &Event{ID: id, Table: "public.outbox", Payload: []byte("payload"), Headers: []Header{{Key: "h", Value: "v"}}, CommitLSN: LSN(10 * (i + 1))}
	}
	return evs
}

// run runs the core until stop returns true or 10 s pass, then shuts it
// down and returns Run's error.
func run(t *testing.T, r *Relay, stop func() bool) error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for !stop() {
		select {
		case err := <-done:
			cancel()
			return err
		case <-time.After(time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("the condition was not reached within 10 s")
		}
	}
	cancel()
	return <-done
}

func reached(src *fakeSource, want LSN) func() bool {
	return func() bool {
		for {
			select {
			case p := <-src.positions:
				if p >= want {
					return true
				}
			default:
				return false
			}
		}
	}
}

var errRefused = errors.New("the broker refuses it")

func refuse(id string, kinds ...string) func(ev *Event, n int) error {
	return func(ev *Event, n int) error {
		if ev.ID == id && slices.Contains(kinds, strings.TrimPrefix(kind(ev), id)) {
			return BadRow(ev, errRefused)
		}
		return nil
	}
}

// TestTheCoreDecidesEachRowsFate: every way a row can end, and what the
// source is told, the stream does and the metrics count.
func TestTheCoreDecidesEachRowsFate(t *testing.T) {
	tests := []struct {
		name       string
		deadLetter bool
		invalid    bool // the source could not read row b
		verdict    func(ev *Event, n int) error
		sync       func(ev *Event) error
		// want: what the sink was given, the position reached (0: the
		// stream stops at b), and Run's error.
		wantPublished []string
		// maybe may be published too: what the sink took before a
		// refusal it reported later stopped the session.
		maybe        []string
		wantSafe     LSN
		wantBlocked  bool
		wantErr      string
		wantObserved string
	}{
		{
			name:          "every row confirmed",
			wantPublished: []string{"a", "b", "c"},
			wantSafe:      31,
			wantObserved:  "published map[events:3], errors map[], dead-lettered 0, blocked [], restarts 0",
		},
		{
			name:    "bad row without a dead-letter destination stops the stream before it",
			verdict: refuse("b", ""), wantPublished: []string{"a", "b"}, maybe: []string{"c"},
			wantBlocked: true,
		},
		{
			name: "bad row dead-lettered", deadLetter: true,
			verdict: refuse("b", ""), wantPublished: []string{"a", "b", "c", "b/dead"},
			wantSafe:     31,
			wantObserved: "published map[dead:1 events:2], errors map[bad_row:1], dead-lettered 1, blocked [], restarts 0",
		},
		{
			name: "unreadable row dead-lettered without being published", deadLetter: true, invalid: true,
			wantPublished: []string{"a", "b/dead", "c"},
			wantSafe:      31,
			wantObserved:  "published map[dead:1 events:2], errors map[bad_row:1], dead-lettered 1, blocked [], restarts 0",
		},
		{
			name: "unreadable row without a dead-letter destination", invalid: true,
			wantPublished: []string{"a"},
			wantBlocked:   true,
		},
		{
			name: "dead letter refused, a bare one goes", deadLetter: true,
			verdict: refuse("b", "", "/dead"), wantPublished: []string{"a", "b", "c", "b/dead", "b/bare"},
			wantSafe:     31,
			wantObserved: "published map[dead:1 events:2], errors map[bad_row:2], dead-lettered 1, blocked [], restarts 0",
		},
		{
			name: "bare dead letter refused too stops the stream", deadLetter: true,
			verdict: refuse("b", "", "/dead", "/bare"), wantPublished: []string{"a", "b", "b/dead", "b/bare"}, maybe: []string{"c"},
			wantBlocked: true,
		},
		{
			name: "refused synchronously by the sink", deadLetter: true,
			sync: func(ev *Event) error {
				if kind(ev) == "b" {
					return BadRow(ev, fmt.Errorf("%w: 2 MB", ErrTooLarge))
				}
				return nil
			},
			wantPublished: []string{"a", "b", "b/dead", "c"},
			wantSafe:      31,
			wantObserved:  "published map[dead:1 events:2], errors map[too_large:1], dead-lettered 1, blocked [], restarts 0",
		},
		{
			name: "permanent sink error stops the relay",
			verdict: func(ev *Event, _ int) error {
				if ev.ID == "b" {
					return Permanent(errors.New("access refused"))
				}
				return nil
			},
			wantPublished: []string{"a", "b"}, maybe: []string{"c"},
			wantErr: "publish event b: access refused",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			evs := rows("a", "b", "c")
			if tt.invalid {
				evs[1].Invalid = BadRow(evs[1], errors.New("payload is not JSON"))
			}
			src := &fakeSource{events: evs, positions: make(chan LSN, 100)}
			sink := &fakeSink{verdict: tt.verdict, sync: tt.sync}
			obs := &fakeObserver{}
			var mu sync.Mutex
			var deadLettered []string // as OnPublished sees them
			onPublished := func(ev *Event) {
				mu.Lock()
				defer mu.Unlock()
				if ev.DeadLettered() {
					deadLettered = append(deadLettered, ev.ID)
				}
			}
			r := New(Config{Source: src, Sink: sink, DeadLetter: tt.deadLetter, BlockedRetry: time.Hour, Observer: obs, OnPublished: onPublished})
			stop := reached(src, tt.wantSafe)
			if tt.wantBlocked {
				stop = func() bool { return r.Blocked() != nil }
			}
			err := run(t, r, stop)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Run: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Run: %v, want %q", err, tt.wantErr)
			}
			got := sink.published()
			// Dead letters go out when the broker answers: compare as sets
			// of rows, and require each row before its own dead letter.
			if !sameElements(slices.DeleteFunc(slices.Clone(got), func(k string) bool { return slices.Contains(tt.maybe, k) }), tt.wantPublished) {
				t.Errorf("published %v, want %v", got, tt.wantPublished)
			}
			if i, j := slices.Index(got, "b"), slices.Index(got, "b/dead"); i >= 0 && j >= 0 && j < i {
				t.Errorf("published %v: a dead letter before its row", got)
			}
			sink.mu.Lock()
			for _, ev := range sink.got {
				if kind(&ev) == ev.ID+"/bare" && (len(ev.Payload) != 0 || len(ev.Headers) != 0 || ev.OmittedPayload != len("payload")) {
					t.Errorf("bare dead letter with payload %q, headers %v, omitted %d: want neither, and the payload's size", ev.Payload, ev.Headers, ev.OmittedPayload)
				}
			}
			sink.mu.Unlock()
			if tt.wantBlocked {
				if b := r.Blocked(); b == nil || b.ID != "b" {
					t.Fatalf("blocked at %v, want row b", b)
				}
				if final := LSN(src.final.Load()); final > 11 {
					t.Errorf("the source stopped at %s, past row b (at 20)", final)
				}
			}
			mu.Lock()
			if obs.deadLettered != len(deadLettered) || slices.ContainsFunc(deadLettered, func(id string) bool { return id != "b" }) {
				t.Errorf("OnPublished saw %v dead-lettered, the observer %d", deadLettered, obs.deadLettered)
			}
			mu.Unlock()
			if tt.wantObserved != "" {
				if got := obs.snapshot(); got != tt.wantObserved {
					t.Errorf("observed %s\nwant     %s", got, tt.wantObserved)
				}
			}
		})
	}
}

func sameElements(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestOutOfOrderConfirmsMoveThePositionOverTheConfirmedPrefixOnly: the
// broker confirms the last row first; the source is told nothing past the
// start until the first row is confirmed too, and then everything.
func TestOutOfOrderConfirmsMoveThePositionOverTheConfirmedPrefixOnly(t *testing.T) {
	src := &fakeSource{events: rows("a", "b", "c", "d"), positions: make(chan LSN, 100)}
	sink := &fakeSink{hold: true}
	r := New(Config{Source: src, Sink: sink})
	err := run(t, r, func() bool {
		if sink.heldCount() < 4 {
			return false
		}
		sink.mu.Lock()
		held := slices.Clone(sink.held)
		sink.held = nil
		sink.mu.Unlock()
		for i := len(held) - 1; i >= 1; i-- {
			held[i].Done(nil)
			select {
			case p := <-src.positions:
				t.Errorf("after confirming %s of 4 rows, last first, the source was told %s", held[i].ID, p)
			case <-time.After(10 * time.Millisecond):
			}
		}
		held[0].Done(nil)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := <-src.positions; p != 41 {
		t.Errorf("after every row is confirmed the position is %s, want 41", p)
	}
}

// TestShutdownWaitsForWhatIsInFlight: the relay stops while the broker has
// not answered; the answers that come within the source's shutdown wait
// still move the position it reports last.
func TestShutdownWaitsForWhatIsInFlight(t *testing.T) {
	src := &fakeSource{events: rows("a", "b", "c"), positions: make(chan LSN, 100)}
	sink := &fakeSink{hold: true}
	r := New(Config{Source: src, Sink: sink})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	for sink.heldCount() < 3 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	sink.release(t, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if final := LSN(src.final.Load()); final != 31 {
		t.Errorf("the source's last position is %s, want 31: the rows confirmed during shutdown", final)
	}
}

// TestABlockedRowThatLaterSucceeds: without a dead-letter destination the
// stream stops at a refused row and retries it every BlockedRetry; once
// the broker takes it (a limit raised), the block clears and the stream
// goes on.
func TestABlockedRowThatLaterSucceeds(t *testing.T) {
	src := &fakeSource{events: rows("a", "b", "c"), positions: make(chan LSN, 100)}
	sink := &fakeSink{verdict: func(ev *Event, n int) error {
		if ev.ID == "b" && n < 2 {
			return BadRow(ev, errRefused)
		}
		return nil
	}}
	obs := &fakeObserver{}
	r := New(Config{Source: src, Sink: sink, BlockedRetry: time.Millisecond, Observer: obs})
	if err := run(t, r, reached(src, 31)); err != nil {
		t.Fatal(err)
	}
	if r.Blocked() != nil {
		t.Errorf("still blocked at %v after the row was published", r.Blocked())
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if !slices.Equal(obs.blocked, []bool{true, true, false}) || obs.restarts != 2 {
		t.Errorf("blocked reports %v and %d restarts, want [true true false] and 2", obs.blocked, obs.restarts)
	}
}

// TestALostSessionIsRetriedWithBackoff: a session that ends with a
// transient error is started again after the backoff, which grows with
// each failure in a row.
func TestALostSessionIsRetriedWithBackoff(t *testing.T) {
	src := &fakeSource{events: rows("a"), positions: make(chan LSN, 100), fail: func(session int) error {
		if session <= 3 {
			return fmt.Errorf("connection reset (session %d)", session)
		}
		return nil
	}}
	obs := &fakeObserver{}
	backoff := NewBackoff(time.Millisecond, time.Second)
	r := New(Config{Source: src, Sink: &fakeSink{}, Observer: obs, Backoff: backoff})
	if err := run(t, r, reached(src, 11)); err != nil {
		t.Fatal(err)
	}
	if n := src.sessions.Load(); n != 4 {
		t.Errorf("%d sessions, want 4", n)
	}
	if backoff.cur != 4*time.Millisecond {
		t.Errorf("the backoff is at %s after 3 failures in a row, want 4ms", backoff.cur)
	}
	if obs.restarts != 3 {
		t.Errorf("%d restarts counted, want 3", obs.restarts)
	}
}

// ctxSink accepts every event while its ctx lives and refuses row b with
// ctx's error once it has ended; it confirms in the background.
type ctxSink struct {
	mu  sync.Mutex
	got []string
	// blockB makes the first publish of b wait for ctx to end.
	blockB atomic.Bool
}

func (s *ctxSink) Publish(ctx context.Context, ev *Event) error {
	if ev.ID == "b" && s.blockB.CompareAndSwap(true, false) {
		<-ctx.Done()
		return ctx.Err()
	}
	s.mu.Lock()
	s.got = append(s.got, ev.ID)
	s.mu.Unlock()
	go ev.Done(nil)
	return nil
}

func (s *ctxSink) Close(context.Context) error { return nil }

// TestNothingGoesOutPastARowLeftOutAtTheSessionsEnd: a session ends (its
// source lost the database) while the sink waits to take row b; b is left
// out, so c, sent after it, must not go out in that session either,
// though a sink would take it: the next session sends b and c again, and
// a consumer must never get c before b.
func TestNothingGoesOutPastARowLeftOutAtTheSessionsEnd(t *testing.T) {
	sink := &ctxSink{}
	sink.blockB.Store(true)
	src := &fakeSource{events: rows("a", "b", "c"), positions: make(chan LSN, 100), fail: func(session int) error {
		if session == 1 {
			time.Sleep(20 * time.Millisecond) // b is waiting in the sink
			return errors.New("connection lost")
		}
		return nil
	}}
	r := New(Config{Source: src, Sink: sink, Backoff: NewBackoff(time.Millisecond, time.Millisecond)})
	if err := run(t, r, reached(src, 31)); err != nil {
		t.Fatal(err)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	seen := map[string]bool{}
	for _, id := range sink.got {
		if id == "c" && !seen["b"] {
			t.Fatalf("published %v: c before b", sink.got)
		}
		seen[id] = true
	}
}

// boundarySink is a fakeSink that holds every verdict until the core tells
// it that it must not (Stalled), and records Publish and Boundary calls in
// order.
type boundarySink struct {
	fakeSink
	calls []string // under fakeSink.mu
}

func (s *boundarySink) Publish(ctx context.Context, ev *Event) error {
	s.mu.Lock()
	s.calls = append(s.calls, ev.ID)
	s.mu.Unlock()
	return s.fakeSink.Publish(ctx, ev)
}

func (s *boundarySink) Boundary(_ context.Context, b Boundary) {
	s.mu.Lock()
	s.calls = append(s.calls, map[Boundary]string{TransactionEnd: "end", Idle: "idle", Stalled: "stalled", Stopping: "stopping"}[b])
	s.mu.Unlock()
	if b == Stalled {
		s.release(nil, nil)
	}
}

func (s *boundarySink) recorded() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

// TestABoundarySinkIsToldWhereTransactionsEnd: every mark is a
// TransactionEnd before the next row; the last, with nothing after it, is
// Idle; a row the full window cannot admit makes the core say Stalled
// once, since only the sink can make room; and a shutdown is Stopping.
func TestABoundarySinkIsToldWhereTransactionsEnd(t *testing.T) {
	src := &fakeSource{events: rows("a", "b", "c", "d", "e"), positions: make(chan LSN, 100)}
	sink := &boundarySink{fakeSink: fakeSink{hold: true}}
	r := New(Config{Source: src, Sink: sink, MaxInFlight: 3})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	want := []string{"a", "end", "b", "end", "c", "end", "stalled", "d", "end", "e", "idle"}
	deadline := time.Now().Add(10 * time.Second)
	for len(sink.recorded()) < len(want) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	sink.release(t, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Shutting down, it says Stopping once.
	want = append(want, "stopping")
	if got := sink.recorded(); !slices.Equal(got, want) {
		t.Errorf("the sink saw %v, want %v", got, want)
	}
}
