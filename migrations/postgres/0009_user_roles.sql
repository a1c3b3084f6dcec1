-- Roles (comma-separated, always with 'user'), storage quota (NULL: unlimited) and subscription
-- tier of each user, for the administrators' user list.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT 'user';
ALTER TABLE users ADD COLUMN quota_bytes BIGINT;
ALTER TABLE users ADD COLUMN tier TEXT NOT NULL DEFAULT 'free';
