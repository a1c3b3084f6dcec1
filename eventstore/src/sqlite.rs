//! The embedded event store: a table in the SQLite file in the data dir.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row as _, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::reads::{self, Columns, fetch_events};
use crate::types::{RecordedEvent, distinct_streams, plan_rows};
use crate::{AppendOutcome, EventStore, StoreError, StreamAppend};

pub struct SqliteEventStore {
    pool: SqlitePool,
    head: watch::Sender<i64>,
}

impl SqliteEventStore {
    /// # Errors
    /// When the head position cannot be read.
    pub async fn new(pool: SqlitePool) -> Result<Self, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            head: watch::Sender::new(head),
        })
    }
}

fn uuid_column(row: &SqliteRow, column: &str, position: i64) -> Result<Option<Uuid>, StoreError> {
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| {
        Uuid::parse_str(&t).map_err(|err| StoreError::Corrupt {
            position,
            reason: format!("{column}: {err}"),
        })
    })
    .transpose()
}

fn decode(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get("position")?;
    let payload: String = row.try_get("payload")?;
    Columns {
        position,
        stream_id: row.try_get("stream_id")?,
        stream_version: row.try_get("stream_version")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        payload: serde_json::from_str(&payload).map_err(|err| StoreError::Corrupt {
            position,
            reason: format!("payload: {err}"),
        })?,
        event_id: uuid_column(row, "event_id", position)?,
        correlation_id: uuid_column(row, "correlation_id", position)?,
        causation_id: uuid_column(row, "causation_id", position)?,
        actor_id: uuid_column(row, "actor_id", position)?,
        occurred_at: row.try_get("occurred_at")?,
    }
    .event()
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        // BEGIN IMMEDIATE takes SQLite's single write lock before reading versions, so the checks and the
        // positions cannot go stale before commit, and positions follow commit order.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut current = HashMap::new();
        for stream in distinct_streams(&batches) {
            let version: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(stream_version), 0) FROM events WHERE stream_id = $1")
                .bind(&stream)
                .fetch_one(&mut *tx)
                .await?;
            current.insert(stream, version);
        }
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let (rows, versions) = plan_rows(&batches, current, head)?;
        // Multi-row INSERTs (11 values a row, well under SQLite's limit on bound variables).
        for chunk in rows.chunks(500) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO events (position, stream_id, stream_version, event_type, schema_version, payload, event_id, \
                 correlation_id, causation_id, actor_id, occurred_at) ",
            );
            insert.push_values(chunk, |mut values, row| {
                let m = &row.event.metadata;
                values
                    .push_bind(row.position)
                    .push_bind(row.stream_id)
                    .push_bind(row.stream_version)
                    .push_bind(&row.event.event_type)
                    .push_bind(row.event.schema_version)
                    .push_bind(row.event.payload.to_string())
                    .push_bind(m.event_id.to_string())
                    .push_bind(m.correlation_id.to_string())
                    .push_bind(m.causation_id.map(|u| u.to_string()))
                    .push_bind(m.actor_id.map(|u| u.to_string()))
                    .push_bind(m.occurred_at);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let last = rows.last().map_or(head, |r| r.position);
        self.head.send_if_modified(|h| {
            let newer = last > *h;
            *h = (*h).max(last);
            newer
        });
        Ok(AppendOutcome {
            first_position: rows.first().map_or(head, |r| r.position),
            last_position: last,
            stream_versions: versions,
        })
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::STREAM, decode, stream)
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::ALL, decode, after, limit)
    }

    async fn read_by_actor(&self, actor: Uuid, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::BY_ACTOR, decode, actor.to_string(), after, limit)
    }

    async fn head(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?)
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
