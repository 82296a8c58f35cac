package pgsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
)

// Replay on demand (`relay replay`): rows still in the outbox tables, read
// on a normal connection, never the slot, so it runs beside the live relay
// as a relay.Source of its own. Each table is read in one REPEATABLE READ
// snapshot ordered by (created_at, cmin, tableoid, ctid), as the table does
// not keep the commit order; cmin comes before the position because a
// later statement's rows can fill space a DELETE left. Recorded progress
// carries the relation's file node: after a rewrite (VACUUM FULL, CLUSTER)
// a resume goes back to the last recorded created_at, so a rewrite costs
// duplicates, never a gap. What this guarantees: docs/operations.md.

// ErrReplayRequest is wrapped by the errors of a replay request that is
// wrong in itself (a time range without a created_at column, a value the
// id column cannot hold, an unknown replay id), as opposed to a failure.
var ErrReplayRequest = errors.New("invalid replay request")

// ReplaySelection is what a replay republishes and how; it is recorded
// with the replay, so a resumed replay goes on with the same one. Empty
// fields select everything.
type ReplaySelection struct {
	// Tables are the outbox tables, schema.name, replayed one after the
	// other in this order.
	Tables []string `json:"tables"`
	// Since and Until bound created_at: Since <= created_at < Until. A
	// new replay without Until gets the start of its snapshot, so that
	// resuming it does not take in rows committed since.
	Since *time.Time `json:"since,omitempty"`
	Until *time.Time `json:"until,omitempty"`
	// FromID and ToID bound the id column, both included, compared in
	// the column's own type.
	FromID string `json:"from_id,omitempty"`
	ToID   string `json:"to_id,omitempty"`
	// AggregateType and AggregateID select one aggregate type or id.
	AggregateType string `json:"aggregate_type,omitempty"`
	AggregateID   string `json:"aggregate_id,omitempty"`
	// Destination, when set, replaces every row's destination (what the
	// destination column means for the sink).
	Destination string `json:"destination,omitempty"`
	// Sink is the broker the replay publishes to, and DeadLetter whether
	// rows that cannot be published go to the dead-letter destination;
	// a resume must not change them.
	Sink       string `json:"sink"`
	DeadLetter bool   `json:"dead_letter,omitempty"`
}

// ReplayConfig configures a Replay.
type ReplayConfig struct {
	ConnString string
	// Columns and TableColumns map the tables' columns, as in Config.
	Columns      Columns
	TableColumns map[Table]Columns
	// ID names the replay; the x-relay-replay header carries it.
	ID string
	// Selection is a new replay's; with Resume, the recorded one is used.
	Selection ReplaySelection
	Resume    bool
	// Batch is the rows fetched at a time; default 2000.
	Batch int
	// ShutdownTimeout bounds the wait for confirms when ctx ends.
	ShutdownTimeout time.Duration
	// LockWait is how long to wait for another session holding the
	// replay (a replay just killed, whose backend has not noticed yet);
	// default 5s.
	LockWait time.Duration
	Logger   *slog.Logger
}

// Replay reads the selected rows for the relay core. Create it with
// OpenReplay.
type Replay struct {
	cfg      ReplayConfig
	sel      ReplaySelection
	log      *slog.Logger
	tables   []*replayTable
	total    int64 // rows the first snapshot selects, not yet replayed
	before   int64 // rows recorded by earlier runs
	recorded bool  // relay.replay holds the replay
	lsn      relay.LSN

	// first is the snapshot OpenReplay counted in, which the first
	// session reads; later sessions open their own.
	first    *replaySession
	finished chan struct{}
	once     sync.Once
}

// replayTable is one table's progress.
type replayTable struct {
	table Table
	rows  int64    // confirmed so far, all runs
	key   []string // last confirmed row's key: [created_at, cmin,] tableoid, ctid, file node
	done  bool
}

// replaySession is one snapshot and its connections.
type replaySession struct {
	reader, writer *pgx.Conn
	tx             pgx.Tx
	now            time.Time
}

func (s *replaySession) close(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if s.tx != nil {
		s.tx.Rollback(ctx)
	}
	if s.reader != nil {
		s.reader.Close(ctx)
	}
	if s.writer != nil {
		s.writer.Close(ctx)
	}
}

const defaultReplayBatch = 2000

// replayLockClass is the first key of the advisory lock that keeps two
// processes from running one replay: "rply", apart from the creation lock.
const replayLockClass = 0x72706c79

// OpenReplay checks the request against the database, takes the replay's
// lock, opens the snapshot and counts the rows to publish. A new replay is
// not recorded until Record; a resumed one reads its selection and
// progress from relay.replay. Errors of the request wrap ErrReplayRequest.
func OpenReplay(ctx context.Context, cfg ReplayConfig) (_ *Replay, err error) {
	if cfg.Batch <= 0 {
		cfg.Batch = defaultReplayBatch
	}
	if cfg.LockWait <= 0 {
		cfg.LockWait = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Replay{cfg: cfg, sel: cfg.Selection, log: cfg.Logger.With("component", "replay", "replay", cfg.ID), finished: make(chan struct{})}
	s, err := r.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.close(ctx)
		}
	}()
	if cfg.Resume {
		if err := r.readRecord(ctx, s.writer); err != nil {
			return nil, err
		}
	} else {
		for _, name := range r.sel.Tables {
			t, err := ParseTable(name)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", ErrReplayRequest, err)
			}
			r.tables = append(r.tables, &replayTable{table: t})
		}
	}
	if err := r.begin(ctx, s); err != nil {
		return nil, err
	}
	if !cfg.Resume {
		if err := r.validate(ctx, s); err != nil {
			return nil, err
		}
		if r.sel.Until == nil {
			until := s.now
			r.sel.Until = &until
		}
	}
	for _, t := range r.tables {
		if t.done {
			continue
		}
		q, err := r.query(ctx, s, t, "count(*)")
		if err != nil {
			return nil, err
		}
		var n int64
		if err := s.tx.QueryRow(ctx, q.sql, q.args...).Scan(&n); err != nil {
			return nil, fmt.Errorf("count the rows of %s: %w", t.table, requestError(err))
		}
		r.total += n
	}
	r.first = s
	return r, nil
}

// Selection is the replay's selection; for a new replay its Until is the
// snapshot's start when none was asked for.
func (r *Replay) Selection() ReplaySelection { return r.sel }

// Remaining is how many rows the replay has yet to publish, as counted in
// its first snapshot.
func (r *Replay) Remaining() int64 { return r.total }

// Replayed is how many rows earlier runs of a resumed replay published.
func (r *Replay) Replayed() int64 { return r.before }

// Complete reports whether every table of the replay is recorded done.
func (r *Replay) Complete() bool {
	for _, t := range r.tables {
		if !t.done {
			return false
		}
	}
	return true
}

// Finished is closed once every selected row is confirmed and recorded.
func (r *Replay) Finished() <-chan struct{} { return r.finished }

// Close releases the first snapshot if no session took it over.
func (r *Replay) Close(ctx context.Context) {
	if r.first != nil {
		r.first.close(ctx)
		r.first = nil
	}
}

// connect opens the reader and the writer, and takes the replay's lock on
// the writer, whose session holds it to the end.
func (r *Replay) connect(ctx context.Context) (*replaySession, error) {
	cfg, err := pgx.ParseConfig(r.cfg.ConnString)
	if err != nil {
		return nil, relay.Permanent(fmt.Errorf("parse database url: %w", err))
	}
	// The decoder reads pgoutput's text forms: rows read here must look
	// the same as streamed ones (see backfill).
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	cfg.RuntimeParams["application_name"] = "relay replay " + r.cfg.ID
	s := &replaySession{}
	if s.reader, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		return nil, fmt.Errorf("connect for the replay: %w", err)
	}
	if s.writer, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		s.close(ctx)
		return nil, fmt.Errorf("connect for the replay: %w", err)
	}
	h := fnv.New32a()
	h.Write([]byte(r.cfg.ID))
	key := int32(h.Sum32())
	// The session of a replay just killed or stopped holds the lock until
	// its backend notices: a resume right after waits for it a while.
	for deadline := time.Now().Add(r.cfg.LockWait); ; {
		var locked bool
		if err := s.writer.QueryRow(ctx, "SELECT pg_try_advisory_lock($1, $2)", int32(replayLockClass), key).Scan(&locked); err != nil {
			s.close(ctx)
			return nil, fmt.Errorf("lock replay %s: %w", r.cfg.ID, err)
		}
		if locked {
			return s, nil
		}
		if time.Now().After(deadline) {
			break
		}
		if !relay.Sleep(ctx, 100*time.Millisecond) {
			s.close(ctx)
			return nil, ctx.Err()
		}
	}
	var holder string
	_ = s.writer.QueryRow(ctx, `SELECT format('pid %s, %s', a.pid, a.application_name) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid AND l.objid = ($2::bigint & 4294967295)::oid AND l.objsubid = 2`,
		int64(replayLockClass), int64(key)).Scan(&holder)
	s.close(ctx)
	return nil, relay.Permanent(fmt.Errorf("%w: replay %s is running in another process (%s)", ErrReplayRequest, r.cfg.ID, holder))
}

// begin opens the snapshot, reading its WAL position and time: every row
// it shows committed before that position, which replayed events carry as
// their commit LSN, as the backfill's carry the slot's start.
func (r *Replay) begin(ctx context.Context, s *replaySession) error {
	tx, err := s.reader.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin the replay's snapshot: %w", err)
	}
	s.tx = tx
	var lsn string
	if err := tx.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text, now()").Scan(&lsn, &s.now); err != nil {
		return fmt.Errorf("begin the replay's snapshot: %w", err)
	}
	if r.lsn, err = relay.ParseLSN(lsn); err != nil {
		return fmt.Errorf("begin the replay's snapshot: %w", err)
	}
	return nil
}

// readRecord loads a recorded replay: its selection and each table's
// progress, in the selection's order.
func (r *Replay) readRecord(ctx context.Context, conn *pgx.Conn) error {
	rows, err := conn.Query(ctx, `SELECT table_name, selection::text, rows_done, last_key, done FROM relay.replay WHERE replay_id = $1`, r.cfg.ID)
	if err != nil {
		if isCode(err, codeUndefinedTable) || isCode(err, codeUndefinedSchema) {
			return fmt.Errorf("%w: no replay %s (relay.replay does not exist)", ErrReplayRequest, r.cfg.ID)
		}
		return fmt.Errorf("read replay %s: %w", r.cfg.ID, err)
	}
	byName := map[string]*replayTable{}
	var selection string
	for rows.Next() {
		var name string
		st := &replayTable{}
		if err := rows.Scan(&name, &selection, &st.rows, &st.key, &st.done); err != nil {
			rows.Close()
			return fmt.Errorf("read replay %s: %w", r.cfg.ID, err)
		}
		byName[name] = st
		r.before += st.rows
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read replay %s: %w", r.cfg.ID, err)
	}
	if len(byName) == 0 {
		return fmt.Errorf("%w: no replay %s in relay.replay", ErrReplayRequest, r.cfg.ID)
	}
	if err := json.Unmarshal([]byte(selection), &r.sel); err != nil {
		return fmt.Errorf("replay %s: selection %s: %w", r.cfg.ID, selection, err)
	}
	for _, name := range r.sel.Tables {
		st, ok := byName[name]
		t, err := ParseTable(name)
		if !ok || err != nil {
			return fmt.Errorf("replay %s: no progress recorded for its table %s", r.cfg.ID, name)
		}
		st.table = t
		r.tables = append(r.tables, st)
	}
	r.recorded = true
	return nil
}

// validate checks a new request against the tables: the columns it needs
// and values their types can hold.
func (r *Replay) validate(ctx context.Context, s *replaySession) error {
	for _, t := range r.tables {
		d, err := r.describe(ctx, s.tx, t.table)
		if err != nil {
			return err
		}
		if (r.sel.Since != nil || r.sel.Until != nil) && d.rel.createdAt < 0 {
			return fmt.Errorf("%w: --since and --until select by created_at, and table %s has no column %q (RELAY_COLUMN_CREATED_AT)",
				ErrReplayRequest, t.table, r.cfg.columnsOf(t.table).CreatedAt)
		}
		for _, v := range []struct {
			flag, value string
			col         int
		}{
			{"--from-id", r.sel.FromID, d.rel.id},
			{"--to-id", r.sel.ToID, d.rel.id},
			{"--aggregate-type", r.sel.AggregateType, d.rel.aggType},
			{"--aggregate-id", r.sel.AggregateID, d.rel.aggID},
		} {
			if v.value == "" {
				continue
			}
			if _, err := s.tx.Exec(ctx, "SELECT $1::text::"+d.types[v.col], v.value); err != nil {
				return fmt.Errorf("%s %q: not a value of column %s (%s) of %s: %w", v.flag, v.value, d.rel.names[v.col], d.types[v.col], t.table, requestError(err))
			}
		}
		if r.sel.FromID != "" && r.sel.ToID != "" {
			var after bool
			if err := s.tx.QueryRow(ctx, fmt.Sprintf("SELECT $1::text::%[1]s > $2::text::%[1]s", d.types[d.rel.id]), r.sel.FromID, r.sel.ToID).Scan(&after); err != nil {
				return fmt.Errorf("compare --from-id and --to-id: %w", err)
			}
			if after {
				return fmt.Errorf("%w: --from-id %s comes after --to-id %s", ErrReplayRequest, r.sel.FromID, r.sel.ToID)
			}
		}
	}
	return nil
}

// requestError marks a database error caused by a value of the request
// (a value the column's type cannot hold) as ErrReplayRequest.
func requestError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22") {
		return fmt.Errorf("%w: %w", ErrReplayRequest, err)
	}
	return err
}

// replayDesc is a table as the replay reads it.
type replayDesc struct {
	cols  []column
	types []string // format_type of each column
	rel   *relation
}

func (r *Replay) describe(ctx context.Context, tx pgx.Tx, t Table) (*replayDesc, error) {
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", t.ident()).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look up %s: %w", t, err)
	}
	if !exists {
		return nil, relay.Permanent(fmt.Errorf("table %s does not exist", t))
	}
	cols, types, err := tableColumns(ctx, tx, t)
	if err != nil {
		return nil, err
	}
	rel, err := newRelation(t.Schema, t.Name, cols, r.cfg.columnsOf(t))
	if err != nil {
		return nil, relay.Permanent(err)
	}
	return &replayDesc{cols: cols, types: types, rel: rel}, nil
}

func (c *ReplayConfig) columnsOf(t Table) Columns {
	if m, ok := c.TableColumns[t]; ok {
		return m
	}
	return c.Columns
}

// replayQuery is a table's selection as SQL.
type replayQuery struct {
	sql  string
	args []any
	desc *replayDesc
}

// query builds what selects t's remaining rows: what in the select list,
// which "*" makes the columns and the key, in replay order.
func (r *Replay) query(ctx context.Context, s *replaySession, t *replayTable, what string) (*replayQuery, error) {
	d, err := r.describe(ctx, s.tx, t.table)
	if err != nil {
		return nil, err
	}
	q := &replayQuery{desc: d}
	arg := func(v any, cast string) string {
		q.args = append(q.args, v)
		return fmt.Sprintf("$%d::text::%s", len(q.args), cast)
	}
	col := func(i int) string { return pgx.Identifier{d.cols[i].name}.Sanitize() }
	var where []string
	ca := ""
	if d.rel.createdAt >= 0 {
		// ca orders the rows. Without a lower bound a NULL created_at
		// comes first, as in the backfill; with one it is not selected,
		// and the bare column lets an index on it serve the range.
		ca = col(d.rel.createdAt)
		// PostgreSQL keeps microseconds.
		if r.sel.Since != nil {
			where = append(where, ca+" >= "+arg(r.sel.Since.Truncate(time.Microsecond).Format(time.RFC3339Nano), "timestamptz"))
		} else {
			ca = "coalesce(" + ca + ", '-infinity')"
		}
		if r.sel.Until != nil {
			where = append(where, ca+" < "+arg(r.sel.Until.Truncate(time.Microsecond).Format(time.RFC3339Nano), "timestamptz"))
		}
	}
	if r.sel.FromID != "" {
		where = append(where, col(d.rel.id)+" >= "+arg(r.sel.FromID, d.types[d.rel.id]))
	}
	if r.sel.ToID != "" {
		where = append(where, col(d.rel.id)+" <= "+arg(r.sel.ToID, d.types[d.rel.id]))
	}
	if r.sel.AggregateType != "" {
		where = append(where, col(d.rel.aggType)+" = "+arg(r.sel.AggregateType, d.types[d.rel.aggType]))
	}
	if r.sel.AggregateID != "" {
		where = append(where, col(d.rel.aggID)+" = "+arg(r.sel.AggregateID, d.types[d.rel.aggID]))
	}
	// Resume after the last confirmed key, exact only while its relation
	// keeps the file node it had; a key of another shape (a created_at
	// column added or dropped since) starts over.
	if k := t.key; len(k) == 3 && ca == "" || len(k) == 5 && ca != "" {
		n := len(k)
		oid, tid, node := k[n-3], k[n-2], k[n-1]
		var same bool
		if err := s.tx.QueryRow(ctx, "SELECT coalesce(pg_relation_filenode($1::text::oid)::text = $2, false)", oid, node).Scan(&same); err != nil {
			return nil, fmt.Errorf("look up the replay's last row in %s: %w", t.table, err)
		}
		if !same && what == "*" {
			r.log.Warn("the table was rewritten since the replay's last recorded row; resuming from that row's created_at (or partition), so some rows are published once more", "table", t.table.String())
		}
		switch {
		case ca != "" && same:
			last := arg(k[0], d.types[d.rel.createdAt])
			where = append(where, ca+" >= "+last, fmt.Sprintf("(%s, cmin::text::bigint, tableoid, ctid) > (%s, %s, %s, %s)", ca, last, arg(k[1], "bigint"), arg(oid, "oid"), arg(tid, "tid")))
		case ca != "":
			where = append(where, ca+" >= "+arg(k[0], d.types[d.rel.createdAt]))
		case same:
			where = append(where, fmt.Sprintf("(tableoid, ctid) > (%s, %s)", arg(oid, "oid"), arg(tid, "tid")))
		default:
			where = append(where, "tableoid >= "+arg(oid, "oid"))
		}
	}
	var sb strings.Builder
	sb.WriteString("SELECT ")
	if what == "*" {
		// Not cast to text: the text format is each type's output
		// function, as pgoutput sends it (see backfill).
		for i := range d.cols {
			fmt.Fprintf(&sb, "%s AS c%d, ", col(i), i)
		}
		if ca != "" {
			sb.WriteString(ca + " AS replay_created_at, cmin::text AS replay_cmin, ")
		}
		sb.WriteString("tableoid::text AS replay_oid, ctid::text AS replay_ctid")
	} else {
		sb.WriteString(what)
	}
	sb.WriteString(" FROM " + t.table.ident())
	if len(where) > 0 {
		sb.WriteString(" WHERE " + strings.Join(where, " AND "))
	}
	if what == "*" {
		sb.WriteString(" ORDER BY ")
		if ca != "" {
			sb.WriteString(ca + ", cmin::text::bigint, ")
		}
		sb.WriteString("tableoid, ctid")
	}
	q.sql = sb.String()
	return q, nil
}

// Record writes a new replay to relay.replay, creating the table when it
// is missing and the role may; a resumed replay is recorded already.
func (r *Replay) Record(ctx context.Context) error {
	if r.recorded {
		return nil
	}
	conn := r.first.writer
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('relay.replay') IS NOT NULL").Scan(&exists); err != nil {
		return fmt.Errorf("look up relay.replay: %w", err)
	}
	if !exists {
		if err := createShared(ctx, conn, stateDDL); err != nil && !isCreated(err) {
			return fmt.Errorf("create relay.replay, where a replay records its progress (apply schema/relay_state.sql as its owner and grant the role SELECT, INSERT and UPDATE on it, as schema/role.sql does): %w", err)
		}
	}
	sel, err := json.Marshal(r.sel)
	if err != nil {
		return err
	}
	err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, t := range r.tables {
			if _, err := tx.Exec(ctx, `INSERT INTO relay.replay (replay_id, table_name, selection) VALUES ($1, $2, $3::text::jsonb)`,
				r.cfg.ID, t.table.String(), string(sel)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("record replay %s: %w", r.cfg.ID, err)
	}
	r.recorded = true
	return nil
}

// replayMark is a position in the stream of replayed events: once the
// core reports its mark reached, every event up to it is confirmed, and
// the table's progress is what it says.
type replayMark struct {
	mark  relay.LSN
	table int
	rows  int64
	key   []string
	done  bool
}

// Stream publishes the remaining rows, table by table, and records the
// progress of each confirmed batch. Once every row is confirmed and
// recorded it closes Finished and waits for ctx to end. It implements
// relay.Source; each session after the first reads a new snapshot from
// the recorded progress.
func (r *Replay) Stream(ctx context.Context, out chan<- relay.Item, pos *relay.Progress) (err error) {
	defer close(out)
	s := r.first
	r.first = nil
	if s == nil {
		if s, err = r.connect(ctx); err != nil {
			return err
		}
		if err := r.begin(ctx, s); err != nil {
			s.close(ctx)
			return err
		}
	}
	defer s.close(ctx)
	p := &replayProgress{r: r, s: s, out: out, pos: pos}
	err = r.stream(ctx, s, p)
	if err == nil {
		err = pos.WaitMark(ctx, p.next)
	}
	if ctx.Err() != nil {
		// Stopped: what the broker confirms within the shutdown timeout
		// is recorded, so that a resume repeats as little as it can.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.ShutdownTimeout)
		defer cancel()
		_ = pos.WaitMark(wctx, p.next)
		if err := p.record(wctx); err != nil {
			r.log.Warn("recording the replay's progress on shutdown", "error", err)
		}
		return ctx.Err()
	}
	if err != nil {
		// Stopped at a row or by a failure: what is confirmed so far is
		// recorded, and the next session or a resume starts after it.
		if rerr := p.record(ctx); rerr != nil {
			r.log.Warn("recording the replay's progress", "error", rerr)
		}
		return err
	}
	if err := p.record(ctx); err != nil {
		return err
	}
	r.once.Do(func() { close(r.finished) })
	<-ctx.Done()
	return ctx.Err()
}

func (r *Replay) stream(ctx context.Context, s *replaySession, p *replayProgress) error {
	var index int64
	for i, t := range r.tables {
		if t.done {
			continue
		}
		q, err := r.query(ctx, s, t, "*")
		if err != nil {
			return err
		}
		cursor := fmt.Sprintf("replay_%d", i)
		if _, err := s.tx.Exec(ctx, "DECLARE "+cursor+" NO SCROLL CURSOR FOR "+q.sql, append([]any{pgx.QueryExecModeSimpleProtocol}, q.args...)...); err != nil {
			return fmt.Errorf("replay %s: %w", t.table, err)
		}
		rows := t.rows
		var key []string // the last row's: [created_at, cmin,] tableoid, ctid
		ncols := len(q.desc.cols)
		for {
			batch, err := s.tx.Query(ctx, fmt.Sprintf("FETCH %d FROM %s", r.cfg.Batch, cursor), pgx.QueryExecModeSimpleProtocol)
			if err != nil {
				return fmt.Errorf("replay %s: %w", t.table, err)
			}
			n := 0
			for batch.Next() {
				raw := batch.RawValues()
				values := copyValues(raw[:ncols])
				ev, err := q.desc.rel.event(values)
				if err != nil && (ev == nil || !errors.Is(err, errBadRow)) {
					batch.Close()
					return fmt.Errorf("replay %s: %w", t.table, err)
				}
				ev.CommitLSN, ev.Index = r.lsn, int(index)
				ev.CommitTime = ev.CreatedAt
				if ev.CreatedAt.IsZero() {
					ev.CreatedAt = time.Now()
				}
				if err != nil {
					ev.Invalid = relay.BadRow(ev, err)
				}
				ev.Replay = r.cfg.ID
				if r.sel.Destination != "" {
					ev.To = r.sel.Destination
				}
				index++
				n++
				key = key[:0:0]
				for _, v := range raw[ncols:] {
					key = append(key, string(v))
				}
				if err := p.send(ctx, relay.Item{Event: ev}); err != nil {
					batch.Close()
					return err
				}
			}
			batch.Close()
			if err := batch.Err(); err != nil {
				return fmt.Errorf("replay %s: %w", t.table, err)
			}
			if n == 0 {
				break
			}
			rows += int64(n)
			if err := p.mark(ctx, i, rows, key, false); err != nil {
				return err
			}
			if err := p.record(ctx); err != nil {
				return err
			}
		}
		if _, err := s.tx.Exec(ctx, "CLOSE "+cursor); err != nil {
			return fmt.Errorf("replay %s: %w", t.table, err)
		}
		if err := p.mark(ctx, i, rows, key, true); err != nil {
			return err
		}
	}
	return nil
}

// replayProgress sends the replay's rows and marks, and turns the marks
// the core reports published into relay.replay rows.
type replayProgress struct {
	r   *Replay
	s   *replaySession
	out chan<- relay.Item
	pos *relay.Progress
	// rows are the rows sent; next numbers the marks, which are no WAL
	// positions: a replay confirms nothing to the slot.
	rows    uint64
	next    relay.LSN
	pending []replayMark
}

func (p *replayProgress) send(ctx context.Context, it relay.Item) error {
	err := send(ctx, p.out, it, nil)
	if err == nil && it.Event != nil {
		p.rows++
	}
	return err
}

func (p *replayProgress) mark(ctx context.Context, table int, rows int64, key []string, done bool) error {
	if err := p.send(ctx, relay.Item{Mark: p.next + 1}); err != nil {
		return err
	}
	p.next++
	p.pending = append(p.pending, replayMark{mark: p.next, table: table, rows: rows, key: key, done: done})
	return nil
}

// record writes the latest mark the broker has confirmed, if it moved.
func (p *replayProgress) record(ctx context.Context) error {
	safe := p.pos.LSN()
	k := -1
	for i, m := range p.pending {
		if m.mark <= safe {
			k = i
		}
	}
	if k < 0 {
		return nil
	}
	m := p.pending[k]
	p.pending = p.pending[k+1:]
	r := p.r
	// A mark of a later table means the earlier ones are complete.
	var earlier []*replayTable
	var names []string
	for _, t := range r.tables[:m.table] {
		if !t.done {
			earlier = append(earlier, t)
			names = append(names, t.table.String())
		}
	}
	t := r.tables[m.table]
	key := t.key
	err := pgx.BeginFunc(ctx, p.s.writer, func(tx pgx.Tx) error {
		if len(names) > 0 {
			if _, err := tx.Exec(ctx, `UPDATE relay.replay SET done = true, updated_at = now() WHERE replay_id = $1 AND table_name = ANY($2)`, r.cfg.ID, names); err != nil {
				return err
			}
		}
		if len(m.key) == 0 {
			_, err := tx.Exec(ctx, `UPDATE relay.replay SET rows_done = $3, done = $4, updated_at = now() WHERE replay_id = $1 AND table_name = $2`,
				r.cfg.ID, t.table.String(), m.rows, m.done)
			return err
		}
		// The file node of the row's relation goes with the key: the
		// reader's lock keeps the relation from being rewritten until
		// the snapshot ends, so it is the one the key was read in.
		return tx.QueryRow(ctx, `UPDATE relay.replay SET rows_done = $3, done = $4, updated_at = now(),
			last_key = $5::text[] || pg_relation_filenode($6::text::oid)::text WHERE replay_id = $1 AND table_name = $2
			RETURNING last_key`,
			r.cfg.ID, t.table.String(), m.rows, m.done, m.key, m.key[len(m.key)-2]).Scan(&key)
	})
	if err != nil {
		return fmt.Errorf("record the progress of replay %s: %w", r.cfg.ID, err)
	}
	for _, e := range earlier {
		e.done = true
	}
	t.rows, t.done, t.key = m.rows, m.done, key
	return nil
}

// Finish records a resumed replay that has nothing left as done.
func (r *Replay) Finish(ctx context.Context) error {
	_, err := r.first.writer.Exec(ctx, `UPDATE relay.replay SET done = true, updated_at = now() WHERE replay_id = $1`, r.cfg.ID)
	if err != nil {
		return fmt.Errorf("record replay %s as done: %w", r.cfg.ID, err)
	}
	for _, t := range r.tables {
		t.done = true
	}
	return nil
}
