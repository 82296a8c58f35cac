// Package inbox lets a consumer apply each message exactly once against its
// own PostgreSQL database.
//
// The relay delivers every outbox event at least once, each time with the
// same dedup key (the AMQP message_id or the Kafka "id" header: the outbox
// row's id). A consumer makes that exactly once by recording the key in an
// inbox table inside the same transaction as the message's side effect:
//
//	first, err := ib.Claim(ctx, tx, messageID)
//	if first {
//		// apply the side effect with tx
//	}
//	tx.Commit(ctx) // the side effect and the claim commit together, or neither does
//	delivery.Ack() // only after the commit
//
// A crash before the commit rolls back both, so the redelivered message is
// applied then; a crash between the commit and the acknowledgement makes
// the broker redeliver a message whose key is already claimed, and Claim
// reports it as a duplicate. Process wraps that sequence.
//
// Claim is an INSERT … ON CONFLICT DO NOTHING on the table's primary key
// (consumer, message_id). Under READ COMMITTED (PostgreSQL's default) two
// transactions claiming the same key concurrently cannot both win: the second
// waits on the first's uncommitted index entry, then reports a duplicate if
// the first committed, or claims the key if it rolled back. Under REPEATABLE
// READ or SERIALIZABLE the second fails with a serialization error instead
// (SQLSTATE 40001), and the caller retries the message.
//
// Keys are kept until Prune removes them. Prune only keys older than any
// redelivery can be: a key pruned while its message can still arrive again
// lets that message be applied twice.
//
// The package imports pgx and the standard library only; the subpackages
// inboxamqp and inboxkafka read the key from an amqp091 delivery or a
// franz-go record.
package inbox

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DefaultTable is the inbox table's name unless WithTable says otherwise,
// the table schema/inbox.sql creates.
const DefaultTable = "inbox"

// ErrNoMessageID is returned for a message without a dedup key. Such a
// message must not be processed: nothing could tell its redeliveries apart
// from new messages.
var ErrNoMessageID = errors.New("inbox: message has no id")

// Inbox records the message ids one consumer has applied. It holds no
// connection and is safe for concurrent use.
type Inbox struct {
	consumer string
	table    string // sanitized, possibly schema-qualified
	index    string // sanitized name of the retention index
	claimSQL string
	pruneSQL string
}

// Option configures an Inbox.
type Option func(*options)

type options struct {
	table string
}

// WithTable sets the inbox table, "table" or "schema.table"; the default is
// DefaultTable, found through the search_path. The names are quoted, so
// they are taken as they are written, case included.
func WithTable(name string) Option {
	return func(o *options) { o.table = name }
}

// New returns the inbox of consumer. Several consumers may share one table:
// each claims its keys under its own name, so one message can be applied once
// by each of them.
func New(consumer string, opts ...Option) (*Inbox, error) {
	o := options{table: DefaultTable}
	for _, opt := range opts {
		opt(&o)
	}
	if consumer == "" {
		return nil, errors.New("inbox: consumer name is empty")
	}
	parts := strings.Split(o.table, ".")
	if len(parts) > 2 || slices.Contains(parts, "") {
		return nil, fmt.Errorf("inbox: table %q is not \"table\" or \"schema.table\"", o.table)
	}
	table := pgx.Identifier(parts).Sanitize()
	index := pgx.Identifier{parts[len(parts)-1] + "_consumer_received_at_idx"}.Sanitize()
	return &Inbox{
		consumer: consumer,
		table:    table,
		index:    index,
		claimSQL: "INSERT INTO " + table + " (consumer, message_id) VALUES ($1, $2) ON CONFLICT (consumer, message_id) DO NOTHING",
		// Rows are deleted by ctid, chosen in the same statement, so a batch
		// locks at most limit rows; the outer conditions repeat the inner ones
		// so that a row changed since the subquery's snapshot is left alone.
		pruneSQL: "DELETE FROM " + table + " WHERE ctid = ANY (ARRAY(SELECT ctid FROM " + table +
			" WHERE consumer = $1 AND received_at < $2 LIMIT $3)) AND consumer = $1 AND received_at < $2",
	}, nil
}

// Consumer returns the consumer name the inbox claims keys under.
func (ib *Inbox) Consumer() string { return ib.consumer }

// Table returns the inbox table's name, quoted for use in SQL.
func (ib *Inbox) Table() string { return ib.table }

// Schema returns the DDL of the inbox table and its retention index. For the
// default table it is schema/inbox.sql. Both statements use IF NOT EXISTS.
func (ib *Inbox) Schema() string {
	return "CREATE TABLE IF NOT EXISTS " + ib.table + ` (
    consumer    text        NOT NULL,
    message_id  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS ` + ib.index + " ON " + ib.table + " (consumer, received_at);\n"
}

// Querier is a database handle that runs statements on their own:
// *pgxpool.Pool and *pgx.Conn satisfy it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// CreateTable applies Schema. Applications that run migrations should put
// schema/inbox.sql into them instead: two processes creating the same table
// at the same moment can fail.
func (ib *Inbox) CreateTable(ctx context.Context, db Querier) error {
	if _, err := db.Exec(ctx, ib.Schema()); err != nil {
		return fmt.Errorf("inbox: create table %s: %w", ib.table, err)
	}
	return nil
}

// Claim records messageID as applied by the inbox's consumer within tx and
// reports whether this is the first claim of it. When first is false the
// message was applied already (or is being applied by a transaction that
// has since committed) and must not be applied again.
//
// The claim belongs to tx: it is undone if tx rolls back, so the side
// effect of the message must be made with the same tx. When another open
// transaction holds a claim of the same id, Claim waits for it to end.
func (ib *Inbox) Claim(ctx context.Context, tx pgx.Tx, messageID string) (first bool, err error) {
	if messageID == "" {
		return false, ErrNoMessageID
	}
	tag, err := tx.Exec(ctx, ib.claimSQL, ib.consumer, messageID)
	if err != nil {
		return false, fmt.Errorf("inbox: claim %s: %w", messageID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Beginner starts transactions: *pgxpool.Pool and *pgx.Conn satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Process applies a message once: it begins a transaction on db, claims
// messageID, runs apply with the transaction if the claim is the first, and
// commits. It reports whether apply ran and committed.
//
// (false, nil) means the message is a duplicate; acknowledge it. An error
// from apply, or from the commit, rolls everything back, claim included:
// do not acknowledge the message, so that it comes again. A commit whose
// outcome is unknown (the connection broke during it) is an error too;
// the redelivery then finds the claim if the commit did happen.
//
// apply must do all its work with tx and must not commit or roll it back.
func (ib *Inbox) Process(ctx context.Context, db Beginner, messageID string, apply func(tx pgx.Tx) error) (applied bool, err error) {
	if messageID == "" {
		return false, ErrNoMessageID
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("inbox: begin: %w", err)
	}
	// A no-op after Commit; undoes everything on any early return.
	defer tx.Rollback(context.WithoutCancel(ctx))
	first, err := ib.Claim(ctx, tx, messageID)
	if err != nil || !first {
		return false, err
	}
	if err := apply(tx); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("inbox: commit %s: %w", messageID, err)
	}
	return true, nil
}
