-- The event store (embedded). SQLite has one writer at a time; appends take the write lock up front
-- (BEGIN IMMEDIATE), so positions are handed out in commit order and are gap-free.
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    event_id        TEXT    NOT NULL UNIQUE,
    correlation_id  TEXT    NOT NULL,
    causation_id    TEXT,
    actor_id        TEXT,
    occurred_at     TEXT    NOT NULL,
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX events_actor ON events (actor_id, position);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are immutable'); END;
