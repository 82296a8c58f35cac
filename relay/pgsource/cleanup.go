package pgsource

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
)

// Cleaner deletes outbox rows once the broker has confirmed them
// (RELAY_CLEANUP=after-publish), in small batches on a connection of its
// own, off the replication path. It learns of confirmed rows only through
// Published, so no row is deleted before its confirm. Rows confirmed but not
// yet deleted when the relay dies stay in the table: the slot has passed
// them, so they are never published again, only left behind, and the
// insert-and-delete pattern or a periodic DELETE by age covers that case.
// The publication publishes inserts only, so the deletes are not events.
type Cleaner struct {
	connString   string
	columns      Columns
	tableColumns map[Table]Columns
	log          *slog.Logger

	mu      sync.Mutex
	pending map[string][]string // table → confirmed ids
	wake    chan struct{}
}

// cleanBatch is the most rows one DELETE removes.
const cleanBatch = 500

// NewCleaner returns a Cleaner for the tables' id column in columns, or
// in tableColumns for the tables it names, as in Config.
func NewCleaner(connString string, columns Columns, tableColumns map[Table]Columns, log *slog.Logger) *Cleaner {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Cleaner{connString: connString, columns: columns, tableColumns: tableColumns, log: log.With("component", "cleanup"),
		pending: map[string][]string{}, wake: make(chan struct{}, 1)}
}

// Published records a confirmed event; it never blocks.
func (c *Cleaner) Published(ev *relay.Event) {
	if ev.DeadLetter != "" || ev.Table == MessageTable || ev.ID == "" {
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
		for table, ids := range work {
			if conn == nil {
				var err error
				if conn, err = pgx.Connect(ctx, c.connString); err != nil {
					c.requeue(table, ids)
					c.log.Warn("cannot connect to delete published rows; retrying", "error", err)
					continue
				}
			}
			if err := c.delete(ctx, conn, types, table, ids); err != nil {
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

func (c *Cleaner) requeue(table string, ids []string) {
	c.mu.Lock()
	c.pending[table] = append(c.pending[table], ids...)
	c.mu.Unlock()
}

func (c *Cleaner) delete(ctx context.Context, conn *pgx.Conn, types map[string]string, table string, ids []string) error {
	t, err := ParseTable(table)
	if err != nil {
		return err
	}
	id := c.columns.ID
	if m, ok := c.tableColumns[t]; ok {
		id = m.ID
	}
	typ, ok := types[table]
	if !ok {
		err := conn.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped`, t.ident(), id).Scan(&typ)
		if err != nil {
			return fmt.Errorf("type of %s.%s: %w", table, id, err)
		}
		types[table] = typ
	}
	// Compared in the column's own type, so the primary key index serves.
	query := fmt.Sprintf("DELETE FROM %s WHERE %s = ANY($1::text[]::%s[])", t.ident(), pgx.Identifier{id}.Sanitize(), typ)
	for len(ids) > 0 {
		n := min(len(ids), cleanBatch)
		if _, err := conn.Exec(ctx, query, ids[:n]); err != nil {
			return classify(fmt.Errorf("delete published rows from %s: %w", table, err))
		}
		ids = ids[n:]
	}
	return nil
}
