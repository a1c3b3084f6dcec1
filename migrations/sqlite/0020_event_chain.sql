-- Tamper evidence (decision 012): each event's link in a hash chain, BLAKE3 over the previous link
-- and the event as stored (sealed fields sealed), written in the event's own transaction; and
-- signed checkpoints of the chain (Ed25519 under a key derived from the master key).
CREATE TABLE event_chain (
    position INTEGER PRIMARY KEY,
    hash     BLOB    NOT NULL
);
CREATE TABLE chain_checkpoints (
    position  INTEGER PRIMARY KEY,
    hash      BLOB    NOT NULL,
    key_id    TEXT    NOT NULL,
    signature BLOB    NOT NULL,
    signed_at TEXT    NOT NULL
);
