//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relay-dev/relay/integration/services"
)

// publication is the relay's default publication name; the bench creates
// it exactly as the relay would, so slots made before the relay first runs
// stream the same rows.
const publication = "outbox_relay"

// payloadSQL is the outbox payload of row g (an SQL bigint expression): an
// order of about 250 bytes of JSON. Its "ts" is the inserting statement's
// clock in microseconds since the epoch; jsonb sorts shorter keys first, so
// "ts" leads the text form and a consumer finds it without parsing the rest.
func payloadSQL(g string) string {
	g = "(" + g + ")::bigint"
	return `jsonb_build_object(
		'ts', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
		'order_id', ` + g + `,
		'customer', 'customer-' || (` + g + ` % 1000),
		'total_cents', (` + g + ` * 7919) % 100000,
		'currency', 'EUR',
		'items', jsonb_build_array(jsonb_build_object('sku', 'sku-' || (` + g + ` % 97), 'qty', 1 + ` + g + ` % 3, 'price_cents', (` + g + ` * 31) % 10000)))`
}

// headersSQL is a W3C trace context header, as real outbox rows often carry.
const headersSQL = `'{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}'::jsonb`

// rowsSQL selects outbox rows for g in generate_series(lo, hi); 1000
// aggregates spread the rows over partitions.
func rowsSQL(lo, hi int) string {
	return fmt.Sprintf(`INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
		SELECT 'order', (g %% 1000)::text, 'placed', %s, %s FROM generate_series(%d, %d) g`,
		payloadSQL("g"), headersSQL, lo, hi)
}

// liveInsertSQL inserts row $1 in its own transaction.
var liveInsertSQL = `INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
	VALUES ('order', ($1::bigint % 1000)::text, 'placed', ` + payloadSQL("$1::bigint") + `, ` + headersSQL + `)`

// database is one benchmark database with schema/outbox.sql and the
// relay's publication.
type database struct {
	name string
	url  string
	// streamURL is what the relay and the raw decoder connect with: url,
	// or the server's Unix socket with -unix-socket.
	streamURL string
	pool      *pgxpool.Pool
	pg        *services.Postgres
}

// unixSocket makes the relay and the raw decoder connect through the
// server's Unix socket instead of TCP on loopback (-unix-socket).
var unixSocket bool

func newDatabase(ctx context.Context, pg *services.Postgres, name, schemaPath string) (*database, error) {
	schema, err := os.ReadFile(schemaPath)
	if err != nil {
		return nil, err
	}
	if err := pg.CreateDatabase(ctx, name); err != nil {
		return nil, err
	}
	d := &database{name: name, url: pg.URL(name), pg: pg}
	d.streamURL = d.url
	if unixSocket {
		d.streamURL = fmt.Sprintf("host=%s port=%d user=postgres dbname=%s", filepath.Join(pg.Dir, "sock"), pg.Port, name)
	}
	cfg, err := pgxpool.ParseConfig(d.url)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 20
	if d.pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		return nil, err
	}
	if _, err := d.pool.Exec(ctx, string(schema)); err != nil {
		d.pool.Close()
		return nil, fmt.Errorf("apply schema: %w", err)
	}
	if _, err := d.pool.Exec(ctx, "CREATE PUBLICATION "+publication+" FOR TABLE public.outbox WITH (publish = 'insert')"); err != nil {
		d.pool.Close()
		return nil, err
	}
	return d, nil
}

// close drops the database with its slots, so it holds no WAL.
func (d *database) close(ctx context.Context) {
	_, _ = d.pool.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND NOT active")
	d.pool.Close()
	if c, err := pgx.Connect(ctx, d.pg.URL("postgres")); err == nil {
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{d.name}.Sanitize()+" WITH (FORCE)")
		c.Close(ctx)
	}
}

// createSlot creates a pgoutput slot, as the relay does on its first start.
func (d *database) createSlot(ctx context.Context, slot string) error {
	_, err := d.pool.Exec(ctx, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
	if err != nil {
		return fmt.Errorf("create slot %s: %w", slot, err)
	}
	return nil
}

func (d *database) dropSlot(ctx context.Context, slot string) {
	_, _ = d.pool.Exec(ctx, "SELECT pg_drop_replication_slot($1)", slot)
}

// slotConfirmed returns the slot's confirmed_flush_lsn.
func (d *database) slotConfirmed(ctx context.Context, slot string) (pglogrepl.LSN, error) {
	var lsn pglogrepl.LSN
	err := d.pool.QueryRow(ctx, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&lsn)
	return lsn, err
}

// waitConfirmed polls the slot's confirmed_flush_lsn every 10 ms until it
// reaches lsn and returns when it first saw it. It fails early when alive
// reports an error (the relay died).
func (d *database) waitConfirmed(ctx context.Context, slot string, lsn pglogrepl.LSN, alive func() error) (time.Time, error) {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		got, err := d.slotConfirmed(ctx, slot)
		now := time.Now()
		if err == nil && got >= lsn {
			return now, nil
		}
		if err := alive(); err != nil {
			return now, err
		}
		if now.After(deadline) {
			return now, fmt.Errorf("slot %s confirmed %s, not %s, before the deadline (last error: %v)", slot, got, lsn, err)
		}
		select {
		case <-ctx.Done():
			return now, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// walsenderCPU is the CPU the walsender streaming slot has used: its
// whole session, which is the backlog's decoding and sending.
func (d *database) walsenderCPU(ctx context.Context, slot string) (time.Duration, error) {
	var pid *int32
	err := d.pool.QueryRow(ctx, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&pid)
	if err != nil {
		return 0, err
	}
	if pid == nil {
		return 0, fmt.Errorf("slot %s has no walsender", slot)
	}
	return procCPU(int(*pid))
}

// serverDecode is PostgreSQL's decoding alone, without a network client:
// the backlog read from slot with pg_logical_slot_peek_binary_changes,
// pgoutput as the relay asks for it, or with its binary option (values in
// their binary send form, PostgreSQL 14+). It returns the time and the
// backend's CPU.
func (d *database) serverDecode(ctx context.Context, slot string, want int, binary bool) (time.Duration, time.Duration, error) {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer c.Release()
	var pid int
	if err := c.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		return 0, 0, err
	}
	cpu0, err := procCPU(pid)
	if err != nil {
		return 0, 0, err
	}
	start := time.Now()
	var inserts int
	err = c.QueryRow(ctx, `SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL,
		'proto_version', '1', 'publication_names', $2, 'binary', $3) WHERE substr(data, 1, 1) = 'I'`, slot, publication, strconv.FormatBool(binary)).Scan(&inserts)
	dur := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	if inserts != want {
		return 0, 0, fmt.Errorf("server decode: %d inserts, want %d", inserts, want)
	}
	cpu1, err := procCPU(pid)
	return dur, cpu1 - cpu0, err
}

// waitSlotActive returns once a walsender streams from slot.
func (d *database) waitSlotActive(ctx context.Context, slot string, p *relayProc) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var active bool
		err := d.pool.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		if err == nil && active {
			return nil
		}
		if p.exited() {
			return p.failure()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s not streaming after a minute", slot)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// insertBacklog commits n outbox rows in transactions of perTxn rows.
// Commits are asynchronous (synchronous_commit = off) to build the backlog
// quickly; what is decoded afterwards is the same.
func (d *database) insertBacklog(ctx context.Context, n, perTxn int) error {
	const sessions = 2
	errs := make(chan error, sessions)
	for s := range sessions {
		lo, hi := s*n/sessions+1, (s+1)*n/sessions
		go func() {
			errs <- d.insertRange(ctx, lo, hi, perTxn)
		}()
	}
	var err error
	for range sessions {
		err = errors.Join(err, <-errs)
	}
	return err
}

func (d *database) insertRange(ctx context.Context, lo, hi, perTxn int) error {
	c, err := d.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	if _, err := c.Exec(ctx, "SET synchronous_commit = off"); err != nil {
		return err
	}
	defer c.Exec(context.WithoutCancel(ctx), "RESET synchronous_commit")
	if perTxn == 1 {
		// One server-side loop committing every row: a round trip per row
		// would make the client, not PostgreSQL, the limit.
		_, err := c.Exec(ctx, fmt.Sprintf(`DO $$
			BEGIN
				FOR g IN %d..%d LOOP
					INSERT INTO outbox (aggregate_type, aggregate_id, event_type, payload, headers)
					VALUES ('order', (g %% 1000)::text, 'placed', %s, %s);
					COMMIT;
				END LOOP;
			END $$`, lo, hi, payloadSQL("g"), headersSQL))
		return err
	}
	for a := lo; a <= hi; a += perTxn {
		if _, err := c.Exec(ctx, rowsSQL(a, min(a+perTxn-1, hi))); err != nil {
			return err
		}
	}
	return nil
}

// settle does now the work a fresh backlog would otherwise start in the
// background while it is being read (autovacuum's analyze of the new
// rows, the checkpoint's writes), so it burdens no measurement; the first
// reader of a backlog would otherwise pay for it alone.
func (d *database) settle(ctx context.Context) error {
	for _, q := range []string{"VACUUM (ANALYZE) outbox", "CHECKPOINT"} {
		if _, err := d.pool.Exec(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}

// message is one outbox row as the relay would publish it.
type message struct {
	id, aggregateType, aggregateID, eventType string
	payload                                   []byte
	headerKey, headerValue                    string
	createdAt                                 time.Time
}

// loadMessages reads every outbox row, for publishing without the relay.
func (d *database) loadMessages(ctx context.Context) ([]message, error) {
	rows, err := d.pool.Query(ctx, `SELECT id::text, aggregate_type, aggregate_id, event_type, payload::text,
		headers->>'traceparent', created_at FROM outbox`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (message, error) {
		var m message
		var payload string
		err := r.Scan(&m.id, &m.aggregateType, &m.aggregateID, &m.eventType, &payload, &m.headerValue, &m.createdAt)
		m.payload, m.headerKey = []byte(payload), "traceparent"
		return m, err
	})
}

// rawDecode is the decode ceiling: a minimal pglogrepl client that streams
// slot, decodes every message with pglogrepl.Parse (tuples included), and
// acknowledges the last commit once a second and at the end. It returns
// after the commit that follows the want-th insert, with that commit's end
// LSN.
func rawDecode(ctx context.Context, db *database, slot string, want int) (time.Duration, pglogrepl.LSN, time.Duration, error) {
	dur, lsn, conn, err := rawDecodeStream(ctx, db.streamURL, slot, want)
	if conn == nil {
		return dur, lsn, 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err != nil {
		return dur, lsn, 0, err
	}
	pgCPU, err := db.walsenderCPU(ctx, slot)
	return dur, lsn, pgCPU, err
}

// rawDecodeStream is rawDecode's client; it returns the replication
// connection still open, so that its walsender can be looked at.
func rawDecodeStream(ctx context.Context, dbURL, slot string, want int) (time.Duration, pglogrepl.LSN, *pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(dbURL)
	if err != nil {
		return 0, 0, nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	start := time.Now()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, 0, nil, err
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		return 0, 0, conn, fmt.Errorf("start replication: %w", err)
	}
	ack := func(lsn pglogrepl.LSN) error {
		return pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn,
		})
	}
	var (
		inserts  int
		last     pglogrepl.LSN
		acked    = time.Now()
		deadline = time.Now().Add(time.Minute + time.Duration(want)*time.Millisecond)
		sink     int // keeps decoded values alive
	)
	for {
		if ctx.Err() != nil {
			return 0, 0, conn, ctx.Err()
		}
		if time.Now().After(deadline) {
			return 0, 0, conn, fmt.Errorf("raw decode: %d of %d rows before the deadline", inserts, want)
		}
		// A read deadline rather than a context per message, which would
		// cost more than decoding the message.
		if err := conn.Conn().SetReadDeadline(time.Now().Add(time.Second)); err != nil {
			return 0, 0, conn, err
		}
		msg, err := conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return 0, 0, conn, fmt.Errorf("receive: %w", err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			return 0, 0, conn, fmt.Errorf("unexpected %T", msg)
		}
		switch cd.Data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(cd.Data[1:])
			if err != nil {
				return 0, 0, conn, err
			}
			if ka.ReplyRequested {
				if err := ack(last); err != nil {
					return 0, 0, conn, err
				}
			}
		case pglogrepl.XLogDataByteID:
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				return 0, 0, conn, err
			}
			m, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				return 0, 0, conn, err
			}
			switch m := m.(type) {
			case *pglogrepl.InsertMessage:
				for _, c := range m.Tuple.Columns {
					sink += len(c.Data)
				}
				inserts++
			case *pglogrepl.CommitMessage:
				last = m.TransactionEndLSN
				if inserts >= want {
					if err := ack(last); err != nil {
						return 0, 0, conn, err
					}
					_ = sink
					return time.Since(start), last, conn, nil
				}
			}
		}
		if time.Since(acked) >= time.Second {
			if err := ack(last); err != nil {
				return 0, 0, conn, err
			}
			acked = time.Now()
		}
	}
}

// payloadInt finds an integer member of the payload's JSON text as
// jsonb prints it ("key": 123), without parsing the rest.
func payloadInt(body []byte, key string) (int64, bool) {
	s := string(body)
	i := strings.Index(s, `"`+key+`": `)
	if i < 0 {
		return 0, false
	}
	s = s[i+len(key)+4:]
	j := 0
	for j < len(s) && s[j] >= '0' && s[j] <= '9' {
		j++
	}
	n, err := strconv.ParseInt(s[:j], 10, 64)
	return n, err == nil
}

// receiveSlot streams slot like rawDecode, handing every inserted row's
// payload to a receiver as it arrives: the live scenario without a relay.
func receiveSlot(ctx context.Context, dbURL, slot string) (*receiver, error) {
	cfg, err := pgconn.ParseConfig(dbURL)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["replication"] = "database"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + publication + "'"},
	})
	if err != nil {
		conn.Close(ctx)
		return nil, fmt.Errorf("start replication: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &receiver{stop: cancel, done: make(chan error, 1)}
	go func() {
		defer conn.Close(context.Background())
		payload := -1
		var last pglogrepl.LSN
		acked := time.Now()
		for {
			if ctx.Err() != nil {
				r.done <- nil
				return
			}
			if err := conn.Conn().SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
				r.done <- err
				return
			}
			msg, err := conn.ReceiveMessage(context.Background())
			if pgconn.Timeout(err) {
				continue
			}
			if err != nil {
				r.done <- err
				return
			}
			cd, ok := msg.(*pgproto3.CopyData)
			if !ok || len(cd.Data) == 0 || cd.Data[0] != pglogrepl.XLogDataByteID {
				continue
			}
			now := time.Now()
			xld, err := pglogrepl.ParseXLogData(cd.Data[1:])
			if err != nil {
				r.done <- err
				return
			}
			m, err := pglogrepl.Parse(xld.WALData)
			if err != nil {
				r.done <- err
				return
			}
			switch m := m.(type) {
			case *pglogrepl.RelationMessage:
				for i, c := range m.Columns {
					if c.Name == "payload" {
						payload = i
					}
				}
			case *pglogrepl.InsertMessage:
				r.add(now, m.Tuple.Columns[payload].Data)
			case *pglogrepl.CommitMessage:
				last = m.TransactionEndLSN
			}
			if time.Since(acked) > time.Second {
				_ = pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{WALWritePosition: last, WALFlushPosition: last, WALApplyPosition: last})
				acked = time.Now()
			}
		}
	}()
	return r, nil
}
