-- Read models (embedded). Same shape as on PostgreSQL: UUIDs as hyphenated text, timestamps as
-- RFC 3339 text, JSON as text.
CREATE TABLE projector_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);

CREATE TABLE users (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    settings   TEXT NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE providers (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    kind            TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    config          TEXT NOT NULL DEFAULT '{}',
    status          TEXT NOT NULL,
    connected_at    TEXT NOT NULL,
    disconnected_at TEXT
);
CREATE INDEX providers_user ON providers (user_id);

CREATE TABLE files (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    provider_id  TEXT    NOT NULL,
    path         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    size_bytes   INTEGER NOT NULL,
    mime_type    TEXT    NOT NULL,
    checksum     TEXT    NOT NULL,
    modified_at  TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    metadata     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX files_user_provider_path ON files (user_id, provider_id, path);
CREATE INDEX files_checksum ON files (checksum);

CREATE TABLE sync_operations (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    provider_id  TEXT,
    status       TEXT    NOT NULL,
    paused       INTEGER NOT NULL DEFAULT 0,
    files_done   INTEGER NOT NULL DEFAULT 0,
    bytes_done   INTEGER NOT NULL DEFAULT 0,
    files_total  INTEGER,
    bytes_total  INTEGER,
    error        TEXT,
    details      TEXT    NOT NULL DEFAULT '{}',
    created_at   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    completed_at TEXT
);
CREATE INDEX sync_operations_user ON sync_operations (user_id, created_at);
