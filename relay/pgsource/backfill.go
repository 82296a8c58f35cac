package pgsource

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/schema"
)

// Initial backfill (Snapshot "initial"): the slot is created with an
// exported snapshot and the tables are read in it before streaming, so
// every row is in exactly one of the two. Progress goes to relay.backfill
// after every confirmed batch; a resumed backfill has lost the snapshot
// and may also read rows the stream carries: duplicates, never a gap.
// Backfilled events are positioned at the slot's consistent point, which
// every streamed commit follows, so positions stay in stream order
// (exactly-once Kafka skips by position).

const backfillBatch = 2000

// stateDDL creates the relay's own tables: schema/relay_state.sql, their
// one definition.
var stateDDL = schema.RelayState

// backfillState is a table's progress.
type backfillState struct {
	table   Table
	start   relay.LSN
	rows    int64
	lastKey []string
	done    bool
}

// ensureStateTable creates relay.backfill when missing. Relays starting
// together on a database serialise on the creation lock; one created by
// someone else meanwhile is taken as it is.
func ensureStateTable(ctx context.Context, conn *pgx.Conn) error {
	for attempt := 0; ; attempt++ {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass('relay.backfill') IS NOT NULL").Scan(&exists); err != nil {
			return fmt.Errorf("look up relay.backfill: %w", err)
		}
		if exists {
			return nil
		}
		err := createShared(ctx, conn, stateDDL)
		if isCreated(err) && attempt < 2 {
			continue
		}
		if err != nil {
			return classify(fmt.Errorf("create relay.backfill for the initial backfill (apply schema/relay_state.sql as its owner, or set RELAY_SNAPSHOT=never): %w", err))
		}
		return nil
	}
}

// planBackfill records, before the slot is created, that its tables are to
// be backfilled, so that a relay killed right after creating it still does.
func (s *Source) planBackfill(ctx context.Context, conn *pgx.Conn) error {
	if err := ensureStateTable(ctx, conn); err != nil {
		return err
	}
	for _, t := range s.cfg.Tables {
		_, err := conn.Exec(ctx, `
			INSERT INTO relay.backfill (slot_name, table_name) VALUES ($1, $2)
			ON CONFLICT (slot_name, table_name) DO UPDATE SET start_lsn = NULL, rows_done = 0, last_key = NULL, done = false`,
			s.cfg.Slot, t.String())
		if err != nil {
			return classify(fmt.Errorf("record the backfill of %s: %w", t, err))
		}
	}
	return nil
}

// pendingBackfill returns the unfinished backfills of the slot's tables,
// and the rows backfilled so far, which the next rows' positions follow.
func (s *Source) pendingBackfill(ctx context.Context, conn *pgx.Conn) ([]backfillState, int64, error) {
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('relay.backfill') IS NOT NULL").Scan(&exists); err != nil || !exists {
		return nil, 0, err
	}
	var base int64
	if err := conn.QueryRow(ctx, "SELECT coalesce(sum(rows_done), 0) FROM relay.backfill WHERE slot_name = $1", s.cfg.Slot).Scan(&base); err != nil {
		return nil, 0, fmt.Errorf("read the backfill state: %w", err)
	}
	var out []backfillState
	for _, t := range s.cfg.Tables {
		var st backfillState
		var start *string
		err := conn.QueryRow(ctx, `
			SELECT start_lsn::text, rows_done, last_key, done FROM relay.backfill
			WHERE slot_name = $1 AND table_name = $2`, s.cfg.Slot, t.String()).Scan(&start, &st.rows, &st.lastKey, &st.done)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("read the backfill state of %s: %w", t, err)
		}
		if st.done {
			continue
		}
		st.table = t
		if start != nil {
			lsn, err := relay.ParseLSN(*start)
			if err != nil {
				return nil, 0, fmt.Errorf("backfill state of %s: %w", t, err)
			}
			st.start = lsn
		}
		out = append(out, st)
	}
	return out, base, nil
}

// backfill publishes the rows of the tables in states, in insertion order
// (created_at, then physical position), reading in the exported snapshot when one
// is given. It returns once every row is confirmed and recorded, with the
// number of rows it sent.
func (s *Source) backfill(ctx context.Context, states []backfillState, base int64, snapshot string, start relay.LSN, out chan<- relay.Item, pos *relay.Progress) (uint64, error) {
	var sent uint64
	cfg, err := pgx.ParseConfig(s.cfg.ConnString)
	if err != nil {
		return 0, relay.Permanent(fmt.Errorf("parse database url: %w", err))
	}
	// The decoder reads pgoutput's text forms, which these settings fix
	// for the replication session; rows read here must look the same.
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	reader, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect for the backfill: %w", err)
	}
	defer reader.Close(context.WithoutCancel(ctx))
	writer, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect for the backfill: %w", err)
	}
	defer writer.Close(context.WithoutCancel(ctx))

	tx, err := reader.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("begin the backfill: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if snapshot != "" {
		if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+strings.ReplaceAll(snapshot, "'", "")+"'"); err != nil {
			return 0, fmt.Errorf("import the slot's snapshot %s: %w", snapshot, err)
		}
	}
	index := base
	for _, st := range states {
		if st.start == 0 {
			st.start = start
			if _, err := writer.Exec(ctx, `UPDATE relay.backfill SET start_lsn = $3::text::pg_lsn WHERE slot_name = $1 AND table_name = $2`,
				s.cfg.Slot, st.table.String(), start.String()); err != nil {
				return 0, fmt.Errorf("record the backfill of %s: %w", st.table, err)
			}
		}
		s.log.Info("backfilling existing rows", "table", st.table.String(), "from_row", st.rows, "snapshot", snapshot != "")
		began, before := time.Now(), st.rows
		if err := s.backfillTable(ctx, tx, writer, &st, &index, start, out, pos, &sent); err != nil {
			return sent, err
		}
		s.log.Info("backfilled", "table", st.table.String(), "rows", st.rows-before, "seconds", time.Since(began).Seconds())
	}
	return sent, nil
}

// backfillTable publishes the rows of st.table in batches. Each batch
// ends with a mark at mark, the slot's position, which the slot already
// has: backfilled rows are no transaction of their own, so a sink that
// groups events by source transaction (Kafka transactions) may end a
// group there, and the backfill waits for them.
func (s *Source) backfillTable(ctx context.Context, tx pgx.Tx, writer *pgx.Conn, st *backfillState, index *int64, mark relay.LSN, out chan<- relay.Item, pos *relay.Progress, sent *uint64) error {
	cols, typeNames, err := tableColumns(ctx, tx, st.table)
	if err != nil {
		return err
	}
	rel, err := newRelation(st.table.Schema, st.table.Name, cols, s.cfg.columnsOf(st.table))
	if err != nil {
		return relay.Permanent(err)
	}
	// Keyset pagination in insertion order: created_at, then the physical
	// position (read as one more column), which unlike a uuid id orders a
	// transaction's rows. Partitions number positions each on its own, so
	// tableoid comes before ctid.
	partitioned, err := isPartitioned(ctx, tx, st.table)
	if err != nil {
		return err
	}
	selects := make([]string, len(cols), len(cols)+2)
	// Aliased: ORDER BY resolves a bare name to an output column first,
	// and would sort ctid's text form. Not cast to text: the text format
	// is what pgoutput sends, and a cast can differ (boolean::text is
	// "true", not "t").
	for i, c := range cols {
		selects[i] = fmt.Sprintf("%s AS c%d", pgx.Identifier{c.name}.Sanitize(), i)
	}
	var keyCols, keyArgs []string
	if rel.createdAt >= 0 {
		// A NULL would make the row comparison unknown and skip rows.
		keyCols = append(keyCols, "coalesce("+pgx.Identifier{cols[rel.createdAt].name}.Sanitize()+", '-infinity')")
		keyArgs = append(keyArgs, fmt.Sprintf("$%d::text::%s", len(keyArgs)+1, typeNames[rel.createdAt]))
	}
	if partitioned {
		selects = append(selects, "tableoid::oid::text AS row_partition")
		keyCols = append(keyCols, "tableoid")
		keyArgs = append(keyArgs, fmt.Sprintf("$%d::text::oid", len(keyArgs)+1))
	}
	selects = append(selects, "ctid::text AS row_position")
	keyCols = append(keyCols, "ctid")
	keyArgs = append(keyArgs, fmt.Sprintf("$%d::text::tid", len(keyArgs)+1))
	if st.lastKey != nil && len(st.lastKey) != len(keyArgs) {
		// Recorded for another layout (the table was partitioned since):
		// starting over publishes rows again, never skips one.
		s.log.Warn("the recorded backfill position does not fit the table; backfilling it from the start", "table", st.table.String())
		st.lastKey = nil
	}
	extra := len(selects) - len(cols)
	order := strings.Join(keyCols, ", ")
	base := "SELECT " + strings.Join(selects, ", ") + " FROM " + st.table.ident()
	for {
		query := base + " ORDER BY " + order + fmt.Sprintf(" LIMIT %d", backfillBatch)
		args := []any{pgx.QueryResultFormats{pgx.TextFormatCode}}
		if st.lastKey != nil {
			query = base + " WHERE (" + order + ") > (" + strings.Join(keyArgs, ", ") + ") ORDER BY " + order + fmt.Sprintf(" LIMIT %d", backfillBatch)
			for _, v := range st.lastKey {
				args = append(args, v)
			}
		}
		rows, err := tx.Query(ctx, query, args...)
		if err != nil {
			return fmt.Errorf("backfill %s: %w", st.table, err)
		}
		var batch []*relay.Event
		var last []string
		for rows.Next() {
			raw := rows.RawValues()
			position := raw[len(raw)-extra:]
			values := copyValues(raw[:len(raw)-extra])
			ev, err := rel.event(values)
			if err != nil && (ev == nil || !errors.Is(err, errBadRow)) {
				rows.Close()
				return fmt.Errorf("backfill %s: %w", st.table, err)
			}
			ev.CommitLSN, ev.Index = st.start, int(*index)
			ev.CommitTime = ev.CreatedAt
			if ev.CreatedAt.IsZero() {
				ev.CreatedAt = time.Now()
			}
			if err != nil {
				ev.Invalid = relay.BadRow(ev, err)
			}
			*index++
			batch = append(batch, ev)
			last = last[:0]
			if rel.createdAt >= 0 {
				if v := values[rel.createdAt]; v != nil {
					last = append(last, string(v))
				} else {
					last = append(last, "-infinity")
				}
			}
			for _, v := range position {
				last = append(last, string(v))
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("backfill %s: %w", st.table, err)
		}
		if len(batch) == 0 {
			_, err := writer.Exec(ctx, `UPDATE relay.backfill SET done = true WHERE slot_name = $1 AND table_name = $2`, s.cfg.Slot, st.table.String())
			if err != nil {
				return fmt.Errorf("record the backfill of %s: %w", st.table, err)
			}
			return nil
		}
		for _, ev := range batch {
			if err := send(ctx, out, relay.Item{Event: ev}, nil); err != nil {
				return err
			}
			*sent++
		}
		if err := send(ctx, out, relay.Item{Mark: mark}, nil); err != nil {
			return err
		}
		// The batch is recorded only once the broker has every row of it.
		if err := pos.Wait(ctx, *sent); err != nil {
			return err
		}
		st.rows += int64(len(batch))
		st.lastKey = append([]string(nil), last...)
		_, err = writer.Exec(ctx, `UPDATE relay.backfill SET rows_done = $3, last_key = $4 WHERE slot_name = $1 AND table_name = $2`,
			s.cfg.Slot, st.table.String(), st.rows, st.lastKey)
		if err != nil {
			return fmt.Errorf("record the backfill of %s: %w", st.table, err)
		}
	}
}

// copyValues copies a row's raw values, which the next row overwrites, into
// one buffer. An empty value stays a non-nil empty slice: nil is SQL NULL
// (relay.Row), and an empty string in a required column is a value, an
// empty payload a body, not a tombstone, as when the row is streamed.
func copyValues(raw [][]byte) [][]byte {
	n := 0
	for _, v := range raw {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	values := make([][]byte, len(raw))
	for i, v := range raw {
		if v != nil {
			p := len(buf)
			buf = append(buf, v...)
			values[i] = buf[p:len(buf):len(buf)]
		}
	}
	return values
}

// isPartitioned reports whether t is a partitioned table.
func isPartitioned(ctx context.Context, tx pgx.Tx, t Table) (bool, error) {
	var partitioned bool
	if err := tx.QueryRow(ctx, "SELECT relkind = 'p' FROM pg_class WHERE oid = $1::regclass", t.ident()).Scan(&partitioned); err != nil {
		return false, fmt.Errorf("read the kind of %s: %w", t, err)
	}
	return partitioned, nil
}

// tableColumns reads a table's columns with their types, in order.
func tableColumns(ctx context.Context, tx pgx.Tx, t Table) ([]column, []string, error) {
	rows, err := tx.Query(ctx, `
		SELECT a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod)
		FROM pg_attribute a
		WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
		ORDER BY a.attnum`, t.ident())
	if err != nil {
		return nil, nil, fmt.Errorf("read columns of %s: %w", t, err)
	}
	defer rows.Close()
	var cols []column
	var types []string
	for rows.Next() {
		var c column
		var tn string
		if err := rows.Scan(&c.name, &c.typ, &tn); err != nil {
			return nil, nil, fmt.Errorf("read columns of %s: %w", t, err)
		}
		cols = append(cols, c)
		types = append(types, tn)
	}
	return cols, types, rows.Err()
}
