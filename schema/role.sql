-- A least-privilege role for the relay. Run as a superuser, after
-- outbox.sql; replace the password. The relay needs REPLICATION to open a
-- replication connection and create its slot, and SELECT on the outbox to
-- check its columns at start. Because creating a publication requires
-- owning the table, the publication is created here, by the owner.
CREATE ROLE relay WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO relay;
GRANT SELECT ON public.outbox TO relay;
CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert');
