//go:build linux

// Command demo shows the relay end to end on throwaway local services: it
// starts PostgreSQL and RabbitMQ, applies schema/outbox.sql, runs the relay
// binary, commits a few orders together with their outbox events, prints
// what a consumer receives, and removes everything it started.
//
// Run it with `make demo`.
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

	"github.com/relay-dev/relay/integration/services"
	"github.com/relay-dev/relay/relay"
)

func main() {
	relayBin := flag.String("relay", "bin/relay", "relay binary to run")
	schema := flag.String("schema", "schema/outbox.sql", "outbox schema to apply")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *relayBin, *schema); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, relayBin, schemaPath string) error {
	schema, err := os.ReadFile(schemaPath)
	if err != nil {
		return err
	}
	step("starting a throwaway PostgreSQL (wal_level=logical) and RabbitMQ on free loopback ports")
	pg, err := services.StartPostgres(ctx, services.PostgresOptions{})
	if err != nil {
		return err
	}
	defer pg.Close()
	rabbit, err := services.StartRabbit(ctx)
	if err != nil {
		return err
	}
	defer rabbit.Close()
	if err := pg.CreateDatabase(ctx, "shop"); err != nil {
		return err
	}
	dbURL := pg.URL("shop")
	fmt.Printf("   PostgreSQL %s\n   RabbitMQ   %s\n", dbURL, relay.RedactURL(rabbit.URL()))

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

	step("binding queue demo to exchange outbox with key order.#, as a consumer would")
	deliveries, closeConsumer, err := consume(rabbit.URL())
	if err != nil {
		return err
	}
	defer closeConsumer()

	step("starting the relay: " + relayBin)
	relay := exec.Command(relayBin)
	relay.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"RELAY_DATABASE_URL=" + dbURL,
		"RELAY_AMQP_URL=" + rabbit.URL(),
		"RELAY_LOG_FORMAT=text",
		"RELAY_HTTP_ADDR=127.0.0.1:0",
	}
	relay.Stdout, relay.Stderr = prefixWriter("   relay | "), prefixWriter("   relay | ")
	if err := relay.Start(); err != nil {
		return fmt.Errorf("start relay: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- relay.Wait() }()
	defer func() {
		relay.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			relay.Process.Kill()
		}
	}()

	// A new slot streams only what commits after it exists.
	if err := waitStreaming(ctx, db, exited); err != nil {
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
		select {
		case d, ok := <-deliveries:
			if !ok {
				return errors.New("consumer channel closed")
			}
			fmt.Printf("   #%d routing_key=%s message_id=%s type=%s\n", i+1, d.RoutingKey, d.MessageId, d.Type)
			fmt.Printf("      headers: %s\n", formatHeaders(d.Headers))
			fmt.Printf("      body:    %s\n", d.Body)
			d.Ack(false)
		case err := <-exited:
			return fmt.Errorf("relay exited: %v", err)
		case <-time.After(30 * time.Second):
			return errors.New("no message within 30s")
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	step("done: stopping the relay and removing the throwaway services")
	return nil
}

// waitStreaming returns once the relay streams from its slot.
func waitStreaming(ctx context.Context, db *pgx.Conn, exited <-chan error) error {
	deadline := time.After(time.Minute)
	for {
		var active bool
		err := db.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'outbox_relay'").Scan(&active)
		if err == nil && active {
			return nil
		}
		select {
		case err := <-exited:
			return fmt.Errorf("relay exited: %v", err)
		case <-deadline:
			return errors.New("the relay did not start streaming within a minute")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func consume(url string) (<-chan amqp.Delivery, func(), error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, nil, err
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
		return nil, nil, fmt.Errorf("consumer: %w", err)
	}
	return deliveries, func() { conn.Close() }, nil
}

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
