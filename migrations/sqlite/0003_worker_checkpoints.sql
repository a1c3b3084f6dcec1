-- Write-side bookkeeping: how far each worker (the job runner) has dispatched the log. Not a read model.
CREATE TABLE worker_checkpoints (
    name     TEXT    PRIMARY KEY,
    position INTEGER NOT NULL
);
