package pgops

import (
	"context"
	"errors"
	"fmt"

	"github.com/relay-dev/relay/relay"
	"github.com/relay-dev/relay/relay/pgsource"
)

// The durable position record (pgsource's position.go says what it
// spares): the leader writes it on its lock's connection.

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
		if err := pgsource.CreateStateTables(ctx, l.conn); err != nil {
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
