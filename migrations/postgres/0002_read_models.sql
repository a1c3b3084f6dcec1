-- Read models, written only by their projector. Checkpoints live beside them so a projector commits its
-- writes and its position in one transaction.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE projector_checkpoints (
    name     TEXT   PRIMARY KEY,
    position BIGINT NOT NULL
);

CREATE TABLE users (
    id         UUID        PRIMARY KEY,
    email      TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    settings   JSONB       NOT NULL DEFAULT '{}'
);
CREATE UNIQUE INDEX users_email ON users (email);

CREATE TABLE providers (
    id              UUID        PRIMARY KEY,
    user_id         UUID        NOT NULL,
    kind            TEXT        NOT NULL,
    display_name    TEXT        NOT NULL,
    config          JSONB       NOT NULL DEFAULT '{}',
    status          TEXT        NOT NULL,
    connected_at    TIMESTAMPTZ NOT NULL,
    disconnected_at TIMESTAMPTZ
);
CREATE INDEX providers_user ON providers (user_id);

CREATE TABLE files (
    id           UUID        PRIMARY KEY,
    user_id      UUID        NOT NULL,
    provider_id  UUID        NOT NULL,
    path         TEXT        NOT NULL,
    name         TEXT        NOT NULL,
    size_bytes   BIGINT      NOT NULL,
    mime_type    TEXT        NOT NULL,
    checksum     TEXT        NOT NULL,
    modified_at  TIMESTAMPTZ NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    metadata     JSONB       NOT NULL DEFAULT '{}'
);
CREATE INDEX files_user_provider_path ON files (user_id, provider_id, path);
CREATE INDEX files_path_trgm ON files USING gin (path gin_trgm_ops);
CREATE INDEX files_checksum ON files (checksum);

CREATE TABLE sync_operations (
    id           UUID        PRIMARY KEY,
    user_id      UUID        NOT NULL,
    kind         TEXT        NOT NULL,
    provider_id  UUID,
    status       TEXT        NOT NULL,
    paused       BOOLEAN     NOT NULL DEFAULT FALSE,
    files_done   BIGINT      NOT NULL DEFAULT 0,
    bytes_done   BIGINT      NOT NULL DEFAULT 0,
    files_total  BIGINT,
    bytes_total  BIGINT,
    error        TEXT,
    details      JSONB       NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ
);
CREATE INDEX sync_operations_user ON sync_operations (user_id, created_at);
