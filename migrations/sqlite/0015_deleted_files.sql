-- Files deleted with their content kept in the chunk store (by resolveDuplicate), restorable until
-- their retention ends: the 'deleted_files' projector's table.
CREATE TABLE deleted_files (
    file_id     TEXT    PRIMARY KEY,
    user_id     TEXT    NOT NULL,
    provider_id TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    checksum    TEXT    NOT NULL,
    size_bytes  INTEGER NOT NULL,
    modified_at TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    deleted_at  TEXT    NOT NULL
);
CREATE INDEX deleted_files_user ON deleted_files (user_id, deleted_at);
