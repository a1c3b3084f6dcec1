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

-- Like the events, their links are never changed or removed, and checkpoints never removed (a
-- master-key rotation signs them again in place).
CREATE TRIGGER event_chain_no_update BEFORE UPDATE OR DELETE ON event_chain
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
CREATE TRIGGER chain_checkpoints_no_delete BEFORE DELETE ON chain_checkpoints
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
