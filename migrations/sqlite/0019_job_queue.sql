-- A job's attempts that stopped short and are retried (SyncJobRetrying): how many, why the last
-- one stopped, and when the next is due.
ALTER TABLE sync_operations ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_operations ADD COLUMN retry_reason TEXT;
ALTER TABLE sync_operations ADD COLUMN retry_at TEXT;

-- Write-side bookkeeping of the job relay, not a read model: every job that has not ended, as the
-- relay found it in the log. `attempt` is the attempt the queue carries (1 the first time);
-- `due_at` when it may be published (a retry's backoff), `published_at` when the queue took it
-- (NULL: to publish), `claimed_at` when a worker took its lease and started it (Unix
-- milliseconds, by the database's clock) and `claimed_version` the job's stream version then (an
-- attempt whose worker vanished after the job moved on is resumed, not counted as failed, up to a
-- limit that `resumes` counts). The relay deletes the row when the job ends.
CREATE TABLE queued_jobs (
    job_id       TEXT   PRIMARY KEY,
    attempt      INTEGER NOT NULL,
    due_at       BIGINT NOT NULL,
    published_at BIGINT,
    claimed_at   BIGINT,
    claimed_version BIGINT,
    resumes      BIGINT NOT NULL DEFAULT 0
);

-- The relay starts where the job runner it replaces had got to (every job not ended lies after it).
INSERT INTO worker_checkpoints (name, position)
SELECT 'relay', position FROM worker_checkpoints WHERE name = 'jobs';

-- Which process does work that one process at a time may do (the job relay, the scheduler, the
-- content pipeline): `holder` as in job_leases, lapsing at `expires_at` unless renewed.
CREATE TABLE singleton_leases (
    name       TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
