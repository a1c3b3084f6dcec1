-- Sync pairs: two folders kept in agreement, and the pair's latest run.
CREATE TABLE sync_pairs (
    id                 UUID        PRIMARY KEY,
    user_id            UUID        NOT NULL,
    source_provider_id UUID        NOT NULL,
    source_path        TEXT        NOT NULL,
    target_provider_id UUID        NOT NULL,
    target_path        TEXT        NOT NULL,
    mode               TEXT        NOT NULL,
    conflict_policy    TEXT        NOT NULL,
    max_delete_percent INTEGER     NOT NULL,
    schedule           TEXT,
    realtime           BOOLEAN     NOT NULL DEFAULT FALSE,
    last_operation_id  UUID,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX sync_pairs_user ON sync_pairs (user_id, created_at);

-- What a run held by the max-delete rail would delete (JSON), while it waits for approval.
ALTER TABLE sync_operations ADD COLUMN held TEXT;
-- A sync run's bytes written to the folders (only the changed ranges of large files, where a side
-- takes ranged writes).
ALTER TABLE sync_operations ADD COLUMN bytes_written BIGINT;

-- Conflicts left for their owner (MANUAL), until both sides agree on the path again.
CREATE TABLE sync_conflicts (
    pair_id         UUID        NOT NULL,
    path            TEXT        NOT NULL,
    user_id         UUID        NOT NULL,
    kind            TEXT        NOT NULL,
    source_checksum TEXT,
    source_size     BIGINT,
    target_checksum TEXT,
    target_size     BIGINT,
    resolution      TEXT,
    detected_at     TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (pair_id, path)
);
