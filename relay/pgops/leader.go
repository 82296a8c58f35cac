package pgops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relay-dev/relay/relay"
)

// recordEvery is how often the leader writes the confirmed position to
// relay.slot_position when it moved.
const recordEvery = 250 * time.Millisecond

// LeaderConfig configures a Leader.
type LeaderConfig struct {
	// ConnString is the database URL; the lock lives on a normal
	// connection to it.
	ConnString string
	// Slot keys the lock: relays that share a slot contend for one lock.
	Slot string
	// Heartbeat is how often the leader writes a heartbeat message to the
	// WAL (pg_logical_emit_message), so that the slot has something to
	// confirm when only other databases write. 0 disables it.
	Heartbeat time.Duration
	// Poll is how often a standby tries the lock. Default 1s.
	Poll time.Duration
	// Position, when set, is the position the relay last confirmed to
	// PostgreSQL (pgsource.Source.Confirmed), which the leader keeps in
	// relay.slot_position (position.go).
	Position func() relay.LSN
	// Metrics is told about the lock, the slot's WAL and heartbeats;
	// nil: nothing is.
	Metrics Observer
	Logger  *slog.Logger
}

// Observer is what the leader reports, for metrics.
type Observer interface {
	// Leader reports whether this relay holds the lock.
	Leader(on bool)
	// RetainedWAL is the WAL the slot holds back, in bytes.
	RetainedWAL(bytes int64)
	// SafeWAL is how much more WAL the slot may hold before PostgreSQL
	// invalidates it; -1 when there is no limit.
	SafeWAL(bytes int64)
	// Heartbeat counts a heartbeat written.
	Heartbeat()
}

type nopObserver struct{}

func (nopObserver) Leader(bool)       {}
func (nopObserver) RetainedWAL(int64) {}
func (nopObserver) SafeWAL(int64)     {}
func (nopObserver) Heartbeat()        {}

// Leader is the leader lock: a session-level advisory lock keyed by the
// slot, held on a normal connection for as long as this relay streams.
// The slot admits one reader anyway, but a lock lets a standby wait
// quietly and take over within a poll interval of the leader's death
// (PostgreSQL releases the lock when the leader's backend sees its
// connection close), and it gives the leader a connection for heartbeats
// and slot statistics.
type Leader struct {
	cfg  LeaderConfig
	log  *slog.Logger
	conn *pgx.Conn
	// systemID and database identify the stream (Stream).
	systemID, database string
	// recorded is the position last written to relay.slot_position;
	// recording is false once the table turned out unusable.
	recorded  relay.LSN
	recording bool
}

// NewLeader returns a Leader; Acquire connects.
func NewLeader(cfg LeaderConfig) *Leader {
	if cfg.Metrics == nil {
		cfg.Metrics = nopObserver{}
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Leader{cfg: cfg, log: log.With("component", "leader")}
}

// Acquire blocks until this relay holds the lock or ctx ends. waiting is
// called with the reason while it does not.
func (l *Leader) Acquire(ctx context.Context, waiting func(reason string)) error {
	key := LeaderLockKey(l.cfg.Slot)
	backoff := relay.NewBackoff(500*time.Millisecond, 10*time.Second)
	logged := false
	for {
		if l.conn == nil {
			conn, err := l.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if relay.IsPermanent(err) {
					return err
				}
				wait := backoff.Next()
				waiting("cannot connect to PostgreSQL for the leader lock")
				l.log.Warn("cannot connect for the leader lock; retrying", "error", err, "retry_in", wait.String())
				if !relay.Sleep(ctx, wait) {
					return ctx.Err()
				}
				continue
			}
			l.conn = conn
			backoff.Reset()
		}
		var got bool
		err := l.conn.QueryRow(ctx, `
			SELECT pg_try_advisory_lock($1), system_identifier::text, current_database()
			FROM pg_control_system()`, key).Scan(&got, &l.systemID, &l.database)
		if err != nil {
			l.drop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			l.log.Warn("trying the leader lock failed; reconnecting", "error", err)
			continue
		}
		if got {
			l.cfg.Metrics.Leader(true)
			l.log.Info("leader lock acquired: this relay streams", "slot", l.cfg.Slot)
			l.recorded, l.recording = 0, l.cfg.Position != nil
			if l.recording {
				if err := l.ensurePositionTable(ctx); err != nil {
					l.recording = false
					l.log.Warn("cannot keep a durable position record; after a PostgreSQL crash a restart republishes from the slot's last saved position", "error", err)
				}
			}
			return nil
		}
		holder := l.holder(ctx, key)
		waiting("standby: another relay holds the leader lock for slot " + l.cfg.Slot + holder)
		if !logged {
			l.log.Info("standing by: another relay holds the leader lock", "slot", l.cfg.Slot, "holder", holder)
			logged = true
		}
		if !relay.Sleep(ctx, l.cfg.Poll) {
			return ctx.Err()
		}
	}
}

// holder describes the session holding the lock, for messages.
func (l *Leader) holder(ctx context.Context, key int64) string {
	var pid int32
	var app, addr *string
	err := l.conn.QueryRow(ctx, `
		SELECT l.pid, a.application_name, host(a.client_addr)
		FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
		  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		  AND l.classid::bigint = ($1::bigint >> 32) & 4294967295 AND l.objid::bigint = $1::bigint & 4294967295`, key).Scan(&pid, &app, &addr)
	if err != nil {
		return ""
	}
	s := fmt.Sprintf(" (backend pid %d", pid)
	if app != nil && *app != "" {
		s += ", application " + *app
	}
	if addr != nil {
		s += ", from " + *addr
	}
	return s + ")"
}

// Hold keeps the lock until ctx ends or the lock's connection fails, which
// it reports by returning an error: another relay may take over at once,
// so the caller must stop streaming. Meanwhile it writes heartbeats and
// records the slot's retained WAL.
func (l *Leader) Hold(ctx context.Context) error {
	check := time.NewTicker(2 * time.Second)
	defer check.Stop()
	// A few hundred milliseconds bound what a PostgreSQL crash republishes
	// (position.go) for one small write each.
	record := time.NewTicker(recordEvery)
	defer record.Stop()
	var beat <-chan time.Time
	if l.cfg.Heartbeat > 0 {
		t := time.NewTicker(l.cfg.Heartbeat)
		defer t.Stop()
		beat = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-check.C:
			// safe_wal_size is NULL without max_slot_wal_keep_size.
			var retained, safe *int64
			err := l.conn.QueryRow(ctx, `
				SELECT (pg_current_wal_lsn() - restart_lsn)::bigint, safe_wal_size
				FROM pg_replication_slots WHERE slot_name = $1`, l.cfg.Slot).Scan(&retained, &safe)
			if errors.Is(err, pgx.ErrNoRows) {
				continue // not created yet, or gone: the source says which
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("the leader lock's connection failed, so another relay may take over: %w", err)
			}
			if retained != nil {
				l.cfg.Metrics.RetainedWAL(*retained)
			}
			if safe != nil {
				l.cfg.Metrics.SafeWAL(*safe)
			} else {
				l.cfg.Metrics.SafeWAL(-1)
			}
		case <-record.C:
			if !l.recording {
				continue
			}
			lsn := l.cfg.Position()
			if lsn <= l.recorded {
				continue
			}
			if err := l.recordPosition(ctx, lsn); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) {
					return fmt.Errorf("record the confirmed position on the leader lock's connection: %w", err)
				}
				// The server refused the write (a revoked grant, a dropped
				// table): the record only spares duplicates, so go without.
				l.recording = false
				l.log.Warn("cannot keep a durable position record any more; after a PostgreSQL crash a restart republishes from the slot's last saved position", "error", err)
				continue
			}
			l.recorded = lsn
		case <-beat:
			// Non-transactional: it is in the WAL at once, costs no
			// transaction id, and pgoutput does not send it to a client
			// that did not ask for messages.
			_, err := l.conn.Exec(ctx, "SELECT pg_logical_emit_message(false, 'relay-heartbeat', now()::text)")
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("heartbeat on the leader lock's connection: %w", err)
			}
			l.cfg.Metrics.Heartbeat()
		}
	}
}

// Stream identifies the stream this relay leads, as read when the lock was
// acquired: the database cluster's system identifier (shared by its
// physical replicas, so it survives a failover) and the database. With the
// slot they tell this stream apart from any other, even where two services
// chose the same slot name.
func (l *Leader) Stream() (systemID, database string) { return l.systemID, l.database }

// Release gives the lock up by closing its connection.
func (l *Leader) Release() {
	l.cfg.Metrics.Leader(false)
	l.drop()
}

func (l *Leader) drop() {
	if l.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx)
	l.conn = nil
}

func (l *Leader) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(l.cfg.ConnString)
	if err != nil {
		return nil, relay.Permanent(fmt.Errorf("parse database url: %w", err))
	}
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = "relay"
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", relay.RedactURL(l.cfg.ConnString), err)
	}
	return conn, nil
}
