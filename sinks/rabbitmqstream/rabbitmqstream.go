// Package rabbitmqstream is relay's RabbitMQ streams sink: exactly once
// into the stream, by the broker's deduplication of a named producer.
//
// Every stream gets one producer named after the relay's slot. Each event
// is numbered once, in stream order, with the publishing id after the
// previous event's, and keeps that id through every retry, reconnect and
// restart: the broker stores a message only when its publishing id is
// above the last one it stored for the producer, and confirms the others
// without writing them. A restarted relay takes up the numbering where the
// stream's tail left it (tail.go): it asks the broker for the producer's
// last stored id, reads the position (commit LSN, index) of the message
// stored under it, confirms at once the events at or before that position
// and numbers the rest from the next id, as its predecessor did
// (docs/delivery-guarantees.md).
package rabbitmqstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

const (
	defaultStream = "outbox"
	defaultWindow = 4096

	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second

	// maxFrame is the frame size the sink asks for, the stream plugin's
	// default stream.frame_max; an event that does not fit one publish
	// frame alone is a bad row (frameOverhead: the frame's length and
	// header, and the message's publishing id and length).
	maxFrame      = 1 << 20
	frameOverhead = 4 + 9 + 8 + 4
)

// Config configures a Sink.
type Config struct {
	// URL is rabbitmq-stream://user:pass@host:5552/vhost, or
	// rabbitmq-stream+tls:// for TLS, with the query parameters
	// cacertfile, certfile and keyfile as for amqps://. Required.
	URL string
	// Stream renders each event's stream name. Default "outbox".
	Stream *relay.Template
	// Streams replaces Stream for the events of the tables it names,
	// keyed by relay.Event.Table.
	Streams map[string]*relay.Template
	// Producer is the name of the deduplicating producer on every stream;
	// relays of one replication slot must share it, and nothing else may
	// use it. Required.
	Producer string
	// MaxAge and MaxLengthBytes are the retention of streams the sink
	// creates; zero: the broker's default (keep everything).
	MaxAge         time.Duration
	MaxLengthBytes int64
	// Window is the most events awaiting a confirm at once. Default 4096.
	Window int
	// DeadLetter is the stream dead letters go to, created like the
	// others; application property x-relay-error carries the reason.
	// Empty: none.
	DeadLetter string
	// Format shapes each message, as for the AMQP sink; the CloudEvents
	// formats need CloudEventsSource.
	Format            relay.Format
	CloudEventsSource string
	// Metrics counts republished events and dropped headers; nil: none.
	Metrics *metrics.Metrics
	// Logger receives connection failures and recoveries. Default: discard.
	Logger *slog.Logger
}

// Sink publishes events to RabbitMQ streams. It implements relay.Sink.
type Sink struct {
	// opts connects an environment. Each stream's producer has one of its
	// own, replaced whole at every recovery: the library's environment
	// retries a lost connection forever, unbounded by any context, inside
	// the calls that need it.
	opts     *stream.EnvironmentOptions
	template *relay.Template
	streams  map[string]*relay.Template // Config.Streams
	dlq      string
	producer string
	maxAge   time.Duration
	maxBytes int64
	format   relay.Format
	ceSource string
	guard    *relay.HeaderGuard
	metrics  *metrics.Metrics
	log      *slog.Logger
	redacted string
	window   int

	// sem holds one token per published event whose Done is still due.
	sem chan struct{}
	// wire is held while writing to a producer, so that the order of
	// sends is the order of publishing ids.
	wire   chan struct{}
	life   context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	closeMu sync.Mutex

	mu    sync.Mutex // guards dests and their state; never held during network I/O
	dests map[string]*dest
}

// dest is one stream and the sink's producer on it.
type dest struct {
	name string
	env  *stream.Environment // of prod
	prod *stream.Producer
	gen  uint64
	// healthy: prod works and every pending event was sent on it.
	healthy bool
	kick    chan struct{}
	backoff *relay.Backoff

	// lastPos and lastID are the latest event numbered for this stream:
	// every event at or before lastPos is stored or pending.
	lastPos position
	lastID  int64
	pending []*pending // by publishing id
	byID    map[int64]*pending
	byPos   map[position]*pending
	// refused holds numbered events that the broker can never take, so
	// that a replay of one fails again instead of passing as stored.
	refused map[position]error
}

// pending is a numbered event awaiting its confirm.
type pending struct {
	id  int64
	pos position
	msg *encoded
	// evs are the event and its replays by later sessions of the relay,
	// all answered by the one confirm.
	evs  []*relay.Event
	done bool
}

var errClosed = errors.New("rabbitmq-stream sink is closed")

// New connects to the broker, retrying with backoff while it is
// unreachable until ctx ends. Streams are created, and their producers
// declared, at their first event. The sink lives until Close.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	u, err := relay.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq-stream: invalid URL: %v", err)
	}
	redacted := u.Redacted()
	if u.Scheme != "rabbitmq-stream" && u.Scheme != "rabbitmq-stream+tls" {
		return nil, fmt.Errorf("rabbitmq-stream: URL %s: scheme must be rabbitmq-stream or rabbitmq-stream+tls", redacted)
	}
	plain, tlsConf, err := tlsConfig(u)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq-stream: URL %s: %w", redacted, err)
	}
	if cfg.Producer == "" {
		return nil, errors.New("rabbitmq-stream: producer name is required")
	}
	if cfg.Stream == nil {
		if cfg.Stream, err = relay.ParseTemplate(defaultStream); err != nil {
			return nil, err
		}
	}
	for table, t := range cfg.Streams {
		if t == nil {
			return nil, fmt.Errorf("rabbitmq-stream: stream template of table %s is nil", table)
		}
	}
	if cfg.Format != relay.FormatRaw && cfg.CloudEventsSource == "" {
		return nil, fmt.Errorf("rabbitmq-stream: format %s needs a CloudEvents source", cfg.Format)
	}
	if cfg.Window <= 0 {
		cfg.Window = defaultWindow
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	useLogger(log)
	life, stop := context.WithCancel(context.Background())
	s := &Sink{
		template: cfg.Stream,
		streams:  cfg.Streams,
		dlq:      cfg.DeadLetter,
		producer: cfg.Producer,
		maxAge:   cfg.MaxAge,
		maxBytes: cfg.MaxLengthBytes,
		format:   cfg.Format,
		ceSource: cfg.CloudEventsSource,
		metrics:  cfg.Metrics,
		log:      log.With("component", "rabbitmq-stream"),
		redacted: redacted,
		window:   cfg.Window,
		sem:      make(chan struct{}, cfg.Window),
		wire:     make(chan struct{}, 1),
		life:     life,
		stop:     stop,
		dests:    map[string]*dest{},
	}
	s.guard = relay.NewHeaderGuard(s.ownProperty, cfg.Metrics, s.log)

	opts := stream.NewEnvironmentOptions().
		SetUri(plain.String()).
		SetRequestedMaxFrameSize(maxFrame).
		SetMaxProducersPerClient(1) // a reconnect replaces one producer's connection only
	if tlsConf != nil {
		opts.SetTLSConfig(tlsConf)
	}
	s.opts = opts
	backoff := relay.NewBackoff(minBackoff, maxBackoff)
	for {
		// A first connection tells a wrong URL or password at startup.
		var env *stream.Environment
		env, err = stream.NewEnvironment(opts)
		if err == nil {
			_ = env.Close()
			break
		}
		wait := backoff.Next()
		s.log.Warn("cannot connect to RabbitMQ streams; retrying", "url", redacted, "error", scrub(err, plain.String(), redacted), "retry_in", wait.String())
		if !relay.Sleep(ctx, wait) {
			stop()
			return nil, fmt.Errorf("rabbitmq-stream: connect to %s: %w (last error: %v)", redacted, ctx.Err(), scrub(err, plain.String(), redacted))
		}
	}
	s.log.Info("connected to RabbitMQ streams", "url", redacted, "producer", s.producer, "window", s.window)
	return s, nil
}

// scrub keeps the password out of an error that may quote the URL.
func scrub(err error, raw, redacted string) string {
	return strings.ReplaceAll(err.Error(), raw, redacted)
}

// Publish numbers ev for its stream and sends it, without waiting for the
// confirm; ev.Done reports it. An event the stream already holds (at or
// before the position its tail held when the sink started on the stream)
// is done at once. Publish blocks while Window events await their confirm,
// and while the stream's producer is first set up.
func (s *Sink) Publish(ctx context.Context, ev *relay.Event) error {
	if s.closed.Load() {
		return errClosed
	}
	name, byRow, err := s.streamOf(ev)
	if err != nil {
		return err
	}
	msg, err := s.message(ev)
	if err != nil {
		return err
	}
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.life.Done():
		return errClosed
	}
	d, err := s.dest(ctx, name)
	if err != nil {
		<-s.sem
		if errors.Is(err, stream.CodeAccessRefused) {
			if byRow {
				// A name the row chose that the user may not use is the
				// row's fault: the stream goes on without it.
				return relay.BadRow(ev, fmt.Errorf("stream %s: %w", name, err))
			}
			// Retrying cannot help until an operator grants it, and every
			// event after this one waits on it: stop and say so.
			return relay.Permanent(fmt.Errorf("stream %s: %w: the user of RELAY_RABBITMQ_STREAM_URL needs configure and write permission on it (rabbitmqctl set_permissions)", name, err))
		}
		return err
	}
	ev.Destination = name
	if err := s.lockWire(ctx); err != nil {
		<-s.sem
		return err
	}
	defer s.unlockWire()

	// Only Publish, holding the wire, numbers events: lastID and lastPos
	// stay as read here until it commits the number below.
	pos := positionOf(ev)
	s.mu.Lock()
	if err := d.refused[pos]; err != nil {
		s.mu.Unlock()
		<-s.sem
		return err
	}
	if !pos.after(d.lastPos) {
		if p := d.byPos[pos]; p != nil && !p.done {
			// A replay of an event still awaiting its confirm.
			p.evs = append(p.evs, ev)
			s.mu.Unlock()
			return nil
		}
		// Numbered and confirmed before, or stored by an earlier relay.
		s.mu.Unlock()
		s.complete(ev, nil)
		return nil
	}
	id := d.lastID + 1
	s.mu.Unlock()

	msg.ApplicationProperties[propPublishingID] = id
	b, err := msg.MarshalBinary()
	if err == nil && len(b)+frameOverhead > maxFrame {
		err = fmt.Errorf("%w: message of %d bytes exceeds the stream frame size of %d bytes", relay.ErrTooLarge, len(b), maxFrame)
	}
	if err != nil {
		// Not numbered: the next event takes the id.
		<-s.sem
		return relay.BadRow(ev, fmt.Errorf("encode AMQP 1.0 message: %w", err))
	}
	enc := &encoded{b: b, id: id}

	s.mu.Lock()
	d.lastID, d.lastPos = id, pos
	p := &pending{id: id, pos: pos, msg: enc, evs: []*relay.Event{ev}}
	d.pending = append(d.pending, p)
	d.byID[p.id] = p
	d.byPos[pos] = p
	if !d.healthy {
		// Recovery sends everything pending, in order, this event last.
		s.mu.Unlock()
		return nil
	}
	prod, gen := d.prod, d.gen
	s.mu.Unlock()
	if err := prod.Send(enc); err != nil {
		s.fail(d, gen, fmt.Errorf("send: %w", err))
	}
	return nil
}

// streamOf is the stream ev goes to; byRow says the row's content chose
// it (its destination, or a template with placeholders).
func (s *Sink) streamOf(ev *relay.Event) (name string, byRow bool, err error) {
	if ev.DeadLetter != "" {
		if s.dlq == "" {
			return "", false, relay.Permanent(fmt.Errorf("event %s: no dead-letter stream for: %s", ev.ID, ev.DeadLetter))
		}
		return s.dlq, false, nil
	}
	if r := ev.Route(); r != "" {
		return r, true, nil
	}
	tmpl := s.template
	if t, ok := s.streams[ev.Table]; ok {
		tmpl = t
	}
	name, err = tmpl.Execute(ev)
	if err != nil {
		return "", false, relay.BadRow(ev, fmt.Errorf("stream name: %w", err))
	}
	if name == "" {
		return "", false, relay.BadRow(ev, errors.New("stream name: the template renders an empty name"))
	}
	if len(name) > 255 {
		return "", false, relay.BadRow(ev, fmt.Errorf("stream name is %d bytes, RabbitMQ allows at most 255", len(name)))
	}
	return name, len(tmpl.Fields()) > 0, nil
}

// dest returns the stream's state, setting it up at the first event for
// it: the stream is created when missing, the producer declared, and the
// numbering taken up from the stream's tail. It retries until ctx ends.
func (s *Sink) dest(ctx context.Context, name string) (*dest, error) {
	s.mu.Lock()
	d := s.dests[name]
	s.mu.Unlock()
	if d != nil {
		return d, nil
	}
	d = &dest{
		name:    name,
		kick:    make(chan struct{}, 1),
		backoff: relay.NewBackoff(minBackoff, maxBackoff),
		byID:    map[int64]*pending{},
		byPos:   map[position]*pending{},
		refused: map[position]error{},
	}
	for {
		err := s.setUp(ctx, d)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, stream.CodeAccessRefused) {
			return nil, err
		}
		wait := d.backoff.Next()
		s.log.Warn("cannot set up the stream's producer; retrying", "stream", name, "error", err, "retry_in", wait.String())
		if !relay.Sleep(ctx, wait) {
			return nil, ctx.Err()
		}
	}
	d.backoff.Reset()
	s.mu.Lock()
	s.dests[name] = d
	s.mu.Unlock()
	s.wg.Add(1)
	go s.supervise(d)
	return d, nil
}

// setUp creates the stream if missing, declares the producer and reads
// where the numbering stands.
func (s *Sink) setUp(ctx context.Context, d *dest) error {
	opts := stream.NewStreamOptions()
	if s.maxAge > 0 {
		opts.SetMaxAge(s.maxAge)
	}
	if s.maxBytes > 0 {
		opts.SetMaxLengthBytes(stream.ByteCapacity{}.B(s.maxBytes))
	}
	env, err := stream.NewEnvironment(s.opts)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = env.Close()
		}
	}()
	if err := env.DeclareStream(d.name, opts); err != nil && !errors.Is(err, stream.PreconditionFailed) {
		// PreconditionFailed: it exists with other retention settings,
		// which the sink leaves as they are.
		return fmt.Errorf("declare stream %s: %w", d.name, err)
	}
	lastID, err := env.QuerySequence(s.producer, d.name)
	if err != nil {
		return fmt.Errorf("query the last publishing id of %s on %s: %w", s.producer, d.name, err)
	}
	d.lastID = lastID
	if lastID > 0 {
		t, err := s.readTail(ctx, env, d.name, lastID)
		if err != nil {
			return err
		}
		switch {
		case t.found:
			d.lastID, d.lastPos = max(lastID, t.id), t.pos
		default:
			// Gone by retention: everything the slot can still send is
			// newer than what the stream dropped.
			s.log.Warn("the stream no longer holds the message of the producer's last publishing id; numbering on from it",
				"stream", d.name, "producer", s.producer, "publishing_id", lastID)
		}
	}
	s.log.Info("producing to stream", "stream", d.name, "producer", s.producer,
		"last_publishing_id", d.lastID, "last_lsn", d.lastPos.lsn.String(), "last_index", d.lastPos.index)
	if err := s.connect(d, env); err != nil {
		return err
	}
	ok = true
	return nil
}

// connect declares a new producer for d on env and makes them d's
// current ones; it sends nothing.
func (s *Sink) connect(d *dest, env *stream.Environment) error {
	popts := stream.NewProducerOptions().
		SetProducerName(s.producer).
		SetClientProvidedName("relay").
		SetQueueSize(max(s.window, 1024))
	prod, err := env.NewProducer(d.name, popts)
	if err != nil {
		return fmt.Errorf("declare producer %s on %s: %w", s.producer, d.name, err)
	}
	confirms := prod.NotifyPublishConfirmation()
	closes := prod.NotifyClose()
	s.mu.Lock()
	d.gen++
	gen := d.gen
	d.env, d.prod = env, prod
	d.healthy = false
	s.mu.Unlock()
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		for statuses := range confirms {
			s.confirmed(d, gen, statuses)
		}
	}()
	go func() {
		defer s.wg.Done()
		select {
		case ev, ok := <-closes:
			if ok && ev.Reason != stream.DeletePublisher {
				s.fail(d, gen, fmt.Errorf("producer closed: %s %v", ev.Reason, ev.Err))
			}
		case <-s.life.Done():
		}
	}()
	return nil
}

// confirmed settles the events of statuses. A confirm of any generation
// means stored: the id denotes the same event on every producer.
func (s *Sink) confirmed(d *dest, gen uint64, statuses []*stream.ConfirmationStatus) {
	type outcome struct {
		ev  *relay.Event
		err error
	}
	var out []outcome
	var failure error
	s.mu.Lock()
	for _, st := range statuses {
		p := d.byID[st.GetPublishingId()]
		if p == nil || p.done {
			continue
		}
		var err error
		switch {
		case st.IsConfirmed():
		case errors.Is(st.GetError(), stream.FrameTooLarge):
			// The broker's frame_max is below the one asked for; the
			// event can never be stored, and a replay of it must fail
			// again rather than pass as stored.
			err = relay.BadRow(p.evs[0], fmt.Errorf("%w: over the broker's stream frame size", relay.ErrTooLarge))
			d.refused[p.pos] = err
		default:
			if gen == d.gen && failure == nil {
				failure = fmt.Errorf("publishing id %d not confirmed: %v", p.id, st.GetError())
			}
			continue
		}
		p.done = true
		delete(d.byID, p.id)
		delete(d.byPos, p.pos)
		for _, ev := range p.evs {
			out = append(out, outcome{ev, err})
		}
	}
	if len(out) > 0 {
		d.pending = slices.DeleteFunc(d.pending, func(p *pending) bool { return p.done })
		d.backoff.Reset()
	}
	s.mu.Unlock()
	for _, o := range out {
		s.complete(o.ev, o.err)
	}
	if failure != nil {
		s.fail(d, gen, failure)
	}
}

// fail marks d's producer of generation gen broken and wakes recovery.
func (s *Sink) fail(d *dest, gen uint64, err error) {
	s.mu.Lock()
	current := gen == d.gen
	first := current && d.healthy
	if current {
		d.healthy = false
	}
	s.mu.Unlock()
	if first {
		s.log.Warn("stream producer failed; republishing what is unconfirmed", "stream", d.name, "error", err)
	}
	if current {
		select {
		case d.kick <- struct{}{}:
		default:
		}
	}
}

// supervise keeps d's producer working: at setup, and after every
// failure, it (re)declares the producer and sends every pending event in
// publishing-id order under the ids they already have, so that the broker
// drops those it stored before.
func (s *Sink) supervise(d *dest) {
	defer s.wg.Done()
	s.recover(d, false)
	for {
		select {
		case <-s.life.Done():
			return
		case <-d.kick:
		}
		s.recover(d, true)
	}
}

func (s *Sink) recover(d *dest, reconnect bool) {
	for {
		if reconnect {
			s.mu.Lock()
			if d.healthy {
				// A wake-up left by a second report of a failure
				// that an earlier round already recovered from.
				s.mu.Unlock()
				return
			}
			old := d.env
			d.env, d.prod = nil, nil
			wait := d.backoff.Next()
			s.mu.Unlock()
			if old != nil {
				_ = old.Close()
			}
			if !relay.Sleep(s.life, wait) {
				return
			}
			env, err := stream.NewEnvironment(s.opts)
			if err == nil {
				if err = s.connect(d, env); err != nil {
					_ = env.Close()
				}
			}
			if err != nil {
				s.log.Warn("cannot declare the stream producer; retrying", "stream", d.name, "error", err, "retry_in", wait.String())
				continue
			}
		}
		reconnect = true
		if err := s.lockWire(s.life); err != nil {
			return
		}
		s.mu.Lock()
		prod, gen := d.prod, d.gen
		resend := slices.Clone(d.pending)
		s.mu.Unlock()
		var err error
		for _, p := range resend {
			if err = prod.Send(p.msg); err != nil {
				break
			}
		}
		if err == nil {
			s.mu.Lock()
			if d.gen == gen {
				d.healthy = true
			}
			s.mu.Unlock()
		}
		s.unlockWire()
		if err != nil {
			s.log.Warn("republish failed; retrying", "stream", d.name, "error", err)
			continue
		}
		if n := len(resend); n > 0 {
			s.metrics.Retried(n)
			s.log.Info("republished unconfirmed events", "stream", d.name, "events", n)
		}
		return
	}
}

// complete reports ev's outcome and frees its window token, in that order,
// so that Close, once it owns every token, knows every Done was called.
func (s *Sink) complete(ev *relay.Event, err error) {
	ev.Done(err)
	<-s.sem
}

func (s *Sink) lockWire(ctx context.Context) error {
	select {
	case s.wire <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Sink) unlockWire() { <-s.wire }

// Close waits until every published event's Done was called or ctx ends,
// then closes the producers and the connections. Close is idempotent.
func (s *Sink) Close(ctx context.Context) error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	var err error
drain:
	for range s.window {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			err = fmt.Errorf("rabbitmq-stream: close with events unconfirmed: %w", ctx.Err())
			break drain
		}
	}
	s.stop()
	s.mu.Lock()
	var envs []*stream.Environment
	for _, d := range s.dests {
		if d.env != nil {
			envs = append(envs, d.env)
		}
	}
	s.mu.Unlock()
	for _, env := range envs {
		_ = env.Close()
	}
	s.wg.Wait()
	return err
}

// Connected reports whether every stream's producer works.
func (s *Sink) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range s.dests {
		if !d.healthy {
			return false
		}
	}
	return true
}
