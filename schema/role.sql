-- A least-privilege role for the relay. Run it in the outbox database, after
-- outbox.sql, as a superuser (or as the outbox table's owner holding
-- CREATEROLE and REPLICATION). Change the password, or authenticate the role
-- with a client certificate (pg_hba.conf "hostssl ... cert" for both the
-- database and "replication"; docs/configuration.md, Security).
--
-- What the relay does, and what it needs for it:
--   replication connection, create and drop its slot   REPLICATION
--   check tables, columns, publication, slot (catalogs) nothing more
--   advisory lock, pg_logical_emit_message heartbeat    nothing more
--   the outbox tables                                   SELECT; it never writes
-- It is no superuser and owns nothing. Creating a publication FOR TABLE needs
-- ownership of the table, so the owner creates it here; the relay then only
-- checks that it publishes inserts of exactly RELAY_TABLES. To add an outbox
-- table later, grant SELECT on it and add it to the publication here
-- (ALTER PUBLICATION outbox_relay ADD TABLE ...) before adding it to
-- RELAY_TABLES: the relay's own attempt would fail for want of ownership.
--
-- Roles belong to the cluster, grants and publications to one database: run
-- this file in each database that has an outbox; the role is created once.
DO $$
BEGIN
    CREATE ROLE relay WITH LOGIN REPLICATION PASSWORD 'change-me';
EXCEPTION WHEN duplicate_object THEN
    RAISE NOTICE 'role relay exists; its attributes and password are left as they are';
END
$$;
GRANT USAGE ON SCHEMA public TO relay;
GRANT SELECT ON public.outbox TO relay;
CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert');

-- The relay's own small tables (schema/relay_state.sql has the same DDL):
-- the initial backfill's progress (RELAY_SNAPSHOT=initial), the confirmed
-- position and the progress of `relay replay`; it reads and writes them.
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
GRANT USAGE ON SCHEMA relay TO relay;
GRANT SELECT, INSERT, UPDATE ON relay.backfill TO relay;
GRANT SELECT, INSERT, UPDATE ON relay.slot_position TO relay;
-- `relay replay` records its progress here, so that an interrupted replay
-- resumes (--resume).
GRANT SELECT, INSERT, UPDATE ON relay.replay TO relay;

-- With RELAY_CLEANUP=after-publish or retain the relay deletes published rows:
-- GRANT DELETE ON public.outbox TO relay;
