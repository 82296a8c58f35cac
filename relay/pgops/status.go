package pgops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relay-dev/relay/relay"
)

// SlotStatus is the state of a relay's replication slot and leader lock,
// as `relay status` shows it.
type SlotStatus struct {
	Slot   string
	Exists bool
	// Type and Plugin: a relay's slot is logical, pgoutput.
	Type, Plugin string
	// WALStatus is pg_replication_slots.wal_status: reserved, extended,
	// unreserved or lost.
	WALStatus string
	Active    bool
	ActivePID int32 // 0 unless Active
	// Confirmed is the slot's confirmed_flush_lsn: where a restart resumes.
	Confirmed relay.LSN
	// Lag is the WAL written since Confirmed, and Retained the WAL the slot
	// keeps from being removed (since restart_lsn), both in bytes; -1 when
	// the server has no such position for the slot.
	Lag, Retained int64
	// Leader is the session holding the leader lock (LeaderLockKey) in this
	// database; nil when none does.
	Leader *LockHolder
}

// LockHolder is the session holding the leader lock.
type LockHolder struct {
	PID             int32
	ApplicationName string
	// ClientAddr is the client's address, "local" for a Unix socket, or
	// empty when not visible to the role.
	ClientAddr string
	// Since is when its connection started; zero when not visible to the role.
	Since time.Time
}

// ReadStatus reads slot's state and who holds its leader lock, on a normal
// connection to the outbox database; it changes nothing.
func ReadStatus(ctx context.Context, connString, slot string) (SlotStatus, error) {
	st := SlotStatus{Slot: slot, Lag: -1, Retained: -1}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	conn, err := pgx.Connect(cctx, connString)
	cancel()
	if err != nil {
		return st, fmt.Errorf("connect to %s: %w", relay.RedactURL(connString), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	s, err := readSlot(ctx, conn, slot)
	if err != nil {
		return st, fmt.Errorf("read replication slot %s: %w", slot, err)
	}
	st.Exists, st.Type, st.Plugin, st.WALStatus, st.Active = s.exists, s.slotType, s.plugin, s.walStatus, s.active
	if s.activePID != nil {
		st.ActivePID = *s.activePID
	}
	if s.confirmed != nil {
		if st.Confirmed, err = relay.ParseLSN(*s.confirmed); err != nil {
			return st, fmt.Errorf("slot %s: confirmed_flush_lsn: %w", slot, err)
		}
	}
	if s.lag != nil {
		st.Lag = *s.lag
	}
	if s.retained != nil {
		st.Retained = *s.retained
	}

	// pg_locks shows a bigint advisory key as classid (high 32 bits) and
	// objid (low 32 bits) with objsubid 1; the key is per database.
	var h LockHolder
	var since *time.Time
	err = conn.QueryRow(ctx, `
		SELECT l.pid, coalesce(a.application_name, ''), CASE WHEN a.client_port = -1 THEN 'local' ELSE coalesce(host(a.client_addr), '') END, a.backend_start
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
			AND l.classid::bigint = ($1::bigint >> 32) & 4294967295
			AND l.objid::bigint = $1::bigint & 4294967295
		LIMIT 1`, LeaderLockKey(slot)).Scan(&h.PID, &h.ApplicationName, &h.ClientAddr, &since)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return st, fmt.Errorf("read the leader lock: %w", err)
	default:
		if since != nil {
			h.Since = *since
		}
		st.Leader = &h
	}
	return st, nil
}
