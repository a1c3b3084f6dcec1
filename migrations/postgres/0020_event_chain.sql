-- Tamper evidence (decision 012): each event's link in a hash chain, BLAKE3 over the previous link
-- and the event as stored (sealed fields sealed), written in the event's own transaction; and
-- signed checkpoints of the chain (Ed25519 under a key derived from the master key).
CREATE TABLE event_chain (
    position BIGINT PRIMARY KEY,
    hash     BYTEA  NOT NULL
);
CREATE TABLE chain_checkpoints (
    position  BIGINT      PRIMARY KEY,
    hash      BYTEA       NOT NULL,
    key_id    TEXT        NOT NULL,
    signature BYTEA       NOT NULL,
    signed_at TIMESTAMPTZ NOT NULL
);
