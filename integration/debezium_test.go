//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// debeziumFixture reads one of the byte fixtures of what Debezium writes
// (sinks/kafka/testdata/debezium/README.md says where each comes from).
func debeziumFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "sinks", "kafka", "testdata", "debezium", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKafkaRecordsMatchDebeziumPerConverter: on Debezium's own outbox
// table, read with RELAY_COLUMN_PRESET=debezium, the relay writes the
// key, the value and the id header of the documentation's example row
// byte for byte as Debezium does with Kafka Connect's StringConverter
// (the relay's defaults) and with JsonConverter without schemas
// (RELAY_KAFKA_KEY_FORMAT and RELAY_KAFKA_VALUE_FORMAT json-string); and
// every aggregate lands on the partition the Java producer's murmur2 gives
// Debezium's key, so a migrating consumer keeps each aggregate's order.
// One row is read by the initial backfill, the others from the stream.
func TestKafkaRecordsMatchDebeziumPerConverter(t *testing.T) {
	t.Parallel()
	const partitions = 3 // of the topics the harness has the relay create
	for _, tt := range []struct {
		converter string
		vars      map[string]string
		// encode is how the converter writes a string (strconv.Quote
		// escapes these ASCII strings as Jackson does).
		encode  func(string) string
		fixture string // prefix of the fixtures
	}{
		{"StringConverter", nil, func(id string) string { return id }, "string-converter"},
		{"JsonConverter", map[string]string{"RELAY_KAFKA_KEY_FORMAT": "json-string", "RELAY_KAFKA_VALUE_FORMAT": "json-string"},
			strconv.Quote, "json-converter"},
	} {
		t.Run(tt.converter, func(t *testing.T) {
			e := newKafkaEnv(t)
			e.exec(`CREATE TABLE public.outboxevent (
					id            uuid         NOT NULL PRIMARY KEY,
					aggregatetype varchar(255) NOT NULL,
					aggregateid   varchar(255) NOT NULL,
					type          varchar(255) NOT NULL,
					payload       jsonb);
				GRANT SELECT ON public.outboxevent TO relay;
				ALTER PUBLICATION pub_` + e.name + ` SET TABLE public.outboxevent`)
			e.extraVars = map[string]string{"RELAY_TABLES": "public.outboxevent", "RELAY_COLUMN_PRESET": "debezium"}
			for k, v := range tt.vars {
				e.extraVars[k] = v
			}
			type row struct{ aggregate, payload string }
			rows := map[string]row{}
			docID := string(debeziumFixture(t, "id.header"))
			e.exec(`INSERT INTO public.outboxevent VALUES ($1, 'order', '1', 'OrderCreated', $2)`, docID, string(debeziumFixture(t, "payload.json")))
			rows[docID] = row{"1", string(debeziumFixture(t, "payload.json"))}
			c := e.consumeKafka()
			e.startRelay()
			// More aggregates, so that the partitions of quoted and bare
			// keys differ for some of them.
			for i := range 30 {
				r := row{"order-" + strconv.Itoa(i), fmt.Sprintf(`{"n": %d}`, i)}
				var id string
				if err := e.db.QueryRow(t.Context(), `INSERT INTO public.outboxevent VALUES (gen_random_uuid(), 'order', $1, 'OrderCreated', $2) RETURNING id::text`,
					r.aggregate, r.payload).Scan(&id); err != nil {
					t.Fatal(err)
				}
				rows[id] = r
			}
			recs := c.waitDistinct(len(rows), time.Minute)

			moved := 0
			for _, r := range recs {
				row, ok := rows[r.id()]
				if !ok {
					t.Fatalf("record with id %q, which no row has", r.id())
				}
				key, value := tt.encode(row.aggregate), tt.encode(row.payload)
				if r.id() == docID {
					// The documentation's row, found by its id header,
					// which is therefore the fixture's: against the
					// fixtures.
					key, value = string(debeziumFixture(t, tt.fixture+".key")), string(debeziumFixture(t, tt.fixture+".value"))
				}
				if string(r.Key) != key {
					t.Errorf("record %s: key %s, Debezium's %s", r.id(), r.Key, key)
				}
				if string(r.Value) != value {
					t.Errorf("record %s: value\n%s\nDebezium's\n%s", r.id(), r.Value, value)
				}
				if want := javaPartition([]byte(key), partitions); r.Partition != want {
					t.Errorf("record %s with key %s on partition %d; Debezium's producer puts it on %d", r.id(), key, r.Partition, want)
				}
				if javaPartition([]byte(key), partitions) != javaPartition([]byte(row.aggregate), partitions) {
					moved++
				}
			}
			if tt.vars != nil && moved == 0 {
				t.Error("no aggregate's quoted key hashes to another partition than its bare one: the test proves nothing about the key format")
			}
		})
	}
}
