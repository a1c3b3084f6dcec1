-- The event store: one append-only table. `position` is the global order; it is assigned under a
-- transaction-scoped advisory lock, so positions are handed out in commit order and are gap-free
-- (a reader by position can never skip an event that commits later).
CREATE TABLE events (
    position        BIGINT      PRIMARY KEY,
    stream_id       TEXT        NOT NULL,
    stream_version  BIGINT      NOT NULL,
    event_type      TEXT        NOT NULL,
    schema_version  INTEGER     NOT NULL,
    payload         JSONB       NOT NULL,
    event_id        UUID        NOT NULL UNIQUE,
    correlation_id  UUID        NOT NULL,
    causation_id    UUID,
    actor_id        UUID,
    occurred_at     TIMESTAMPTZ NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_actor ON events (actor_id, position);

-- Events are immutable.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are immutable';
END;
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
