-- A sync run's bytes written to the folders (only the changed ranges of large files, where a side
-- takes ranged writes).
ALTER TABLE sync_operations ADD COLUMN bytes_written BIGINT;
