-- Snapshots of streams whose history grows long (a sync pair records every decision): the fold up
-- to a version, so that loading reads only the events after it. A cache of the log, never its
-- truth: nothing reads it but the loader, which passes over what it cannot read. An owner's
-- snapshots are sealed with their key (the sealing store), so an erased account's cannot be read.
CREATE TABLE stream_snapshots (
    stream_id      TEXT    PRIMARY KEY,
    stream_version BIGINT  NOT NULL,
    schema         TEXT    NOT NULL,
    owner_id       TEXT,
    data           BYTEA   NOT NULL
);
