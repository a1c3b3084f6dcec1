-- Write-side bookkeeping for the chunk store's garbage collector; not read models.
-- Leases: a sync run (or a restore, or an uploaded merge) holds a 'use' lease while it may hold
-- chunks it has not yet recorded; the collector holds the one 'collect' lease. Expired leases (a
-- killed process's) are ignored. Times are Unix milliseconds.
CREATE TABLE chunk_store_leases (
    holder     TEXT   PRIMARY KEY,
    kind       TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
-- Every sync pair the collector has seen in the log (up to its worker checkpoint 'chunk-gc'): the
-- pairs whose histories reference chunks.
CREATE TABLE chunk_store_pairs (
    pair_id TEXT PRIMARY KEY
);
-- Earlier versions of synced files, kept in the chunk store (a read model).
CREATE TABLE file_versions (
    id          TEXT    PRIMARY KEY,
    pair_id     TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    provider_id TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    side        TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    modified_at TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    kept_at     TEXT    NOT NULL
);
CREATE INDEX file_versions_file ON file_versions (user_id, provider_id, path, kept_at);
-- How many versions a pair keeps, and for how many days.
ALTER TABLE sync_pairs ADD COLUMN keep_versions INTEGER NOT NULL DEFAULT 10;
ALTER TABLE sync_pairs ADD COLUMN keep_days INTEGER NOT NULL DEFAULT 30;
