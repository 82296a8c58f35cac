package relay

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

var trkSeedFlag = flag.Uint64("tracker.seed", 0, "seed for TestTrackerModel (0: random)")

// trkBaseSize is the Size of an event with no fields set.
var trkBaseSize = (&Event{}).Size()

// trkEvent returns an event of Size trkBaseSize+payload. The name goes in
// ContentType, which Size does not count, to tell events apart in failures.
func trkEvent(name string, payload int) *Event {
	return &Event{ContentType: name, Payload: make([]byte, payload)}
}

// trkSpace reports whether Space holds a signal, consuming it.
func trkSpace(tr *tracker) bool {
	select {
	case <-tr.Space():
		return true
	default:
		return false
	}
}

func TestNewTrackerStartsAtStart(t *testing.T) {
	for _, start := range []LSN{0, 1, 0x16B3748, 1<<64 - 1} {
		t.Run(start.String(), func(t *testing.T) {
			tr := testTracker(4, 1<<20, start)
			if got := tr.Safe(); got != start {
				t.Errorf("Safe() = %s, want the start position %s", got, start)
			}
			if got := tr.InFlight(); got != 0 {
				t.Errorf("InFlight() = %d, want 0", got)
			}
			if err := tr.Err(); err != nil {
				t.Errorf("Err() = %v, want nil", err)
			}
			select {
			case <-tr.Failed():
				t.Error("Failed() is closed on a new tracker")
			default:
			}
			if trkSpace(tr) {
				t.Error("Space() signalled on a new tracker")
			}
		})
	}
}

// TestTrackerSafe runs small scripts of Add/Mark/confirm steps and checks
// Safe and InFlight after every step.
//
// Steps: "add NAME", "mark LSN" (decimal), "done NAME" (ev.Done(nil)),
// "ack NAME" (tr.Ack(ev)).
func TestTrackerSafe(t *testing.T) {
	type step struct {
		do       string
		safe     LSN
		inFlight int
	}
	tests := []struct {
		name  string
		start LSN
		steps []step
	}{
		{
			name: "in-order confirms advance mark by mark",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1},
				{"add b", 0, 2}, {"add c", 0, 3}, {"mark 20", 0, 3},
				{"done a", 10, 2}, {"done b", 10, 1}, {"done c", 20, 0},
			},
		},
		{
			name: "a later confirm does not pass an unconfirmed event",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1},
				{"add b", 0, 2}, {"mark 20", 0, 2},
				{"done b", 0, 2}, {"done a", 20, 0},
			},
		},
		{
			name:  "unconfirmed event in the middle of a transaction holds its mark",
			start: 5,
			steps: []step{
				{"add a", 5, 1}, {"add b", 5, 2}, {"add c", 5, 3}, {"mark 10", 5, 3},
				{"done a", 5, 2}, {"done c", 5, 2}, {"done b", 10, 0},
			},
		},
		{
			name: "empty transactions while events are in flight",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1},
				{"mark 20", 0, 1}, {"mark 30", 0, 1},
				{"add b", 0, 2}, {"mark 40", 0, 2},
				{"done a", 30, 1}, {"done b", 40, 0},
			},
		},
		{
			name:  "keepalive mark with nothing in flight is safe at once",
			start: 3,
			steps: []step{
				{"mark 10", 10, 0}, {"mark 10", 10, 0}, {"mark 11", 11, 0},
				{"add a", 11, 1}, {"mark 20", 11, 1}, {"done a", 20, 0},
				{"mark 25", 25, 0},
			},
		},
		{
			name:  "mark not above the start is ignored",
			start: 50,
			steps: []step{
				{"mark 30", 50, 0},
				{"add a", 50, 1}, {"mark 40", 50, 1}, {"done a", 50, 0},
				{"add b", 50, 1}, {"mark 60", 50, 1}, {"done b", 60, 0},
			},
		},
		{
			name: "events after the last mark are not covered by it",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1}, {"add b", 0, 2},
				{"done b", 0, 2}, {"done a", 10, 0},
				{"mark 20", 20, 0},
			},
		},
		{
			name: "marks with the same LSN",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1},
				{"add b", 0, 2}, {"mark 10", 0, 2},
				{"done a", 10, 1}, {"done b", 10, 0},
			},
		},
		{
			name: "duplicate confirms are harmless",
			steps: []step{
				{"add a", 0, 1}, {"add b", 0, 2}, {"mark 10", 0, 2},
				{"add c", 0, 3}, {"mark 20", 0, 3},
				{"done b", 0, 3}, {"done b", 0, 3}, {"ack b", 0, 3},
				{"done a", 10, 1}, {"done a", 10, 1}, {"ack b", 10, 1},
				{"done c", 20, 0}, {"done c", 20, 0},
			},
		},
		{
			name: "Ack and Done are equivalent",
			steps: []step{
				{"add a", 0, 1}, {"mark 10", 0, 1}, {"add b", 0, 2}, {"mark 20", 0, 2},
				{"ack b", 0, 2}, {"ack a", 20, 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := testTracker(16, 1<<20, tt.start)
			evs := map[string]*Event{}
			for i, s := range tt.steps {
				verb, arg, _ := strings.Cut(s.do, " ")
				switch verb {
				case "add":
					ev := trkEvent(arg, 0)
					if !tr.Add(ev) {
						t.Fatalf("step %d %q: Add returned false", i, s.do)
					}
					evs[arg] = ev
				case "mark":
					var lsn uint64
					if _, err := fmt.Sscan(arg, &lsn); err != nil {
						t.Fatalf("step %d %q: %v", i, s.do, err)
					}
					tr.Mark(LSN(lsn))
				case "done":
					evs[arg].Done(nil)
				case "ack":
					tr.Ack(evs[arg])
				default:
					t.Fatalf("step %d: unknown step %q", i, s.do)
				}
				if got := tr.Safe(); got != s.safe {
					t.Errorf("after step %d %q: Safe() = %d, want %d", i, s.do, got, s.safe)
				}
				if got := tr.InFlight(); got != s.inFlight {
					t.Errorf("after step %d %q: InFlight() = %d, want %d", i, s.do, got, s.inFlight)
				}
			}
		})
	}
}

func TestTrackerAddWindow(t *testing.T) {
	b := trkBaseSize
	tests := []struct {
		name      string
		maxEvents int
		maxBytes  int
		payloads  []int // each event's Size is trkBaseSize+payload
		want      []bool
	}{
		{"count limit", 3, 1 << 20, []int{0, 0, 0, 0, 0}, []bool{true, true, true, false, false}},
		{"maxEvents 0 means 1", 0, 1 << 20, []int{0, 0}, []bool{true, false}},
		{"negative maxEvents means 1", -5, 1 << 20, []int{0, 0}, []bool{true, false}},
		{"byte limit", 10, 3 * b, []int{0, 0, 0, 0}, []bool{true, true, true, false}},
		{"event that exactly fits", 10, 2*b + 7, []int{0, 7, 0}, []bool{true, true, false}},
		{"one byte over", 10, 2*b + 6, []int{0, 7}, []bool{true, false}},
		{"oversized event admitted when nothing in flight", 10, 1, []int{1000, 0}, []bool{true, false}},
		{"zero byte budget admits one at a time", 10, 0, []int{0, 0}, []bool{true, false}},
		{"a refused big event does not block a smaller one", 10, 2 * b, []int{0, b, 0}, []bool{true, false, true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := testTracker(tt.maxEvents, tt.maxBytes, 0)
			admitted := 0
			for i, p := range tt.payloads {
				ev := trkEvent("", p)
				if got := tr.Add(ev); got != tt.want[i] {
					t.Fatalf("Add #%d (size %d, %d in flight, maxEvents %d, maxBytes %d) = %v, want %v",
						i, ev.Size(), admitted, tt.maxEvents, tt.maxBytes, got, tt.want[i])
				}
				if tt.want[i] {
					admitted++
				} else {
					// A refused event is not wired to the tracker.
					ev.Done(nil)
				}
				if got := tr.InFlight(); got != admitted {
					t.Fatalf("after Add #%d: InFlight() = %d, want %d", i, got, admitted)
				}
			}
			if trkSpace(tr) {
				t.Error("Space() signalled without any confirm")
			}
		})
	}
}

func TestTrackerSpace(t *testing.T) {
	t.Run("count", func(t *testing.T) {
		tr := testTracker(2, 1<<20, 0)
		a, b, c := trkEvent("a", 0), trkEvent("b", 0), trkEvent("c", 0)
		if !tr.Add(a) || !tr.Add(b) {
			t.Fatal("Add refused an event in an empty window")
		}
		if tr.Add(c) {
			t.Fatal("Add admitted a third event into a window of 2")
		}
		b.Done(nil)
		if trkSpace(tr) {
			t.Error("Space() signalled after an out-of-order confirm that freed no room")
		}
		if tr.Add(c) {
			t.Error("Add admitted an event while the oldest is unconfirmed")
		}
		a.Done(nil)
		if !trkSpace(tr) {
			t.Error("Space() did not signal after confirms freed the window")
		}
		if trkSpace(tr) {
			t.Error("Space() signalled twice for one confirm")
		}
		if !tr.Add(c) {
			t.Error("Add refused an event after the window was freed")
		}
	})
	t.Run("bytes", func(t *testing.T) {
		tr := testTracker(100, 2*trkBaseSize+100, 0)
		a, b, c := trkEvent("a", 100), trkEvent("b", 0), trkEvent("c", 100)
		if !tr.Add(a) || !tr.Add(b) {
			t.Fatal("Add refused events within the byte budget")
		}
		if tr.Add(c) {
			t.Fatal("Add admitted an event over the byte budget")
		}
		a.Done(nil)
		if !trkSpace(tr) {
			t.Error("Space() did not signal after a confirm freed bytes")
		}
		if !tr.Add(c) {
			t.Errorf("Add refused an event of %d bytes with %d of %d bytes in flight",
				c.Size(), b.Size(), 2*trkBaseSize+100)
		}
	})
	t.Run("signals coalesce", func(t *testing.T) {
		tr := testTracker(4, 1<<20, 0)
		evs := []*Event{trkEvent("", 0), trkEvent("", 0), trkEvent("", 0)}
		for _, ev := range evs {
			tr.Add(ev)
		}
		for _, ev := range evs {
			ev.Done(nil) // each advances; none blocks on the full channel
		}
		if !trkSpace(tr) {
			t.Error("Space() did not signal")
		}
		if trkSpace(tr) {
			t.Error("Space() holds more than one pending signal")
		}
	})
}

func TestTrackerFail(t *testing.T) {
	tr := testTracker(4, 1<<20, 7)
	a, b := trkEvent("a", 0), trkEvent("b", 0)
	tr.Add(a)
	tr.Add(b)
	tr.Mark(10)

	first, second := errors.New("message too large"), errors.New("second")
	a.Done(first)
	select {
	case <-tr.Failed():
	default:
		t.Fatal("Failed() not closed after Done(err)")
	}
	if err := tr.Err(); !errors.Is(err, first) {
		t.Errorf("Err() = %v, want %v", err, first)
	}
	if got := tr.InFlight(); got != 2 {
		t.Errorf("InFlight() = %d after a failed event, want 2: a failure is not a confirm", got)
	}
	if got := tr.Safe(); got != 7 {
		t.Errorf("Safe() = %d after a failed event, want the start 7", got)
	}

	b.Done(second)
	tr.Fail(second)
	if err := tr.Err(); !errors.Is(err, first) {
		t.Errorf("Err() = %v after later failures, want the first error %v", err, first)
	}
	b.Done(nil)
	if got := tr.Safe(); got != 7 {
		t.Errorf("Safe() = %d with the failed event unconfirmed, want 7", got)
	}
}

func TestTrackerConcurrentFail(t *testing.T) {
	tr := testTracker(4, 1<<20, 0)
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		errs[i] = fmt.Errorf("error %d", i)
		wg.Go(func() { tr.Fail(errs[i]) }) // closing Failed twice would panic
	}
	wg.Wait()
	<-tr.Failed()
	err := tr.Err()
	for _, e := range errs {
		if err == e {
			return
		}
	}
	t.Errorf("Err() = %v, want one of the errors passed to Fail", err)
}

// TestTrackerIgnoresStaleAcks checks that a confirm for an event the tracker
// does not hold in flight leaves it untouched.
func TestTrackerIgnoresStaleAcks(t *testing.T) {
	tests := []struct {
		name  string
		stale func(t *testing.T) *Event
	}{
		{"event of another tracker", func(t *testing.T) *Event {
			other := testTracker(4, 1<<20, 0)
			ev := trkEvent("other", 0)
			if !other.Add(ev) {
				t.Fatal("Add refused")
			}
			return ev
		}},
		{"event of an earlier tracker, confirmed there", func(t *testing.T) *Event {
			old := testTracker(4, 1<<20, 0)
			ev := trkEvent("old", 0)
			old.Add(ev)
			old.Mark(5)
			ev.Done(nil)
			return ev
		}},
		{"event never added", func(t *testing.T) *Event {
			return trkEvent("never", 0)
		}},
		{"event refused by Add", func(t *testing.T) *Event {
			full := testTracker(1, 1<<20, 0)
			full.Add(trkEvent("", 0))
			ev := trkEvent("refused", 0)
			if full.Add(ev) {
				t.Fatal("Add admitted an event into a full window")
			}
			return ev
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stale := tt.stale(t)
			tr := testTracker(4, 1<<20, 0)
			a, b := trkEvent("a", 0), trkEvent("b", 0)
			tr.Add(a)
			tr.Mark(10)
			tr.Add(b)
			tr.Mark(20)

			tr.Ack(stale)
			if got := tr.Safe(); got != 0 {
				t.Errorf("Safe() = %d after a stale confirm, want 0: no event of this tracker is confirmed", got)
			}
			if got := tr.InFlight(); got != 2 {
				t.Errorf("InFlight() = %d after a stale confirm, want 2", got)
			}
			b.Done(nil)
			if got := tr.Safe(); got != 0 {
				t.Errorf("Safe() = %d with the first event unconfirmed, want 0", got)
			}
			a.Done(nil)
			if got := tr.Safe(); got != 20 {
				t.Errorf("Safe() = %d after all confirms, want 20", got)
			}
		})
	}

	t.Run("duplicate confirm after its slot was reused", func(t *testing.T) {
		tr := testTracker(2, 1<<20, 0)
		a0, a1, a2 := trkEvent("a0", 0), trkEvent("a1", 0), trkEvent("a2", 0)
		tr.Add(a0)
		tr.Mark(10)
		a0.Done(nil)
		tr.Add(a1)
		tr.Add(a2) // reuses a0's ring slot
		tr.Mark(20)
		a0.Done(nil)
		tr.Ack(a0)
		a1.Done(nil)
		if got, want := tr.Safe(), LSN(10); got != want {
			t.Errorf("Safe() = %d, want %d: a0's second confirm must not confirm a2", got, want)
		}
		if got := tr.InFlight(); got != 1 {
			t.Errorf("InFlight() = %d, want 1", got)
		}
	})
}

// trkModel drives a Tracker and a reference model of it side by side and
// compares them after every step.
type trkModel struct {
	tb        testing.TB
	tr        *tracker
	maxEvents int
	maxBytes  int
	start     LSN

	evs      []*Event // every admitted event, in order
	acked    []bool
	marks    []trkMark
	head     int // first unconfirmed index in evs
	lastMark LSN
	lastSafe LSN

	stale []*Event // events this tracker does not hold
	other *tracker // a second tracker the stale events come from
	trace []string
}

type trkMark struct {
	upTo int // the mark holds once evs[:upTo] are all confirmed
	lsn  LSN
}

func newTrkModel(tb testing.TB, maxEvents, maxBytes int, start LSN) *trkModel {
	m := &trkModel{
		tb:        tb,
		tr:        testTracker(maxEvents, maxBytes, start),
		maxEvents: max(maxEvents, 1),
		maxBytes:  maxBytes,
		start:     start,
		lastSafe:  start,
		other:     testTracker(1000, 1<<30, 0),
	}
	m.logf("NewTracker(%d, %d, %d)", maxEvents, maxBytes, start)
	// Events of another tracker, numbered like this one's.
	for i := range 4 {
		ev := trkEvent(fmt.Sprint("other", i), 0)
		m.other.Add(ev)
		m.stale = append(m.stale, ev)
	}
	m.stale = append(m.stale, trkEvent("never added", 0))
	m.check(false)
	return m
}

func (m *trkModel) logf(format string, args ...any) {
	m.trace = append(m.trace, fmt.Sprintf(format, args...))
}

func (m *trkModel) fatalf(format string, args ...any) {
	m.tb.Helper()
	trace := m.trace
	if len(trace) > 60 {
		trace = append([]string{"..."}, trace[len(trace)-60:]...)
	}
	m.tb.Fatalf("%s\ntrace:\n\t%s", fmt.Sprintf(format, args...), strings.Join(trace, "\n\t"))
}

func (m *trkModel) inFlight() int { return len(m.evs) - m.head }

func (m *trkModel) bytes() int {
	n := 0
	for _, ev := range m.evs[m.head:] {
		n += ev.Size()
	}
	return n
}

// safe is the LSN of the latest mark whose events are all confirmed.
func (m *trkModel) safe() LSN {
	s := m.start
	for _, mk := range m.marks {
		if mk.upTo <= m.head && mk.lsn > s {
			s = mk.lsn
		}
	}
	return s
}

// check compares the tracker with the model; advanced says whether the step
// moved the confirmed prefix, which is exactly when Space must signal.
func (m *trkModel) check(advanced bool) {
	m.tb.Helper()
	got, want := m.tr.Safe(), m.safe()
	if got != want {
		m.fatalf("Safe() = %d, want %d (%d events, %d confirmed prefix, marks %v)", got, want, len(m.evs), m.head, m.marks)
	}
	if got < m.lastSafe {
		m.fatalf("Safe() went back from %d to %d", m.lastSafe, got)
	}
	m.lastSafe = got
	if got, want := m.tr.InFlight(), m.inFlight(); got != want {
		m.fatalf("InFlight() = %d, want %d", got, want)
	}
	if got := trkSpace(m.tr); got != advanced {
		m.fatalf("Space() signalled = %v, want %v", got, advanced)
	}
}

// add offers an event of trkBaseSize+payload bytes and reports whether it
// was admitted.
func (m *trkModel) add(payload int) bool {
	m.tb.Helper()
	ev := trkEvent(fmt.Sprint("e", len(m.evs)), payload)
	n := m.inFlight()
	want := n < m.maxEvents && (n == 0 || m.bytes()+ev.Size() <= m.maxBytes)
	got := m.tr.Add(ev)
	m.logf("Add(size %d) = %v [in flight %d, %d bytes]", ev.Size(), got, n, m.bytes())
	if got != want {
		m.fatalf("Add(size %d) = %v, want %v (%d in flight of %d, %d bytes of %d)",
			ev.Size(), got, want, n, m.maxEvents, m.bytes(), m.maxBytes)
	}
	if got {
		m.evs = append(m.evs, ev)
		m.acked = append(m.acked, false)
	} else {
		ev.ContentType = fmt.Sprint("refused", len(m.stale))
		m.stale = append(m.stale, ev)
	}
	m.check(false)
	return got
}

// mark records lastMark+delta.
func (m *trkModel) mark(delta LSN) {
	m.tb.Helper()
	m.lastMark += delta
	m.tr.Mark(m.lastMark)
	m.marks = append(m.marks, trkMark{upTo: len(m.evs), lsn: m.lastMark})
	m.logf("Mark(%d) after %d events", m.lastMark, len(m.evs))
	m.check(false)
}

// confirm confirms the event at index i of evs, through Done or Ack.
func (m *trkModel) confirm(i int, viaAck bool) {
	m.tb.Helper()
	if viaAck {
		m.tr.Ack(m.evs[i])
	} else {
		m.evs[i].Done(nil)
	}
	m.logf("confirm e%d (ack %v, already %v)", i, viaAck, m.acked[i])
	m.acked[i] = true
	head := m.head
	for m.head < len(m.evs) && m.acked[m.head] {
		m.head++
	}
	m.check(m.head > head)
}

// confirmPending confirms the k-th unconfirmed event after the prefix,
// counting round.
func (m *trkModel) confirmPending(k int, viaAck bool) bool {
	var pending []int
	for i := m.head; i < len(m.evs); i++ {
		if !m.acked[i] {
			pending = append(pending, i)
		}
	}
	if len(pending) == 0 {
		return false
	}
	m.confirm(pending[k%len(pending)], viaAck)
	return true
}

// confirmAgain repeats the confirm of an already confirmed event.
func (m *trkModel) confirmAgain(k int, viaAck bool) {
	var done []int
	for i, a := range m.acked {
		if a {
			done = append(done, i)
		}
	}
	if len(done) > 0 {
		m.confirm(done[k%len(done)], viaAck)
	}
}

// ackStale confirms an event this tracker does not hold.
func (m *trkModel) ackStale(k int, viaDone bool) {
	m.tb.Helper()
	ev := m.stale[k%len(m.stale)]
	m.logf("stale confirm of %q (done %v)", ev.ContentType, viaDone)
	if viaDone {
		ev.Done(nil) // goes to its own tracker, if any
	} else {
		m.tr.Ack(ev)
	}
	m.check(false)
}

// finish confirms everything left in a shuffled order and marks the end.
func (m *trkModel) finish(rng *rand.Rand) {
	m.tb.Helper()
	for m.confirmPending(rng.IntN(1<<20), rng.IntN(2) == 0) {
	}
	m.mark(1)
	if got, want := m.tr.Safe(), max(m.lastMark, m.start); got != want {
		m.fatalf("Safe() = %d with everything confirmed, want %d (last mark %d, start %d)", got, want, m.lastMark, m.start)
	}
}

// TestTrackerModel runs thousands of random scenarios against the model:
// transactions of random size (empty ones included), keepalive marks,
// windows small enough to wrap the ring many times, confirms in random
// order interleaved with adds, duplicate and stale confirms.
func TestTrackerModel(t *testing.T) {
	seed := *trkSeedFlag
	if seed == 0 {
		seed = rand.Uint64()
	}
	t.Logf("seed %d (rerun with -tracker.seed=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 0x7e1a))

	scenarios := 3000
	if testing.Short() {
		scenarios = 300
	}
	for sc := range scenarios {
		maxEvents := 1 + rng.IntN(8)
		maxBytes := []int{0, trkBaseSize, 3*trkBaseSize + 100, 1 << 30}[rng.IntN(4)]
		start := LSN(rng.IntN(40))
		m := newTrkModel(t, maxEvents, maxBytes, start)
		m.logf("scenario %d", sc)

		maxTxn := 1 + rng.IntN(12)
		inTxn, txnLeft := false, 0
		steps := 20 + rng.IntN(300)
		for range steps {
			switch r := rng.IntN(100); {
			case r < 45: // the source moves on
				switch {
				case !inTxn:
					inTxn = true
					txnLeft = rng.IntN(maxTxn + 1)
					if rng.IntN(5) == 0 {
						txnLeft = 0 // an empty transaction
					}
				case txnLeft > 0:
					if m.add(rng.IntN(2 * trkBaseSize)) {
						txnLeft--
					}
				default:
					m.mark(LSN(rng.IntN(20))) // commit; equal LSNs too
					inTxn = false
				}
			case r < 50: // keepalive between transactions
				if !inTxn {
					m.mark(LSN(rng.IntN(5)))
				}
			case r < 90:
				m.confirmPending(rng.IntN(1<<20), rng.IntN(4) == 0)
			case r < 95:
				m.confirmAgain(rng.IntN(1<<20), rng.IntN(2) == 0)
			default:
				m.ackStale(rng.IntN(1<<20), rng.IntN(2) == 0)
			}
		}
		m.finish(rng)
	}
}

// FuzzTracker drives the model from fuzz input: three bytes of
// configuration, then one operation per byte.
func FuzzTracker(f *testing.F) {
	f.Add([]byte{0, 3, 0, 0x00, 0x41, 0x60, 0x00, 0x42, 0x60, 0x80})
	f.Add([]byte{1, 1, 5, 0x00, 0x20, 0x00, 0x40, 0x41, 0x61, 0x62, 0xa1, 0x80, 0x81, 0xc0, 0xe0, 0x41})
	f.Add([]byte{7, 2, 9, 0x01, 0x02, 0x03, 0x04, 0x44, 0x45, 0x85, 0x80, 0x82, 0xc1, 0xc2, 0xe3, 0x5f, 0x40})
	f.Add([]byte{2, 0, 0, 0x1f, 0x1f, 0x1f, 0x41, 0x80, 0x00, 0x42, 0x81, 0x00, 0x43, 0xa0, 0xc0, 0xe0, 0xe4})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 3 {
			return
		}
		maxEvents := int(data[0]%8) + 1
		maxBytes := []int{0, trkBaseSize, 3*trkBaseSize + 100, 1 << 30}[data[1]%4]
		start := LSN(data[2] % 64)
		m := newTrkModel(t, maxEvents, maxBytes, start)
		for _, b := range data[3:] {
			op, arg := b>>5, int(b&31)
			switch op {
			case 0, 1:
				m.add(arg * 16)
			case 2:
				m.mark(LSN(arg)) // 0 repeats the last mark
			case 3:
				m.mark(LSN(arg) * 1000)
			case 4:
				m.confirmPending(arg, false)
			case 5:
				m.confirmPending(arg, true)
			case 6:
				m.confirmAgain(arg, arg&1 == 0)
			case 7:
				m.ackStale(arg, arg&1 == 0)
			}
		}
		m.finish(rand.New(rand.NewPCG(uint64(len(data)), 1)))
	})
}

// TestTrackerConcurrentAcks confirms events from several goroutines while
// another watches Safe.
func TestTrackerConcurrentAcks(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 2))

	const n = 2000
	tr := testTracker(n, 1<<30, 0)
	evs := make([]*Event, n)
	marks := map[LSN]bool{0: true}
	var last LSN
	for i := range evs {
		evs[i] = trkEvent("", rng.IntN(100))
		if !tr.Add(evs[i]) {
			t.Fatalf("Add #%d refused in a window of %d", i, n)
		}
		if rng.IntN(5) == 0 || i == n-1 {
			last += LSN(1 + rng.IntN(10))
			tr.Mark(last)
			marks[last] = true
		}
	}
	order := rng.Perm(n)

	const workers = 8
	stop := make(chan struct{})
	watchErr := make(chan error, 1)
	go func() {
		var prev LSN
		for {
			select {
			case <-stop:
				watchErr <- nil
				return
			default:
			}
			s := tr.Safe()
			if s < prev {
				watchErr <- fmt.Errorf("Safe() went back from %d to %d", prev, s)
				return
			}
			if !marks[s] {
				watchErr <- fmt.Errorf("Safe() = %d, which is no mark", s)
				return
			}
			prev = s
			_ = tr.InFlight()
		}
	}()
	go func() { // drain Space as a source would
		for {
			select {
			case <-tr.Space():
			case <-stop:
				return
			}
		}
	}()

	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for k := w; k < n; k += workers {
				ev := evs[order[k]]
				if k%3 == 0 {
					tr.Ack(ev)
				} else {
					ev.Done(nil)
				}
				if k%7 == 0 {
					ev.Done(nil) // duplicate
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	if err := <-watchErr; err != nil {
		t.Error(err)
	}
	if got := tr.Safe(); got != last {
		t.Errorf("Safe() = %d after all confirms, want the last mark %d", got, last)
	}
	if got := tr.InFlight(); got != 0 {
		t.Errorf("InFlight() = %d after all confirms, want 0", got)
	}
}

// TestTrackerBackpressure runs a source that waits on Space against a sink
// that confirms from another goroutine in reverse batches, through a window
// much smaller than the stream.
func TestTrackerBackpressure(t *testing.T) {
	const (
		window = 4
		total  = 5000
		txn    = 3
	)
	tr := testTracker(window, 1<<30, 0)
	out := make(chan *Event, window)

	var sinkWG sync.WaitGroup
	sinkWG.Go(func() {
		var batch []*Event
		flush := func() {
			for i := len(batch) - 1; i >= 0; i-- {
				batch[i].Done(nil)
			}
			batch = batch[:0]
		}
		for ev := range out {
			batch = append(batch, ev)
			if len(batch) == window {
				flush()
			}
		}
		flush()
	})

	var lsn LSN
	waits := 0
	for i := range total {
		ev := trkEvent("", 0)
		for !tr.Add(ev) {
			<-tr.Space()
			waits++
		}
		out <- ev
		if i%txn == txn-1 {
			lsn += 10
			tr.Mark(lsn)
		}
		if s := tr.Safe(); s > lsn {
			t.Fatalf("Safe() = %d beyond the last mark %d", s, lsn)
		}
	}
	lsn += 10
	tr.Mark(lsn)
	close(out)
	sinkWG.Wait()

	if waits == 0 {
		t.Error("the source never waited on Space: the window did not apply")
	}
	if got := tr.Safe(); got != lsn {
		t.Errorf("Safe() = %d after the sink confirmed everything, want %d", got, lsn)
	}
	if got := tr.InFlight(); got != 0 {
		t.Errorf("InFlight() = %d, want 0", got)
	}
}

// testTracker is a tracker whose events' Done acknowledges them, or fails
// the tracker, as the core's settle does for a row without a dead-letter
// destination.
func testTracker(maxEvents, maxBytes int, start LSN) *tracker {
	var t *tracker
	t = newTracker(maxEvents, maxBytes, start, func(ev *Event, err error) {
		if err != nil {
			t.Fail(err)
			return
		}
		t.Ack(ev)
	})
	return t
}
