package integration

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"
)

// TestLargePayloadsAndUnicodeArriveIntact: TOASTed payloads of 1 MB and
// 10 MB, as jsonb and as bytea, and Unicode in every text column, arrive
// byte for byte.
func TestLargePayloadsAndUnicodeArriveIntact(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.exec(`CREATE TABLE blobs (id text PRIMARY KEY, aggregate_type text NOT NULL, aggregate_id text NOT NULL,
		event_type text NOT NULL, payload bytea, headers jsonb, created_at timestamptz NOT NULL DEFAULT now())`)
	e.exec(`GRANT SELECT ON blobs TO relay`)
	e.exec(`ALTER PUBLICATION pub_` + e.name + ` ADD TABLE blobs`)
	e.extraVars = map[string]string{"RELAY_TABLES": "public.outbox,public.blobs", "RELAY_AMQP_ROUTING_KEY": "{aggregate_type}"}
	q := e.bindQueue("#")
	e.startRelay()

	want := map[string][]byte{}
	for _, size := range []int{1 << 20, 10 << 20} {
		raw := make([]byte, size*3/4)
		rand.Read(raw)
		js := []byte(fmt.Sprintf(`{"blob": "%s"}`, base64.StdEncoding.EncodeToString(raw)))
		var id string
		if err := e.db.QueryRow(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload)
			VALUES ('big', '1', 'json', $1::text::jsonb) RETURNING id::text`, string(js)).Scan(&id); err != nil {
			t.Fatal(err)
		}
		// jsonb stores its own text form: compare with what PostgreSQL returns.
		var stored string
		if err := e.db.QueryRow(t.Context(), `SELECT payload::text FROM outbox WHERE id = $1`, id).Scan(&stored); err != nil {
			t.Fatal(err)
		}
		want[id] = []byte(stored)
		bin := make([]byte, size)
		rand.Read(bin)
		bid := fmt.Sprintf("bytea-%d", size)
		e.exec(`INSERT INTO blobs (id, aggregate_type, aggregate_id, event_type, payload) VALUES ($1, 'big', '1', 'bytes', $2)`, bid, bin)
		want[bid] = bin
	}
	const uni = "zoë ✓ 日本語 🚀 ∑"
	e.exec(`INSERT INTO blobs (id, aggregate_type, aggregate_id, event_type, payload, headers)
		VALUES ('uni-' || $1, 'ünïcode', $1, 'évènement.' || $1, convert_to($1, 'UTF8'), jsonb_build_object('note', $1))`, uni)
	uniID := "uni-" + uni

	msgs := q.waitDistinct(len(want)+1, 2*time.Minute)
	got := map[string]message{}
	for _, m := range msgs {
		got[m.MessageId] = m
	}
	for id, body := range want {
		m, ok := got[id]
		if !ok {
			t.Errorf("%s did not arrive", id)
			continue
		}
		if !bytes.Equal(m.Body, body) {
			t.Errorf("%s: %d bytes arrived, %d sent, or different bytes", id, len(m.Body), len(body))
		}
	}
	m, ok := got[uniID]
	if !ok {
		t.Fatalf("the Unicode row %q did not arrive; got %d messages", uniID, len(msgs))
	}
	if string(m.Body) != uni || m.Type != "évènement."+uni || m.RoutingKey != "ünïcode" || m.Headers["aggregate_id"] != uni || m.Headers["note"] != uni {
		t.Errorf("Unicode row changed on the way: body %q type %q routing key %q aggregate_id %q note %q", m.Body, m.Type, m.RoutingKey, m.Headers["aggregate_id"], m.Headers["note"])
	}
}
