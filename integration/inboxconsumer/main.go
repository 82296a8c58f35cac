//go:build linux

// Command inboxconsumer is the consumer process of integration/inbox_test.go:
// it applies account events ({"account": "...", "amount": N}) from a
// RabbitMQ queue to a balances table with package inbox, one transaction per
// message, and acknowledges each message after the commit.
//
// With -crash-after N it SIGKILLs itself right after the N-th commit that
// applied a message, before acknowledging it, so the broker redelivers a
// message whose effect is already committed. It reports on stdout, one line
// per delivery: "applied <id>", "duplicate <id>", and "crash <id>" before it
// dies. SIGTERM stops it with exit code 0.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/relay-dev/relay/inbox"
	"github.com/relay-dev/relay/inbox/inboxamqp"
)

type config struct {
	databaseURL, amqpURL, queue, consumer string
	crashAfter, prefetch                  int
}

func main() {
	var c config
	flag.StringVar(&c.databaseURL, "database", "", "PostgreSQL URL of the consumer's database (balances and inbox tables)")
	flag.StringVar(&c.amqpURL, "amqp", "", "RabbitMQ URL")
	flag.StringVar(&c.queue, "queue", "", "queue to consume")
	flag.StringVar(&c.consumer, "consumer", "ledger", "inbox consumer name")
	flag.IntVar(&c.crashAfter, "crash-after", 0, "SIGKILL self after this many applied commits, before acking the last; 0: never")
	flag.IntVar(&c.prefetch, "prefetch", 50, "unacknowledged deliveries at most")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, c); err != nil {
		fmt.Fprintln(os.Stderr, "inboxconsumer:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, c config) error {
	ib, err := inbox.New(c.consumer)
	if err != nil {
		return err
	}
	db, err := pgxpool.New(ctx, c.databaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	conn, err := amqp.Dial(c.amqpURL)
	if err != nil {
		return fmt.Errorf("dial rabbitmq: %w", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	if err := ch.Qos(c.prefetch, 0, false); err != nil {
		return err
	}
	deliveries, err := ch.Consume(c.queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume %s: %w", c.queue, err)
	}
	applied := 0
	for {
		var d amqp.Delivery
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case d, ok = <-deliveries:
		}
		if !ok {
			return errors.New("deliveries closed: connection lost")
		}
		id, err := inboxamqp.MessageID(d)
		if err != nil {
			return err
		}
		var e struct {
			Account string `json:"account"`
			Amount  int64  `json:"amount"`
		}
		if err := json.Unmarshal(d.Body, &e); err != nil {
			return fmt.Errorf("message %s: body %q: %w", id, d.Body, err)
		}
		first, err := ib.Process(ctx, db, id, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO balances (account, balance) VALUES ($1, $2)
				ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance`, e.Account, e.Amount)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped mid-transaction: rolled back, the message comes again
			}
			return fmt.Errorf("message %s: %w", id, err)
		}
		if !first {
			fmt.Println("duplicate", id)
		} else {
			fmt.Println("applied", id)
			applied++
			if applied == c.crashAfter {
				// Committed, not acknowledged: die as a crash would.
				fmt.Println("crash", id)
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
		if err := d.Ack(false); err != nil {
			return fmt.Errorf("ack %s: %w", id, err)
		}
	}
}
