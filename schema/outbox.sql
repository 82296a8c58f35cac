-- The outbox table the relay reads by default (RELAY_COLUMN_PRESET=standard).
-- Insert one row per event in the same transaction as the business change;
-- the relay publishes it after commit. gen_random_uuid() is built in from
-- PostgreSQL 13.
CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The relay creates the publication itself when its role owns the table.
-- When it does not, create it here, as the table's owner:
--   CREATE PUBLICATION outbox_relay FOR TABLE public.outbox WITH (publish = 'insert');
