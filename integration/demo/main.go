//go:build linux

// Command demo shows the relay end to end on throwaway local services: it
// starts PostgreSQL and RabbitMQ (or, with -sink kafka, a Kafka-protocol
// broker: kfake), applies schema/outbox.sql, runs the relay binary, commits
// a few orders together with their outbox events, prints what a consumer
// receives, and removes everything it started.
//
// Run it with `make demo`, `make demo SINK=kafka` or `make demo SINK=rabbitmq-stream`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	streamamqp "github.com/rabbitmq/rabbitmq-stream-go-client/pkg/amqp"
	"github.com/rabbitmq/rabbitmq-stream-go-client/pkg/stream"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
)

func main() {
	relayBin := flag.String("relay", "bin/relay", "relay binary to run")
	schema := flag.String("schema", "schema/outbox.sql", "outbox schema to apply")
	sink := flag.String("sink", "rabbitmq", "broker the relay publishes to: rabbitmq, rabbitmq-stream or kafka")
	flag.Parse()
	if *sink != "rabbitmq" && *sink != "rabbitmq-stream" && *sink != "kafka" {
		fmt.Fprintf(os.Stderr, "demo: -sink %q: want rabbitmq, rabbitmq-stream or kafka\n", *sink)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *relayBin, *schema, *sink); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, relayBin, schemaPath, sink string) error {
	schema, err := os.ReadFile(schemaPath)
	if err != nil {
		return err
	}
	brokerName := map[string]string{"rabbitmq": "RabbitMQ", "rabbitmq-stream": "RabbitMQ with the stream plugin", "kafka": "Kafka (kfake)"}[sink]
	step("starting a throwaway PostgreSQL (wal_level=logical) and " + brokerName + " on free loopback ports")
	pg, err := services.StartPostgres(ctx, services.PostgresOptions{})
	if err != nil {
		return err
	}
	defer pg.Close()
	if err := pg.CreateDatabase(ctx, "shop"); err != nil {
		return err
	}
	dbURL := pg.URL("shop")
	fmt.Printf("   PostgreSQL %s\n", dbURL)
	relayEnv := []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + dbURL,
		"RELAY_LOG_FORMAT=text",
		"RELAY_HTTP_ADDR=127.0.0.1:0",
	}
	var subscribe func() (consumer, error)
	var subscribeStep string
	switch sink {
	case "kafka":
		kafka, err := services.StartKafka(ctx, services.KafkaOptions{})
		if err != nil {
			return err
		}
		defer kafka.Close()
		fmt.Printf("   Kafka      %s\n", kafka.Brokers())
		relayEnv = append(relayEnv,
			"RELAY_SINK=kafka",
			"RELAY_KAFKA_BROKERS="+kafka.Brokers(),
			"RELAY_KAFKA_CREATE_TOPICS=true",
			"RELAY_KAFKA_PARTITIONS=3",
		)
		subscribeStep = "consuming topic " + demoTopic + " from its start, as a consumer would"
		subscribe = func() (consumer, error) { return consumeKafka(kafka.Brokers()) }
	case "rabbitmq-stream":
		rabbit, err := services.StartRabbitWith(ctx, services.RabbitOptions{Stream: true})
		if err != nil {
			return err
		}
		defer rabbit.Close()
		fmt.Printf("   RabbitMQ   %s\n", relay.RedactURL(rabbit.StreamURL()))
		relayEnv = append(relayEnv, "RELAY_SINK=rabbitmq-stream", "RELAY_RABBITMQ_STREAM_URL="+rabbit.StreamURL())
		subscribeStep = "consuming stream " + demoStream + " from its first offset over the stream protocol, as a consumer would"
		subscribe = func() (consumer, error) { return consumeStream(rabbit.StreamURL()) }
	default:
		rabbit, err := services.StartRabbit(ctx)
		if err != nil {
			return err
		}
		defer rabbit.Close()
		fmt.Printf("   RabbitMQ   %s\n", relay.RedactURL(rabbit.URL()))
		relayEnv = append(relayEnv, "RELAY_AMQP_URL="+rabbit.URL())
		subscribeStep = "binding queue demo to exchange outbox with key order.#, as a consumer would"
		subscribe = func() (consumer, error) { return consumeRabbit(rabbit.URL()) }
	}

	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer db.Close(context.Background())
	step("applying schema/outbox.sql and creating the business table orders")
	if _, err := db.Exec(ctx, string(schema)); err != nil {
		return fmt.Errorf("apply schema: %w", err)
	}
	if _, err := db.Exec(ctx, `CREATE TABLE orders (id bigserial PRIMARY KEY, customer text NOT NULL, total_cents int NOT NULL)`); err != nil {
		return err
	}

	step(subscribeStep)
	sub, err := subscribe()
	if err != nil {
		return err
	}
	defer sub.close()

	step("starting the relay: " + relayBin)
	relay := exec.Command(relayBin)
	relay.Env = relayEnv
	relay.Stdout, relay.Stderr = prefixWriter("   relay | "), prefixWriter("   relay | ")
	if err := relay.Start(); err != nil {
		return fmt.Errorf("start relay: %w", err)
	}
	// exited is closed when the relay ends, relayErr then says how.
	exited := make(chan struct{})
	var relayErr error
	go func() {
		relayErr = relay.Wait()
		close(exited)
	}()
	defer func() {
		relay.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			relay.Process.Kill()
		}
	}()

	// A new slot streams only what commits after it exists.
	if err := waitStreaming(ctx, db, exited, &relayErr); err != nil {
		return err
	}

	step("placing 3 orders: each transaction inserts the order and its outbox event")
	orders := []struct {
		customer string
		cents    int
	}{{"ada", 4200}, {"grace", 1999}, {"linus", 12500}}
	for _, o := range orders {
		tx, err := db.Begin(ctx)
		if err != nil {
			return err
		}
		var id int64
		if err := tx.QueryRow(ctx, "INSERT INTO orders (customer, total_cents) VALUES ($1, $2) RETURNING id", o.customer, o.cents).Scan(&id); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
			VALUES ('order', $1::bigint::text, 'placed', jsonb_build_object('order_id', $1::bigint, 'customer', $2::text, 'total_cents', $3::int), '{"source":"demo"}')`,
			id, o.customer, o.cents)
		if err != nil {
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		fmt.Printf("   committed order %d for %s\n", id, o.customer)
	}

	step("what the consumer receives")
	for i := range orders {
		// Give up early when the relay dies: nothing more will come.
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		go func() {
			select {
			case <-exited:
				cancel()
			case <-rctx.Done():
			}
		}()
		lines, err := sub.next(rctx)
		cancel()
		if err != nil {
			select {
			case <-exited:
				return fmt.Errorf("relay exited: %v", relayErr)
			default:
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("message %d: %w", i+1, err)
		}
		fmt.Printf("   #%d %s\n", i+1, lines[0])
		for _, l := range lines[1:] {
			fmt.Printf("      %s\n", l)
		}
	}
	step("done: stopping the relay and removing the throwaway services")
	return nil
}

// consumer receives what the relay published, one message at a time,
// formatted for printing: a summary line, then detail lines.
type consumer interface {
	next(ctx context.Context) ([]string, error)
	close()
}

// waitStreaming returns once the relay streams from its slot.
func waitStreaming(ctx context.Context, db *pgx.Conn, exited <-chan struct{}, relayErr *error) error {
	deadline := time.After(time.Minute)
	for {
		var active bool
		err := db.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'").Scan(&active)
		if err == nil && active {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("relay exited: %v", *relayErr)
		case <-deadline:
			return errors.New("the relay did not start streaming within a minute")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// rabbitConsumer reads queue demo, bound to the relay's exchange.
type rabbitConsumer struct {
	conn       *amqp.Connection
	deliveries <-chan amqp.Delivery
}

func consumeRabbit(url string) (consumer, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, err
	}
	ch, err := conn.Channel()
	if err == nil {
		err = ch.ExchangeDeclare("outbox", "topic", true, false, false, false, nil)
	}
	if err == nil {
		_, err = ch.QueueDeclare("demo", true, false, false, false, nil)
	}
	if err == nil {
		err = ch.QueueBind("demo", "order.#", "outbox", false, nil)
	}
	var deliveries <-chan amqp.Delivery
	if err == nil {
		deliveries, err = ch.Consume("demo", "", false, false, false, false, nil)
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("consumer: %w", err)
	}
	return &rabbitConsumer{conn: conn, deliveries: deliveries}, nil
}

func (c *rabbitConsumer) next(ctx context.Context) ([]string, error) {
	select {
	case d, ok := <-c.deliveries:
		if !ok {
			return nil, errors.New("consumer channel closed")
		}
		d.Ack(false)
		return []string{
			fmt.Sprintf("routing_key=%s message_id=%s type=%s", d.RoutingKey, d.MessageId, d.Type),
			"headers: " + formatHeaders(d.Headers),
			"body:    " + string(d.Body),
		}, nil
	case <-ctx.Done():
		return nil, errors.New("no message within 30s")
	}
}

func (c *rabbitConsumer) close() { c.conn.Close() }

// demoTopic is where the relay's default topic template,
// outbox.event.{aggregate_type}, puts the demo's order events.
const demoTopic = "outbox.event.order"

// kafkaConsumer reads demoTopic from its start, without a consumer group.
type kafkaConsumer struct {
	cl      *kgo.Client
	pending []*kgo.Record
}

func consumeKafka(brokers string) (consumer, error) {
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers),
		kgo.ConsumeTopics(demoTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// The relay creates the topic with its first event: look for it often.
		kgo.MetadataMinAge(100*time.Millisecond),
		kgo.MetadataMaxAge(500*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	return &kafkaConsumer{cl: cl}, nil
}

func (c *kafkaConsumer) next(ctx context.Context) ([]string, error) {
	for len(c.pending) == 0 {
		fetches := c.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil, errors.New("no record within 30s")
		}
		c.pending = fetches.Records()
	}
	r := c.pending[0]
	c.pending = c.pending[1:]
	headers := make([]string, len(r.Headers))
	for i, h := range r.Headers {
		headers[i] = h.Key + "=" + string(h.Value)
	}
	return []string{
		fmt.Sprintf("topic=%s partition=%d offset=%d key=%s timestamp=%s", r.Topic, r.Partition, r.Offset, r.Key, r.Timestamp.UTC().Format(time.RFC3339Nano)),
		"headers: " + strings.Join(headers, " "),
		"value:   " + string(r.Value),
	}, nil
}

func (c *kafkaConsumer) close() { c.cl.Close() }

// demoStream is the relay's default stream.
const demoStream = "outbox"

// streamConsumer reads demoStream from its first offset.
type streamConsumer struct {
	env  *stream.Environment
	msgs chan *streamamqp.Message
}

func consumeStream(url string) (consumer, error) {
	env, err := stream.NewEnvironment(stream.NewEnvironmentOptions().SetUri(url))
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	// The relay creates the stream with its first event; declaring it
	// here (with the same, default settings) lets the consumer start first.
	c := &streamConsumer{env: env, msgs: make(chan *streamamqp.Message, 16)}
	if err := env.DeclareStream(demoStream, stream.NewStreamOptions()); err != nil {
		env.Close()
		return nil, fmt.Errorf("consumer: %w", err)
	}
	_, err = env.NewConsumer(demoStream, func(_ stream.ConsumerContext, m *streamamqp.Message) { c.msgs <- m },
		stream.NewConsumerOptions().SetOffset(stream.OffsetSpecification{}.First()))
	if err != nil {
		env.Close()
		return nil, fmt.Errorf("consumer: %w", err)
	}
	return c, nil
}

func (c *streamConsumer) next(ctx context.Context) ([]string, error) {
	select {
	case m := <-c.msgs:
		keys := make([]string, 0, len(m.ApplicationProperties))
		for k := range m.ApplicationProperties {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		props := make([]string, len(keys))
		for i, k := range keys {
			props[i] = fmt.Sprintf("%s=%v", k, m.ApplicationProperties[k])
		}
		var body []byte
		if len(m.Data) > 0 {
			body = m.Data[0]
		}
		return []string{
			fmt.Sprintf("message-id=%v subject=%s content-type=%s creation-time=%s", m.Properties.MessageID, m.Properties.Subject, m.Properties.ContentType, m.Properties.CreationTime.UTC().Format(time.RFC3339)),
			"application properties: " + strings.Join(props, " "),
			"body:    " + string(body),
		}, nil
	case <-ctx.Done():
		return nil, errors.New("no message within 30s")
	}
}

func (c *streamConsumer) close() { c.env.Close() }

func formatHeaders(h amqp.Table) string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%v", k, h[k])
	}
	return strings.Join(parts, " ")
}

func step(s string) { fmt.Println("==> " + s) }

type prefixWriter string

func (p prefixWriter) Write(b []byte) (int, error) {
	for _, line := range strings.SplitAfter(string(b), "\n") {
		if line != "" {
			fmt.Print(string(p) + line)
		}
	}
	return len(b), nil
}
