//go:build linux

package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// A partitioned outbox (docs/outbox-tables.md, Partitioned outbox tables):
// one table for the relay, whichever partition holds a row and whatever
// happens to the partitions meanwhile.

// partitionMode is how the partitioned outbox is published.
type partitionMode struct {
	name string
	// sql makes the env's publication publish the new outbox; empty: the
	// relay creates the publication itself, which its role may as the
	// table's owner with CREATE on the database.
	sql string
}

var partitionModes = []partitionMode{
	{name: "relay's own publication"},
	{name: "publish_via_partition_root", sql: `ALTER PUBLICATION %[1]s ADD TABLE outbox; ALTER PUBLICATION %[1]s SET (publish = 'insert', publish_via_partition_root = true)`},
	{name: "rows under leaf partitions", sql: `ALTER PUBLICATION %[1]s ADD TABLE outbox`},
}

// partitionedOutbox is the env's outbox replaced by one partitioned by day
// of created_at. Its days are test days: created_at defaults to
// 2030-01-01 plus the day outbox_clock names, plus the time since the
// test began, so that the test moves rows from one partition to the next
// when it chooses, while the writers it uses insert as they always do.
// outbox_now is STABLE so that it reads the clock once per statement.
type partitionedOutbox struct {
	e *env
}

func (e *env) partitionOutbox(mode partitionMode) *partitionedOutbox {
	e.t.Helper()
	e.exec(`DROP TABLE outbox;
		CREATE TABLE outbox_clock (day int NOT NULL, started timestamptz NOT NULL DEFAULT now());
		INSERT INTO outbox_clock (day) VALUES (0);
		CREATE FUNCTION outbox_now() RETURNS timestamptz LANGUAGE sql STABLE
			AS $$ SELECT timestamptz '2030-01-01 00:00:00+00' + day * interval '1 day' + (now() - started) FROM outbox_clock $$;
		CREATE TABLE outbox (
			id             uuid        NOT NULL DEFAULT gen_random_uuid(),
			aggregate_type text        NOT NULL,
			aggregate_id   text        NOT NULL,
			event_type     text        NOT NULL,
			payload        jsonb       NOT NULL,
			headers        jsonb       NOT NULL DEFAULT '{}',
			created_at     timestamptz NOT NULL DEFAULT outbox_now(),
			PRIMARY KEY (id, created_at, aggregate_id)
		) PARTITION BY RANGE (created_at);
		GRANT SELECT ON outbox TO relay`)
	po := &partitionedOutbox{e: e}
	po.create(0)
	po.create(1)
	if mode.sql == "" {
		e.exec(fmt.Sprintf(`DROP PUBLICATION pub_%[1]s; ALTER TABLE outbox OWNER TO relay; GRANT CREATE ON DATABASE %[1]s TO relay`, e.name))
	} else {
		e.exec(fmt.Sprintf(mode.sql, "pub_"+e.name))
	}
	return po
}

// day is the SQL timestamp that test day d starts at.
func day(d int) string {
	return fmt.Sprintf("'2030-01-01 00:00:00+00'::timestamptz + interval '%d days'", d)
}

// create adds the partition of test day d, in one of three ways by d: a
// partition of its own, one sub-partitioned by aggregate (each aggregate's
// rows stay in one sub-partition), or a table created apart and attached.
func (po *partitionedOutbox) create(d int) {
	po.e.t.Helper()
	name := fmt.Sprintf("outbox_d%d", d)
	bounds := fmt.Sprintf("FROM (%s) TO (%s)", day(d), day(d+1))
	switch d % 3 {
	case 0:
		po.e.exec(fmt.Sprintf("CREATE TABLE %s PARTITION OF outbox FOR VALUES %s", name, bounds))
	case 1:
		po.e.exec(fmt.Sprintf(`CREATE TABLE %[1]s PARTITION OF outbox FOR VALUES %[2]s PARTITION BY HASH (aggregate_id);
			CREATE TABLE %[1]s_0 PARTITION OF %[1]s FOR VALUES WITH (MODULUS 3, REMAINDER 0);
			CREATE TABLE %[1]s_1 PARTITION OF %[1]s FOR VALUES WITH (MODULUS 3, REMAINDER 1);
			CREATE TABLE %[1]s_2 PARTITION OF %[1]s FOR VALUES WITH (MODULUS 3, REMAINDER 2)`, name, bounds))
	default:
		po.e.exec(fmt.Sprintf(`CREATE TABLE %[1]s (LIKE outbox INCLUDING DEFAULTS);
			ALTER TABLE outbox ATTACH PARTITION %[1]s FOR VALUES %[2]s`, name, bounds))
	}
}

// setDay makes rows inserted from now on go to test day d. The lock
// waits for the inserts under way, which may not know a partition attached
// while they ran (PostgreSQL attaches under a lock that lets them go on),
// and holds back new ones until the clock has moved.
func (po *partitionedOutbox) setDay(d int) {
	po.e.t.Helper()
	po.e.exec(fmt.Sprintf("BEGIN; LOCK TABLE outbox IN SHARE MODE; UPDATE outbox_clock SET day = %d; COMMIT", d))
}

// retire detaches or drops the partition of test day d, by d, and returns
// how many rows it held.
func (po *partitionedOutbox) retire(d int) int {
	po.e.t.Helper()
	name := fmt.Sprintf("outbox_d%d", d)
	var n int
	if err := po.e.db.QueryRow(po.e.t.Context(), "SELECT count(*) FROM "+name).Scan(&n); err != nil {
		po.e.t.Fatal(err)
	}
	if d%2 == 0 {
		po.e.exec(fmt.Sprintf("ALTER TABLE outbox DETACH PARTITION %s", name))
	} else {
		po.e.exec("DROP TABLE " + name)
	}
	return n
}

// checkTableLabels requires every published event of the relay to be
// counted for table public.outbox, and some to be.
func checkTableLabels(t *testing.T, p *relayProc) {
	t.Helper()
	code, body, err := p.get("/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	var n int
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "relay_events_published_total{") {
			continue
		}
		n++
		if !strings.Contains(line, `table="public.outbox"`) {
			t.Errorf("metric %s: want table public.outbox, the partitioned table", line)
		}
	}
	if n == 0 {
		t.Error("/metrics has no relay_events_published_total")
	}
}

// TestPartitionedOutboxWhilePartitionsComeAndGo: the outbox is partitioned
// by day, published each way. Rows already in it when the relay first
// starts, in a plain and a sub-partitioned day, are backfilled; then over
// 10,000 rows stream while each test day gets a new partition (of its own,
// sub-partitioned, or attached), the rows move on to it, and the partition
// of two days before is detached or dropped, its rows perhaps not yet
// read; the relay is SIGKILLed midway (with a replay due) and restarted;
// then, while it is frozen, two partitions attached after its session
// began receive rows and are dropped and detached before it reads them.
// Every row arrives, each aggregate's in commit order, all routed and
// counted as public.outbox's; relay check is satisfied before and after.
func TestPartitionedOutboxWhilePartitionsComeAndGo(t *testing.T) {
	for _, mode := range partitionModes {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t)
			e.extraVars = map[string]string{"RELAY_AMQP_ROUTING_KEY": "{table}.{aggregate_type}"}
			po := e.partitionOutbox(mode)

			// One numbering for every row, so that checkOrder judges them all.
			numbered := newEventRows(13)
			var all []string
			commit := func(n int) {
				t.Helper()
				all = append(all, numbered.commitAll(t, e.db, n, 20)...)
			}
			commit(1500)
			po.setDay(1)
			commit(1500)

			q := e.bindQueue("#")
			e.check(0)
			p := e.startRelay()
			if mode.sql == "" {
				var viaRoot bool
				if err := e.db.QueryRow(t.Context(), "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", "pub_"+e.name).Scan(&viaRoot); err != nil || !viaRoot {
					t.Fatalf("the relay's publication has publish_via_partition_root %v (%v), want true", viaRoot, err)
				}
			}
			w := e.startWriterFunc(func(ctx context.Context) ([]string, error) { return numbered.commit(ctx, e.db, 10) })
			k := &replayKiller{e: e, delivered: q.highestRelayLSN}
			retired := 0
			for d := 2; d <= 8; d++ {
				w.waitRows(1500)
				po.create(d)
				po.setDay(d)
				retired += po.retire(d - 2)
				if d == 5 {
					p = k.kill(p)
				}
			}
			// Frozen, the relay reads nothing while the rows of days 9
			// and 10 commit and their partitions, attached after its
			// session began, are dropped and detached: it meets them only
			// in the stream.
			po.create(9)
			po.create(10)
			po.create(11)
			p.freeze()
			po.setDay(9)
			w.waitRows(500)
			po.setDay(10)
			w.waitRows(500)
			po.setDay(11)
			unread := po.retire(9) + po.retire(10)
			w.waitRows(200)
			p.thaw()
			w.waitRows(500)
			all = append(all, w.finish()...)
			if unread == 0 {
				t.Fatal("the partitions dropped and detached while the relay was frozen held no rows")
			}
			if retired == 0 {
				t.Fatal("the retired partitions held no rows: rows did not move from day to day")
			}

			msgs := q.waitDistinct(len(all), 3*time.Minute)
			checkAll(t, all, msgs)
			checkOrder(t, msgs)
			for _, m := range msgs {
				if m.RoutingKey != "public.outbox.order" {
					t.Fatalf("message %s routed with %q, want public.outbox.order: its table is the partitioned one", m.MessageId, m.RoutingKey)
				}
			}
			checkTableLabels(t, p)
			e.check(0)
			t.Logf("%d rows (3,000 backfilled), %d deliveries; %d rows in retired partitions, %d of them unread when retired; %d kills, %d with a replay due", len(all), len(msgs), retired+unread, unread, k.kills, k.replays)
		})
	}
}

// leftRows describes up to 10 rows the outbox still holds: id, partition,
// created_at and the transaction that inserted them, for a cleanup test
// that finds rows left.
func (e *env) leftRows() []string {
	return queryStrings(e.t, e.db, `SELECT format('%s in %s at %s (xmin %s)', id, tableoid::regclass, created_at, xmin) FROM outbox ORDER BY created_at LIMIT 10`)
}

// TestCleanupOnAPartitionedOutbox: RELAY_CLEANUP=after-publish deletes the
// confirmed rows of a partitioned outbox from every partition, plain and
// sub-partitioned, through the partitioned table; a partition detached in
// the meantime keeps its rows (they are no longer the outbox's) and
// disturbs nothing.
func TestCleanupOnAPartitionedOutbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.extraVars = map[string]string{"RELAY_CLEANUP": "after-publish"}
	po := e.partitionOutbox(partitionModes[2])
	e.exec(`GRANT DELETE ON outbox TO relay`)
	q := e.bindQueue("#")
	p := e.startRelay()

	w := e.startWriter(10, 7)
	w.waitRows(1000)
	po.setDay(1)
	w.waitRows(1000)
	po.create(2)
	po.setDay(2)
	w.waitRows(1000)
	ids := w.finish()
	msgs := q.waitDistinct(len(ids), 2*time.Minute)
	checkAll(t, ids, msgs)
	eventually(t, time.Minute, func() error {
		if n := e.outboxCount(); n > 0 {
			return fmt.Errorf("%d rows left in the partitioned outbox after every row was confirmed: %s", n, strings.Join(e.leftRows(), "; "))
		}
		return nil
	})

	po.create(3)
	po.create(4)
	po.setDay(3)
	more := e.insertEvents(200, 10, 7)
	po.setDay(4)
	e.exec("ALTER TABLE outbox DETACH PARTITION outbox_d3")
	after := e.insertEvents(100, 10, 7)
	msgs = q.waitDistinct(len(ids)+len(more)+len(after), time.Minute)
	checkAll(t, append(append(ids, more...), after...), msgs)
	eventually(t, time.Minute, func() error {
		if n := e.outboxCount(); n > 0 {
			return fmt.Errorf("%d rows left in the partitioned outbox after every row was confirmed: %s", n, strings.Join(e.leftRows(), "; "))
		}
		return nil
	})
	if p.exited() {
		t.Fatalf("the relay exited: %v; log:\n%s", p.err, p.log.String())
	}
	var kept int
	if err := e.db.QueryRow(t.Context(), "SELECT count(*) FROM outbox_d3").Scan(&kept); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d rows deleted from the partitions; the detached partition kept %d of its %d", len(ids), kept, len(more)+len(after))
}

// retentionPage documents partitioned outbox tables and holds the
// retention block.
const retentionPage = "../docs/outbox-tables.md"

// retentionBlock is the retention block of retentionPage for slot, waiting
// at most wait seconds for the relay.
func retentionBlock(t *testing.T, slot string, wait int) string {
	t.Helper()
	page, err := os.ReadFile(retentionPage)
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile(`(?s)-- Retention of public\.outbox.*?END \$\$;`).FindString(string(page))
	if block == "" || !strings.Contains(block, "FOR i IN 1..60 LOOP") {
		t.Fatalf("%s has no retention block waiting 60 s for the slot outbox_relay", retentionPage)
	}
	block = strings.ReplaceAll(block, "'outbox_relay'", "'"+slot+"'")
	return strings.Replace(block, "1..60", fmt.Sprint(1, "..", wait), 1)
}

// TestRetentionBlockDropsOnlyDeliveredPartitions runs the retention block
// of docs/outbox-tables.md on an outbox partitioned by day (real days: it
// drops partitions whose range ended over 7 days ago). While the relay is
// frozen with a row committed but unconfirmed, the block drops nothing and
// says why; once the relay confirmed it, it drops the partitions older
// than 7 days and keeps the rest, and every row was delivered.
func TestRetentionBlockDropsOnlyDeliveredPartitions(t *testing.T) {
	e := newEnv(t)
	today := time.Now().UTC().Truncate(24 * time.Hour)
	ts := func(days int, offset time.Duration) string {
		return "'" + today.AddDate(0, 0, days).Add(offset).Format(time.RFC3339) + "'"
	}
	e.exec(`ALTER TABLE outbox RENAME TO outbox_plain;
		CREATE TABLE outbox (LIKE outbox_plain INCLUDING DEFAULTS, PRIMARY KEY (id, created_at)) PARTITION BY RANGE (created_at);
		GRANT SELECT ON outbox TO relay;
		ALTER PUBLICATION pub_` + e.name + ` SET TABLE outbox;
		ALTER PUBLICATION pub_` + e.name + ` SET (publish = 'insert', publish_via_partition_root = true)`)
	for d := -10; d <= 1; d++ {
		e.exec(fmt.Sprintf("CREATE TABLE outbox_%d PARTITION OF outbox FOR VALUES FROM (%s) TO (%s)", d+10, ts(d, 0), ts(d+1, 0)))
	}
	partitions := func() []string {
		t.Helper()
		return queryStrings(t, e.db, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'outbox'::regclass ORDER BY c.relname")
	}
	q := e.bindQueue("#")
	p := e.startRelay()
	var ids []string
	insert := func(days int, offset time.Duration) {
		t.Helper()
		var id string
		if err := e.db.QueryRow(t.Context(), `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, created_at)
			VALUES ('order', '1', 'placed', '{}', `+ts(days, offset)+`) RETURNING id::text`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	for d := -10; d <= 0; d++ {
		insert(d, time.Hour)
	}

	p.freeze()
	insert(-9, 2*time.Hour)
	before := partitions()
	_, err := e.db.Exec(t.Context(), retentionBlock(t, e.slot, 2))
	if err == nil || !strings.Contains(err.Error(), "has not confirmed") {
		t.Fatalf("the retention block ran with a row unconfirmed: %v", err)
	}
	if after := partitions(); !slices.Equal(after, before) {
		t.Fatalf("partitions %v after the block refused, want %v", after, before)
	}
	p.thaw()

	if _, err := e.db.Exec(t.Context(), retentionBlock(t, e.slot, 30)); err != nil {
		t.Fatalf("retention block: %v", err)
	}
	// Days -10, -9 and -8 ended over 7 days ago; day -7 ends 6 days ago.
	if got, want := partitions(), []string{"outbox_10", "outbox_11", "outbox_3", "outbox_4", "outbox_5", "outbox_6", "outbox_7", "outbox_8", "outbox_9"}; !slices.Equal(got, want) {
		t.Fatalf("partitions %v after the block, want %v", got, want)
	}
	checkAll(t, ids, q.waitDistinct(len(ids), time.Minute))
}
