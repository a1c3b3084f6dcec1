-- Each user's data key, wrapped (AES-256-GCM) by the master key from configuration. Kept out of the
-- immutable event log on purpose: deleting a row makes that user's encrypted data unreadable.
CREATE TABLE user_keys (
    user_id     TEXT PRIMARY KEY,
    wrapped_key TEXT NOT NULL,
    created_at  TEXT NOT NULL
);
