//go:build linux

package inbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/relay-dev/relay/inbox"
	"github.com/relay-dev/relay/inbox/inboxamqp"
	"github.com/relay-dev/relay/inbox/inboxkafka"
)

// A RabbitMQ consumer of the relay's messages adds each event's amount to
// an account's balance in its own database, once per message, however often
// the message is delivered.
func Example_rabbitmq() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ib, err := inbox.New("ledger-rabbitmq")
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.CreateTable(ctx, db); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec(ctx, "CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
		log.Fatal(err)
	}

	conn, err := amqp.Dial(os.Getenv("AMQP_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		log.Fatal(err)
	}
	q, err := ch.QueueDeclare("ledger", true, false, false, false, nil)
	if err != nil {
		log.Fatal(err)
	}

	// The relay publishes every outbox row with message_id set to the row's
	// id. Here the example publishes three events itself, the second one
	// twice, as the relay does when it restarts before a broker confirm
	// reached it.
	for _, m := range []struct{ id, body string }{
		{"0f5c7a9e-3b1d-4c2a-9e8f-000000000001", `{"account": "ada", "amount": 100}`},
		{"0f5c7a9e-3b1d-4c2a-9e8f-000000000002", `{"account": "ada", "amount": 50}`},
		{"0f5c7a9e-3b1d-4c2a-9e8f-000000000002", `{"account": "ada", "amount": 50}`},
		{"0f5c7a9e-3b1d-4c2a-9e8f-000000000003", `{"account": "grace", "amount": 20}`},
	} {
		err := ch.PublishWithContext(ctx, "", q.Name, false, false, amqp.Publishing{
			MessageId: m.id, ContentType: "application/json", DeliveryMode: amqp.Persistent, Body: []byte(m.body),
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	if err := ch.Qos(64, 0, false); err != nil {
		log.Fatal(err)
	}
	deliveries, err := ch.Consume(q.Name, "", false, false, false, false, nil) // acknowledged by hand
	if err != nil {
		log.Fatal(err)
	}
	// A consumer ranges over deliveries; this one stops after the four
	// messages it published.
	for range 4 {
		d := <-deliveries
		id, err := inboxamqp.MessageID(d)
		if err != nil {
			log.Print(err)
			d.Reject(false) // without a key it cannot be applied once: dead-letter it
			continue
		}
		var e struct {
			Account string `json:"account"`
			Amount  int64  `json:"amount"`
		}
		if err := json.Unmarshal(d.Body, &e); err != nil {
			log.Printf("message %s: %v", id, err)
			d.Reject(false)
			continue
		}
		applied, err := ib.Process(ctx, db, id, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO balances (account, balance) VALUES ($1, $2)
				ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance`, e.Account, e.Amount)
			return err
		})
		if err != nil {
			// Neither the claim nor the balance committed: let it come again.
			log.Printf("message %s: %v", id, err)
			d.Nack(false, true)
			continue
		}
		// Acknowledge only after the commit. If the consumer dies before the
		// ack, the message is delivered again and Process skips it.
		if err := d.Ack(false); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s %+d: %s\n", e.Account, e.Amount, map[bool]string{true: "applied", false: "duplicate, skipped"}[applied])
	}

	for _, account := range []string{"ada", "grace"} {
		var balance int64
		if err := db.QueryRow(ctx, "SELECT balance FROM balances WHERE account = $1", account).Scan(&balance); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d\n", account, balance)
	}
	// The example leaves the database as it found it.
	if _, err := db.Exec(ctx, "DROP TABLE balances, inbox"); err != nil {
		log.Fatal(err)
	}
	// Output:
	// ada +100: applied
	// ada +50: applied
	// ada +50: duplicate, skipped
	// grace +20: applied
	// ada: 150
	// grace: 20
}

// A Kafka consumer group member applies the relay's records to balances
// once each, and commits offsets only after the database committed.
func Example_kafka() {
	ctx := context.Background()
	db, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ib, err := inbox.New("ledger-kafka")
	if err != nil {
		log.Fatal(err)
	}
	if err := ib.CreateTable(ctx, db); err != nil {
		log.Fatal(err)
	}
	if _, err := db.Exec(ctx, "CREATE TABLE IF NOT EXISTS balances (account text PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
		log.Fatal(err)
	}
	brokers := strings.Split(os.Getenv("KAFKA_BROKERS"), ",")
	const topic = "outbox.event.account"

	// The relay produces every outbox row with an "id" header holding the
	// row's id. Here the example produces three events itself, the second
	// one twice, as the relay does when it restarts before the broker's
	// acknowledgement reached it.
	producer, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.AllowAutoTopicCreation())
	if err != nil {
		log.Fatal(err)
	}
	defer producer.Close()
	for _, m := range []struct{ id, account, body string }{
		{"5e2b8c1f-7a4d-4f3e-b6c9-000000000001", "alan", `{"account": "alan", "amount": 70}`},
		{"5e2b8c1f-7a4d-4f3e-b6c9-000000000002", "barbara", `{"account": "barbara", "amount": 30}`},
		{"5e2b8c1f-7a4d-4f3e-b6c9-000000000002", "barbara", `{"account": "barbara", "amount": 30}`},
		{"5e2b8c1f-7a4d-4f3e-b6c9-000000000003", "alan", `{"account": "alan", "amount": -20}`},
	} {
		r := &kgo.Record{Topic: topic, Key: []byte(m.account), Value: []byte(m.body),
			Headers: []kgo.RecordHeader{{Key: "id", Value: []byte(m.id)}}}
		if err := producer.ProduceSync(ctx, r).FirstErr(); err != nil {
			log.Fatal(err)
		}
	}

	cl, err := kgo.NewClient(
		kgo.SeedBrokers(brokers...),
		kgo.ConsumerGroup("ledger"),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(), // offsets are committed after the database commits
	)
	if err != nil {
		log.Fatal(err)
	}
	defer cl.Close()
	// A consumer polls until it is shut down; this one stops after the four
	// records it produced.
	for seen := 0; seen < 4; {
		fetches := cl.PollFetches(ctx)
		fetches.EachError(func(topic string, partition int32, err error) {
			log.Printf("fetch %s/%d: %v", topic, partition, err) // the client retries
		})
		for _, r := range fetches.Records() {
			seen++
			id, err := inboxkafka.MessageID(r)
			if err != nil {
				log.Print(err) // without a key it cannot be applied once: park it elsewhere
				continue
			}
			var e struct {
				Account string `json:"account"`
				Amount  int64  `json:"amount"`
			}
			if err := json.Unmarshal(r.Value, &e); err != nil {
				log.Printf("record %s: %v", id, err)
				continue
			}
			applied, err := ib.Process(ctx, db, id, func(tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `INSERT INTO balances (account, balance) VALUES ($1, $2)
					ON CONFLICT (account) DO UPDATE SET balance = balances.balance + excluded.balance`, e.Account, e.Amount)
				return err
			})
			if err != nil {
				// Nothing committed, and the offset must not move past this
				// record: stop, and the group delivers it again.
				log.Fatalf("record %s: %v", id, err)
			}
			fmt.Printf("%s %+d: %s\n", e.Account, e.Amount, map[bool]string{true: "applied", false: "duplicate, skipped"}[applied])
		}
		// Only now that the records' transactions committed. A crash before
		// this line makes the group read them again, and Process skips them.
		if err := cl.CommitUncommittedOffsets(ctx); err != nil {
			log.Fatal(err)
		}
	}

	for _, account := range []string{"alan", "barbara"} {
		var balance int64
		if err := db.QueryRow(ctx, "SELECT balance FROM balances WHERE account = $1", account).Scan(&balance); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%s: %d\n", account, balance)
	}
	// The example leaves the database as it found it.
	if _, err := db.Exec(ctx, "DROP TABLE balances, inbox"); err != nil {
		log.Fatal(err)
	}
	// Output:
	// alan +70: applied
	// barbara +30: applied
	// barbara +30: duplicate, skipped
	// alan -20: applied
	// alan: 50
	// barbara: 30
}
