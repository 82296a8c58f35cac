//go:build linux

package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/relay-dev/relay/integration/services"
)

// testDBURL is the database of the tests; the examples get their own,
// DATABASE_URL, next to AMQP_URL and KAFKA_BROKERS.
var testDBURL string

// TestMain starts a throwaway PostgreSQL for the tests, and for the examples
// a RabbitMQ node (or RELAY_TEST_AMQP_URL) and an in-process Kafka-protocol
// broker. A service that cannot start fails the run: nothing is skipped.
func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var (
		wg               sync.WaitGroup
		pg               *services.Postgres
		rabbit           *services.Rabbit
		pgErr, rabbitErr error
		amqpURL          = os.Getenv("RELAY_TEST_AMQP_URL")
		kafka, kafkaErr  = kfake.NewCluster(kfake.NumBrokers(1), kfake.AllowAutoTopicCreation(), kfake.DefaultNumPartitions(1))
	)
	wg.Go(func() {
		pg, pgErr = services.StartPostgres(ctx, services.PostgresOptions{Fast: true})
		if pgErr == nil {
			pgErr = errors.Join(pg.CreateDatabase(ctx, "inbox_test"), pg.CreateDatabase(ctx, "examples"))
		}
	})
	if amqpURL == "" {
		wg.Go(func() {
			rabbit, rabbitErr = services.StartRabbit(ctx)
			if rabbitErr == nil {
				amqpURL = rabbit.URL()
			}
		})
	}
	wg.Wait()
	if pg != nil {
		defer pg.Close()
	}
	if rabbit != nil {
		defer rabbit.Close()
	}
	if kafka != nil {
		defer kafka.Close()
	}
	if err := errors.Join(pgErr, rabbitErr, kafkaErr); err != nil {
		fmt.Fprintln(os.Stderr, "start services:", err)
		return 1
	}
	testDBURL = pg.URL("inbox_test")
	os.Setenv("DATABASE_URL", pg.URL("examples"))
	os.Setenv("AMQP_URL", amqpURL)
	os.Setenv("KAFKA_BROKERS", strings.Join(kafka.ListenAddrs(), ","))
	return m.Run()
}
