-- The outbox layout of Debezium's outbox event router, which the relay
-- reads with RELAY_COLUMN_PRESET=debezium: existing Debezium outbox tables
-- work without a migration.
CREATE TABLE IF NOT EXISTS public.outboxevent (
    id            uuid         PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid   varchar(255) NOT NULL,
    type          varchar(255) NOT NULL,
    payload       jsonb
);
