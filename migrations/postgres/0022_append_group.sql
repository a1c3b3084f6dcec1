-- Group commit in one round trip (decision 015). The group writer plans a group on the head it last
-- wrote and on the versions it expects the group's streams to be at, and sends it here, where the
-- plan is checked under the append lock (decision 001): the rows go in at the positions after that
-- head, so if another process appended since, the first is found taken (and the one before it must
-- hold the link the plan was chained to); a stream that moved past the version assumed refuses its
-- next version (the unique stream and version: an error, which the writer expects); a stream not
-- yet at the version assumed is found here. The function then returns false, or fails, and writes
-- nothing, and the writer writes the group again under the lock after reading the head and
-- versions. Every stream of a plan sent here gets rows (the writer reads the others). Called on its
-- own, the statement is its own transaction: one round trip and one flush a group.
CREATE FUNCTION cloudsync_append_group(
    lock_key BIGINT, streams TEXT[], reached BIGINT[],
    positions BIGINT[], stream_ids TEXT[], stream_versions BIGINT[], event_types TEXT[],
    schema_versions INTEGER[], payloads TEXT[], event_ids UUID[], correlation_ids UUID[],
    causation_ids UUID[], actor_ids UUID[], occurred_ats TIMESTAMPTZ[], previous BYTEA, links BYTEA[],
    channel TEXT
) RETURNS BOOLEAN LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    -- Another process appended since the plan's head (else the primary key would refuse the rows,
    -- which is the same answer but an error in the server's log each time processes take turns).
    IF EXISTS (SELECT 1 FROM events e WHERE e.position = positions[1]) THEN
        RETURN FALSE;
    END IF;
    -- The log still ends where the plan was made (not, say, cut back by a restore).
    IF positions[1] > 1 AND NOT EXISTS (
        SELECT 1 FROM event_chain c WHERE c.position = positions[1] - 1 AND c.hash = previous
    ) THEN
        RETURN FALSE;
    END IF;
    -- Versions are dense, so a stream holding its assumed version and refusing the next is at it.
    IF cardinality(streams) > 0 AND EXISTS (
        SELECT 1 FROM UNNEST(streams, reached) AS s(name, version)
        WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.stream_id = s.name AND e.stream_version = s.version)
    ) THEN
        RETURN FALSE;
    END IF;
    INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, payload,
                        event_id, correlation_id, causation_id, actor_id, occurred_at)
    SELECT x.p, x.s, x.v, x.t, x.sv, x.pl::JSONB, x.e, x.c, x.ca, x.a, x.o
    FROM UNNEST(positions, stream_ids, stream_versions, event_types, schema_versions, payloads,
                event_ids, correlation_ids, causation_ids, actor_ids, occurred_ats)
         AS x(p, s, v, t, sv, pl, e, c, ca, a, o);
    INSERT INTO event_chain (position, hash) SELECT * FROM UNNEST(positions, links);
    PERFORM pg_notify(channel, positions[cardinality(positions)]::TEXT);
    RETURN TRUE;
END;
$$;

-- The append lock and what a group is planned on, in one call (for the writer's locked path, in its
-- transaction): the versions of the streams given, the head under '#head' and the chain's last
-- link under '#tip' (no stream name has a '#'). The reads follow the lock in statements of their
-- own, so they see every append that committed before it was granted.
CREATE FUNCTION cloudsync_lock_and_read(lock_key BIGINT, streams TEXT[])
RETURNS TABLE (item TEXT, amount BIGINT, link BYTEA) LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(lock_key);
    -- One backward probe of the (stream, version) index per stream (decision 007).
    RETURN QUERY
        SELECT s.name, v.version, NULL::BYTEA FROM UNNEST(streams) AS s(name)
        CROSS JOIN LATERAL (SELECT e.stream_version AS version FROM events e WHERE e.stream_id = s.name
                            ORDER BY e.stream_version DESC LIMIT 1) AS v
        UNION ALL SELECT '#head'::TEXT, COALESCE(MAX(e.position), 0)::BIGINT, NULL::BYTEA FROM events e
        UNION ALL (SELECT '#tip'::TEXT, c.position, c.hash FROM event_chain c ORDER BY c.position DESC LIMIT 1);
END;
$$;
