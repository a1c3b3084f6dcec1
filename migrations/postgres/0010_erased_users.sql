-- Erased accounts. Each projector records the account here as it erases the account's rows, and
-- from then on writes no row for it (a scan or sync run that was still going when the account was
-- erased may append events after the erasure).
CREATE TABLE erased_users (
    user_id TEXT PRIMARY KEY
);
