-- The relay's own state, in a schema of its own: the progress of the initial
-- backfill (RELAY_SNAPSHOT=initial), one row per slot and outbox table, the
-- last position the brokers confirmed, one row per slot, which survives
-- a PostgreSQL crash that the slot's own position does not, and the progress
-- of each `relay replay`, one row per replay and outbox table. The
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
CREATE TABLE IF NOT EXISTS relay.replay (
    replay_id   text        NOT NULL,
    table_name  text        NOT NULL,
    selection   jsonb       NOT NULL,
    rows_done   bigint      NOT NULL DEFAULT 0,
    last_key    text[],
    done        boolean     NOT NULL DEFAULT false,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replay_id, table_name)
);
