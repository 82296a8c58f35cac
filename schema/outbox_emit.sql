-- Table-less outbox: publish an event without an outbox table.
--
-- outbox_emit writes a transactional logical decoding message with the
-- relay's prefix (RELAY_MESSAGE_PREFIX, default 'outbox'). It is part of the
-- calling transaction: the relay publishes it once the transaction commits,
-- and never if it rolls back. Nothing is stored in a table, so there is
-- nothing to clean up. The dedup key is id, or, when id is NULL, the
-- transaction's commit LSN and the message's index in it.
--
--   BEGIN;
--   UPDATE accounts SET balance = balance - 10 WHERE id = 7;
--   SELECT outbox_emit('account', '7', 'account.debited', '{"amount": 10}');
--   COMMIT;

CREATE OR REPLACE FUNCTION outbox_emit(
    aggregate_type text,
    aggregate_id   text,
    event_type     text,
    payload        jsonb,
    headers        jsonb DEFAULT NULL,
    id             text  DEFAULT gen_random_uuid()::text,
    prefix         text  DEFAULT 'outbox'
) RETURNS pg_lsn
LANGUAGE sql VOLATILE
AS $$
    SELECT pg_logical_emit_message(true, prefix, jsonb_build_object(
        'id', id,
        'aggregate_type', aggregate_type,
        'aggregate_id', aggregate_id,
        'event_type', event_type,
        'payload', payload,
        'headers', headers)::text)
$$;
