// Package rabbitmq is relay's RabbitMQ sink with publisher confirms.
//
// Events are published persistent and mandatory to one topic exchange on a
// channel in confirm mode, with up to ConfirmWindow of them awaiting a
// confirm at once. An event is done only when the broker acked it without
// returning it first. Anything else (a nack, a basic.return, a closed channel
// or connection) stops the line: the sink opens a new channel, reconnecting
// if needed, and republishes every unconfirmed event in its original order
// before publishing anything newer, so one aggregate's events reach the
// broker in commit order.
package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/metrics"
	"github.com/relay-dev/relay/relay"
)

const (
	defaultExchange = "outbox"
	defaultWindow   = 2048

	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second

	dialTimeout = 10 * time.Second
	// closeTimeout bounds connection.close when the broker does not answer.
	closeTimeout = 5 * time.Second

	// maxShortstr is the AMQP limit for routing keys, property strings and
	// header names; the client library fails the whole connection on a longer
	// one, so they are checked before publishing.
	maxShortstr = 255
)

// Config configures a Sink.
type Config struct {
	// URL is the broker's amqp:// or amqps:// URL. Required.
	URL string
	// Exchange is the exchange events are published to, declared as a
	// durable topic exchange when absent. Default "outbox".
	Exchange string
	// RoutingKey renders each event's routing key. Required.
	RoutingKey *relay.Template
	// Exchanges and RoutingKeys replace Exchange and RoutingKey for the
	// events of the tables they name, keyed by relay.Event.Table
	// (schema.name). Their exchanges are declared like Exchange; a row's
	// destination without an exchange goes to its table's.
	Exchanges   map[string]string
	RoutingKeys map[string]*relay.Template
	// ConfirmWindow is the most publishes awaiting a broker confirm. Default
	// 2048: a classic queue confirms persistent messages after its batched
	// fsync, which can take a few hundred milliseconds, and a smaller window
	// stalls the stream meanwhile.
	ConfirmWindow int
	// DeadLetter is the exchange dead letters go to (relay.Event.DeadLetter),
	// declared as a durable topic exchange when absent; their routing key is
	// the source table, and header x-relay-error the reason. Empty: none.
	DeadLetter string
	// Format shapes each message: relay.FormatRaw (the default) publishes
	// the payload; the CloudEvents formats need CloudEventsSource, the
	// source attribute of every event.
	Format            relay.Format
	CloudEventsSource string
	// Fence, when set, names the stream's fence queue (FenceQueue): every
	// channel the sink publishes on first holds it, so that no publish of
	// an earlier relay of the stream, or of an earlier connection of this
	// one, can land after a publish of this channel. Empty: no fence.
	Fence string
	// Metrics counts republished events; nil counts nothing.
	Metrics *metrics.Metrics
	// Logger receives connection failures and recoveries. Default: discard.
	Logger *slog.Logger
}

// Sink publishes events to RabbitMQ. It implements relay.Sink.
type Sink struct {
	exchange string
	dlx      string
	fence    string
	guard    *relay.HeaderGuard
	format   relay.Format
	ceSource string
	metrics  *metrics.Metrics
	key      *relay.Template
	// tableExchanges and tableKeys are Config.Exchanges and RoutingKeys.
	tableExchanges map[string]string
	tableKeys      map[string]*relay.Template
	// declared are the exchanges recovery declares (declaredExchanges).
	declared []string
	window   int
	log      *slog.Logger
	url      string // holds the password: never log it, log redacted
	redacted string

	// sem holds one token per published event whose Done is still due, so
	// Publish blocks while the window is full and Close knows it has drained
	// once it owns every token.
	sem chan struct{}
	// wire is a one-slot lock held while writing publishes (pubMu). It keeps
	// the order of inflight equal to the order on the wire, and, unlike a
	// sync.Mutex, can be waited for with a context.
	wire chan struct{}
	// kick wakes the recovery goroutine.
	kick chan struct{}
	// life ends when the sink is torn down; it stops every goroutine.
	life   context.Context
	stop   context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool

	closeMu sync.Mutex // serialises Close

	mu       sync.Mutex // guards the state below; never held during network I/O
	conn     *amqp.Connection
	ch       *amqp.Channel
	gen      uint64 // generation of ch; confirms of older generations are stale
	healthy  bool   // ch works and every inflight event has been written to it
	failed   bool   // ch (generation gen) must be replaced
	blocked  bool   // the broker sent connection.blocked
	stopped  bool   // torn down: a freshly dialled connection must be closed
	inflight []*pending
	byTag    map[uint64]*pending // delivery tag on ch → event
	maxSize  int                 // the broker's max_message_size, once a 406 told us
	// probe is set when the broker closed the channel with a 406 that no
	// check here explains: recovery then republishes one event at a time
	// until it finds the one refused (settle). closeReason is why the
	// current generation's channel closed; settled wakes settle.
	probe       bool
	closeReason *amqp.Error
	settled     chan struct{}
	// dests holds the exchanges rows named (Event.Route) that exist.
	dests   map[string]bool
	backoff *relay.Backoff
}

// pending is an event published or queued for publishing and not yet done.
type pending struct {
	ev       *relay.Event
	exchange string
	key      string
	msg      amqp.Publishing

	gen      uint64 // generation it was last written in; 0: not written since the last recovery
	tag      uint64
	returned bool // the broker returned it in generation gen
	done     bool
}

var errClosed = errors.New("rabbitmq sink is closed")

// New connects to the broker, opens a confirm-mode channel and declares the
// exchange. While the broker is unreachable it retries with backoff, logging
// each failure, until ctx ends; a malformed URL or config fails at once.
// The sink lives until Close, not until ctx ends.
func New(ctx context.Context, cfg Config) (*Sink, error) {
	u, err := relay.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("rabbitmq: invalid URL: %v", err)
	}
	redacted := u.Redacted()
	if _, err := amqp.ParseURI(cfg.URL); err != nil {
		return nil, fmt.Errorf("rabbitmq: invalid URL %s: %w", redacted, err)
	}
	if cfg.RoutingKey == nil {
		return nil, errors.New("rabbitmq: routing key template is required")
	}
	if cfg.Exchange == "" {
		cfg.Exchange = defaultExchange
	}
	if len(cfg.Exchange) > maxShortstr {
		return nil, fmt.Errorf("rabbitmq: exchange name is %d bytes, AMQP allows at most %d", len(cfg.Exchange), maxShortstr)
	}
	for table, x := range cfg.Exchanges {
		if x == "" || len(x) > maxShortstr {
			return nil, fmt.Errorf("rabbitmq: exchange of table %s is %d bytes, AMQP allows 1 to %d", table, len(x), maxShortstr)
		}
	}
	for table, k := range cfg.RoutingKeys {
		if k == nil {
			return nil, fmt.Errorf("rabbitmq: routing key template of table %s is nil", table)
		}
	}
	if cfg.Format != relay.FormatRaw && cfg.CloudEventsSource == "" {
		return nil, fmt.Errorf("rabbitmq: format %s needs a CloudEvents source", cfg.Format)
	}
	if cfg.ConfirmWindow <= 0 {
		cfg.ConfirmWindow = defaultWindow
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	life, stop := context.WithCancel(context.Background())
	s := &Sink{
		exchange: cfg.Exchange,
		dlx:      cfg.DeadLetter,
		fence:    cfg.Fence,
		format:   cfg.Format,
		ceSource: cfg.CloudEventsSource,
		metrics:  cfg.Metrics,
		key:      cfg.RoutingKey,
		window:   cfg.ConfirmWindow,
		log:      log.With("component", "rabbitmq"),
		url:      cfg.URL,
		redacted: redacted,
		sem:      make(chan struct{}, cfg.ConfirmWindow),
		wire:     make(chan struct{}, 1),
		kick:     make(chan struct{}, 1),
		settled:  make(chan struct{}, 1),
		life:     life,
		stop:     stop,
		failed:   true,
		byTag:    map[uint64]*pending{},
		dests:    map[string]bool{},
		backoff:  relay.NewBackoff(minBackoff, maxBackoff),

		tableExchanges: cfg.Exchanges,
		tableKeys:      cfg.RoutingKeys,
		declared:       declaredExchanges(cfg),
	}
	s.guard = relay.NewHeaderGuard(s.ownHeader, cfg.Metrics, s.log)

	// The relay calls New once at startup, so a broker that is still
	// starting (or briefly down) must not fail the process.
	connectCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		err := s.recover(connectCtx)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			s.teardown()
			return nil, fmt.Errorf("rabbitmq: connect to %s: %w", s.redacted, ctx.Err())
		}
		if relay.IsPermanent(err) {
			s.teardown()
			return nil, fmt.Errorf("rabbitmq: %w", err)
		}
		wait := s.nextBackoff()
		s.log.Warn("cannot connect to RabbitMQ; retrying", "url", s.redacted, "error", err, "retry_in", wait.String())
		if !relay.Sleep(ctx, wait) {
			s.teardown()
			return nil, fmt.Errorf("rabbitmq: connect to %s: %w (last error: %v)", s.redacted, ctx.Err(), err)
		}
	}
	s.mu.Lock()
	s.backoff.Reset()
	s.mu.Unlock()
	s.log.Info("connected to RabbitMQ", "url", s.redacted, "exchange", s.exchange, "confirm_window", s.window)

	s.wg.Add(1)
	go s.supervise()
	return s, nil
}

// Publish writes ev to the broker, or queues it behind a recovery in
// progress, and returns without waiting for the confirm; ev.Done reports the
// outcome. It blocks while ConfirmWindow events await their confirm and
// returns ctx's error, leaving ev unpublished, if ctx ends first. Events that
// AMQP cannot carry (an over-long routing key, a body over the broker's known
// size limit) fail with a relay.Permanent error and are not published.
func (s *Sink) Publish(ctx context.Context, ev *relay.Event) error {
	if s.closed.Load() {
		return errClosed
	}
	p, err := s.pending(ev)
	if err != nil {
		return err
	}
	if err := s.checkExchange(ev, p.exchange); err != nil {
		return err
	}
	s.mu.Lock()
	limit := s.maxSize
	s.mu.Unlock()
	if limit > 0 && len(p.msg.Body) > limit {
		return relay.BadRow(ev, tooLarge(ev, limit))
	}
	ev.Destination = p.exchange
	return s.send(ctx, p)
}

// send publishes p, or queues it behind a recovery in progress, as Publish
// describes.
func (s *Sink) send(ctx context.Context, p *pending) error {
	ev := p.ev
	select {
	case s.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-s.life.Done():
		return errClosed
	}
	if err := s.lockWire(ctx); err != nil {
		<-s.sem
		return err
	}
	defer s.unlockWire()

	s.mu.Lock()
	s.inflight = append(s.inflight, p)
	if !s.healthy {
		// Stop the line: recovery republishes everything unconfirmed in
		// order, this event last, before anything is written directly again.
		s.mu.Unlock()
		return nil
	}
	ch, gen := s.ch, s.gen
	s.mu.Unlock()
	s.assignTag(p, ch, gen)

	if err := ch.Publish(p.exchange, p.key, true, false, p.msg); err != nil {
		s.mu.Lock()
		s.unassignTagLocked(p, gen)
		first := s.failLocked(gen)
		s.mu.Unlock()
		if first {
			s.log.Warn("publish failed; republishing after recovery", "event_id", ev.ID, "error", err)
		}
	}
	return nil
}

// Close waits until every published event's Done has been called or ctx
// ends, then closes the channel and connection and stops the sink's
// goroutines. It returns ctx's error if events were still unconfirmed; their
// Done is then never called. Close is idempotent.
func (s *Sink) Close(ctx context.Context) error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed.Swap(true) {
		return nil
	}
	var err error
	// Every event awaiting Done holds a token, so owning all of them means
	// nothing is in flight. Publish must not run concurrently with Close.
drain:
	for range s.window {
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			s.mu.Lock()
			n := len(s.inflight)
			s.mu.Unlock()
			err = fmt.Errorf("rabbitmq: close with %d events unconfirmed: %w", n, ctx.Err())
			break drain
		}
	}
	s.teardown()
	return err
}

// Connected reports whether the sink can publish right now: it holds a
// connection and a working confirm channel, and the broker has not blocked
// the connection (a memory or disk alarm).
func (s *Sink) Connected() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.healthy && !s.blocked
}

// teardown stops the goroutines and closes the connection.
func (s *Sink) teardown() {
	s.mu.Lock()
	s.stopped = true
	s.healthy = false
	conn := s.conn
	s.mu.Unlock()
	s.stop()
	if conn != nil {
		// The deadline also frees a publish stuck writing to a blocked
		// connection, which the recovery goroutine may be doing.
		_ = conn.CloseDeadline(time.Now().Add(closeTimeout))
	}
	// Channel watchers end when their channel closes, which closing the
	// connection guarantees.
	s.wg.Wait()
}

// pending builds the AMQP message for ev.
func (s *Sink) pending(ev *relay.Event) (*pending, error) {
	exchange, key := s.exchangeOf(ev), ""
	switch dest := ev.Route(); {
	case ev.DeadLetter != "":
		if s.dlx == "" {
			return nil, relay.Permanent(fmt.Errorf("event %s: no dead-letter exchange for: %s", ev.ID, ev.DeadLetter))
		}
		exchange, key = s.dlx, ev.Table
	case dest != "":
		exchange, key = splitDestination(dest, exchange)
	default:
		var err error
		if key, err = s.keyOf(ev).Execute(ev); err != nil {
			return nil, relay.BadRow(ev, fmt.Errorf("routing key: %w", err))
		}
		if key == "" {
			// Legal in AMQP, but a template that renders nothing is a
			// row missing what routes it, not a route.
			return nil, relay.BadRow(ev, errors.New("routing key: the template renders an empty key"))
		}
	}
	for _, f := range []struct{ name, value string }{
		{"routing key", key},
		{"exchange", exchange},
		{"id (message_id)", ev.ID},
		{"event type (type)", ev.EventType},
		{"content type", ev.ContentType},
	} {
		if err := checkShortstr(f.name, f.value); err != nil {
			return nil, relay.BadRow(ev, err)
		}
	}
	body, contentType, err := s.body(ev)
	if err != nil {
		return nil, relay.BadRow(ev, err)
	}
	msg := amqp.Publishing{
		ContentType:  contentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    ev.ID,
		Type:         ev.EventType,
		Timestamp:    ev.CreatedAt,
		Body:         body,
	}
	headers := make(amqp.Table, len(ev.Headers)+5)
	// A dead letter must always be publishable: it leaves out whatever
	// AMQP or the broker would refuse, and says so, instead of failing.
	var leftOut []string
	for _, h := range ev.Headers {
		if h.Key == relay.HeaderDestination && ev.DeadLetter == "" {
			continue // an instruction to the relay, carried out above
		}
		if s.guard.Drop(ev, h.Key) {
			continue
		}
		if ev.DeadLetter == "" {
			ok, err := setProperty(&msg, h)
			if err != nil {
				return nil, relay.BadRow(ev, err)
			}
			if ok {
				continue
			}
		}
		// A dead letter takes no property from its row, which could make
		// it expire or carry it elsewhere, and no sender-selected routing:
		// it goes to the dead-letter exchange only.
		if ev.DeadLetter != "" && (h.Key == "CC" || h.Key == "BCC") {
			leftOut = append(leftOut, "header "+h.Key)
			continue
		}
		err := checkShortstr("header name", h.Key)
		var v any
		if err == nil {
			v, err = headerValue(h)
		}
		if err == nil {
			err = checkBrokerHeader(h.Key, v)
		}
		if err != nil {
			if ev.DeadLetter == "" {
				return nil, relay.BadRow(ev, err)
			}
			leftOut = append(leftOut, err.Error())
			continue
		}
		headers[h.Key] = v
	}
	if s.format == relay.FormatCloudEvents && ev.DeadLetter == "" {
		attrs, err := relay.CloudEventAttributes(ev, s.ceSource)
		if err != nil {
			return nil, relay.BadRow(ev, err)
		}
		// Strings throughout, the canonical form the binding accepts for
		// every type: an AMQP 0-9-1 timestamp has whole seconds only.
		for _, a := range attrs {
			headers[cloudEventsPrefix+a.Key] = a.Value
		}
	}
	// The built-ins come last so a header column cannot forge them.
	headers["aggregate_type"] = ev.AggregateType
	headers["aggregate_id"] = ev.AggregateID
	var own [6]relay.Header
	for _, h := range relay.OwnHeaders(own[:0], ev) {
		v, err := headerValue(h) // the index is a long
		if err != nil {
			return nil, relay.BadRow(ev, err)
		}
		if h.Key == relay.HeaderError && len(leftOut) > 0 {
			v = h.Value + "; left out of the dead letter: " + strings.Join(leftOut, "; ")
		}
		headers[h.Key] = v
	}
	if err := headers.Validate(); err != nil {
		// The library would fail the publish, and recovery would repeat it.
		return nil, relay.BadRow(ev, fmt.Errorf("headers: %w", err))
	}
	msg.Headers = headers
	return &pending{ev: ev, exchange: exchange, key: key, msg: msg}, nil
}

// ownHeader reports whether key names a header the sink sets itself,
// besides the x-relay- ones: a headers-column key of that name would
// forge it.
func (s *Sink) ownHeader(key string) bool {
	switch key {
	case "aggregate_type", "aggregate_id":
		return true
	}
	// The AMQP binding's two prefixes: readers take either as an attribute.
	return s.format == relay.FormatCloudEvents && (strings.HasPrefix(key, cloudEventsPrefix) || strings.HasPrefix(key, "cloudEvents_"))
}

// checkShortstr refuses a value AMQP cannot carry as a short string: the
// client library fails the whole connection on one.
func checkShortstr(what, v string) error {
	if len(v) > maxShortstr {
		return fmt.Errorf("%s is %d bytes, AMQP allows at most %d", what, len(v), maxShortstr)
	}
	return nil
}

// exchangeOf is the exchange of ev's table.
func (s *Sink) exchangeOf(ev *relay.Event) string {
	if x, ok := s.tableExchanges[ev.Table]; ok {
		return x
	}
	return s.exchange
}

// keyOf is the routing key template of ev's table.
func (s *Sink) keyOf(ev *relay.Event) *relay.Template {
	if k, ok := s.tableKeys[ev.Table]; ok {
		return k
	}
	return s.key
}

// declaredExchanges lists the exchanges a sink of cfg declares: its own,
// the dead-letter exchange and the tables', each once.
func declaredExchanges(cfg Config) []string {
	xs := []string{cfg.Exchange}
	if cfg.DeadLetter != "" && cfg.DeadLetter != cfg.Exchange {
		xs = append(xs, cfg.DeadLetter)
	}
	for _, table := range slices.Sorted(maps.Keys(cfg.Exchanges)) {
		if x := cfg.Exchanges[table]; !slices.Contains(xs, x) {
			xs = append(xs, x)
		}
	}
	return xs
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

// assignTag records p under the delivery tag its publish on ch will get.
// It runs before the publish, so the confirm cannot arrive unmatched; the
// wire lock, held by the caller, makes the tag exact, as nothing else
// publishes on ch and no recovery can replace ch meanwhile. The tag is read
// outside mu: the library's reader holds the same lock while it hands
// confirms to the watcher, which needs mu.
func (s *Sink) assignTag(p *pending, ch *amqp.Channel, gen uint64) {
	tag := ch.GetNextPublishSeqNo()
	s.mu.Lock()
	p.gen, p.tag, p.returned = gen, tag, false
	s.byTag[tag] = p
	s.mu.Unlock()
}

// unassignTagLocked undoes assignTag after a failed publish (the library
// gives the tag back), leaving p for recovery to republish.
func (s *Sink) unassignTagLocked(p *pending, gen uint64) {
	if p.gen == gen {
		delete(s.byTag, p.tag)
		p.gen = 0
	}
}

// failLocked marks channel generation gen as broken and wakes recovery. It
// reports whether this was the first failure of gen, to log it once.
func (s *Sink) failLocked(gen uint64) bool {
	if gen != s.gen || s.failed {
		return false
	}
	s.failed = true
	s.healthy = false
	select {
	case s.kick <- struct{}{}:
	default: // a wake-up is already pending
	}
	s.wakeSettle()
	return true
}

// wakeSettle wakes a recovery waiting in settle. s.mu held.
func (s *Sink) wakeSettle() {
	select {
	case s.settled <- struct{}{}:
	default:
	}
}

// finishLocked takes p out of the in-flight set. It reports false if p was
// finished already, so that Done runs once per event.
func (s *Sink) finishLocked(p *pending, acked bool) bool {
	if p.done {
		return false
	}
	p.done = true
	if i := slices.Index(s.inflight, p); i == 0 {
		// Confirms arrive in publish order, so this is the common case.
		s.inflight[0] = nil
		s.inflight = s.inflight[1:]
	} else if i > 0 {
		s.inflight = slices.Delete(s.inflight, i, i+1)
	}
	if acked {
		s.backoff.Reset()
	}
	s.wakeSettle()
	return true
}

// complete reports a finished event's outcome and frees its window token,
// in that order, so that Close, once it owns every token, knows every Done
// has been called.
func (s *Sink) complete(p *pending, err error) {
	p.ev.Done(err)
	<-s.sem
}

func (s *Sink) nextBackoff() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.backoff.Next()
}

// dial connects with a handshake deadline; ctx aborts the TCP connect.
func (s *Sink) dial(ctx context.Context) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName("relay")
	return amqp.DialConfig(s.url, amqp.Config{
		Properties: props,
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: dialTimeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The library clears the deadline once the handshake is done;
			// heartbeats take over from there.
			if err := c.SetDeadline(time.Now().Add(dialTimeout)); err != nil {
				c.Close()
				return nil, err
			}
			return gather(c), nil
		},
	})
}

func tooLarge(ev *relay.Event, limit int) error {
	return fmt.Errorf("%w: body of %d bytes exceeds the broker's max_message_size of %d bytes", relay.ErrTooLarge, len(ev.Payload), limit)
}
