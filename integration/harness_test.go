//go:build linux

// Package integration runs the built relay binary against real PostgreSQL
// and RabbitMQ processes and a Kafka-protocol broker (kfake, run as a
// process), as a user would, and checks what a consumer receives. Nothing
// here is mocked, and nothing is skipped for want of a service: a service
// that cannot be started fails the run.
package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/integration/services"
)

var (
	relayBin string
	pg       *services.Postgres
	// amqpURL is the shared broker: RELAY_TEST_AMQP_URL or a throwaway node.
	amqpURL string
	// ownRabbit is set when amqpURL is our own throwaway node.
	ownRabbit *services.Rabbit
	// kafkaBrokers is the shared Kafka cluster: RELAY_TEST_KAFKA_BROKERS or
	// a throwaway kfake.
	kafkaBrokers string
	// ownKafka is set when kafkaBrokers is our own throwaway kfake.
	ownKafka  *services.Kafka
	dbCounter atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "relay-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)

	relayBin = filepath.Join(dir, "relay")
	build := exec.CommandContext(ctx, "go", "build", "-o", relayBin, "../cmd/relay")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build relay:", err)
		return 1
	}

	var wg sync.WaitGroup
	var pgErr, rabbitErr, kafkaErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		pg, pgErr = services.StartPostgres(ctx, services.PostgresOptions{})
	}()
	if u := os.Getenv("RELAY_TEST_AMQP_URL"); u != "" {
		amqpURL = u
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ownRabbit, rabbitErr = services.StartRabbit(ctx)
			if rabbitErr == nil {
				amqpURL = ownRabbit.URL()
			}
		}()
	}
	if b := os.Getenv("RELAY_TEST_KAFKA_BROKERS"); b != "" {
		kafkaBrokers = b
	} else {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ownKafka, kafkaErr = services.StartKafka(ctx, services.KafkaOptions{})
			if kafkaErr == nil {
				kafkaBrokers = ownKafka.Brokers()
			}
		}()
	}
	wg.Wait()
	if pg != nil {
		defer pg.Close()
	}
	if ownRabbit != nil {
		defer ownRabbit.Close()
	}
	if ownKafka != nil {
		defer ownKafka.Close()
	}
	if err := errors.Join(pgErr, rabbitErr, kafkaErr); err != nil {
		fmt.Fprintln(os.Stderr, "start services:", err)
		return 1
	}
	return m.Run()
}

// startOwnRabbit starts a RabbitMQ node for one test, which needs one
// because it kills, freezes or reconfigures it, even when
// RELAY_TEST_AMQP_URL is set; the node's log path is printed if the test
// fails.
func startOwnRabbit(t *testing.T, opts services.RabbitOptions) *services.Rabbit {
	t.Helper()
	node, err := services.StartRabbitWith(t.Context(), opts)
	if err != nil {
		t.Fatalf("start this test's own RabbitMQ node (apt-get install rabbitmq-server): %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("rabbitmq log: %s", node.LogPath())
		}
		node.Close()
	})
	return node
}

// env is one test's world: its own database, slot, publication and
// exchange or topics, so tests cannot see each other's events.
type env struct {
	t    *testing.T
	name string
	// dbURL is the relay's RELAY_DATABASE_URL: the least-privilege role of
	// schema/role.sql, not a superuser. db is the superuser's pool.
	dbURL    string
	db       *pgxpool.Pool
	amqpURL  string
	exchange string
	slot     string
	// sink is the relay's RELAY_SINK; "" is rabbitmq.
	sink         string
	kafkaBrokers string
	// kafkaTopic is RELAY_KAFKA_TOPIC; "" leaves the relay's default.
	kafkaTopic string
	extraVars  map[string]string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, pg)
}

// newEnvOn is newEnv on a PostgreSQL server of the test's own, for tests
// that stop it.
func newEnvOn(t *testing.T, server *services.Postgres) *env {
	t.Helper()
	ctx := t.Context()
	name := fmt.Sprintf("t%d_%d", os.Getpid(), dbCounter.Add(1))
	if err := server.CreateDatabase(ctx, name); err != nil {
		t.Fatalf("create database: %v", err)
	}
	e := &env{t: t, name: name, dbURL: server.URL(name), amqpURL: amqpURL, exchange: "outbox_" + name, slot: "slot_" + name}
	db, err := pgxpool.New(ctx, server.URL(name))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() {
		db.Close()
		// Slots are per cluster: drop this test's so it holds no WAL.
		c, err := pgxpool.New(context.Background(), server.URL("postgres"))
		if err == nil {
			c.Exec(context.Background(), "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active", e.slot)
			c.Close()
		}
	})
	e.db = db
	schema, err := os.ReadFile("../schema/outbox.sql")
	if err != nil {
		t.Fatal(err)
	}
	e.exec(string(schema))
	e.dbURL = e.applyRole(server)
	return e
}

// roleMu serialises role.sql: roles belong to the cluster, and two
// concurrent CREATE ROLE of the same name fail on a unique index rather than
// with the duplicate_object that role.sql tolerates.
var roleMu sync.Mutex

// applyRole applies schema/role.sql to the env's database with psql, as a
// DBA would (it includes relay_state.sql with \ir), with the env's
// publication, and returns a URL as the role it creates. The relay runs as
// that role in every test, so the suite shows that what role.sql grants is
// enough. The test servers trust loopback connections, so the password is
// not checked.
func (e *env) applyRole(server *services.Postgres) string {
	e.t.Helper()
	sql, err := os.ReadFile("../schema/role.sql")
	if err != nil {
		e.t.Fatal(err)
	}
	func() {
		roleMu.Lock()
		defer roleMu.Unlock()
		if _, err := server.Psql(e.t.Context(), e.name, "../schema", strings.ReplaceAll(string(sql), "outbox_relay", "pub_"+e.name)); err != nil {
			e.t.Fatalf("apply schema/role.sql: %v", err)
		}
	}()
	var super, replication bool
	if err := e.db.QueryRow(e.t.Context(), "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = 'relay'").Scan(&super, &replication); err != nil {
		e.t.Fatalf("read role relay: %v", err)
	}
	if super || !replication {
		e.t.Fatalf("role relay: superuser %v, replication %v; want a replication role that is no superuser", super, replication)
	}
	u, err := url.Parse(server.URL(e.name))
	if err != nil {
		e.t.Fatal(err)
	}
	u.User = url.UserPassword("relay", "change-me")
	return u.String()
}

// newKafkaEnv is newEnv with the relay publishing to the shared Kafka
// cluster, to topics of this test only: named after aggregate_type, like
// the default template's, with the env's name appended.
func newKafkaEnv(t *testing.T) *env {
	t.Helper()
	e := newEnv(t)
	e.useKafka(kafkaBrokers, "outbox.{aggregate_type}."+e.name)
	return e
}

// kafkaPartitions is RELAY_KAFKA_PARTITIONS: the relay creates its topics
// with three partitions.
const kafkaPartitions = 3

// useKafka makes the relay publish to Kafka at brokers with topic
// template topic ("" for the relay's default), creating topics of
// kafkaPartitions partitions.
func (e *env) useKafka(brokers, topic string) {
	e.sink, e.kafkaBrokers, e.kafkaTopic = "kafka", brokers, topic
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(e.t.Context(), sql, args...); err != nil {
		e.t.Fatalf("%s: %v", firstLine(sql), err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// vars is the relay's whole environment: only documented variables.
func (e *env) vars() []string {
	v := map[string]string{
		"RELAY_DATABASE_URL":    e.dbURL,
		"RELAY_AMQP_URL":        e.amqpURL,
		"RELAY_AMQP_EXCHANGE":   e.exchange,
		"RELAY_SLOT":            e.slot,
		"RELAY_PUBLICATION":     "pub_" + e.name,
		"RELAY_HTTP_ADDR":       "127.0.0.1:0",
		"RELAY_LOG_FORMAT":      "text",
		"RELAY_STATUS_INTERVAL": "500ms",
	}
	if e.sink == "kafka" {
		delete(v, "RELAY_AMQP_URL")
		delete(v, "RELAY_AMQP_EXCHANGE")
		v["RELAY_SINK"] = "kafka"
		v["RELAY_KAFKA_BROKERS"] = e.kafkaBrokers
		v["RELAY_KAFKA_CREATE_TOPICS"] = "true"
		v["RELAY_KAFKA_PARTITIONS"] = strconv.Itoa(kafkaPartitions)
		if e.kafkaTopic != "" {
			v["RELAY_KAFKA_TOPIC"] = e.kafkaTopic
		}
	}
	for k, val := range e.extraVars {
		v[k] = val
	}
	out := []string{"PATH=" + os.Getenv("PATH")}
	for k, val := range v {
		out = append(out, k+"="+val)
	}
	return out
}

// relayProc is a running relay binary.
type relayProc struct {
	t    *testing.T
	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
	err  error
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startRelay runs the relay binary and returns once it streams from its
// slot, so that rows inserted afterwards are certain to be published (rows
// committed before a new slot exists are not in its stream). Its log is
// printed if the test fails.
func (e *env) startRelay() *relayProc {
	e.t.Helper()
	p := startRelayWith(e.t, e.vars())
	eventually(e.t, time.Minute, func() error {
		if p.exited() {
			e.t.Fatalf("relay exited with %v before streaming; log:\n%s", p.err, p.log.String())
		}
		// A slot is active while it is being created too, and a relay
		// killed then leaves no slot: wait for START_REPLICATION.
		var active bool
		err := e.db.QueryRow(e.t.Context(), `
			SELECT coalesce(a.query LIKE 'START_REPLICATION%', false)
			FROM pg_replication_slots r LEFT JOIN pg_stat_activity a ON a.pid = r.active_pid
			WHERE r.slot_name = $1`, e.slot).Scan(&active)
		if err != nil || !active {
			return fmt.Errorf("slot %s not streaming yet (%v)", e.slot, err)
		}
		return nil
	})
	return p
}

func startRelayWith(t *testing.T, vars []string, args ...string) *relayProc {
	t.Helper()
	p := &relayProc{t: t, log: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd = exec.Command(relayBin, args...)
	p.cmd.Env = vars
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start relay: %v", err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("relay log:\n%s", p.log.String())
		}
	})
	return p
}

// kill sends SIGKILL: no shutdown path runs.
func (p *relayProc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// freeze SIGSTOPs the relay: it reads, publishes and confirms nothing
// until thaw, while its connections stay open.
func (p *relayProc) freeze() { p.cmd.Process.Signal(syscall.SIGSTOP) }

// thaw lets a frozen relay run again.
func (p *relayProc) thaw() { p.cmd.Process.Signal(syscall.SIGCONT) }

// killWithReplayDue SIGKILLs the relay and reports whether its successor
// must publish something again: whether a row the broker delivered (whose
// commit LSN is the highest of delivered()) lies at or after the slot's
// final position, read once the killed relay's walsender is gone. The
// relay is frozen first, so that it confirms nothing more while the
// consumer catches up with what the broker holds: a relay that reports its
// position within milliseconds is otherwise always ahead of a consumer. A
// test that needs a replay repeats the kill until this holds, rather than
// hoping the relay was slower than its consumer.
func (e *env) killWithReplayDue(p *relayProc, delivered func() uint64) bool {
	e.t.Helper()
	p.freeze()
	slot := e.slotLSN()
	for deadline := time.Now().Add(10 * time.Second); delivered() < slot && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	p.kill()
	eventually(e.t, time.Minute, func() error {
		if active, pid := e.slotActive(); active {
			return fmt.Errorf("slot %s still active (pid %d) after the relay was killed", e.slot, pid)
		}
		return nil
	})
	return delivered() >= e.slotLSN()
}

// replayKiller SIGKILLs relays mid-stream so that every kill tests a
// replay: it kills again (bounded) until a kill left a row the broker
// delivered at or after the slot's final position (see killWithReplayDue).
type replayKiller struct {
	e *env
	// delivered is the highest commit LSN (x-relay-lsn) received so far.
	delivered func() uint64
	// kills counts every SIGKILL, replays those with a replay due.
	kills, replays int
	// slot is where the last kill left the slot.
	slot uint64
}

// maxKillsPerReplay bounds the kills spent to get one with a replay due.
const maxKillsPerReplay = 10

// kill SIGKILLs p and starts another relay until a kill had a replay due,
// and returns the relay running then. Before each kill it waits until the
// running relay has confirmed past where the previous kill left the slot:
// a relay killed before it confirmed anything of its own would leave only
// its predecessor's replay due, and test nothing new.
func (k *replayKiller) kill(p *relayProc) *relayProc {
	k.e.t.Helper()
	for range maxKillsPerReplay {
		eventually(k.e.t, time.Minute, func() error {
			if p.exited() {
				k.e.t.Fatalf("the relay exited (%v); log:\n%s", p.err, p.log.String())
			}
			if got := k.e.slotLSN(); got <= k.slot {
				return fmt.Errorf("slot at %X, not yet past %X where the last kill left it", got, k.slot)
			}
			return nil
		})
		k.kills++
		due := k.e.killWithReplayDue(p, k.delivered)
		k.slot = k.e.slotLSN()
		p = k.e.startRelay()
		if due {
			k.replays++
			return p
		}
	}
	k.e.t.Fatalf("in %d kills the broker never held a row that the slot had not confirmed: no replay was tested", maxKillsPerReplay)
	return nil
}

// stop sends SIGTERM and returns the exit code.
func (p *relayProc) stop(timeout time.Duration) int {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait(timeout)
}

// wait returns the exit code once the process ends.
func (p *relayProc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
		p.t.Fatalf("relay did not exit within %s; log:\n%s", timeout, p.log.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

// exited reports whether the process has ended.
func (p *relayProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// message is what a consumer received.
type message struct {
	RoutingKey string
	amqp.Delivery
}

// consumer collects every message routed to its queue. The queue is
// durable so that it outlives broker restarts.
type consumer struct {
	t     *testing.T
	url   string
	queue string
	mu    sync.Mutex
	msgs  []message
	// marks are the ids of the barrier marks that arrived, which msgs
	// leaves out.
	marks map[string]bool
	conn  *amqp.Connection
	stop  chan struct{}
	done  chan struct{}
}

// bindQueue declares a durable queue bound to the test's exchange with
// binding key and returns a consumer of it. The exchange is declared like
// the relay declares it, so the binding can exist before the relay runs.
func (e *env) bindQueue(binding string) *consumer {
	e.t.Helper()
	return bindQueueAt(e.t, e.amqpURL, e.exchange, "q_"+e.name+"_"+strings.NewReplacer("#", "all", "*", "any").Replace(binding), binding)
}

func bindQueueAt(t *testing.T, url, exchange, queue, binding string) *consumer {
	t.Helper()
	declareQueue(t, url, exchange, queue, binding)
	c := &consumer{t: t, url: url, queue: queue, marks: map[string]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	t.Cleanup(c.close)
	return c
}

// declareQueue declares a durable queue bound to exchange with binding,
// and the exchange as the relay declares it, without consuming.
func declareQueue(t *testing.T, url, exchange, queue, binding string) {
	t.Helper()
	conn, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial rabbitmq: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclare(exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatalf("declare exchange: %v", err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		t.Fatalf("declare queue: %v", err)
	}
	if err := ch.QueueBind(queue, binding, exchange, false, nil); err != nil {
		t.Fatalf("bind queue: %v", err)
	}
}

// run consumes, reconnecting after broker restarts until closed.
func (c *consumer) run() {
	defer close(c.done)
	for {
		c.consumeOnce()
		select {
		case <-c.stop:
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *consumer) consumeOnce() {
	conn, err := amqp.Dial(c.url)
	if err != nil {
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		return
	}
	deliveries, err := ch.Consume(c.queue, "", false, false, false, false, nil)
	if err != nil {
		return
	}
	for {
		select {
		case <-c.stop:
			return
		case d, ok := <-deliveries:
			if !ok {
				return
			}
			c.mu.Lock()
			if d.Type == barrierType {
				c.marks[d.MessageId] = true
			} else {
				c.msgs = append(c.msgs, message{RoutingKey: d.RoutingKey, Delivery: d})
			}
			c.mu.Unlock()
			// Acked after recording: a message is counted at least once.
			d.Ack(false)
		}
	}
}

func (c *consumer) close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// barrierType is the AMQP type of the marks barrier sends.
const barrierType = "relay-test-barrier"

var barriers atomic.Int64

// barrier publishes a mark straight to the queue, behind whatever it holds,
// and waits until the mark arrives: a queue delivers in order, so whatever
// had reached it before has arrived by then. A check that something did
// not arrive calls it first, so that it cannot pass only because the
// consumer was slow.
func (c *consumer) barrier() {
	c.t.Helper()
	conn, err := amqp.Dial(c.url)
	if err != nil {
		c.t.Fatalf("dial rabbitmq: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		c.t.Fatal(err)
	}
	id := fmt.Sprintf("barrier-%d", barriers.Add(1))
	dc, err := ch.PublishWithDeferredConfirmWithContext(c.t.Context(), "", c.queue, true, false, amqp.Publishing{Type: barrierType, MessageId: id})
	if err != nil {
		c.t.Fatalf("publish a barrier mark to %s: %v", c.queue, err)
	}
	if ok, err := dc.WaitContext(c.t.Context()); !ok || err != nil {
		c.t.Fatalf("barrier mark to %s not confirmed: %v", c.queue, err)
	}
	eventually(c.t, time.Minute, func() error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.marks[id] {
			return fmt.Errorf("barrier mark %s has not come through queue %s", id, c.queue)
		}
		return nil
	})
}

// messages returns a copy of what was received so far.
func (c *consumer) messages() []message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]message(nil), c.msgs...)
}

// highestRelayLSN is the highest commit LSN (x-relay-lsn) that q received.
func (c *consumer) highestRelayLSN() uint64 {
	var last uint64
	for _, m := range c.messages() {
		s, _ := m.Headers["x-relay-lsn"].(string)
		if lsn, err := parseLSN(s); err == nil {
			last = max(last, lsn)
		}
	}
	return last
}

// sinkConsumer is a consumer of what the relay publishes, whichever the
// broker: a RabbitMQ queue (*consumer) or Kafka topics (*kafkaConsumer).
// Tests that must hold for both brokers run over it, one subtest each.
type sinkConsumer interface {
	// ids returns the id of every delivery so far, in arrival order.
	ids() []string
	// waitDistinctMessages waits until n distinct ids arrived and returns
	// every delivery so far as messages (the id as MessageId, the payload
	// as Body).
	waitDistinctMessages(n int, timeout time.Duration) []message
	// highestRelayLSN is the highest commit LSN (x-relay-lsn) received.
	highestRelayLSN() uint64
	// checkBroker asserts what this broker's deliveries must satisfy on
	// top of checkAll and checkOrder.
	checkBroker(t *testing.T)
}

func (c *consumer) ids() []string {
	msgs := c.messages()
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.MessageId
	}
	return ids
}

func (c *consumer) waitDistinctMessages(n int, timeout time.Duration) []message {
	c.t.Helper()
	return c.waitDistinct(n, timeout)
}

// checkBroker: a queue adds nothing to judge.
func (c *consumer) checkBroker(*testing.T) {}

// sharedBrokers are the brokers a test that holds for both runs against,
// on the suite's shared nodes: newEnv returns the test's env publishing
// there and a consumer of all it publishes.
var sharedBrokers = []struct {
	name   string
	newEnv func(t *testing.T) (*env, sinkConsumer)
}{
	{"rabbitmq", func(t *testing.T) (*env, sinkConsumer) {
		e := newEnv(t)
		return e, e.bindQueue("#")
	}},
	{"kafka", func(t *testing.T) (*env, sinkConsumer) {
		e := newKafkaEnv(t)
		return e, e.consumeKafka()
	}},
}

// waitDistinct waits until n distinct message ids arrived.
func (c *consumer) waitDistinct(n int, timeout time.Duration) []message {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msgs := c.messages()
		ids := make(map[string]bool, len(msgs))
		for _, m := range msgs {
			ids[m.MessageId] = true
		}
		if len(ids) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("received %d distinct of %d messages (%d in all) within %s", len(ids), n, len(msgs), timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// eventually polls check until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v", timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// slotLSN returns the slot's confirmed_flush_lsn as a number.
func (e *env) slotLSN() uint64 {
	e.t.Helper()
	var lsn uint64
	err := e.db.QueryRow(e.t.Context(), "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1", e.slot).Scan(&lsn)
	if err != nil {
		e.t.Fatalf("read slot %s: %v", e.slot, err)
	}
	return lsn
}

// waitSent waits until the slot's walsender has sent the relay the WAL up
// to lsn: rows committed before lsn have reached the relay.
func (e *env) waitSent(lsn uint64) {
	e.t.Helper()
	eventually(e.t, time.Minute, func() error {
		var sent uint64
		err := e.db.QueryRow(e.t.Context(), `
			SELECT (s.sent_lsn - '0/0')::bigint
			FROM pg_replication_slots r JOIN pg_stat_replication s ON s.pid = r.active_pid
			WHERE r.slot_name = $1`, e.slot).Scan(&sent)
		if err != nil {
			return fmt.Errorf("read the walsender of slot %s: %w", e.slot, err)
		}
		if sent < lsn {
			return fmt.Errorf("walsender sent up to %X, waiting for %X", sent, lsn)
		}
		return nil
	})
}

// nextStatus waits until the relay has sent a standby status update after
// now, so that the slot reflects every confirm the relay had received by
// now. Tests read a slot position with it instead of sleeping.
func (e *env) nextStatus() {
	e.t.Helper()
	var since time.Time
	if err := e.db.QueryRow(e.t.Context(), "SELECT clock_timestamp()").Scan(&since); err != nil {
		e.t.Fatal(err)
	}
	eventually(e.t, time.Minute, func() error {
		var replied *time.Time
		err := e.db.QueryRow(e.t.Context(), `
			SELECT s.reply_time
			FROM pg_replication_slots r JOIN pg_stat_replication s ON s.pid = r.active_pid
			WHERE r.slot_name = $1`, e.slot).Scan(&replied)
		if err != nil {
			return fmt.Errorf("read the walsender of slot %s: %w", e.slot, err)
		}
		if replied == nil || !replied.After(since) {
			return fmt.Errorf("no status update since %s (last %v)", since.Format(time.StampMicro), replied)
		}
		return nil
	})
}

// waitSlotAt waits until the slot has confirmed at least lsn, such as the
// WAL end once every event was delivered.
func (e *env) waitSlotAt(lsn uint64, timeout time.Duration) {
	e.t.Helper()
	eventually(e.t, timeout, func() error {
		if got := e.slotLSN(); got < lsn {
			return fmt.Errorf("slot at %X, waiting for %X", got, lsn)
		}
		return nil
	})
}

// slotStaysAt asserts that the slot stays at held over the relay's next n
// standby status updates. Each update carries every confirm the relay has
// had, so a relay that confirmed anything would move the slot; a relay
// that sends none fails the wait, rather than passing as a fixed sleep
// would.
func (e *env) slotStaysAt(held uint64, n int) {
	e.t.Helper()
	for i := range n {
		e.nextStatus()
		if got := e.slotLSN(); got != held {
			e.t.Fatalf("slot moved from %X to %X by status update %d of %d", held, got, i+1, n)
		}
	}
}

// currentLSN returns pg_current_wal_lsn() as a number.
func (e *env) currentLSN() uint64 {
	e.t.Helper()
	var lsn uint64
	if err := e.db.QueryRow(e.t.Context(), "SELECT (pg_current_wal_lsn() - '0/0')::bigint").Scan(&lsn); err != nil {
		e.t.Fatal(err)
	}
	return lsn
}

// insertEvents commits n outbox rows in transactions of perTx rows, spread
// over aggregates; each payload carries its aggregate and sequence number
// within the aggregate, so order can be checked on the consumer side.
// It returns the ids in commit order.
func (e *env) insertEvents(n, perTx, aggregates int) []string {
	e.t.Helper()
	return newEventRows(aggregates).commitAll(e.t, e.db, n, perTx)
}

// eventRows numbers the outbox rows that insertEvents and writer commit:
// row i belongs to aggregate i mod aggregates and carries its sequence
// number within that aggregate.
type eventRows struct {
	next int
	seq  []int
}

func newEventRows(aggregates int) *eventRows { return &eventRows{seq: make([]int, aggregates)} }

// commit commits one transaction of n rows and returns their ids.
func (r *eventRows) commit(ctx context.Context, db *pgxpool.Pool, n int) ([]string, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.Background())
	next, seq := r.next, slices.Clone(r.seq)
	ids := make([]string, 0, n)
	for range n {
		agg := next % len(seq)
		seq[agg]++
		next++
		var id string
		err := tx.QueryRow(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', $1, 'order.created', jsonb_build_object('agg', $1::text, 'seq', $2::int), jsonb_build_object('tenant', 'acme', 'n', $2::int))
			RETURNING id`, fmt.Sprintf("agg-%d", agg), seq[agg]).Scan(&id)
		if err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	r.next, r.seq = next, seq
	return ids, nil
}

// commitAll commits n rows in transactions of perTx rows (the last may
// have fewer) and returns their ids in commit order.
func (r *eventRows) commitAll(t *testing.T, db *pgxpool.Pool, n, perTx int) []string {
	t.Helper()
	ids := make([]string, 0, n)
	for len(ids) < n {
		got, err := r.commit(t.Context(), db, min(perTx, n-len(ids)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got...)
	}
	return ids
}

// writer commits outbox rows in the background until stopped, perTx rows
// per transaction numbered as insertEvents numbers them. A test injects a
// fault while it runs, so that rows certainly commit before, during and
// after the fault, however fast the relay drains them.
type writer struct {
	t    *testing.T
	stop chan struct{}
	done chan struct{}

	mu  sync.Mutex
	ids []string
	err error
}

func (e *env) startWriter(perTx, aggregates int) *writer {
	rows := newEventRows(aggregates)
	return e.startWriterFunc(func(ctx context.Context) ([]string, error) {
		return rows.commit(ctx, e.db, perTx)
	})
}

// startWriterFunc is startWriter with rows of the test's own: commit
// commits one transaction and returns the ids of its rows.
func (e *env) startWriterFunc(commit func(context.Context) ([]string, error)) *writer {
	w := &writer{t: e.t, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			// Not the test's context: a transaction under way when the
			// writer is stopped completes.
			ids, err := commit(context.Background())
			w.mu.Lock()
			w.ids = append(w.ids, ids...)
			w.err = err
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	e.t.Cleanup(func() { w.finish() })
	return w
}

// rows is how many rows have committed so far.
func (w *writer) rows() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.ids)
}

// waitRows waits until n more rows than now have committed.
func (w *writer) waitRows(n int) {
	w.t.Helper()
	want := w.rows() + n
	eventually(w.t, time.Minute, func() error {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.err != nil {
			w.t.Fatalf("writer: %v", w.err)
		}
		if len(w.ids) < want {
			return fmt.Errorf("%d rows committed, waiting for %d", len(w.ids), want)
		}
		return nil
	})
}

// finish stops the writer after the transaction under way and returns
// the ids of every row it committed, in commit order.
func (w *writer) finish() []string {
	w.t.Helper()
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		w.t.Fatalf("writer: %v", w.err)
	}
	return slices.Clone(w.ids)
}
