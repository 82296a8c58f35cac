-- A least-privilege role for the relay. Run it with psql in the outbox
-- database, after outbox.sql, as a superuser (or as the outbox table's owner
-- holding CREATEROLE and REPLICATION). Change the password, or authenticate the role
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

-- The relay's own small tables: the initial backfill's progress
-- (RELAY_SNAPSHOT=initial), the confirmed position and the progress of
-- `relay replay`; it reads and writes them. \ir is psql's: apply this file
-- with psql (psql -v ON_ERROR_STOP=1 -f schema/role.sql ...), which reads
-- relay_state.sql from this file's directory.
\ir relay_state.sql
GRANT USAGE ON SCHEMA relay TO relay;
GRANT SELECT, INSERT, UPDATE ON relay.backfill TO relay;
GRANT SELECT, INSERT, UPDATE ON relay.slot_position TO relay;
-- `relay replay` records its progress here, so that an interrupted replay
-- resumes (--resume).
GRANT SELECT, INSERT, UPDATE ON relay.replay TO relay;

-- With RELAY_CLEANUP=after-publish or retain the relay deletes published rows:
-- GRANT DELETE ON public.outbox TO relay;
