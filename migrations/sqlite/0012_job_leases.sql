-- Write-side bookkeeping of the job runners, not a read model: which worker runs a job (the server's
-- job runner, or `cloudsync sync` / `cloudsync scan` in a terminal). `holder` is
-- `<host>/<process id>/<unique>`; a lease past `expires_at` (Unix milliseconds, by the database's
-- clock) has lapsed.
CREATE TABLE job_leases (
    job_id     TEXT   PRIMARY KEY,
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
