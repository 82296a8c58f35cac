-- The relay's own state, in a schema of its own: the progress of the initial
-- backfill (RELAY_SNAPSHOT=initial), one row per slot and outbox table, and
-- the last position the brokers confirmed, one row per slot, which survives
-- a PostgreSQL crash that the slot's own position does not. The
-- relay creates it when it may (CREATE on the database); otherwise apply this
-- file as the database owner and grant the relay's role what it needs, as
-- schema/role.sql does.
CREATE SCHEMA IF NOT EXISTS relay;
CREATE TABLE IF NOT EXISTS relay.backfill (
    slot_name   text    NOT NULL,
    table_name  text    NOT NULL,
    start_lsn   pg_lsn,
    rows_done   bigint  NOT NULL DEFAULT 0,
    last_key    text[],
    done        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (slot_name, table_name)
);
CREATE TABLE IF NOT EXISTS relay.slot_position (
    slot_name     text        PRIMARY KEY,
    confirmed_lsn pg_lsn      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
