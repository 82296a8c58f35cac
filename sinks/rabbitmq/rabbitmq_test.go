//go:build linux

package rabbitmq_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmq"
)

// These tests run against a real broker: RELAY_TEST_AMQP_URL, or else a
// throwaway node started once for the package. Failing to start one fails
// the tests rather than skipping them: a silently skipped suite looks exactly
// like a passing one.

var (
	amqpURL string
	// rabbit is our throwaway node, nil when RELAY_TEST_AMQP_URL points to a
	// broker we must not kill or reconfigure.
	rabbit *services.Rabbit
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	if u := os.Getenv("RELAY_TEST_AMQP_URL"); u != "" {
		amqpURL = u
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	r, err := services.StartRabbit(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: start RabbitMQ (or set RELAY_TEST_AMQP_URL): %v\n", err)
		return 1
	}
	defer r.Close()
	rabbit, amqpURL = r, r.URL()
	code := m.Run()
	if code != 0 {
		if b, err := os.ReadFile(r.LogPath()); err == nil {
			if len(b) > 4000 {
				b = b[len(b)-4000:]
			}
			fmt.Fprintf(os.Stderr, "tail of %s:\n%s\n", r.LogPath(), b)
		}
	}
	return code
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func suffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// broker is the test's own view of the broker, for topology and reading
// queues.
type broker struct {
	t    *testing.T
	conn *amqp.Connection
	ch   *amqp.Channel
}

func dialBroker(t *testing.T) *broker {
	t.Helper()
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		t.Fatalf("channel: %v", err)
	}
	b := &broker{t: t, conn: conn, ch: ch}
	t.Cleanup(func() { b.conn.Close() })
	return b
}

// reopen reconnects after the broker was restarted.
func (b *broker) reopen() {
	b.t.Helper()
	b.conn.Close()
	nb := dialBroker(b.t)
	b.conn, b.ch = nb.conn, nb.ch
}

// queue declares a durable queue bound to exchange with "#" and deletes it
// (and the exchange) when the test ends.
func (b *broker) queue(exchange string) string {
	b.t.Helper()
	name := "relaytest.q." + suffix()
	if _, err := b.ch.QueueDeclare(name, true, false, false, false, nil); err != nil {
		b.t.Fatalf("declare queue: %v", err)
	}
	b.bind(name, exchange)
	b.t.Cleanup(func() {
		if c, err := amqp.Dial(amqpURL); err == nil {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(name, false, false, false)
				_ = ch.ExchangeDelete(exchange, false, false)
			}
			c.Close()
		}
	})
	return name
}

func (b *broker) bind(queue, exchange string) {
	b.t.Helper()
	if err := b.ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		b.t.Fatalf("bind queue: %v", err)
	}
}

// drain returns every message in the queue, waiting up to a deadline for at
// least want of them.
func (b *broker) drain(ctx context.Context, queue string, want int) []amqp.Delivery {
	b.t.Helper()
	q, err := b.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		b.t.Fatalf("inspect queue: %v", err)
	}
	n := max(q.Messages, want)
	if err := b.ch.Qos(1000, 0, false); err != nil {
		b.t.Fatal(err)
	}
	tag := "relaytest-" + suffix()
	deliveries, err := b.ch.Consume(queue, tag, true, true, false, false, nil)
	if err != nil {
		b.t.Fatalf("consume: %v", err)
	}
	defer func() { _ = b.ch.Cancel(tag, false) }()
	var got []amqp.Delivery
	for len(got) < n {
		select {
		case d, ok := <-deliveries:
			if !ok {
				b.t.Fatalf("consumer closed after %d of %d messages", len(got), n)
			}
			got = append(got, d)
		case <-ctx.Done():
			b.t.Fatalf("queue %s: got %d messages, want %d: %v", queue, len(got), n, ctx.Err())
		}
	}
	return got
}

// recorder counts Done calls per event.
type recorder struct {
	mu    sync.Mutex
	calls map[string]int
	errs  map[string]error
	total int
}

func newRecorder() *recorder {
	return &recorder{calls: map[string]int{}, errs: map[string]error{}}
}

func (r *recorder) track(evs ...*relay.Event) {
	for _, ev := range evs {
		ev.OnDone(func(e *relay.Event, err error) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.calls[e.ID]++
			r.total++
			if err != nil {
				r.errs[e.ID] = err
			}
		})
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.total
}

// waitDone polls until n Done calls happened.
func (r *recorder) waitDone(t *testing.T, ctx context.Context, n int) {
	t.Helper()
	for r.count() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d events done: %v", r.count(), n, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkOnce asserts that every event got exactly one Done, with nil unless
// listed in failed.
func (r *recorder) checkOnce(t *testing.T, evs []*relay.Event, failed ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ev := range evs {
		if c := r.calls[ev.ID]; c != 1 {
			t.Errorf("event %s: Done called %d times, want 1", ev.ID, c)
		}
		if err := r.errs[ev.ID]; err != nil && !slices.Contains(failed, ev.ID) {
			t.Errorf("event %s: Done(%v), want nil", ev.ID, err)
		}
	}
}

// logRecords captures the sink's log, to observe what it retried.
type logRecords struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return l }
func (l *logRecords) WithGroup(string) slog.Handler            { return l }
func (l *logRecords) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.msgs = append(l.msgs, b.String())
	l.mu.Unlock()
	return nil
}

func (l *logRecords) count(substr string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.msgs {
		if strings.Contains(m, substr) {
			n++
		}
	}
	return n
}

func (l *logRecords) dump(t *testing.T) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		t.Log("sink log: " + m)
	}
}

// checkNoSinkGoroutines asserts that a closed sink left no goroutine of its
// own running.
func checkNoSinkGoroutines(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var leaked []string
		for _, g := range strings.Split(stacks, "\n\n") {
			if strings.Contains(g, "sinks/rabbitmq.(*Sink)") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sink goroutines still running after Close:\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var baseTime = time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)

// events makes n events spread over keys aggregates; every third has no
// content type, and each carries a header column trying to forge the
// aggregate_id built-in.
func events(prefix string, n, keys int) []*relay.Event {
	evs := make([]*relay.Event, n)
	for i := range evs {
		ct := relay.ContentTypeJSON
		if i%3 == 2 {
			ct = ""
		}
		evs[i] = &relay.Event{
			ID:            fmt.Sprintf("%s-%06d", prefix, i),
			Table:         "public.outbox",
			AggregateType: "order",
			AggregateID:   fmt.Sprintf("agg-%d", i%keys),
			EventType:     []string{"created", "paid", "shipped"}[i%3],
			Payload:       fmt.Appendf(nil, `{"n":%d}`, i),
			ContentType:   ct,
			Headers: []relay.Header{
				{Key: "aggregate_id", Value: "forged"},
				{Key: "trace_id", Value: "trace-" + strconv.Itoa(i)},
			},
			CreatedAt:  baseTime.Add(time.Duration(i) * time.Second),
			CommitLSN:  relay.LSN(1<<32 + uint64(i)*100),
			CommitTime: baseTime,
			Index:      i % 7,
		}
	}
	return evs
}

func newSink(t *testing.T, ctx context.Context, exchange string, window int, logs *logRecords) *rabbitmq.Sink {
	t.Helper()
	tmpl, err := relay.ParseTemplate("{aggregate_type}.{event_type}")
	if err != nil {
		t.Fatal(err)
	}
	var h slog.Handler = slog.DiscardHandler
	if logs != nil {
		h = logs
	}
	s, err := rabbitmq.New(ctx, rabbitmq.Config{
		URL:           amqpURL,
		Exchange:      exchange,
		RoutingKey:    tmpl,
		ConfirmWindow: window,
		Logger:        slog.New(h),
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(cctx)
	})
	return s
}

func publishAll(t *testing.T, ctx context.Context, s *rabbitmq.Sink, evs []*relay.Event) {
	t.Helper()
	for _, ev := range evs {
		if err := s.Publish(ctx, ev); err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
}

func TestPublishesInOrderWithAllProperties(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := newSink(t, ctx, exchange, 256, nil)
	if !s.Connected() {
		t.Fatal("Connected() = false after New")
	}
	b := dialBroker(t)
	queue := b.queue(exchange)

	const n = 5000
	evs := events("ord", n, 10)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)
	rec.waitDone(t, ctx, n)
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.checkOnce(t, evs)

	got := b.drain(ctx, queue, n)
	if len(got) != n {
		t.Fatalf("queue holds %d messages, want %d", len(got), n)
	}
	for i, d := range got {
		ev := evs[i]
		if d.MessageId != ev.ID {
			t.Fatalf("message %d is %s, want %s: order not kept", i, d.MessageId, ev.ID)
		}
		checkMessage(t, d, ev, exchange)
	}
}

func checkMessage(t *testing.T, d amqp.Delivery, ev *relay.Event, exchange string) {
	t.Helper()
	wantHeaders := amqp.Table{
		"aggregate_id":   ev.AggregateID, // the built-in wins over the header column
		"aggregate_type": ev.AggregateType,
		"trace_id":       ev.Headers[1].Value,
		"x-relay-lsn":    ev.CommitLSN.String(),
	}
	var problems []string
	check := func(what string, got, want any) {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			problems = append(problems, fmt.Sprintf("%s = %v, want %v", what, got, want))
		}
	}
	check("exchange", d.Exchange, exchange)
	check("routing key", d.RoutingKey, ev.AggregateType+"."+ev.EventType)
	check("delivery mode", d.DeliveryMode, amqp.Persistent)
	check("type", d.Type, ev.EventType)
	check("content type", d.ContentType, ev.ContentType)
	check("timestamp", d.Timestamp.Unix(), ev.CreatedAt.Unix())
	check("body", string(d.Body), string(ev.Payload))
	check("header count", len(d.Headers), len(wantHeaders)+1)
	check("x-relay-index", fmt.Sprintf("%T %v", d.Headers[relay.HeaderIndex], d.Headers[relay.HeaderIndex]), fmt.Sprintf("int64 %d", ev.Index))
	for k, want := range wantHeaders {
		got, ok := d.Headers[k].(string)
		if !ok || got != want {
			problems = append(problems, fmt.Sprintf("header %s = %#v, want string %q", k, d.Headers[k], want))
		}
	}
	if len(problems) > 0 {
		t.Fatalf("message %s: %s", ev.ID, strings.Join(problems, "; "))
	}
}

func TestUnroutableIsRetriedUntilRoutable(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	logs := &logRecords{}
	s := newSink(t, ctx, exchange, 16, logs)
	defer func() {
		if t.Failed() || os.Getenv("RELAY_TEST_SINK_LOG") != "" {
			logs.dump(t)
		}
	}()

	evs := events("unroutable", 3, 3)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)

	// Two returns logged means the broker returned the events, and the sink
	// republished them and had them returned again: it did retry.
	for logs.count("returned") < 2 {
		select {
		case <-ctx.Done():
			t.Fatalf("sink logged %d returns, want 2: %v", logs.count("returned"), ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if n := rec.count(); n != 0 {
		t.Fatalf("Done called %d times for unroutable events (errors %v); a returned message is not confirmed", n, rec.errs)
	}

	b := dialBroker(t)
	queue := b.queue(exchange)
	rec.waitDone(t, ctx, len(evs))
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.checkOnce(t, evs)
	got := b.drain(ctx, queue, len(evs))
	var ids []string
	for _, d := range got {
		ids = append(ids, d.MessageId)
	}
	ids = firstOccurrences(ids)
	if want := []string{evs[0].ID, evs[1].ID, evs[2].ID}; !slices.Equal(ids, want) {
		t.Fatalf("queue holds %v, want %v", ids, want)
	}
}

func firstOccurrences(ids []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

func TestBrokerKillMidStreamLosesNothing(t *testing.T) {
	if rabbit == nil {
		t.Skip("RELAY_TEST_AMQP_URL points to a broker this test must not kill")
	}
	ctx := testContext(t, 90*time.Second)
	exchange := "relaytest.x." + suffix()
	logs := &logRecords{}
	const n, keys, window = 3000, 20, 256
	s := newSink(t, ctx, exchange, window, logs)
	defer func() {
		if t.Failed() || os.Getenv("RELAY_TEST_SINK_LOG") != "" {
			logs.dump(t)
		}
	}()
	b := dialBroker(t)
	queue := b.queue(exchange)
	// A SIGKILL before fresh declarations reach the node's disk would lose
	// the exchange, queue and binding themselves (see services.Rabbit.Kill),
	// which is about the broker, not about the sink.
	if err := rabbit.SyncTopology(ctx); err != nil {
		t.Fatal(err)
	}

	evs := events("kill", n, keys)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs[:n/3])
	rec.waitDone(t, ctx, n/3)

	// A frozen broker confirms nothing more, so whatever the sink is handed
	// from now on is certainly in flight when the broker dies, however fast
	// the sink is. The window lets window more events in before Publish
	// waits; the rest wait for the broker to come back.
	if err := rabbit.Freeze(); err != nil {
		t.Fatalf("Freeze: %v", err)
	}
	restarted := false
	t.Cleanup(func() {
		// The node is shared by the package's other tests.
		if !restarted {
			if err := rabbit.Restart(context.Background()); err != nil {
				t.Errorf("restart the node after a failure: %v", err)
			}
		}
	})
	var accepted atomic.Int64
	published := make(chan error, 1)
	go func() {
		for _, ev := range evs[n/3:] {
			if err := s.Publish(ctx, ev); err != nil {
				published <- fmt.Errorf("publish %s: %w", ev.ID, err)
				return
			}
			accepted.Add(1)
		}
		published <- nil
	}()
	waitFor(t, ctx, fmt.Sprintf("%d publishes to the frozen broker", window), func() bool { return accepted.Load() >= window })
	inFlight := accepted.Load()
	if got := rec.count(); got != n/3 {
		t.Fatalf("%d events done with the broker frozen after %d: confirmed without a broker", got, n/3)
	}
	if err := rabbit.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	waitFor(t, ctx, "Connected() = false after Kill", func() bool { return !s.Connected() })
	if err := rabbit.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	restarted = true
	t.Logf("killed with %d of %d events done and at least %d in flight", n/3, n, inFlight)

	rec.waitDone(t, ctx, n)
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if !s.Connected() {
		t.Error("Connected() = false after recovery")
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.checkOnce(t, evs)
	checkNoSinkGoroutines(t)
	if logs.count("channel closed") == 0 {
		t.Error("sink never noticed the broker going away")
	}

	b.reopen()
	got := b.drain(ctx, queue, n)
	var ids []string
	for _, d := range got {
		ids = append(ids, d.MessageId)
	}
	first := firstOccurrences(ids)
	t.Logf("queue holds %d messages for %d events (%d duplicates)", len(ids), n, len(ids)-len(first))
	index := map[string]int{}
	for i, ev := range evs {
		index[ev.ID] = i
	}
	present := map[string]bool{}
	lastPerKey := map[string]int{}
	for _, id := range first {
		i, ok := index[id]
		if !ok {
			t.Fatalf("unexpected message %q", id)
		}
		present[id] = true
		key := evs[i].AggregateID
		if last, ok := lastPerKey[key]; ok && last > i {
			t.Errorf("%s: %s arrived after %s", key, id, evs[last].ID)
		}
		lastPerKey[key] = i
	}
	missing := 0
	for _, ev := range evs {
		if !present[ev.ID] {
			missing++
			if missing <= 10 {
				t.Errorf("event %s confirmed but missing from the queue", ev.ID)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d confirmed events missing", missing, n)
	}
}

func TestMessageOverMaxSizeFailsPermanently(t *testing.T) {
	if rabbit == nil {
		t.Skip("RELAY_TEST_AMQP_URL points to a foreign broker whose max_message_size this test must not change")
	}
	ctx := testContext(t, time.Minute)
	const limit = 1024
	old := rabbitctlEval(t, ctx, fmt.Sprintf(
		"V = application:get_env(rabbit, max_message_size), application:set_env(rabbit, max_message_size, %d), V.", limit))
	t.Cleanup(func() {
		restore := "application:unset_env(rabbit, max_message_size)."
		if v, ok := strings.CutPrefix(old, "{ok,"); ok {
			restore = fmt.Sprintf("application:set_env(rabbit, max_message_size, %s).", strings.TrimSuffix(v, "}"))
		}
		rabbitctlEval(t, context.Background(), restore)
	})

	// The broker reads the limit when a channel opens, so the sink starts
	// after it is set.
	exchange := "relaytest.x." + suffix()
	logs := &logRecords{}
	s := newSink(t, ctx, exchange, 16, logs)
	defer func() {
		if t.Failed() || os.Getenv("RELAY_TEST_SINK_LOG") != "" {
			logs.dump(t)
		}
	}()
	b := dialBroker(t)
	queue := b.queue(exchange)

	evs := events("size", 6, 2)
	big := evs[2]
	big.Payload = bytes.Repeat([]byte("x"), 2*limit)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)
	rec.waitDone(t, ctx, len(evs))

	rec.mu.Lock()
	err := rec.errs[big.ID]
	rec.mu.Unlock()
	if err == nil {
		t.Fatalf("oversized event %s: Done(nil), want a permanent error", big.ID)
	}
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), big.ID) || !strings.Contains(err.Error(), strconv.Itoa(limit)) {
		t.Fatalf("oversized event: Done(%v), want a permanent error naming %s and the limit %d", err, big.ID, limit)
	}
	rec.checkOnce(t, evs, big.ID)

	// Once the limit is known, Publish refuses oversized events itself.
	again := events("size-again", 1, 1)[0]
	again.Payload = big.Payload
	if err := s.Publish(ctx, again); !relay.IsPermanent(err) || !strings.Contains(err.Error(), again.ID) {
		t.Errorf("Publish of an oversized event after the 406: %v, want a permanent error naming it", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}

	got := b.drain(ctx, queue, len(evs)-1)
	var ids []string
	for _, d := range got {
		ids = append(ids, d.MessageId)
	}
	var want []string
	for _, ev := range evs {
		if ev != big {
			want = append(want, ev.ID)
		}
	}
	if ids = firstOccurrences(ids); !slices.Equal(ids, want) {
		t.Fatalf("queue holds %v, want %v", ids, want)
	}
}

// rabbitctlEval runs `rabbitmqctl eval expr` against our throwaway node and
// returns its output.
func rabbitctlEval(t *testing.T, ctx context.Context, expr string) string {
	t.Helper()
	return rabbitctl(t, ctx, "eval", expr)
}

// rabbitctl runs rabbitmqctl against our throwaway node and returns its
// output. The node's identity (name, epmd port, cookie in HOME,
// config files) is taken from the environment of the running node itself, as
// services.Rabbit does not export it.
func rabbitctl(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	pid, err := os.ReadFile(filepath.Join(rabbit.Dir, "rabbitmq.pid"))
	if err != nil {
		t.Fatalf("rabbitmqctl: node pid: %v", err)
	}
	environ, err := os.ReadFile("/proc/" + strings.TrimSpace(string(pid)) + "/environ")
	if err != nil {
		t.Fatalf("rabbitmqctl: node environment: %v", err)
	}
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RABBITMQ_") && !strings.HasPrefix(kv, "ERL_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	for _, kv := range strings.Split(string(environ), "\x00") {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "RABBITMQ_NODENAME", "ERL_EPMD_PORT", "ERL_EPMD_ADDRESS", "RABBITMQ_CONF_ENV_FILE", "RABBITMQ_CONFIG_FILE", "RABBITMQ_CONFIG_FILES", "RABBITMQ_ADVANCED_CONFIG_FILE", "RABBITMQ_ENABLED_PLUGINS_FILE":
			env = append(env, kv)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Not /usr/sbin/rabbitmqctl: as root, that wrapper switches to the
	// rabbitmq user and loses this environment.
	cmd := exec.CommandContext(ctx, "/usr/lib/rabbitmq/bin/rabbitmqctl", args...)
	cmd.Env = env
	cmd.Dir = rabbit.Dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("rabbitmqctl %q: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

func TestCloseWaitsForConfirms(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	s := newSink(t, ctx, exchange, 64, nil)
	b := dialBroker(t)
	b.queue(exchange)

	evs := events("close", 500, 5)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// No waiting here: Close itself must have waited.
	if n := rec.count(); n != len(evs) {
		t.Fatalf("Close returned with %d of %d events done", n, len(evs))
	}
	rec.checkOnce(t, evs)
	if s.Connected() {
		t.Error("Connected() = true after Close")
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkNoSinkGoroutines(t)
}

func TestCloseGivesUpWhenContextEnds(t *testing.T) {
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix() // no queue: nothing will be confirmed
	s := newSink(t, ctx, exchange, 8, nil)
	evs := events("stuck", 2, 1)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)

	cctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	err := s.Close(cctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close with unconfirmable events = %v, want deadline exceeded", err)
	}
	if n := rec.count(); n != 0 {
		t.Fatalf("Done called %d times for unroutable events", n)
	}
	checkNoSinkGoroutines(t)
}

func TestPublishRejectsOverlongRoutingKey(t *testing.T) {
	ctx := testContext(t, 30*time.Second)
	tmpl, err := relay.ParseTemplate("{aggregate_id}")
	if err != nil {
		t.Fatal(err)
	}
	s, err := rabbitmq.New(ctx, rabbitmq.Config{URL: amqpURL, Exchange: "relaytest.x." + suffix(), RoutingKey: tmpl})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close(ctx)
	ev := events("longkey", 1, 1)[0]
	ev.AggregateID = strings.Repeat("k", 256)
	err = s.Publish(ctx, ev)
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), ev.ID) {
		t.Fatalf("Publish with a 256-byte routing key = %v, want a permanent error naming %s", err, ev.ID)
	}
}

func TestNewRejectsInvalidURLWithoutLeakingPassword(t *testing.T) {
	ctx := testContext(t, 5*time.Second)
	tmpl, _ := relay.ParseTemplate("x")
	for _, u := range []string{"amqp://user:s3cret@host:port/", "http://user:s3cret@host/", "amqp://user:s3cret@ho st/"} {
		_, err := rabbitmq.New(ctx, rabbitmq.Config{URL: u, RoutingKey: tmpl})
		if err == nil {
			t.Errorf("New(%q) succeeded", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("New(%q) error leaks the password: %v", u, err)
		}
	}
}

func TestNewRetriesUntilContextEnds(t *testing.T) {
	port, err := services.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	logs := &logRecords{}
	tmpl, _ := relay.ParseTemplate("x")
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	_, err = rabbitmq.New(ctx, rabbitmq.Config{
		URL:        fmt.Sprintf("amqp://user:s3cret@127.0.0.1:%d/", port),
		RoutingKey: tmpl,
		Logger:     slog.New(logs),
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("New against a closed port = %v, want deadline exceeded after retries", err)
	}
	checkNoSinkGoroutines(t)
	if n := logs.count("cannot connect"); n < 2 {
		t.Errorf("logged %d connection failures, want at least 2 (one per attempt)", n)
	}
	if logs.count("s3cret") > 0 || strings.Contains(err.Error(), "s3cret") {
		t.Error("the password was logged or returned")
	}
}

func TestBlockedConnectionWaits(t *testing.T) {
	if rabbit == nil {
		t.Skip("RELAY_TEST_AMQP_URL points to a foreign broker this test must not put under a memory alarm")
	}
	ctx := testContext(t, time.Minute)
	exchange := "relaytest.x." + suffix()
	logs := &logRecords{}
	s := newSink(t, ctx, exchange, 16, logs)
	defer func() {
		if t.Failed() || os.Getenv("RELAY_TEST_SINK_LOG") != "" {
			logs.dump(t)
		}
	}()
	b := dialBroker(t)
	queue := b.queue(exchange)

	// A high watermark of 0 raises the memory alarm at once: the broker
	// blocks every publishing connection.
	old := rabbitctlEval(t, ctx, "vm_memory_monitor:get_vm_memory_high_watermark().")
	restore := func() {
		if v, ok := strings.CutPrefix(old, "{absolute,"); ok {
			rabbitctl(t, context.Background(), "set_vm_memory_high_watermark", "absolute", strings.TrimSuffix(v, "}"))
		} else {
			rabbitctl(t, context.Background(), "set_vm_memory_high_watermark", old)
		}
	}
	restored := false
	t.Cleanup(func() {
		if !restored {
			restore()
		}
	})
	rabbitctl(t, ctx, "set_vm_memory_high_watermark", "0")

	evs := events("blocked", 5, 1)
	rec := newRecorder()
	rec.track(evs...)
	publishAll(t, ctx, s, evs)
	waitFor(t, ctx, "the sink to report connection.blocked", func() bool {
		return logs.count("blocked publishing") > 0 && !s.Connected()
	})

	restore()
	restored = true
	rec.waitDone(t, ctx, len(evs))
	waitFor(t, ctx, "Connected() after the alarm cleared", s.Connected)
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	rec.checkOnce(t, evs)
	var ids []string
	for _, d := range b.drain(ctx, queue, len(evs)) {
		ids = append(ids, d.MessageId)
	}
	var want []string
	for _, ev := range evs {
		want = append(want, ev.ID)
	}
	if ids = firstOccurrences(ids); !slices.Equal(ids, want) {
		t.Fatalf("queue holds %v, want %v", ids, want)
	}
}
