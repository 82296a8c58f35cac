package pgsource

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
)

// The durable position record.
//
// PostgreSQL keeps a logical slot's confirmed position in memory and writes
// it to disk only when the slot is saved for another reason (its restart
// point or catalog xmin moved); after a crash-restart it resumes from the
// last saved position, which can be every row since the slot was created.
// So the relay keeps its own record of the position the brokers confirmed,
// relay.slot_position, written on the leader's connection every
// recordEvery, and a session skips the transactions the record covers.
// Skipping by it never loses a row: the record is written only with a
// position already reported to PostgreSQL, which covers nothing the
// brokers had not confirmed. What a crash still republishes is the
// record's lag.

// recordedPosition reads the slot's record; 0 when there is none or the
// table does not exist, which only makes a crash cost more.
func (s *Source) recordedPosition(ctx context.Context, conn *pgx.Conn) relay.LSN {
	var lsn string
	err := conn.QueryRow(ctx, `SELECT confirmed_lsn::text FROM relay.slot_position WHERE slot_name = $1`, s.cfg.Slot).Scan(&lsn)
	if err != nil {
		if !errors.Is(err, pgx.ErrNoRows) && !isCode(err, codeUndefinedTable) && !isCode(err, codeUndefinedSchema) {
			s.log.Warn("cannot read the durable position record; after a PostgreSQL crash a restart republishes from the slot's last saved position", "error", err)
		}
		return 0
	}
	p, err := relay.ParseLSN(lsn)
	if err != nil {
		return 0
	}
	return p
}

// Confirmed is the last position this source reported to PostgreSQL as
// confirmed, for the durable record (Leader.Hold).
func (s *Source) Confirmed() relay.LSN { return relay.LSN(s.confirmed.Load()) }

// ensurePositionTable creates relay.slot_position when missing and the
// role may; it reports whether the table can be written.
func (l *Leader) ensurePositionTable(ctx context.Context) error {
	var exists, writable bool
	err := l.conn.QueryRow(ctx, `
		SELECT to_regclass('relay.slot_position') IS NOT NULL,
		       CASE WHEN to_regclass('relay.slot_position') IS NULL THEN false
		            ELSE has_table_privilege('relay.slot_position', 'INSERT, UPDATE') END`).Scan(&exists, &writable)
	if err != nil {
		return fmt.Errorf("look up relay.slot_position: %w", err)
	}
	if !exists {
		if err := createShared(ctx, l.conn, stateDDL); err != nil && !isCreated(err) {
			return fmt.Errorf("create relay.slot_position (apply schema/relay_state.sql as its owner and grant the relay's role INSERT and UPDATE on it): %w", err)
		}
		return nil
	}
	if !writable {
		return errors.New("the role may not write relay.slot_position (grant it INSERT and UPDATE, as schema/role.sql does)")
	}
	return nil
}

// recordPosition writes lsn as the slot's durable position. It never moves
// the record back, so that relays taking turns cannot undo each other.
func (l *Leader) recordPosition(ctx context.Context, lsn relay.LSN) error {
	_, err := l.conn.Exec(ctx, `
		INSERT INTO relay.slot_position AS p (slot_name, confirmed_lsn) VALUES ($1, $2::text::pg_lsn)
		ON CONFLICT (slot_name) DO UPDATE SET confirmed_lsn = greatest(p.confirmed_lsn, excluded.confirmed_lsn), updated_at = now()`,
		l.cfg.Slot, lsn.String())
	return err
}

// CreateStateTables creates the relay schema's tables
// (schema/relay_state.sql) under the lock that relays starting together
// take to create what they share; tables another session created
// meanwhile are no error.
func CreateStateTables(ctx context.Context, conn *pgx.Conn) error {
	if err := createShared(ctx, conn, stateDDL); err != nil && !isCreated(err) {
		return err
	}
	return nil
}
