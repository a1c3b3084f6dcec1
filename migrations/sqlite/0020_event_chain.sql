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

-- Like the events, their links are never changed or removed, and checkpoints never removed (a
-- master-key rotation signs them again in place).
CREATE TRIGGER event_chain_no_update BEFORE UPDATE ON event_chain
BEGIN SELECT RAISE(ABORT, 'chain links are immutable'); END;
CREATE TRIGGER event_chain_no_delete BEFORE DELETE ON event_chain
BEGIN SELECT RAISE(ABORT, 'chain links are immutable'); END;
CREATE TRIGGER chain_checkpoints_no_delete BEFORE DELETE ON chain_checkpoints
BEGIN SELECT RAISE(ABORT, 'chain checkpoints are kept'); END;
