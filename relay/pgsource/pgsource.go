// Package pgsource reads committed outbox rows from PostgreSQL through
// logical replication (pgoutput, protocol version 1) and confirms to the
// replication slot only positions whose rows the broker has confirmed.
package pgsource

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/relay-dev/relay/relay"
)

// Columns names the outbox table's columns. Headers, CreatedAt and
// Destination are optional: when the table has no such column, events carry
// no headers, the commit time as their timestamp, and go where the routing
// template says (relay.Event.Route).
type Columns struct {
	ID, AggregateType, AggregateID, EventType, Payload, Headers, CreatedAt, Destination string
}

// StandardColumns is the layout of schema/outbox.sql.
var StandardColumns = Columns{
	ID: "id", AggregateType: "aggregate_type", AggregateID: "aggregate_id", EventType: "event_type",
	Payload: "payload", Headers: "headers", CreatedAt: "created_at", Destination: "destination",
}

// DebeziumColumns is the layout Debezium's outbox event router expects, so
// its users can switch without a migration.
var DebeziumColumns = Columns{
	ID: "id", AggregateType: "aggregatetype", AggregateID: "aggregateid", EventType: "type",
	Payload: "payload",
}

// Config configures a Source.
type Config struct {
	// ConnString is a PostgreSQL URL or keyword/value string; the
	// replication connection is derived from it.
	ConnString string
	// Tables are the outbox tables, in one publication and one slot.
	Tables []Table
	// Columns maps the outbox fields onto the tables' columns, except for
	// the tables TableColumns names, which have a mapping of their own.
	Columns      Columns
	TableColumns map[Table]Columns
	// Slot and Publication are created when missing.
	Slot, Publication string
	// StatusInterval is the longest time between two standby status
	// updates. Default 10s; it must stay well below the server's
	// wal_sender_timeout (60s by default).
	StatusInterval time.Duration
	// ShutdownTimeout bounds how long shutdown waits for in-flight events to
	// be confirmed before the final status update. Default 10s.
	ShutdownTimeout time.Duration
	// Snapshot is SnapshotInitial to publish the rows already in the
	// tables when the slot is created (see backfill.go), or SnapshotNever.
	Snapshot string
	// MessagePrefix is the prefix of transactional logical decoding
	// messages (pg_logical_emit_message(true, prefix, envelope)) that are
	// published like outbox rows; empty: messages are not requested.
	MessagePrefix string
	// TextOnly keeps pgoutput in text mode where its binary format would
	// be possible (binary.go), as an escape hatch: events are the same in
	// either mode. Default false.
	TextOnly bool
	// SlotRecreate lets the source recreate a slot that disappeared or was
	// invalidated while it used it, instead of stopping: the rows
	// committed in between are then never published, which it logs.
	SlotRecreate bool
	// Metrics records positions and transactions; nil records nothing.
	Metrics Observer
	Logger  *slog.Logger
}

// Snapshot settings.
const (
	SnapshotInitial = "initial"
	SnapshotNever   = "never"
)

// Source is a relay.Source over PostgreSQL logical replication.
type Source struct {
	cfg      Config
	log      *slog.Logger
	slotSeen bool
	// streaming is read by readiness checks from other goroutines.
	streaming chan bool
	// confirmed is the last position reported to PostgreSQL (Confirmed).
	confirmed atomic.Uint64
	// textAfter is why a binary session gave up on the binary format,
	// which later sessions then do not ask for; textLogged is the last
	// reason for text mode logged. Only Stream uses them, one session
	// at a time.
	textAfter, textLogged string
}

// Observer is what the source reports, for metrics.
type Observer interface {
	// Positions reports the position confirmed to the slot and the
	// server's WAL end.
	Positions(confirmed, walEnd uint64)
	// Transaction counts a transaction with outbox rows.
	Transaction()
}

type nopObserver struct{}

func (nopObserver) Positions(uint64, uint64) {}
func (nopObserver) Transaction()             {}

// New returns a Source; it connects only when streaming.
func New(cfg Config) (*Source, error) {
	if cfg.Metrics == nil {
		cfg.Metrics = nopObserver{}
	}
	if _, err := pgconn.ParseConfig(cfg.ConnString); err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Source{cfg: cfg, log: log.With("component", "pgsource"), streaming: make(chan bool, 1)}
	s.streaming <- false
	return s, nil
}

// Streaming reports whether a replication session is currently streaming.
func (s *Source) Streaming() bool {
	v := <-s.streaming
	s.streaming <- v
	return v
}

func (s *Source) setStreaming(v bool) {
	<-s.streaming
	s.streaming <- v
}

// Stream implements relay.Source.
func (s *Source) Stream(ctx context.Context, out chan<- relay.Item, pos *relay.Progress) error {
	closeOut := sync.OnceFunc(func() { close(out) })
	defer closeOut()

	repl, err := s.connect(ctx)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		repl.Close(cctx)
	}()

	slot, err := s.prepare(ctx, repl)
	if err != nil {
		return err
	}
	var backfilled uint64
	if len(slot.backfill) > 0 {
		if backfilled, err = s.backfill(ctx, slot.backfill, slot.base, slot.snapshot, slot.confirmed, out, pos); err != nil {
			return err
		}
	}
	args := []string{"proto_version '1'", "publication_names '" + s.cfg.Publication + "'"}
	if s.cfg.MessagePrefix != "" {
		args = append(args, "messages 'true'")
	}
	textOnly := slot.textOnly
	if textOnly == "" {
		textOnly = binarySettings(repl.ParameterStatus)
	}
	binary := s.binary(textOnly)
	if binary {
		args = append(args, "binary 'true'")
	}
	err = pglogrepl.StartReplication(ctx, repl, s.cfg.Slot, pglogrepl.LSN(slot.confirmed), pglogrepl.StartReplicationOptions{PluginArgs: args})
	if err != nil {
		if isCode(err, codeObjectInUse) {
			return fmt.Errorf("replication slot %s is in use by another process: %w", s.cfg.Slot, err)
		}
		return classify(fmt.Errorf("start replication on slot %s: %w", s.cfg.Slot, err))
	}
	format := "text"
	if binary {
		format = "binary"
	}
	s.log.Info("streaming", "slot", s.cfg.Slot, "publication", s.cfg.Publication, "from_lsn", slot.confirmed.String(), "pgoutput_format", format)
	start := slot.confirmed
	if slot.recorded > slot.confirmed {
		// The slot lost its position (a PostgreSQL crash): what lies
		// before the record was confirmed by the brokers already.
		s.log.Info("skipping what the durable position record says the brokers confirmed", "slot_lsn", slot.confirmed.String(), "recorded_lsn", slot.recorded.String())
		start = slot.recorded
	}
	s.setStreaming(true)
	defer s.setStreaming(false)

	st := &stream{
		src:      s,
		conn:     repl,
		out:      out,
		pos:      pos,
		rows:     backfilled,
		rels:     make(map[uint32]*relation),
		parts:    slot.parts,
		unplaced: make(map[uint32]*errUnplaced),
		// Reported at the first tick: the record's position is safe.
		start:    start,
		sent:     slot.confirmed,
		sentAt:   time.Now(),
		closeOut: closeOut,
		binary:   binary,
	}
	err = st.run(ctx)
	if ctx.Err() != nil {
		return st.shutdown(ctx)
	}
	// A failed event is never acknowledged, so the safe position stays
	// below it: confirming it now spares a restart from republishing what
	// the broker already has. The connection may be the thing that broke.
	if serr := st.status(time.Now(), true); serr == nil {
		s.log.Info("confirmed before stopping on an error", "confirmed_lsn", st.sent.String())
	}
	return err
}

// binary decides whether a session asks for pgoutput's binary format,
// given why the tables or the server rule it out (textOnly, or ""), and
// logs why not whenever the reason changes.
func (s *Source) binary(textOnly string) bool {
	why := textOnly
	switch {
	case s.cfg.TextOnly:
		why = "configured (RELAY_PGOUTPUT_BINARY=false)"
	case s.textAfter != "":
		why = s.textAfter
	}
	if why != "" && why != s.textLogged {
		s.log.Info("pgoutput in text mode", "reason", why)
	}
	s.textLogged = why
	return why == ""
}

// connect opens the replication connection. The session settings fix the
// text formats the decoder reads: pgoutput renders values with the
// walsender's own DateStyle, TimeZone and bytea_output.
func (s *Source) connect(ctx context.Context) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(s.cfg.ConnString)
	if err != nil {
		return nil, relay.Permanent(fmt.Errorf("parse database url: %w", err))
	}
	cfg.RuntimeParams["replication"] = "database"
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "relay"
	}
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	dial := cfg.DialFunc
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if tc, ok := c.(*net.TCPConn); ok && err == nil {
			return newBatchConn(tc), nil
		}
		return c, err
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect for replication to %s: %w", relay.RedactURL(s.cfg.ConnString), err)
	}
	return conn, nil
}

// stream is one replication session; only its goroutine touches conn.
type stream struct {
	src  *Source
	conn *pgconn.PgConn
	out  chan<- relay.Item
	pos  *relay.Progress
	rows uint64    // rows sent
	mark relay.LSN // the last mark sent
	// pending is a mark not sent yet: it goes with the next row, or
	// alone at the next tick, so that a one-row transaction is one item.
	pending  relay.LSN
	rels     map[uint32]*relation
	closeOut func()
	// parts places the relations of Relation messages on outbox tables;
	// unplaced are those it could not place, whose rows stop the stream.
	parts    *partitions
	unplaced map[uint32]*errUnplaced

	start  relay.LSN // the slot's confirmed position; never report less
	sent   relay.LSN // last position reported
	sentAt time.Time
	walEnd relay.LSN // the server's WAL end, as last reported by it

	// binary: the session asked for pgoutput's binary format.
	binary bool

	inTxn      bool
	commitLSN  relay.LSN
	commitTime time.Time
	index      int
}

// tick is how often the loop looks up from reading to report status and
// notice shutdown or a failed sink. It bounds how stale the slot's
// confirmed position is: what the broker confirmed but the slot was not
// told yet is what a crash publishes again, so a moved position is
// reported at the next tick (a status update is a few dozen bytes, and
// PostgreSQL writes the slot to disk only when its restart point moves).
const tick = 20 * time.Millisecond

func (st *stream) run(ctx context.Context) error {
	netConn := st.conn.Conn()
	var nextTick time.Time
	for {
		if now := time.Now(); !now.Before(nextTick) {
			if err := st.flush(ctx); err != nil {
				return err
			}
			if err := st.periodic(ctx, now); err != nil {
				return err
			}
			nextTick = now.Add(tick)
			// A read deadline rather than a context per receive: pgconn
			// keeps the connection usable after a read timeout, and
			// watching a context costs a goroutine handoff per message.
			if err := netConn.SetReadDeadline(nextTick); err != nil {
				return fmt.Errorf("set read deadline: %w", err)
			}
		}
		msg, err := st.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := st.copyData(ctx, msg.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("server ended replication (CopyDone)")
		default:
			return fmt.Errorf("unexpected message %T during replication", msg)
		}
	}
}

// periodic reports progress and notices shutdown, or a session the core
// stopped (which ends ctx).
func (st *stream) periodic(ctx context.Context, now time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return st.status(now, false)
}

// status reports the published position: when it moved (at most once
// a tick), when forced (the server asked, shutdown) and at least every
// StatusInterval so the server does not time the session out.
func (st *stream) status(now time.Time, force bool) error {
	safe := max(st.pos.LSN(), st.start)
	since := now.Sub(st.sentAt)
	due := since >= st.src.cfg.StatusInterval
	if !force && !(safe > st.sent && since >= tick) && !due {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), st.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: pglogrepl.LSN(safe),
		WALFlushPosition: pglogrepl.LSN(safe),
		WALApplyPosition: pglogrepl.LSN(safe),
		ClientTime:       now,
		// The walsender answers with a keepalive carrying its WAL end,
		// which lets an idle outbox confirm WAL written by other tables
		// every interval instead of every wal_sender_timeout/2.
		ReplyRequested: due && !force,
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	st.sent, st.sentAt = safe, now
	st.src.confirmed.Store(uint64(safe))
	st.src.cfg.Metrics.Positions(uint64(safe), uint64(st.walEnd))
	return nil
}

func (st *stream) copyData(ctx context.Context, data []byte) error {
	if len(data) == 0 {
		return errors.New("empty CopyData message")
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		// Every transaction committed before the keepalive's WAL end has
		// been sent (or skipped as irrelevant), so once everything received
		// is confirmed, that end is safe: an outbox without traffic does not
		// hold WAL back. Not inside a transaction, whose rest is still to come.
		st.walEnd = max(st.walEnd, relay.LSN(ka.ServerWALEnd))
		if !st.inTxn {
			st.markAt(relay.LSN(ka.ServerWALEnd))
		}
		if ka.ReplyRequested {
			return st.status(time.Now(), true)
		}
		return nil
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse xlogdata: %w", err)
		}
		st.walEnd = max(st.walEnd, relay.LSN(xld.ServerWALEnd))
		return st.logical(ctx, xld.WALStart, xld.WALData)
	default:
		return fmt.Errorf("unknown replication message %q", data[0])
	}
}

// logical handles one pgoutput message, which data holds in the receive
// buffer that the next read reuses: what an event keeps is copied. Every
// type protocol version 1 can send is handled or refused explicitly:
// skipping one silently could advance the slot past rows.
func (st *stream) logical(ctx context.Context, walStart pglogrepl.LSN, data []byte) error {
	if len(data) == 0 {
		return errors.New("empty pgoutput message")
	}
	switch data[0] {
	case byte(pglogrepl.MessageTypeBegin), byte(pglogrepl.MessageTypeCommit):
		// A row's two companions, parsed in place: through pglogrepl.Parse
		// they cost more allocations than the row itself.
		return st.boundary(ctx, data, walStart)
	case byte(pglogrepl.MessageTypeInsert):
		if !st.inTxn {
			return errors.New("insert outside a transaction")
		}
		ev, err := decodeInsert(bytes.Clone(data), st.rels)
		if errors.Is(err, errBinary) {
			st.src.textAfter = err.Error()
			return fmt.Errorf("decode insert at %s: %w; the next session streams in text mode", relay.LSN(walStart), err)
		}
		if err != nil && (ev == nil || !errors.Is(err, errBadRow)) {
			if u := st.unplacedRow(data); ev == nil && u != nil {
				return relay.Permanent(fmt.Errorf("insert at %s: %w", relay.LSN(walStart), u))
			}
			return fmt.Errorf("decode insert at %s: %w", relay.LSN(walStart), err)
		}
		ev.CommitLSN, ev.CommitTime, ev.Index = st.commitLSN, st.commitTime, st.index
		if err != nil {
			// The relay dead-letters it or stops before it.
			ev.Invalid = relay.BadRow(ev, err)
		}
		if ev.CreatedAt.IsZero() {
			ev.CreatedAt = st.commitTime
		}
		st.index++
		return st.emit(ctx, ev)
	}
	msg, err := pglogrepl.Parse(bytes.Clone(data))
	if err != nil {
		return fmt.Errorf("parse pgoutput message %q at %s: %w", data[0], relay.LSN(walStart), err)
	}
	switch m := msg.(type) {
	case *pglogrepl.RelationMessage:
		cols := make([]column, len(m.Columns))
		for i, c := range m.Columns {
			cols[i] = column{name: c.Name, typ: c.DataType}
		}
		// A leaf partition's rows are its outbox table's (partition.go).
		named := Table{Schema: m.Namespace, Name: m.RelationName}
		table, ok, err := st.parts.place(ctx, m.RelationID, named, st.src.cfg.Publication)
		if err != nil {
			return err
		}
		if !ok {
			delete(st.rels, m.RelationID)
			st.unplaced[m.RelationID] = &errUnplaced{rel: named, oid: m.RelationID, publication: st.src.cfg.Publication, partitioned: st.parts.partitioned}
			return nil
		}
		rel, err := newRelation(table.Schema, table.Name, cols, st.src.cfg.columnsOf(table))
		if err != nil {
			return relay.Permanent(err)
		}
		if st.binary {
			// The catalog allowed binary mode when the session started,
			// but the stream describes the table as it was when its rows
			// were written, or as altered since.
			for i, typ := range rel.types {
				if !binaryTypeOK(typ) {
					st.src.textAfter = fmt.Sprintf("column %s of %s has type %d, which the relay reads only as text", rel.names[i], rel.table, typ)
					return fmt.Errorf("relation message at %s: %s; the next session streams in text mode", relay.LSN(walStart), st.src.textAfter)
				}
			}
			rel.binary = true
		}
		st.rels[m.RelationID] = rel
		delete(st.unplaced, m.RelationID)
	case *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage, *pglogrepl.TruncateMessage:
		// The relay publishes inserts only; deleting or updating outbox rows
		// (the insert-and-delete pattern, cleanup) is not an event. A
		// publication created by the relay does not even send these.
	case *pglogrepl.TypeMessage, *pglogrepl.OriginMessage:
		// Type metadata for user-defined types and replication origins:
		// such types keep a session in text mode, whose values are read
		// as they are, and origins do not matter.
	case *pglogrepl.LogicalDecodingMessage:
		return st.message(ctx, m)
	default:
		return fmt.Errorf("unhandled pgoutput message %T at %s", msg, relay.LSN(walStart))
	}
	return nil
}

// unplacedRow returns why the relation of an Insert message (data) could
// not be placed on an outbox table, or nil.
func (st *stream) unplacedRow(data []byte) *errUnplaced {
	if len(data) < 5 {
		return nil
	}
	return st.unplaced[binary.BigEndian.Uint32(data[1:])]
}

// boundary handles a Begin or a Commit message.
func (st *stream) boundary(ctx context.Context, data []byte, walStart pglogrepl.LSN) error {
	be := binary.BigEndian
	if data[0] == byte(pglogrepl.MessageTypeBegin) {
		// Byte1('B') Int64(final LSN) Int64(commit time) Int32(xid)
		if len(data) < 21 {
			return fmt.Errorf("begin message of %d bytes at %s", len(data), relay.LSN(walStart))
		}
		st.inTxn = true
		st.commitLSN = relay.LSN(be.Uint64(data[1:]))
		st.commitTime = pgTime(int64(be.Uint64(data[9:])))
		st.index = 0
		return nil
	}
	// Byte1('C') Int8(flags) Int64(commit LSN) Int64(end LSN) Int64(commit time)
	if len(data) < 26 {
		return fmt.Errorf("commit message of %d bytes at %s", len(data), relay.LSN(walStart))
	}
	if !st.inTxn {
		return errors.New("commit outside a transaction")
	}
	st.inTxn = false
	if st.index > 0 {
		st.src.cfg.Metrics.Transaction()
	}
	// A restart resumes after the confirmed position and skips any
	// transaction whose commit record starts before it, so the end of
	// this transaction becomes safe only once all its rows are confirmed.
	st.markAt(relay.LSN(be.Uint64(data[10:])))
	return nil
}

// y2k is 2000-01-01, PostgreSQL's epoch, in Unix seconds.
const y2k = 946684800

// pgTime converts PostgreSQL's microseconds since 2000-01-01 UTC.
func pgTime(us int64) time.Time {
	return time.Unix(y2k+us/1e6, us%1e6*1e3)
}

// message handles a logical decoding message: one with the outbox prefix
// is an event; others (the relay's heartbeats, other applications') are
// not the relay's to publish.
func (st *stream) message(ctx context.Context, m *pglogrepl.LogicalDecodingMessage) error {
	prefix := st.src.cfg.MessagePrefix
	if prefix == "" {
		return fmt.Errorf("unexpected logical decoding message with prefix %q at %s: messages were not requested", m.Prefix, relay.LSN(m.LSN))
	}
	if m.Prefix != prefix {
		return nil
	}
	if !m.Transactional || !st.inTxn {
		// It has no transaction to be ordered and confirmed with: the
		// stream stops before it, or it is dead-lettered, like a bad row.
		ev := &relay.Event{Table: MessageTable, CommitLSN: relay.LSN(m.LSN), CommitTime: time.Now()}
		ev.ID = fmt.Sprintf("%s/nontransactional", relay.LSN(m.LSN))
		ev.Payload = bytes.Clone(m.Content) // empty stays empty, not NULL
		ev.Invalid = relay.BadRow(ev, nonTransactional(m.Prefix, relay.LSN(m.LSN)))
		if err := st.emit(ctx, ev); err != nil {
			return err
		}
		if !st.inTxn {
			st.markAt(relay.LSN(m.LSN))
		}
		return nil
	}
	ev, err := messageEvent(m.Content, st.commitLSN, st.index)
	ev.CommitLSN, ev.CommitTime, ev.Index, ev.CreatedAt = st.commitLSN, st.commitTime, st.index, st.commitTime
	if err != nil {
		ev.Invalid = relay.BadRow(ev, err)
	}
	st.index++
	return st.emit(ctx, ev)
}

// emit hands ev to the core.
func (st *stream) emit(ctx context.Context, ev *relay.Event) error {
	if ev.CommitLSN < st.start {
		// Its transaction's commit record starts before a position
		// already confirmed: PostgreSQL replays it only because the slot
		// lost that position in a crash (position.go).
		return nil
	}
	if err := st.send(ctx, relay.Item{Mark: st.pending, Event: ev}); err != nil {
		return err
	}
	st.pending = 0
	return nil
}

// markAt records that lsn becomes safe once the rows sent so far are
// published; the mark goes to the core with the next row or tick.
func (st *stream) markAt(lsn relay.LSN) { st.pending = max(st.pending, lsn) }

// flush sends the pending mark on its own.
func (st *stream) flush(ctx context.Context) error {
	if st.pending == 0 {
		return nil
	}
	if err := st.send(ctx, relay.Item{Mark: st.pending}); err != nil {
		return err
	}
	st.pending = 0
	return nil
}

// send hands a row or a mark to the core. While the core's window is full
// it waits, still reporting progress every tick so that the server does
// not time the session out.
func (st *stream) send(ctx context.Context, it relay.Item) error {
	err := send(ctx, st.out, it, func() error { return st.periodic(ctx, time.Now()) })
	if err != nil {
		return err
	}
	if it.Event != nil {
		st.rows++
	}
	if it.Mark != 0 {
		st.mark = it.Mark
	}
	return nil
}

// send hands it on out, calling every (when not nil) each tick it waits.
func send(ctx context.Context, out chan<- relay.Item, it relay.Item, every func() error) error {
	select {
	case out <- it:
		return nil
	default:
	}
	timer := time.NewTimer(tick)
	defer timer.Stop()
	for {
		select {
		case out <- it:
			return nil
		case <-timer.C:
			if every != nil {
				if err := every(); err != nil {
					return err
				}
			}
			timer.Reset(tick)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// shutdown stops handing on events, waits a bounded time for what is in
// flight to be confirmed while still reporting progress, and sends the
// final status.
func (st *stream) shutdown(ctx context.Context) error {
	deadline := time.Now().Add(st.src.cfg.ShutdownTimeout)
	// The last transaction's end still goes, within the shutdown time.
	fctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	_ = st.flush(fctx)
	cancel()
	st.closeOut()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
wait:
	for (st.pos.Rows() < st.rows || max(st.pos.LSN(), st.start) < st.mark) && time.Now().Before(deadline) {
		select {
		case <-st.pos.Changed():
		case <-st.pos.Stopped():
			break wait
		case <-ticker.C:
		}
		if err := st.status(time.Now(), false); err != nil {
			return err
		}
	}
	if n := st.rows - st.pos.Rows(); n > 0 {
		st.src.log.Warn("stopping with unconfirmed events; they will be published again on restart", "in_flight", n)
	}
	if err := st.status(time.Now(), true); err != nil {
		return err
	}
	st.src.log.Info("stopped", "confirmed_lsn", st.sent.String())
	return ctx.Err()
}

// columnsOf is the column mapping of table t.
func (c *Config) columnsOf(t Table) Columns {
	if m, ok := c.TableColumns[t]; ok {
		return m
	}
	return c.Columns
}
