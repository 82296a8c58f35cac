package pgops

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/internal/pgerr"
	"github.com/relay-dev/relay/relay/pgsource"
)

// Cleaner deletes outbox rows once the broker has confirmed them
// (RELAY_CLEANUP=after-publish), in small batches on a connection of its
// own, off the replication path. It learns of confirmed rows only through
// Published, so no row is deleted before its confirm. Rows confirmed but not
// yet deleted when the relay dies stay in the table: the slot has passed
// them, so they are never published again, only left behind, and the
// insert-and-delete pattern or a periodic DELETE by age covers that case.
// The publication publishes inserts only, so the deletes are not events.
//
// A row the DELETE does not find is looked for again for a while: the
// walsender sends a transaction once its commit record is flushed, which is
// a moment before the transaction becomes visible to other sessions, and on
// a busy machine the relay can publish it, and hear the broker's confirm,
// within that moment.
type Cleaner struct {
	connString   string
	columns      pgsource.Columns
	tableColumns map[pgsource.Table]pgsource.Columns
	log          *slog.Logger

	mu      sync.Mutex
	pending map[string][]string // table → confirmed ids
	wake    chan struct{}
	// missed holds, by table and id, the rows a DELETE did not find and
	// how many more times to look for them; only Run uses it.
	missed map[string]map[string]int
}

// cleanBatch is the most rows one DELETE removes.
const cleanBatch = 500

// cleanRetries is how many more sweeps (half a second apart) look for a
// confirmed row that a DELETE did not find before it is taken as deleted
// by someone else.
const cleanRetries = 20

// NewCleaner returns a Cleaner for the tables' id column in columns, or
// in tableColumns for the tables it names, as in pgsource.Config.
func NewCleaner(connString string, columns pgsource.Columns, tableColumns map[pgsource.Table]pgsource.Columns, log *slog.Logger) *Cleaner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cleaner{connString: connString, columns: columns, tableColumns: tableColumns, log: log.With("component", "cleanup"),
		pending: map[string][]string{}, wake: make(chan struct{}, 1), missed: map[string]map[string]int{}}
}

// Published records a confirmed event; it never blocks.
func (c *Cleaner) Published(ev *relay.Event) {
	if ev.DeadLetter != "" || ev.Table == pgsource.MessageTable || ev.ID == "" {
		return // kept for whoever reads the dead letters; or nothing stored
	}
	c.mu.Lock()
	c.pending[ev.Table] = append(c.pending[ev.Table], ev.ID)
	n := len(c.pending[ev.Table])
	c.mu.Unlock()
	if n >= cleanBatch {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// Run deletes confirmed rows until ctx ends.
func (c *Cleaner) Run(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	types := map[string]string{} // table → id column type
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-c.wake:
		}
		c.mu.Lock()
		work := c.pending
		c.pending = map[string][]string{}
		c.mu.Unlock()
		for table, m := range c.missed {
			for id := range m {
				work[table] = append(work[table], id)
			}
		}
		for table, ids := range work {
			if conn == nil {
				var err error
				if conn, err = pgx.Connect(ctx, c.connString); err != nil {
					c.requeue(table, ids)
					c.log.Warn("cannot connect to delete published rows; retrying", "error", err)
					continue
				}
			}
			deleted, err := c.delete(ctx, conn, types, table, ids)
			if err == nil {
				c.recordMissed(table, ids, deleted)
			}
			if err != nil {
				c.requeue(table, ids)
				if ctx.Err() != nil {
					return nil
				}
				c.log.Warn("deleting published rows failed; retrying", "table", table, "error", err)
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
		}
	}
}

// recordMissed notes which of ids the DELETE did not find, for the next
// sweeps, and forgets those found or looked for often enough.
func (c *Cleaner) recordMissed(table string, ids []string, deleted map[string]bool) {
	m := c.missed[table]
	for _, id := range ids {
		if deleted[id] {
			delete(m, id)
			continue
		}
		left, again := m[id]
		if !again {
			left = cleanRetries
		}
		if left == 0 {
			delete(m, id)
			continue
		}
		if m == nil {
			m = map[string]int{}
			c.missed[table] = m
		}
		m[id] = left - 1
	}
	if len(m) == 0 {
		delete(c.missed, table)
	}
}

func (c *Cleaner) requeue(table string, ids []string) {
	c.mu.Lock()
	c.pending[table] = append(c.pending[table], ids...)
	c.mu.Unlock()
}

// delete deletes the rows of ids from table and returns the ids it found.
func (c *Cleaner) delete(ctx context.Context, conn *pgx.Conn, types map[string]string, table string, ids []string) (map[string]bool, error) {
	t, err := pgsource.ParseTable(table)
	if err != nil {
		return nil, err
	}
	id := c.columns.ID
	if m, ok := c.tableColumns[t]; ok {
		id = m.ID
	}
	typ, ok := types[table]
	if !ok {
		err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`, t.Ident(), id).Scan(&typ)
		if err != nil {
			return nil, fmt.Errorf("type of %s.%s: %w", table, id, err)
		}
		types[table] = typ
	}
	// Compared in the column's own type, so the primary key index serves;
	// each deleted row returns the id as the relay gave it.
	query := fmt.Sprintf("DELETE FROM %s AS o USING unnest($1::text[]) AS u(id) WHERE o.%s = u.id::%s RETURNING u.id", t.Ident(), pgx.Identifier{id}.Sanitize(), typ)
	deleted := make(map[string]bool, len(ids))
	for len(ids) > 0 {
		n := min(len(ids), cleanBatch)
		rows, err := conn.Query(ctx, query, ids[:n])
		if err == nil {
			var found []string
			found, err = pgx.CollectRows(rows, pgx.RowTo[string])
			for _, f := range found {
				deleted[f] = true
			}
		}
		if err != nil {
			return nil, pgerr.Classify(fmt.Errorf("delete published rows from %s: %w", table, err))
		}
		ids = ids[n:]
	}
	return deleted, nil
}

// RetainConfig configures a Retainer.
type RetainConfig struct {
	ConnString string
	// Slot is the relay's replication slot, whose confirmed position
	// decides which rows are confirmed.
	Slot   string
	Tables []pgsource.Table
	// Columns and TableColumns map the tables' columns, as in
	// pgsource.Config; each table's CreatedAt column must be named.
	Columns      pgsource.Columns
	TableColumns map[pgsource.Table]pgsource.Columns
	// Retention is how long a row stays after its created_at.
	Retention time.Duration
	// Every is the time between sweeps; default a hundredth of the
	// retention, at least a second and at most a minute.
	Every  time.Duration
	Logger *slog.Logger
}

// Retainer deletes confirmed outbox rows once their created_at is older
// than the retention (RELAY_CLEANUP=retain), so that `relay replay` can
// publish them again until then. It sweeps on a connection of its own,
// deleting through a partitioned table's parent as through any table.
//
// Confirmed is read from the slot, not from memory, so rows confirmed
// before a restart go too: a row whose inserting transaction (xmin)
// precedes the slot's catalog_xmin ended before a position the relay
// confirmed (docs/operations.md, Replay and retention). A row the stream
// is stopped at, and every row after it, stays; nothing is deleted while
// an initial backfill is unfinished, as its rows predate the slot.
type Retainer struct {
	cfg RetainConfig
	log *slog.Logger
}

// retainBatch is the most rows one DELETE removes.
const retainBatch = 1000

// NewRetainer returns a Retainer for cfg.
func NewRetainer(cfg RetainConfig) *Retainer {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Every <= 0 {
		cfg.Every = min(max(cfg.Retention/100, time.Second), time.Minute)
	}
	return &Retainer{cfg: cfg, log: cfg.Logger.With("component", "cleanup")}
}

// Run sweeps at once and then every cfg.Every until ctx ends. It returns
// an error only for what no retry can fix (a table without its created_at
// column, a role without DELETE on it); anything else is logged and
// retried at the next sweep.
func (r *Retainer) Run(ctx context.Context) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.WithoutCancel(ctx))
		}
	}()
	checked := map[pgsource.Table]bool{}
	tick := time.NewTicker(r.cfg.Every)
	defer tick.Stop()
	for {
		if conn == nil {
			var err error
			if conn, err = pgx.Connect(ctx, r.cfg.ConnString); err != nil {
				conn = nil
				if ctx.Err() == nil {
					r.log.Warn("cannot connect to delete rows past the retention; retrying", "error", err)
				}
			}
		}
		if conn != nil {
			if err := r.sweep(ctx, conn, checked); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				if relay.IsPermanent(err) {
					return err
				}
				r.log.Warn("deleting rows past the retention failed; retrying", "error", err)
				conn.Close(context.WithoutCancel(ctx))
				conn = nil
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func (r *Retainer) sweep(ctx context.Context, conn *pgx.Conn, checked map[pgsource.Table]bool) error {
	var pending bool
	err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM relay.backfill WHERE slot_name = $1 AND NOT done)`, r.cfg.Slot).Scan(&pending)
	if err != nil && !pgerr.Is(err, pgerr.UndefinedTable) && !pgerr.Is(err, pgerr.UndefinedSchema) {
		return fmt.Errorf("read the backfill state: %w", err)
	}
	if pending {
		return nil
	}
	for _, t := range r.cfg.Tables {
		col := r.cfg.Columns.CreatedAt
		if m, ok := r.cfg.TableColumns[t]; ok {
			col = m.CreatedAt
		}
		if !checked[t] {
			var exists bool
			err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped)`,
				t.Ident(), col).Scan(&exists)
			if err != nil {
				return fmt.Errorf("look up %s.%s: %w", t, col, err)
			}
			if !exists {
				return relay.Permanent(fmt.Errorf("RELAY_CLEANUP=retain deletes rows by their created_at, and table %s has no column %q (RELAY_COLUMN_CREATED_AT)", t, col))
			}
			checked[t] = true
		}
		// The predicate is repeated outside the subquery: rows of other
		// partitions can share a ctid, and the outer one keeps a delete
		// to rows it selects on its own.
		old := fmt.Sprintf(`%s < now() - $1::bigint * interval '1 microsecond'
			AND age(xmin) > (SELECT age(catalog_xmin) FROM pg_replication_slots WHERE slot_name = $2)`, pgx.Identifier{col}.Sanitize())
		query := fmt.Sprintf(`DELETE FROM %[1]s WHERE ctid = ANY(ARRAY(SELECT ctid FROM %[1]s WHERE %[2]s LIMIT %[3]d)) AND %[2]s`, t.Ident(), old, retainBatch)
		var deleted int64
		for {
			tag, err := conn.Exec(ctx, query, r.cfg.Retention.Microseconds(), r.cfg.Slot)
			if pgerr.Is(err, pgerr.InsufficientPrivilege) {
				return relay.Permanent(fmt.Errorf("delete rows of %s past the retention (RELAY_CLEANUP=retain needs DELETE on the table: GRANT DELETE ON %[1]s TO the relay's role): %w", t, err))
			}
			if err != nil {
				return fmt.Errorf("delete rows of %s past the retention: %w", t, err)
			}
			deleted += tag.RowsAffected()
			if tag.RowsAffected() < retainBatch {
				break
			}
		}
		if deleted > 0 && r.log.Enabled(ctx, slog.LevelDebug) {
			r.log.Debug("deleted rows past the retention", "table", t.String(), "rows", deleted)
		}
	}
	return nil
}
