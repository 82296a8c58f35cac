package inbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

// Prune deletes the consumer's claims older than olderThan, at most batch
// rows per statement, each statement in its own transaction, so that it never
// holds many row locks or a long transaction; pass a pool or a connection,
// not a transaction. Age is measured by the database clock, from one cutoff
// taken when Prune starts. It returns how many rows it deleted, also when
// it stops early with an error.
//
// olderThan must exceed the longest time a message can still be redelivered
// after it was first applied (broker retention, consumer downtime, replays):
// a redelivery arriving after its key was pruned is applied again.
func (ib *Inbox) Prune(ctx context.Context, db Querier, olderThan time.Duration, batch int) (deleted int64, err error) {
	if olderThan <= 0 {
		return 0, fmt.Errorf("inbox: prune older than %s: must be positive", olderThan)
	}
	if batch <= 0 {
		return 0, fmt.Errorf("inbox: prune batch %d: must be positive", batch)
	}
	var cutoff time.Time
	if err := db.QueryRow(ctx, "SELECT now() - make_interval(secs => $1)", olderThan.Seconds()).Scan(&cutoff); err != nil {
		return 0, fmt.Errorf("inbox: prune: read clock: %w", err)
	}
	for {
		tag, err := db.Exec(ctx, ib.pruneSQL, ib.consumer, cutoff, batch)
		if err != nil {
			return deleted, fmt.Errorf("inbox: prune %s: %w", ib.table, err)
		}
		deleted += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return deleted, nil
		}
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
	}
}

// PrunerConfig configures RunPruner.
type PrunerConfig struct {
	// Retention is how old a claim gets before it is deleted; required. See
	// Prune for how long it must be.
	Retention time.Duration
	// Interval is the time between two prunes. Default: one hour.
	Interval time.Duration
	// BatchSize is the most rows one statement deletes. Default: 1000.
	BatchSize int
	// Logger receives a line per prune that deleted rows (info) or failed
	// (warn). Default: slog.Default().
	Logger *slog.Logger
}

// RunPruner prunes the inbox now and then every cfg.Interval until ctx ends,
// then returns nil. A failed prune is logged and tried again at the next
// interval; only an invalid configuration is returned as an error.
func (ib *Inbox) RunPruner(ctx context.Context, db Querier, cfg PrunerConfig) error {
	if cfg.Retention <= 0 {
		return errors.New("inbox: pruner retention must be positive")
	}
	if cfg.Interval < 0 || cfg.BatchSize < 0 {
		return fmt.Errorf("inbox: pruner interval %s and batch size %d must not be negative", cfg.Interval, cfg.BatchSize)
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Hour
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 1000
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "inbox_pruner", "table", ib.table, "consumer", ib.consumer)
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		start := time.Now()
		n, err := ib.Prune(ctx, db, cfg.Retention, cfg.BatchSize)
		// What was deleted is logged also when ctx ended meanwhile.
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("prune failed", "deleted", n, "err", err)
		case n > 0:
			log.Info("pruned", "deleted", n, "duration", time.Since(start))
		}
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
