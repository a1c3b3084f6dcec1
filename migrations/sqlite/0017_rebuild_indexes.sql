-- Secondary indexes that a full rebuild of a read model dropped, to build once at its end instead of
-- row by row. Whatever is still here when the projectors start (a rebuild that was killed) is built
-- again then.
CREATE TABLE rebuild_indexes (
    name       TEXT PRIMARY KEY,
    table_name TEXT NOT NULL,
    definition TEXT NOT NULL
);
