//go:build linux

package rabbitmqstream_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/message"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/sinks/rabbitmqstream"
	"github.com/relay-dev/relay/sinks/sinktest"
)

var streamURL string

// node is the node TestMain started; nil with RELAY_TEST_STREAM_URL.
var node *services.Rabbit

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if u := os.Getenv("RELAY_TEST_STREAM_URL"); u != "" {
		streamURL = u
		return m.Run()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	r, err := services.StartRabbitWith(ctx, services.RabbitOptions{Stream: true})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "FAIL: start RabbitMQ with the stream plugin (or set RELAY_TEST_STREAM_URL): %v\n", err)
		return 1
	}
	defer r.Close()
	node, streamURL = r, r.StreamURL()
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

func suffix() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func newSink(t *testing.T, streamName, producer string, window int) *rabbitmqstream.Sink {
	t.Helper()
	tmpl, err := relay.ParseTemplate(streamName)
	if err != nil {
		t.Fatal(err)
	}
	return openSink(t, rabbitmqstream.Config{URL: streamURL, Stream: tmpl, Producer: producer, Window: window})
}

// openSink is a sink of cfg, closed when the test ends.
func openSink(t *testing.T, cfg rabbitmqstream.Config) *rabbitmqstream.Sink {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := rabbitmqstream.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Close(ctx)
	})
	return s
}

func TestConformance(t *testing.T) {
	sinktest.Run(t, sinktest.Target{
		Open: func(t *testing.T) (relay.Sink, sinktest.Reader) {
			name := "relaytest.s." + suffix()
			// A window far below the suite's event counts, so Publish
			// also blocks on confirms.
			s := newSink(t, name, "relaytest-"+suffix(), 64)
			return s, newReader(t, name)
		},
		// Over the stream frame size the sink asks for (1 MiB).
		OversizedPayload: 1<<20 + 1,
	})
}

// reader consumes a stream from its first offset with the stream protocol.
type reader struct {
	msgs chan *amqp.Message
}

func newReader(t *testing.T, name string) *reader {
	t.Helper()
	return newReaderAt(t, streamURL, name)
}

func newReaderAt(t *testing.T, url, name string) *reader {
	t.Helper()
	env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(url))
	if err != nil {
		t.Fatalf("reader environment: %v", err)
	}
	t.Cleanup(func() { _ = env.Close() })
	r := &reader{msgs: make(chan *amqp.Message, 1<<16)}
	// The stream is created by the sink at its first event; the reader
	// declares it too, so it can subscribe at once.
	if err := env.DeclareStream(name, stream.NewStreamOptions()); err != nil {
		t.Fatalf("declare %s: %v", name, err)
	}
	_, err = env.NewConsumer(name, func(_ stream.ConsumerContext, m *amqp.Message) { r.msgs <- m },
		stream.NewConsumerOptions().SetOffset(stream.OffsetSpecification{}.First()).SetManualCommit())
	if err != nil {
		t.Fatalf("consume %s: %v", name, err)
	}
	return r
}

func (r *reader) Read(t *testing.T, n int, timeout time.Duration) []sinktest.Message {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var out []sinktest.Message
	for len(out) < n {
		select {
		case m := <-r.msgs:
			out = append(out, toMessage(m))
		case <-timer.C:
			return out
		}
	}
	return out
}

func toMessage(m *amqp.Message) sinktest.Message {
	headers := map[string]string{}
	for k, v := range m.ApplicationProperties {
		headers[k] = fmt.Sprint(v)
	}
	id := ""
	if m.Properties != nil {
		id = fmt.Sprint(m.Properties.MessageID)
	}
	var body []byte
	if len(m.Data) > 0 {
		body = m.Data[0]
	}
	return sinktest.Message{ID: id, Key: headers["aggregate_id"], Body: body, Headers: headers}
}

// events makes n events of one aggregate, three to a transaction, from
// commit LSN lsn on.
func events(n int, lsn relay.LSN) []*relay.Event {
	evs := make([]*relay.Event, n)
	for i := range evs {
		if i%3 == 0 {
			lsn += 0x100
		}
		evs[i] = &relay.Event{
			ID:            fmt.Sprintf("ev-%06d", i),
			Table:         "public.outbox",
			AggregateType: "order",
			AggregateID:   "agg-1",
			EventType:     "created",
			Payload:       fmt.Appendf(nil, `{"seq":%d}`, i),
			ContentType:   relay.ContentTypeJSON,
			CommitLSN:     lsn,
			Index:         i % 3,
		}
	}
	return evs
}

// publish publishes evs and waits for every Done, failing t on an error.
func publish(t *testing.T, s relay.Sink, evs []*relay.Event) {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var errs []error
	wg.Add(len(evs))
	for _, ev := range evs {
		ev.OnDone(func(_ *relay.Event, err error) {
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			wg.Done()
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, ev := range evs {
		if err := s.Publish(ctx, ev); err != nil {
			t.Fatalf("Publish %s: %v", ev.ID, err)
		}
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d events failed, first: %v", len(errs), errs[0])
	}
}

// requireStream requires the stream to hold the events of want, each once,
// in their order, and nothing else.
func requireStream(t *testing.T, name string, want []*relay.Event) {
	t.Helper()
	ids := readIDs(t, name, len(want))
	if len(ids) != len(want) {
		t.Fatalf("stream holds %d messages, want %d", len(ids), len(want))
	}
	for i, id := range ids {
		if id != want[i].ID {
			t.Fatalf("message %d is %s, want %s", i, id, want[i].ID)
		}
	}
}

// readIDs reads the stream from its start until it has seen want
// messages, or no message came for quiet, and returns their ids.
func readIDs(t *testing.T, name string, want int) []string {
	t.Helper()
	return readIDsAt(t, streamURL, name, want)
}

func readIDsAt(t *testing.T, url, name string, want int) []string {
	t.Helper()
	r := newReaderAt(t, url, name)
	var ids []string
	for _, m := range r.Read(t, want, 30*time.Second) {
		ids = append(ids, m.ID)
	}
	// Anything beyond want would be a duplicate: give it the time a
	// confirmed message takes to be readable, well over.
	for _, m := range r.Read(t, 1, 2*time.Second) {
		ids = append(ids, m.ID)
	}
	return ids
}

// TestRestartedSinkDuplicatesNothing is a relay that crashed after the
// broker stored part of a stream: its successor is handed every event
// again (the slot was not confirmed), and the stream holds each once.
func TestRestartedSinkDuplicatesNothing(t *testing.T) {
	name := "relaytest.restart." + suffix()
	producer := "relaytest-" + suffix()
	all := events(300, 1<<32)

	first := newSink(t, name, producer, 64)
	publish(t, first, all[:200])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	// The successor sees the events again, from before what was stored.
	again := events(300, 1<<32)
	second := newSink(t, name, producer, 64)
	publish(t, second, again[50:])
	// And a session restart within the same sink replays some again.
	publish(t, second, events(300, 1<<32)[250:])

	requireStream(t, name, all)
}

func TestCheck(t *testing.T) {
	name := "relaytest.check." + suffix()
	tmpl, _ := relay.ParseTemplate(name)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fs := rabbitmqstream.Check(ctx, rabbitmqstream.Config{URL: streamURL, Stream: tmpl, DeadLetter: name + ".dlq"})
	if len(fs) != 3 {
		t.Fatalf("findings %+v, want connection, stream, dead-letter stream", fs)
	}
	for _, f := range fs {
		if f.Status != relay.CheckOK {
			t.Errorf("%s: %s %s", f.Check, f.Status, f.Detail)
		}
	}
	if !strings.Contains(fs[1].Detail, "does not exist") {
		t.Errorf("stream finding %q, want that the relay will create it", fs[1].Detail)
	}
	bad := rabbitmqstream.Check(ctx, rabbitmqstream.Config{URL: "rabbitmq-stream://guest:s3cretpw@127.0.0.1:1/", Stream: tmpl})
	if len(bad) != 1 || bad[0].Status != relay.CheckFail || strings.Contains(bad[0].Detail, "s3cretpw") {
		t.Errorf("unreachable port: %+v", bad)
	}
}

// TestNodeKilledMidStream: the node is SIGKILLed with events in flight and
// restarted; every event is confirmed once it is back, and the stream
// holds each once.
func TestNodeKilledMidStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	node, err := services.StartRabbitWith(ctx, services.RabbitOptions{Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	name := "relaytest.kill." + suffix()
	env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(node.StreamURL()))
	if err != nil {
		t.Fatal(err)
	}
	if err := env.DeclareStream(name, stream.NewStreamOptions()); err != nil {
		t.Fatal(err)
	}
	env.Close()
	// A graceful restart writes the stream's declaration to disk.
	if err := node.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	tmpl, _ := relay.ParseTemplate(name)
	var logs strings.Builder
	var logMu sync.Mutex
	s, err := rabbitmqstream.New(ctx, rabbitmqstream.Config{URL: node.StreamURL(), Stream: tmpl, Producer: "p", Window: 256,
		Logger: slog.New(slog.NewTextHandler(writerFunc(func(b []byte) (int, error) {
			logMu.Lock()
			defer logMu.Unlock()
			return logs.Write(b)
		}), &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = s.Close(ctx)
		if t.Failed() {
			logMu.Lock()
			t.Logf("log:\n%s", logs.String())
			logMu.Unlock()
		}
	}()
	all := events(3000, 1<<32)
	var done atomic.Int64
	for _, ev := range all {
		ev.OnDone(func(_ *relay.Event, err error) {
			if err != nil {
				t.Errorf("Done(%v)", err)
			}
			done.Add(1)
		})
	}
	for i, ev := range all {
		if i == 1000 {
			if err := node.Kill(); err != nil {
				t.Fatal(err)
			}
			// Down long enough for the window to fill and the sink to
			// retry; Publish blocks meanwhile.
			go func() {
				time.Sleep(3 * time.Second)
				if err := node.Restart(ctx); err != nil {
					t.Errorf("restart: %v", err)
				}
			}()
		}
		if err := s.Publish(ctx, ev); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	deadline := time.Now().Add(2 * time.Minute)
	for done.Load() < int64(len(all)) {
		if time.Now().After(deadline) {
			logMu.Lock()
			t.Fatalf("%d of %d done; log:\n%s", done.Load(), len(all), logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	ids := readIDsAt(t, node.StreamURL(), name, len(all))
	if len(ids) != len(all) {
		t.Fatalf("stream holds %d messages, want %d", len(ids), len(all))
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// TestDeadRelaysLateFramesAreDropped: a relay dies with publishes still on
// their way; its successor asks for the producer's last id before they
// land. The late frames (sent here by a second producer of the same name
// once the successor has started) carry the ids the successor gives the
// same events, so the broker stores each event once, whichever copy comes
// first.
func TestDeadRelaysLateFramesAreDropped(t *testing.T) {
	name := "relaytest.late." + suffix()
	producer := "relaytest-" + suffix()
	all := events(300, 1<<32)

	first := newSink(t, name, producer, 64)
	publish(t, first, all[:100])
	// The messages the dead relay had numbered 101 to 180 and not yet
	// written when it died.
	var late []*amqp.AMQP10
	for i, ev := range events(300, 1<<32)[100:180] {
		m, err := first.MessageAs(ev, int64(101+i))
		if err != nil {
			t.Fatal(err)
		}
		late = append(late, m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Close(ctx); err != nil {
		t.Fatal(err)
	}

	second := newSink(t, name, producer, 64)
	again := events(300, 1<<32)
	// The successor's first event sets it up: it reads the producer's
	// last id (100) before the late frames land.
	publish(t, second, again[100:101])

	env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(streamURL))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	ghost, err := env.NewProducer(name, stream.NewProducerOptions().SetProducerName(producer))
	if err != nil {
		t.Fatal(err)
	}
	confirms := ghost.NotifyPublishConfirmation()
	var ghostMsgs []message.StreamMessage
	for _, m := range late {
		ghostMsgs = append(ghostMsgs, m)
	}
	if err := ghost.BatchSend(ghostMsgs); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(late); {
		select {
		case sts := <-confirms:
			n += len(sts)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of the late frames confirmed", n)
		}
	}
	publish(t, second, again[101:])

	requireStream(t, name, all)
}

// TestEachTableGoesToItsOwnStream: a table with a template of its own
// (Config.Streams) goes to its stream; the other tables to the global one.
func TestEachTableGoesToItsOwnStream(t *testing.T) {
	global, billing := "relaytest.tables."+suffix(), "relaytest.billing."+suffix()
	tmpl, _ := relay.ParseTemplate(global)
	own, _ := relay.ParseTemplate(billing)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := openSink(t, rabbitmqstream.Config{
		URL:      streamURL,
		Stream:   tmpl,
		Streams:  map[string]*relay.Template{"billing.outbox": own},
		Producer: "relaytest-" + suffix(),
	})
	evs := events(6, 0x1000)
	for _, ev := range evs[3:] {
		ev.Table = "billing.outbox"
	}
	publish(t, s, evs)
	for _, c := range []struct {
		stream string
		want   []string
	}{
		{global, []string{"ev-000000", "ev-000001", "ev-000002"}},
		{billing, []string{"ev-000003", "ev-000004", "ev-000005"}},
	} {
		if got := readIDs(t, c.stream, len(c.want)); strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("stream %s holds %v, want %v", c.stream, got, c.want)
		}
	}
	fs := rabbitmqstream.Check(ctx, rabbitmqstream.Config{URL: streamURL, Stream: tmpl, Streams: map[string]*relay.Template{"billing.outbox": own}})
	var checked []string
	for _, f := range fs {
		checked = append(checked, f.Check)
	}
	if want := []string{"rabbitmq-stream", "stream " + global, "stream " + billing}; strings.Join(checked, ",") != strings.Join(want, ",") {
		t.Errorf("relay check checked %v, want %v", checked, want)
	}
}

// TestWithoutWritePermission: a user who may read a stream but not write
// it is told so by relay check, with the permission to grant; the sink
// stops at a fixed stream it may not use, and dead-letters a row that
// named one itself.
func TestWithoutWritePermission(t *testing.T) {
	n := node
	if n == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		var err error
		if n, err = services.StartRabbitWith(ctx, services.RabbitOptions{Stream: true}); err != nil {
			t.Fatal(err)
		}
		defer n.Close()
	}
	open, closed := "relaytest.open."+suffix(), "relaytest.closed."+suffix()
	// Both streams exist, made by guest; the user may configure and
	// write only the open one, and read both.
	env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(n.StreamURL()))
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	for _, name := range []string{open, closed} {
		if err := env.DeclareStream(name, nil); err != nil {
			t.Fatal(err)
		}
	}
	user := "limited" + suffix()
	for _, args := range [][]string{
		{"add_user", user, "limited-pw"},
		{"set_permissions", "-p", "/", user, "^relaytest\\.open\\.", "^relaytest\\.open\\.", ".*"},
	} {
		if _, err := n.Ctl(t.Context(), args...); err != nil {
			t.Fatal(err)
		}
	}
	url := strings.Replace(n.StreamURL(), "guest:guest@", user+":limited-pw@", 1)
	tmplOpen, _ := relay.ParseTemplate(open)
	tmplClosed, _ := relay.ParseTemplate(closed)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	fs := rabbitmqstream.Check(ctx, rabbitmqstream.Config{URL: url, Stream: tmplOpen, Streams: map[string]*relay.Template{"billing.outbox": tmplClosed}})
	status := map[string]relay.Finding{}
	for _, f := range fs {
		status[f.Check] = f
	}
	if f := status["stream "+open]; f.Status != relay.CheckOK || !strings.Contains(f.Detail, "may publish") {
		t.Errorf("open stream: %+v, want OK and that the user may publish", f)
	}
	if f := status["stream "+closed]; f.Status != relay.CheckFail || !strings.Contains(f.Fix, "write permission") || strings.Contains(f.Detail+f.Fix, "limited-pw") {
		t.Errorf("closed stream: %+v, want FAIL naming the write permission", f)
	}

	s := openSink(t, rabbitmqstream.Config{URL: url, Stream: tmplClosed, Producer: "relaytest-" + suffix()})
	evs := events(1, 0x1000)
	err = s.Publish(ctx, evs[0])
	if !relay.IsPermanent(err) || !strings.Contains(err.Error(), "write permission") || !strings.Contains(err.Error(), closed) {
		t.Errorf("Publish to a fixed stream without permission: %v, want a permanent error naming the stream and the permission", err)
	}

	byRow, _ := relay.ParseTemplate("relaytest.{aggregate_type}." + suffix())
	s2 := openSink(t, rabbitmqstream.Config{URL: url, Stream: byRow, Producer: "relaytest-" + suffix()})
	ev := events(1, 0x1000)[0]
	ev.AggregateType = "closed"
	err = s2.Publish(ctx, ev)
	if _, ok := relay.AsBadRow(err); !ok {
		t.Errorf("Publish to a stream the row named without permission: %v, want a bad row", err)
	}
}
