package pgsource

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
)

// The durable position record. PostgreSQL writes a logical slot's
// confirmed position to disk only when the slot is saved for another
// reason, so a crash-restart can resume far behind it. The relay records
// the confirmed position in relay.slot_position (written by package
// pgops) and a session skips the transactions it covers; the record only
// holds positions already reported to PostgreSQL, so skipping never loses
// a row (docs/delivery-guarantees.md).

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
// confirmed, for the durable record (pgops.Leader).
func (s *Source) Confirmed() relay.LSN { return relay.LSN(s.confirmed.Load()) }

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
