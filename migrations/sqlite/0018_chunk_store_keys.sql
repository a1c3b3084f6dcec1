-- Each account's key of the chunk store (which seals its chunks and names them), wrapped by the
-- chunk-store key: a key ring of its own, apart from the master key, rotated on its own. Erasing
-- the account replaces its key by a tombstone: its chunks can no longer be opened or named.
CREATE TABLE chunk_store_keys (
    user_id     TEXT PRIMARY KEY,
    wrapped_key TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

-- Accounts erased before this table existed are erased here too: no chunk-store key is ever made
-- for them.
INSERT INTO chunk_store_keys (user_id, wrapped_key, created_at)
SELECT user_id, wrapped_key, created_at FROM user_keys WHERE wrapped_key = 'erased';
