-- The inbox table of package inbox (github.com/relay-dev/relay/inbox), in the
-- consumer's database: one row per message a consumer has applied, written in
-- the same transaction as the message's side effect. Several consumers can
-- share it; each claims message ids under its own name. (*inbox.Inbox).Schema
-- returns this DDL for any table name, and CreateTable applies it.
CREATE TABLE IF NOT EXISTS inbox (
    consumer    text        NOT NULL,
    message_id  text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
-- Retention: Prune deletes one consumer's rows older than a cutoff, in batches.
CREATE INDEX IF NOT EXISTS inbox_consumer_received_at_idx ON inbox (consumer, received_at);
