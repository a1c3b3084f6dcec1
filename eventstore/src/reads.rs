//! What both backends read alike: the columns of an event, the three reads' queries (a stream in
//! order, the log after a position, one actor's events after a position), running one of them,
//! and turning a row's columns into a [`RecordedEvent`] with corruption reported by position.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{EventMetadata, RecordedEvent, StoreError};

macro_rules! columns {
    () => {
        "position, stream_id, stream_version, event_type, schema_version, payload, event_id, correlation_id, causation_id, actor_id, occurred_at"
    };
}

/// The index of each column in [`columns!`]' order, so rows are read by index rather than by name.
pub(crate) mod col {
    pub const POSITION: usize = 0;
    pub const STREAM_ID: usize = 1;
    pub const STREAM_VERSION: usize = 2;
    pub const EVENT_TYPE: usize = 3;
    pub const SCHEMA_VERSION: usize = 4;
    pub const PAYLOAD: usize = 5;
    pub const EVENT_ID: usize = 6;
    pub const CORRELATION_ID: usize = 7;
    pub const CAUSATION_ID: usize = 8;
    pub const ACTOR_ID: usize = 9;
    pub const OCCURRED_AT: usize = 10;
}

/// A stream's events in stream order.
pub(crate) const STREAM: &str = concat!("SELECT ", columns!(), " FROM events WHERE stream_id = $1 ORDER BY stream_version");
/// A stream's events after a version, in stream order.
pub(crate) const STREAM_AFTER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version"
);
/// A stream's snapshot (`stream_snapshots`, one row a stream).
pub(crate) const SNAPSHOT: &str = "SELECT stream_version, schema, owner_id, data FROM stream_snapshots WHERE stream_id = $1";
/// The version a stream has reached.
pub(crate) const STREAM_VERSION: &str = "SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1";
/// Keeps a snapshot unless one of a later version is kept.
pub(crate) const SAVE_SNAPSHOT: &str = "INSERT INTO stream_snapshots (stream_id, stream_version, schema, owner_id, data) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream_id) DO UPDATE SET stream_version = excluded.stream_version, \
     schema = excluded.schema, owner_id = excluded.owner_id, data = excluded.data \
     WHERE excluded.stream_version >= stream_snapshots.stream_version";

/// [`crate::EventStore::snapshot`], the same on both backends.
pub(crate) async fn snapshot(pool: &crate::DbPool, stream: &str) -> Result<Option<crate::Snapshot>, StoreError> {
    let row: Option<(i64, String, Option<String>, Vec<u8>)> =
        crate::on_pool!(pool, |p| sqlx::query_as(SNAPSHOT).bind(stream).fetch_optional(p).await)?;
    let Some((version, schema, owner, data)) = row else {
        return Ok(None);
    };
    let owner = owner
        .map(|owner| {
            Uuid::parse_str(&owner).map_err(|_| StoreError::Invalid(format!("the snapshot of {stream} names no account but {owner:?}")))
        })
        .transpose()?;
    Ok(Some(crate::Snapshot {
        version,
        schema,
        owner,
        data,
    }))
}

/// [`crate::EventStore::save_snapshot`], the same on both backends: a version the stream has not
/// reached is refused.
pub(crate) async fn save_snapshot(pool: &crate::DbPool, stream: &str, snapshot: crate::Snapshot) -> Result<(), StoreError> {
    let reached: i64 = crate::on_pool!(pool, |p| sqlx::query_scalar(STREAM_VERSION).bind(stream).fetch_one(p).await)?;
    if !(1..=reached).contains(&snapshot.version) {
        return Err(StoreError::Invalid(format!(
            "a snapshot of {stream} at version {}, which the stream (at {reached}) has not reached",
            snapshot.version
        )));
    }
    let owner = snapshot.owner.map(|owner| owner.to_string());
    crate::on_pool!(pool, |p| sqlx::query(SAVE_SNAPSHOT)
        .bind(stream)
        .bind(snapshot.version)
        .bind(&snapshot.schema)
        .bind(&owner)
        .bind(&snapshot.data)
        .execute(p)
        .await
        .map(|_| ()))?;
    Ok(())
}

/// The log after a position, in order, up to a limit.
pub(crate) const ALL: &str = concat!("SELECT ", columns!(), " FROM events WHERE position > $1 ORDER BY position LIMIT $2");
/// One actor's events after a position, in order, up to a limit.
pub(crate) const BY_ACTOR: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE actor_id = $1 AND position > $2 ORDER BY position LIMIT $3"
);

/// The events a filter lets through after a position, in order, up to a limit (PostgreSQL: $1
/// after, $2 actor, $3 stream, $4 types (an array, empty for any), $5 from, $6 to, $7 limit).
pub(crate) const FILTERED_PG: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE position > $1 AND ($2::uuid IS NULL OR actor_id = $2) AND ($3::text IS NULL OR stream_id = $3) \
     AND (cardinality($4::text[]) = 0 OR event_type = ANY($4)) AND ($5::timestamptz IS NULL OR occurred_at >= $5) \
     AND ($6::timestamptz IS NULL OR occurred_at < $6) ORDER BY position LIMIT $7"
);
/// [`FILTERED_PG`] for one actor ($2 set), so the (actor, position) index serves it.
pub(crate) const FILTERED_ACTOR_PG: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE actor_id = $2 AND position > $1 AND ($3::text IS NULL OR stream_id = $3) \
     AND (cardinality($4::text[]) = 0 OR event_type = ANY($4)) AND ($5::timestamptz IS NULL OR occurred_at >= $5) \
     AND ($6::timestamptz IS NULL OR occurred_at < $6) ORDER BY position LIMIT $7"
);
/// [`FILTERED_PG`] for SQLite ($4: the types as a JSON array).
pub(crate) const FILTERED_SQLITE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE position > $1 AND ($2 IS NULL OR actor_id = $2) AND ($3 IS NULL OR stream_id = $3) \
     AND ($4 = '[]' OR event_type IN (SELECT value FROM json_each($4))) AND ($5 IS NULL OR occurred_at >= $5) \
     AND ($6 IS NULL OR occurred_at < $6) ORDER BY position LIMIT $7"
);

/// [`FILTERED_SQLITE`] for one actor ($2 set), so the (actor, position) index serves it.
pub(crate) const FILTERED_ACTOR_SQLITE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE actor_id = $2 AND position > $1 AND ($3 IS NULL OR stream_id = $3) \
     AND ($4 = '[]' OR event_type IN (SELECT value FROM json_each($4))) AND ($5 IS NULL OR occurred_at >= $5) \
     AND ($6 IS NULL OR occurred_at < $6) ORDER BY position LIMIT $7"
);

/// Runs one of the reads on `$pool` with its binds and decodes every row with `$decode` as it
/// arrives (see [`decode_as_read`]).
macro_rules! fetch_events {
    ($pool:expr, $sql:expr, $decode:path $(, $bind:expr)*) => {
        $crate::reads::decode_as_read(sqlx::query($sql)$(.bind($bind))*.fetch($pool), $decode).await
    };
}
pub(crate) use fetch_events;

/// Decodes rows into events as the database hands them over: the database (SQLite's worker thread,
/// the PostgreSQL server) reads the next rows while this one is decoded, which is most of a
/// catch-up read's time on this side (parsing the payloads).
pub(crate) async fn decode_as_read<R>(
    rows: impl futures::Stream<Item = Result<R, sqlx::Error>>,
    decode: fn(&R) -> Result<RecordedEvent, StoreError>,
) -> Result<Vec<RecordedEvent>, StoreError> {
    use futures::TryStreamExt as _;
    let mut rows = std::pin::pin!(rows);
    let mut events = Vec::new();
    while let Some(row) = rows.try_next().await? {
        events.push(decode(&row)?);
    }
    Ok(events)
}

/// An event's columns as a backend read them, before they are checked.
pub(crate) struct Columns {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub event_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub actor_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

impl Columns {
    /// The event, or [`StoreError::Corrupt`] naming what is missing.
    pub(crate) fn event(self) -> Result<RecordedEvent, StoreError> {
        let position = self.position;
        let corrupt = |reason: &str| StoreError::Corrupt {
            position,
            reason: reason.to_owned(),
        };
        Ok(RecordedEvent {
            position,
            stream_id: self.stream_id,
            stream_version: self.stream_version,
            event_type: self.event_type,
            schema_version: self.schema_version,
            payload: self.payload,
            metadata: EventMetadata {
                event_id: self.event_id.ok_or_else(|| corrupt("no event id"))?,
                correlation_id: self.correlation_id.ok_or_else(|| corrupt("no correlation id"))?,
                causation_id: self.causation_id,
                actor_id: self.actor_id,
                occurred_at: self.occurred_at,
            },
        })
    }
}
