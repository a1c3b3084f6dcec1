//! The embedded event store: a table in the SQLite file in the data dir.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Column as _, Row as _, SqlitePool};
use tokio::sync::watch;
use uuid::Uuid;

use crate::chain;
use crate::group::{CommitStats, Committer, GroupWrite, Shared, group_streams, plan_group};
use crate::reads::{self, Columns, col, fetch_events};
use crate::types::RecordedEvent;
use crate::{AppendOutcome, EventStore, Snapshot, StoreError, StreamAppend};

pub struct SqliteEventStore {
    pool: SqlitePool,
    head: watch::Sender<i64>,
    committer: Committer,
}

/// Writes a group of appends (see [`crate::group`]).
struct Writer {
    pool: SqlitePool,
    shared: Arc<Shared>,
    /// The last link this writer wrote and its position.
    tip: chain::TipCache,
}

#[async_trait]
impl GroupWrite for Writer {
    async fn write_group(&self, group: &[&[StreamAppend]]) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        // BEGIN IMMEDIATE takes SQLite's single write lock before reading versions, so the checks and
        // the positions cannot go stale before commit, and positions follow commit order.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // The head and the streams' versions in one statement; the head comes back under the empty
        // name, which no stream can have.
        let streams = serde_json::to_string(&group_streams(group)).map_err(|err| StoreError::Invalid(err.to_string()))?;
        let mut current: HashMap<String, i64> = sqlx::query_as(
            "SELECT stream_id, MAX(stream_version) FROM events WHERE stream_id IN (SELECT value FROM json_each($1)) \
             GROUP BY stream_id UNION ALL SELECT '', COALESCE(MAX(position), 0) FROM events",
        )
        .bind(streams)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let head = current.remove("").unwrap_or(0);
        let (rows, results) = plan_group(group, current, head);
        if rows.is_empty() {
            return Ok(results);
        }
        let previous = self.chain_tip(&mut tx, head).await?;
        let links = chain::links_of(previous, &rows);
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
        let linked: Vec<(i64, &chain::Link)> = rows.iter().map(|r| r.position).zip(&links).collect();
        insert_links(&mut tx, &linked).await?;
        self.shared.before_commit().await;
        tx.commit().await?;
        self.shared.committed();
        if let (Some(row), Some(link)) = (rows.last(), links.last()) {
            self.tip.set(row.position, *link);
        }
        Ok(results)
    }
}

async fn insert_links(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, links: &[(i64, &chain::Link)]) -> Result<(), StoreError> {
    for chunk in links.chunks(400) {
        let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO event_chain (position, hash) ");
        insert.push_values(chunk, |mut values, (position, link)| {
            values.push_bind(*position).push_bind(link.to_vec());
        });
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

impl Writer {
    /// The link at `head` (the log's last position, read under the write lock): this writer's last,
    /// or the stored one, after adding the links of events written without them.
    async fn chain_tip(&self, tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, head: i64) -> Result<chain::Link, StoreError> {
        if let Some(link) = self.tip.at(head) {
            return Ok(link);
        }
        let stored = sqlx::query_as(chain::TIP).fetch_optional(&mut **tx).await?;
        let (mut at, mut link) = chain::parse_tip(stored)?;
        while at < head {
            let linked = chain::link_events(link, &fetch_events!(&mut **tx, reads::ALL, decode, at, 1000_i64)?);
            let Some(&(last, last_link)) = linked.last() else { break };
            let refs: Vec<(i64, &chain::Link)> = linked.iter().map(|(p, l)| (*p, l)).collect();
            insert_links(tx, &refs).await?;
            (at, link) = (last, last_link);
        }
        Ok(link)
    }
}

impl SqliteEventStore {
    /// # Errors
    /// When the head position cannot be read.
    pub async fn new(pool: SqlitePool) -> Result<Self, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
            .fetch_one(&pool)
            .await?;
        let head = watch::Sender::new(head);
        let writer_pool = pool.clone();
        let committer = Committer::start(
            move |shared| Writer {
                pool: writer_pool,
                shared,
                tip: chain::TipCache::default(),
            },
            head.clone(),
        );
        Ok(Self { pool, head, committer })
    }
}

fn uuid_column(row: &SqliteRow, column: usize, position: i64) -> Result<Option<Uuid>, StoreError> {
    let text: Option<&str> = row.try_get(column)?;
    text.map(|t| {
        Uuid::parse_str(t).map_err(|err| StoreError::Corrupt {
            position,
            reason: format!("{}: {err}", row.column(column).name()),
        })
    })
    .transpose()
}

/// A row's event: columns by index, the payload parsed from the row's own text without a copy.
fn decode(row: &SqliteRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = row.try_get(col::POSITION)?;
    let payload: &str = row.try_get(col::PAYLOAD)?;
    Columns {
        position,
        stream_id: row.try_get(col::STREAM_ID)?,
        stream_version: row.try_get(col::STREAM_VERSION)?,
        event_type: row.try_get(col::EVENT_TYPE)?,
        schema_version: row.try_get(col::SCHEMA_VERSION)?,
        payload: serde_json::from_str(payload).map_err(|err| StoreError::Corrupt {
            position,
            reason: format!("payload: {err}"),
        })?,
        event_id: uuid_column(row, col::EVENT_ID, position)?,
        correlation_id: uuid_column(row, col::CORRELATION_ID, position)?,
        causation_id: uuid_column(row, col::CAUSATION_ID, position)?,
        actor_id: uuid_column(row, col::ACTOR_ID, position)?,
        occurred_at: row.try_get(col::OCCURRED_AT)?,
    }
    .event()
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(&self, batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        self.committer.append(batches).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::STREAM, decode, stream)
    }

    async fn read_stream_after(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::STREAM_AFTER, decode, stream, after)
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::ALL, decode, after, limit)
    }

    async fn read_by_actor(&self, actor: Uuid, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        fetch_events!(&self.pool, reads::BY_ACTOR, decode, actor.to_string(), after, limit)
    }

    async fn read_filtered(&self, filter: &crate::EventFilter, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let types = serde_json::to_string(&filter.event_types).map_err(|err| StoreError::Invalid(err.to_string()))?;
        let sql = if filter.actor.is_some() {
            reads::FILTERED_ACTOR_SQLITE
        } else {
            reads::FILTERED_SQLITE
        };
        fetch_events!(
            &self.pool,
            sql,
            decode,
            after,
            filter.actor.map(|a| a.to_string()),
            filter.stream.as_deref(),
            types,
            filter.from,
            filter.to,
            limit
        )
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        reads::snapshot(&crate::DbPool::Sqlite(self.pool.clone()), stream).await
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        reads::save_snapshot(&crate::DbPool::Sqlite(self.pool.clone()), stream, snapshot).await
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

    fn commit_stats(&self) -> CommitStats {
        self.committer.stats()
    }

    #[cfg(feature = "testing")]
    fn pause_before_next_commit(&self) -> Option<(tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>)> {
        Some(self.committer.pause_before_next_commit())
    }
}
