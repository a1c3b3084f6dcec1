-- Files the content pipeline could not read from their provider (an outage, a network error), to be
-- read again from `due_at` (Unix seconds); `attempts` counts the rounds of reads that failed.
CREATE TABLE content_retries (
    file_id TEXT PRIMARY KEY,
    attempts BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX content_retries_due ON content_retries (due_at);
