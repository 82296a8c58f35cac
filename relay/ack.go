package relay

import (
	"sync"
	"sync/atomic"
)

// tracker turns out-of-order broker confirms into the one position that is
// safe to confirm to PostgreSQL. Only the core uses it.
//
// The core numbers every event it hands to the sink (Add) and, for each
// mark a source sends, records "once every event added so far is
// confirmed, this LSN is safe" (Mark). Sinks confirm events in any order
// (Ack). Safe returns the LSN of the latest mark whose events form a fully
// confirmed prefix of the stream; a received-but-unconfirmed position is
// never returned.
//
// The tracker also bounds what is in flight, by count and by bytes: Add
// refuses an event while the window is full, and Space signals when an Ack
// has made room. This is the relay's backpressure.
type tracker struct {
	mu       sync.Mutex
	acked    []bool // ring, indexed by seq % len
	base     uint64 // the first seq
	head     uint64 // lowest unconfirmed seq
	next     uint64 // next seq to hand out
	bytes    int
	maxBytes int
	marks    []mark
	safe     LSN
	// space signals the core that the window has room, progress the
	// source that its position moved: two waiters, two channels.
	space    chan struct{}
	progress chan struct{}
	failed   chan struct{}
	stopped  atomic.Bool // failed is closed: read without the lock
	err      error
	sizes    []int // ring, parallel to acked
	// done is what each added event's Done calls, bound once: binding
	// it in every Add allocated.
	done func(*Event, error)
}

type mark struct {
	upTo uint64 // every seq below upTo must be confirmed
	lsn  LSN
}

// trackerEpoch gives every tracker its own range of sequence numbers, so that
// Ack can tell this tracker's events from those of another tracker (an
// earlier session) or from events never added, whose seq is 0: a seq in
// [head, next) then identifies one of this tracker's events.
var trackerEpoch atomic.Uint64

// trackerSeqBits is the size of each tracker's range: 2^40 events.
const trackerSeqBits = 40

// newTracker returns a tracker that allows maxEvents and maxBytes in flight
// (an event larger than maxBytes is still admitted when nothing else is in
// flight) and starts from start, the position already confirmed. done is
// what each added event's Done calls.
func newTracker(maxEvents, maxBytes int, start LSN, done func(*Event, error)) *tracker {
	if maxEvents < 1 {
		maxEvents = 1
	}
	base := trackerEpoch.Add(1) << trackerSeqBits
	return &tracker{
		base:     base,
		head:     base,
		next:     base,
		acked:    make([]bool, maxEvents),
		sizes:    make([]int, maxEvents),
		maxBytes: maxBytes,
		safe:     start,
		space:    make(chan struct{}, 1),
		progress: make(chan struct{}, 1),
		failed:   make(chan struct{}),
		done:     done,
	}
}

// Add admits ev into the window and wires its Done to the tracker's done.
// It returns false, admitting nothing, while the window is full.
func (t *tracker) Add(ev *Event) bool {
	size := ev.Size()
	t.mu.Lock()
	defer t.mu.Unlock()
	inFlight := t.next - t.head
	if inFlight >= uint64(len(t.acked)) || inFlight > 0 && t.bytes+size > t.maxBytes {
		return false
	}
	ev.seq = t.next
	ev.size = size
	ev.done = t.done
	i := t.next % uint64(len(t.acked))
	t.acked[i] = false
	t.sizes[i] = size
	t.bytes += size
	t.next++
	return true
}

// Mark records that lsn becomes safe once every event added so far is
// confirmed. Marks must be added in non-decreasing LSN order.
func (t *tracker) Mark(lsn LSN) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if lsn <= t.safe {
		return
	}
	if t.head == t.next {
		t.safe = lsn
		t.marks = t.marks[:0]
		select {
		case t.progress <- struct{}{}:
		default:
		}
		return
	}
	if n := len(t.marks); n > 0 && t.marks[n-1].upTo == t.next {
		t.marks[n-1].lsn = lsn
		return
	}
	t.marks = append(t.marks, mark{upTo: t.next, lsn: lsn})
}

// Ack records the broker's confirm of ev.
func (t *tracker) Ack(ev *Event) {
	t.mu.Lock()
	if ev.seq < t.head || ev.seq >= t.next {
		t.mu.Unlock()
		return // from an earlier session or a duplicate confirm
	}
	t.acked[ev.seq%uint64(len(t.acked))] = true
	advanced := false
	for t.head < t.next {
		i := t.head % uint64(len(t.acked))
		if !t.acked[i] {
			break
		}
		t.acked[i] = false
		t.bytes -= t.sizes[i]
		t.head++
		advanced = true
	}
	if advanced {
		k := 0
		for k < len(t.marks) && t.marks[k].upTo <= t.head {
			t.safe = t.marks[k].lsn
			k++
		}
		t.marks = t.marks[k:]
	}
	t.mu.Unlock()
	if advanced {
		select {
		case t.space <- struct{}{}:
		default:
		}
		select {
		case t.progress <- struct{}{}:
		default:
		}
	}
}

// Fail records the first error that must stop the stream and closes Failed.
func (t *tracker) Fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.err == nil {
		t.err = err
		t.stopped.Store(true)
		close(t.failed)
	}
}

// Failed is closed once Fail has been called.
func (t *tracker) Failed() <-chan struct{} { return t.failed }

// Err returns the error given to Fail, if any.
func (t *tracker) Err() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.err
}

// Space receives a value after an Ack has freed room in the window.
func (t *tracker) Space() <-chan struct{} { return t.space }

// Safe returns the position that may be confirmed to PostgreSQL.
func (t *tracker) Safe() LSN {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.safe
}

// settled returns how many added events form a confirmed prefix.
func (t *tracker) settled() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.head - t.base
}

// InFlight returns how many added events are not yet confirmed.
func (t *tracker) InFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int(t.next - t.head)
}
