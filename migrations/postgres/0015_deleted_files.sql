-- Files deleted with their content kept in the chunk store (by resolveDuplicate), restorable until
-- their retention ends: the 'deleted_files' projector's table.
CREATE TABLE deleted_files (
    file_id     UUID        PRIMARY KEY,
    user_id     UUID        NOT NULL,
    provider_id UUID        NOT NULL,
    path        TEXT        NOT NULL,
    checksum    TEXT        NOT NULL,
    size_bytes  BIGINT      NOT NULL,
    modified_at TIMESTAMPTZ NOT NULL,
    reason      TEXT        NOT NULL,
    deleted_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX deleted_files_user ON deleted_files (user_id, deleted_at);
