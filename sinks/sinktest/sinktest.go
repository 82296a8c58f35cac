// Package sinktest is the conformance suite every relay.Sink must pass.
//
// A sink's tests call Run with a Target against a real broker (or a
// faithful fake of one). Run checks the promises relay.Sink documents, the
// ones the relay's correctness rests on:
//
//   - order per key: one aggregate's events reach the broker in publish
//     order, and every event is confirmed with Done(nil);
//   - confirms: Done is called exactly once per published event, and
//     Done(nil) means the broker has the event, readable before Close;
//   - failure is an error: an event the broker rejects (over its size limit)
//     ends with a relay.Permanent error naming the event, from Publish or
//     Done, never with Done(nil), and its neighbours are confirmed as usual;
//   - Close flushes: every published event's Done has been called when
//     Close returns, and the events are in the broker;
//   - Publish respects ctx: with a cancelled context Publish returns the
//     context's error or accepts the event, and never hangs; and the
//     context bounds only the call: cancelling it after Publish returned
//     nil must not cost the event.
//
// Redelivery after broker crashes and reconnects is each sink's own
// business (its tests and integration/), as is what headers a broker
// carries beyond the ones checked here.
package sinktest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relay-dev/relay/relay"
)

// Target is a sink under test.
type Target struct {
	// Open returns a new sink and a Reader of the destination the sink
	// publishes to (a fresh exchange and queue, a fresh topic) that no
	// other call of Open shares. Anything the sink publishes must be
	// readable there: a destination that drops or returns messages makes
	// the suite fail. Open fails t when it cannot open either; it registers
	// the destination's cleanup with t. The suite closes the sink; Open is
	// called from one goroutine at a time.
	Open func(t *testing.T) (relay.Sink, Reader)
	// OversizedPayload is a payload size, in bytes, that the broker rejects.
	// The suite's other payloads are under 100 bytes.
	OversizedPayload int
}

// Reader reads the destination of one sink.
type Reader interface {
	// Read returns the next n messages in the order a consumer receives
	// them, waiting up to timeout for them; it returns fewer only when
	// timeout passes. The first call starts at the destination's first
	// message, later calls continue where the previous one stopped. Read
	// fails t on errors other than the timeout.
	Read(t *testing.T, n int, timeout time.Duration) []Message
}

// Message is one message as a consumer sees it.
type Message struct {
	// ID is the event id the message carries (its dedup key).
	ID string
	// Key is the aggregate id the message carries.
	Key  string
	Body []byte
	// Headers holds every header of the message, values as text; where a
	// header occurs twice, the last value.
	Headers map[string]string
}

const (
	// waitTimeout bounds every wait for confirms, for Close and for reads.
	waitTimeout = 2 * time.Minute
	// cancelledWithin is how long Publish may take with a cancelled context.
	cancelledWithin = 10 * time.Second
	// headerKey is the header column every event carries.
	headerKey = "trace_id"
	// lsnHeader carries the commit LSN; docs/messages.md documents it for
	// every sink.
	lsnHeader = "x-relay-lsn"
)

// Run runs the suite, one subtest per promise.
func Run(t *testing.T, target Target) {
	t.Helper()
	if target.Open == nil {
		t.Fatal("sinktest: Target.Open is nil")
	}
	if target.OversizedPayload <= 0 {
		t.Fatal("sinktest: Target.OversizedPayload must be a payload size the broker rejects")
	}
	g := &generator{lsn: 1 << 32}
	s := &suite{target: target, gen: g}
	t.Run("OrderPerKey", s.orderPerKey)
	t.Run("DoneOnceAndMeansStored", s.doneOnceAndMeansStored)
	t.Run("OversizedEventFailsPermanently", s.oversizedFailsPermanently)
	t.Run("CloseFlushes", s.closeFlushes)
	t.Run("PublishRespectsCancelledContext", s.publishRespectsCancelledContext)
	t.Run("CallerContextEndsAfterPublish", s.callerContextEndsAfterPublish)
}

type suite struct {
	target Target
	gen    *generator
}

// open opens a sink that is closed when the test ends unless the test
// closed it.
func (s *suite) open(t *testing.T) (*sink, Reader) {
	t.Helper()
	rs, r := s.target.Open(t)
	if rs == nil || r == nil {
		t.Fatal("sinktest: Open returned a nil sink or reader")
	}
	sk := &sink{Sink: rs}
	t.Cleanup(func() {
		if !sk.closed {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = sk.Sink.Close(ctx)
		}
	})
	return sk, r
}

type sink struct {
	relay.Sink
	closed bool
}

// close closes the sink and fails t on an error.
func (sk *sink) close(t *testing.T) {
	t.Helper()
	sk.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := sk.Sink.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// publishAll publishes evs in order and fails t on any error. Its context
// lasts until the test ends, so that only CallerContextEndsAfterPublish
// fails for a sink that ties events to the context they were published with.
func (sk *sink) publishAll(t *testing.T, evs []*relay.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	for _, ev := range evs {
		if err := sk.Publish(ctx, ev); err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
}

func (s *suite) orderPerKey(t *testing.T) {
	sk, r := s.open(t)
	const n, keys = 2000, 10
	evs := s.gen.events(n, keys)
	rec := newRecorder(evs)
	sk.publishAll(t, evs)
	rec.waitDone(t, evs, waitTimeout)
	confirmed := rec.checkConfirmed(t, evs)

	got := readAll(t, r, confirmed, waitTimeout)
	checkDelivered(t, confirmed, got, nil)
	sk.close(t)
}

func (s *suite) doneOnceAndMeansStored(t *testing.T) {
	sk, r := s.open(t)
	const n, keys = 300, 5
	evs := s.gen.events(n, keys)
	rec := newRecorder(evs)
	sk.publishAll(t, evs)
	rec.waitDone(t, evs, waitTimeout)
	confirmed := rec.checkConfirmed(t, evs)

	// Still open: Done(nil) alone must mean the broker has the event, not
	// that Close will get it there.
	got := readAll(t, r, confirmed, waitTimeout)
	checkDelivered(t, confirmed, got, nil)

	// Every event is done, so no Done may come later, during Close or after.
	before := rec.total()
	sk.close(t)
	if extra := rec.total() - before; extra > 0 {
		t.Errorf("%d more Done calls after each of the %d events was done", extra, n)
	}
}

func (s *suite) oversizedFailsPermanently(t *testing.T) {
	sk, r := s.open(t)
	small := s.gen.events(6, 2)
	big := []*relay.Event{
		s.gen.oversized(small[0].AggregateID, s.target.OversizedPayload),
		s.gen.oversized(small[1].AggregateID, s.target.OversizedPayload),
	}
	// Each oversized event sits between events of its own aggregate and of
	// the other one, published back to back so that a sink that batches
	// would put them in one batch.
	order := []*relay.Event{small[0], small[1], big[0], small[2], small[3], big[1], small[4], small[5]}
	rec := newRecorder(order)
	isBig := map[string]bool{big[0].ID: true, big[1].ID: true}

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var published []*relay.Event
	refused := map[string]error{}
	for _, ev := range order {
		err := sk.Publish(ctx, ev)
		switch {
		case err == nil:
			published = append(published, ev)
		case !isBig[ev.ID]:
			t.Fatalf("Publish %s (%d bytes): %v", ev.ID, len(ev.Payload), err)
		default:
			refused[ev.ID] = err
		}
	}
	rec.waitDone(t, published, waitTimeout)

	for _, ev := range big {
		calls, doneErr := rec.result(ev.ID)
		err, byPublish := refused[ev.ID]
		where := "Publish"
		switch {
		case byPublish && calls > 0 && doneErr == nil:
			t.Errorf("oversized event %s: Publish returned %v and then Done(nil)", ev.ID, err)
			continue
		case byPublish:
		case calls == 0:
			t.Errorf("oversized event %s: Publish returned nil and Done was never called", ev.ID)
			continue
		case doneErr == nil:
			t.Errorf("oversized event %s (%d bytes): Done(nil), want a permanent error: the broker cannot have accepted it", ev.ID, len(ev.Payload))
			continue
		default:
			err, where = doneErr, "Done"
		}
		if calls > 1 {
			t.Errorf("oversized event %s: Done called %d times, want at most once", ev.ID, calls)
		}
		if !relay.IsPermanent(err) {
			t.Errorf("oversized event %s: %s error %q is not relay.Permanent", ev.ID, where, err)
		}
		if !strings.Contains(err.Error(), ev.ID) {
			t.Errorf("oversized event %s: %s error %q does not name the event", ev.ID, where, err)
		}
	}
	// The relay stops at the first permanent error, but the sink must not
	// take the neighbours down with the oversized event.
	confirmed := rec.checkConfirmed(t, small)

	got := readAll(t, r, confirmed, waitTimeout)
	checkDelivered(t, confirmed, got, big)
	sk.close(t)
}

func (s *suite) closeFlushes(t *testing.T) {
	sk, r := s.open(t)
	const n, keys = 500, 5
	evs := s.gen.events(n, keys)
	rec := newRecorder(evs)
	sk.publishAll(t, evs)
	sk.close(t)
	if calls := rec.total(); calls != n {
		t.Errorf("Close returned with %d Done calls for %d published events", calls, n)
	}
	confirmed := rec.checkConfirmed(t, evs)

	got := readAll(t, r, confirmed, waitTimeout)
	checkDelivered(t, confirmed, got, nil)
}

func (s *suite) publishRespectsCancelledContext(t *testing.T) {
	sk, r := s.open(t)
	// One event first, so that the cancelled publishes find the sink past
	// any first-use setup (topic creation and the like).
	first := s.gen.events(1, 1)
	rec := newRecorder(first)
	sk.publishAll(t, first)
	rec.waitDone(t, first, waitTimeout)
	stored := rec.checkConfirmed(t, first)

	const n, keys = 20, 2
	evs := s.gen.events(n, keys)
	rec.track(evs...)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	var accepted, refused []*relay.Event
	for _, ev := range evs {
		err := publishWithin(t, sk, ctx, ev, cancelledWithin)
		switch {
		case err == nil:
			accepted = append(accepted, ev)
		case errors.Is(err, context.Canceled):
			refused = append(refused, ev)
		default:
			t.Fatalf("Publish %s with a cancelled context: %v, want nil or the context's error", ev.ID, err)
		}
	}
	t.Logf("with a cancelled context: %d events accepted, %d refused", len(accepted), len(refused))

	// The sink still works once the caller's context does.
	last := s.gen.events(1, 1)
	rec.track(last...)
	sk.publishAll(t, last)
	rec.waitDone(t, append(slices.Clip(accepted), last...), waitTimeout)
	sk.close(t)

	for _, ev := range accepted {
		calls, err := rec.result(ev.ID)
		switch {
		case calls != 1:
			t.Errorf("event %s accepted with a cancelled context: Done called %d times, want once", ev.ID, calls)
		case err == nil:
			stored = append(stored, ev)
		case relay.IsPermanent(err):
			// A cancelled publish is no reason to stop the relay for good.
			t.Errorf("event %s accepted with a cancelled context: Done(%v), a permanent error", ev.ID, err)
		default:
			// Not confirmed, so not acknowledged to PostgreSQL: the event
			// is streamed again by the next session.
			t.Logf("event %s accepted with a cancelled context ended with Done(%v)", ev.ID, err)
		}
	}
	for _, ev := range refused {
		if calls, err := rec.result(ev.ID); calls > 0 && err == nil {
			t.Errorf("event %s: Publish returned the context's error, then Done(nil)", ev.ID)
		}
	}
	stored = append(stored, rec.checkConfirmed(t, last)...)
	got := readAll(t, r, stored, waitTimeout)
	checkDelivered(t, stored, got, refused)
}

func (s *suite) callerContextEndsAfterPublish(t *testing.T) {
	sk, r := s.open(t)
	const n, keys = 200, 4
	evs := s.gen.events(n, keys)
	rec := newRecorder(evs)
	// The context bounds the call, as contexts do: once Publish has
	// returned nil the event is the sink's, and the caller is free to
	// cancel it (the relay cancels its context when a session ends).
	for _, ev := range evs {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		err := sk.Publish(ctx, ev)
		cancel()
		if err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
	rec.waitDone(t, evs, waitTimeout)
	confirmed := rec.checkConfirmed(t, evs)

	got := readAll(t, r, confirmed, waitTimeout)
	checkDelivered(t, confirmed, got, nil)
	sk.close(t)
}

// publishWithin publishes ev and fails t if Publish has not returned after d.
func publishWithin(t *testing.T, sk *sink, ctx context.Context, ev *relay.Event, d time.Duration) error {
	t.Helper()
	res := make(chan error, 1)
	go func() { res <- sk.Publish(ctx, ev) }()
	select {
	case err := <-res:
		return err
	case <-time.After(d):
		// The sink is wedged; closing it could hang too.
		sk.closed = true
		t.Fatalf("Publish %s with a cancelled context has not returned after %v", ev.ID, d)
		return nil
	}
}

// generator makes events with ids unique across runs and commit LSNs
// increasing across the whole suite.
type generator struct {
	mu  sync.Mutex
	lsn relay.LSN
}

var baseTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// events makes n events spread round-robin over keys aggregates, three
// rows to a transaction.
func (g *generator) events(n, keys int) []*relay.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	evs := make([]*relay.Event, n)
	seq := make(map[string]int, keys)
	for i := range evs {
		if i%3 == 0 {
			g.lsn += 0x100
		}
		key := fmt.Sprintf("agg-%02d", i%keys)
		evs[i] = g.eventLocked(key, seq[key], i%3)
		seq[key]++
	}
	return evs
}

// oversized makes an event of aggregate key whose payload is size bytes.
func (g *generator) oversized(key string, size int) *relay.Event {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.lsn += 0x100
	ev := g.eventLocked(key, -1, 0)
	head := fmt.Appendf(nil, `{"key":%q,"seq":-1,"pad":"`, key)
	pad := max(size-len(head)-2, 0)
	ev.Payload = append(append(head, bytes.Repeat([]byte("x"), pad)...), `"}`...)
	return ev
}

func (g *generator) eventLocked(key string, seq, index int) *relay.Event {
	id := newID()
	eventType := []string{"created", "paid", "shipped"}[index%3]
	payload := fmt.Appendf(nil, `{"key":%q,"seq":%d}`, key, seq)
	return &relay.Event{
		ID:            id,
		Table:         "public.outbox",
		AggregateType: "order",
		AggregateID:   key,
		EventType:     eventType,
		Payload:       payload,
		ContentType:   relay.ContentTypeJSON,
		Headers:       []relay.Header{{Key: headerKey, Value: "trace-" + id}},
		CreatedAt:     baseTime.Add(time.Duration(g.lsn) * time.Microsecond),
		CommitLSN:     g.lsn,
		CommitTime:    baseTime,
		Index:         index,
		Row: relay.Row{
			Names:  []string{"id", "aggregate_type", "aggregate_id", "event_type", "payload"},
			Values: [][]byte{[]byte(id), []byte("order"), []byte(key), []byte(eventType), payload},
		},
	}
}

// newID returns a random UUID (version 4).
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// recorder counts each event's Done calls and keeps its last verdict.
type recorder struct {
	mu    sync.Mutex
	calls map[string]int
	errs  map[string]error
	n     int
}

func newRecorder(evs []*relay.Event) *recorder {
	r := &recorder{calls: map[string]int{}, errs: map[string]error{}}
	r.track(evs...)
	return r
}

func (r *recorder) track(evs ...*relay.Event) {
	for _, ev := range evs {
		ev.OnDone(func(e *relay.Event, err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.calls[e.ID]++
			r.errs[e.ID] = err
			r.n++
		})
	}
}

func (r *recorder) total() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n
}

func (r *recorder) result(id string) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[id], r.errs[id]
}

// waitDone polls until Done has been called for every event of evs.
func (r *recorder) waitDone(t *testing.T, evs []*relay.Event, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		r.mu.Lock()
		pending := 0
		for _, ev := range evs {
			if r.calls[ev.ID] == 0 {
				pending++
			}
		}
		r.mu.Unlock()
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Done not called for %d of %d published events after %v", pending, len(evs), timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkConfirmed reports every event of evs whose Done was not called
// exactly once, with nil, and returns those that Done(nil) confirmed, the
// ones the broker must have: there is no point waiting for the others.
func (r *recorder) checkConfirmed(t *testing.T, evs []*relay.Event) []*relay.Event {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var problems []string
	var confirmed []*relay.Event
	for _, ev := range evs {
		calls, err := r.calls[ev.ID], r.errs[ev.ID]
		if calls > 0 && err == nil {
			confirmed = append(confirmed, ev)
		}
		switch {
		case calls == 0:
			problems = append(problems, fmt.Sprintf("%s: Done never called", ev.ID))
		case calls > 1:
			problems = append(problems, fmt.Sprintf("%s: Done called %d times", ev.ID, calls))
		case err != nil:
			problems = append(problems, fmt.Sprintf("%s: Done(%v)", ev.ID, err))
		}
	}
	report(t, "of "+strconv.Itoa(len(evs))+" events, want Done(nil) once each", problems)
	return confirmed
}

// readAll reads until every event of want has been seen or timeout
// passes, and returns all that was read.
func readAll(t *testing.T, r Reader, want []*relay.Event, timeout time.Duration) []Message {
	t.Helper()
	missing := make(map[string]bool, len(want))
	for _, ev := range want {
		missing[ev.ID] = true
	}
	deadline := time.Now().Add(timeout)
	var got []Message
	for len(missing) > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			break
		}
		// Each missing event is at least one message still to come, so
		// this never waits for messages that may not exist.
		msgs := r.Read(t, len(missing), left)
		for _, m := range msgs {
			delete(missing, m.ID)
		}
		got = append(got, msgs...)
	}
	return got
}

// checkDelivered checks what a consumer got against the events published:
// every event is there, with its key, body and headers, each aggregate's
// events in publish order, and none of absent. Duplicates are allowed (the
// relay delivers at least once) as long as the first copies are in order.
func checkDelivered(t *testing.T, want []*relay.Event, got []Message, absent []*relay.Event) {
	t.Helper()
	byID := make(map[string]*relay.Event, len(want))
	wantOrder := map[string][]string{}
	for _, ev := range want {
		byID[ev.ID] = ev
		wantOrder[ev.AggregateID] = append(wantOrder[ev.AggregateID], ev.ID)
	}
	isAbsent := map[string]bool{}
	for _, ev := range absent {
		isAbsent[ev.ID] = true
	}
	var problems []string
	seen := map[string]bool{}
	gotOrder := map[string][]string{}
	dups := 0
	for i, m := range got {
		ev := byID[m.ID]
		switch {
		case isAbsent[m.ID]:
			problems = append(problems, fmt.Sprintf("message %d is event %s, which must not have reached the broker", i, m.ID))
			continue
		case ev == nil:
			problems = append(problems, fmt.Sprintf("message %d has id %q, which the test did not publish", i, m.ID))
			continue
		case seen[m.ID]:
			dups++
			continue
		}
		seen[m.ID] = true
		gotOrder[ev.AggregateID] = append(gotOrder[ev.AggregateID], ev.ID)
		problems = append(problems, checkMessage(i, m, ev)...)
	}
	for _, ev := range want {
		if !seen[ev.ID] {
			problems = append(problems, fmt.Sprintf("event %s (aggregate %s) never arrived", ev.ID, ev.AggregateID))
		}
	}
	for key, ids := range wantOrder {
		gotIDs := gotOrder[key]
		for i := range min(len(ids), len(gotIDs)) {
			if ids[i] != gotIDs[i] {
				problems = append(problems, fmt.Sprintf("aggregate %s: event #%d to arrive is %s (payload %s), want %s (payload %s): order not kept",
					key, i, gotIDs[i], byID[gotIDs[i]].Payload, ids[i], byID[ids[i]].Payload))
				break
			}
		}
	}
	if dups > 0 {
		t.Logf("%d duplicate messages among %d", dups, len(got))
	}
	report(t, fmt.Sprintf("in %d messages read for %d events", len(got), len(want)), problems)
}

func checkMessage(i int, m Message, ev *relay.Event) []string {
	var problems []string
	check := func(what, got, want string) {
		if got != want {
			problems = append(problems, fmt.Sprintf("message %d (event %s): %s = %q, want %q", i, ev.ID, what, got, want))
		}
	}
	check("key", m.Key, ev.AggregateID)
	check("body", string(m.Body), string(ev.Payload))
	check("header "+headerKey, m.Headers[headerKey], ev.Headers[0].Value)
	check("header "+lsnHeader, m.Headers[lsnHeader], ev.CommitLSN.String())
	return problems
}

// report fails t with the first problems, if any.
func report(t *testing.T, what string, problems []string) {
	t.Helper()
	if len(problems) == 0 {
		return
	}
	const show = 10
	n, more := len(problems), ""
	if n > show {
		more = fmt.Sprintf("\n... and %d more", n-show)
		problems = problems[:show]
	}
	t.Errorf("%d problems %s:\n%s%s", n, what, strings.Join(problems, "\n"), more)
}
