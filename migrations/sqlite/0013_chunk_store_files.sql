-- Every file whose extracted text the collector has seen in the log (up to its worker checkpoint
-- 'chunk-gc'): the files whose current text it keeps.
CREATE TABLE chunk_store_files (
    file_id TEXT PRIMARY KEY
);
