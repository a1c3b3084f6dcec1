//! The scale event store: a table in PostgreSQL, with LISTEN/NOTIFY to wake subscribers.
//!
//! Gap safety: every group of appends (see [`crate::group`]) takes one transaction-scoped advisory
//! lock before it writes, so positions are handed out in commit order, across processes too. A
//! transaction that took position N has committed (or rolled back, taking nothing) before any other
//! can take N+1, which closes the BIGSERIAL trap where a reader sees N+1 committed while N is still in
//! flight and skips N forever.
//!
//! A group is written in one round trip when the writer can plan it on what it knows (the head it
//! last wrote, the versions its streams are expected at): `cloudsync_append_group` takes the lock
//! and writes the plan unless the log moved since. Otherwise (the first group, another process
//! appended since, a request refused on an assumed version) the writer takes the lock in a
//! transaction, reads the head and versions, and writes the group through the same function
//! (decision 015).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgRow};
use sqlx::{PgPool, Row as _};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::chain;
use crate::group::{CommitStats, Committer, GroupWrite, Shared, bump, group_streams, plan_group};
use crate::reads::{self, col, fetch_events};
use crate::types::RecordedEvent;
use crate::types::Row;
use crate::{AppendOutcome, EventStore, ExpectedVersion, Snapshot, StoreError, StreamAppend};

/// The advisory lock key that serialises appends ("cloudsync" as ASCII).
pub const APPEND_LOCK_KEY: i64 = 0x0063_6c6f_7564_7379;
const CHANNEL: &str = "cloudsync_events";

pub struct PgEventStore {
    pool: PgPool,
    head: watch::Sender<i64>,
    listener: JoinHandle<()>,
    committer: Committer,
}

impl Drop for PgEventStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgEventStore {
    /// Starts the LISTEN task that the store owns (it stops when the store is dropped).
    ///
    /// # Errors
    /// When the head position cannot be read.
    pub async fn new(pool: PgPool) -> Result<Self, StoreError> {
        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0)::BIGINT FROM events")
            .fetch_one(&pool)
            .await?;
        let head = watch::Sender::new(head);
        let listener = tokio::spawn(listen(pool.clone(), head.clone()));
        let writer_pool = pool.clone();
        let committer = Committer::start(
            move |shared| Writer {
                pool: writer_pool,
                shared,
                tip: chain::TipCache::default(),
                versions: std::sync::Mutex::default(),
            },
            head.clone(),
        );
        Ok(Self {
            pool,
            head,
            listener,
            committer,
        })
    }
}

/// Follows NOTIFY on the events channel; on any error it reconnects after a pause, and subscribers keep
/// polling meanwhile.
async fn listen(pool: PgPool, head: watch::Sender<i64>) {
    loop {
        let result: Result<(), sqlx::Error> = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen(CHANNEL).await?;
            loop {
                let note = listener.recv().await?;
                if let Ok(position) = note.payload().parse::<i64>() {
                    bump(&head, position);
                }
            }
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(error = %error, "Event notification listener failed; subscribers fall back to polling.");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A row's event, its columns read by index.
fn decode(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    reads::Columns {
        position: row.try_get(col::POSITION)?,
        stream_id: row.try_get(col::STREAM_ID)?,
        stream_version: row.try_get(col::STREAM_VERSION)?,
        event_type: row.try_get(col::EVENT_TYPE)?,
        schema_version: row.try_get(col::SCHEMA_VERSION)?,
        payload: row.try_get::<sqlx::types::Json<serde_json::Value>, _>(col::PAYLOAD)?.0,
        event_id: Some(row.try_get(col::EVENT_ID)?),
        correlation_id: Some(row.try_get(col::CORRELATION_ID)?),
        causation_id: row.try_get(col::CAUSATION_ID)?,
        actor_id: row.try_get(col::ACTOR_ID)?,
        occurred_at: row.try_get(col::OCCURRED_AT)?,
    }
    .event()
}

/// Writes a group of appends (see [`crate::group`]).
struct Writer {
    pool: PgPool,
    shared: Arc<Shared>,
    /// The last link this writer wrote and its position.
    tip: chain::TipCache,
    /// Versions this writer last saw its streams at: what it assumes for an `Any` append.
    versions: std::sync::Mutex<HashMap<String, i64>>,
}

/// Writes a planned group unless the log moved since it was planned (see
/// `migrations/postgres/0022_append_group.sql`).
const APPEND_GROUP: &str = "SELECT cloudsync_append_group($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";
/// The most streams whose versions a writer remembers.
const REMEMBERED_VERSIONS: usize = 4_096;

#[async_trait]
impl GroupWrite for Writer {
    async fn write_group(&self, group: &[&[StreamAppend]]) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let results = match self.write_planned(group).await? {
            Some(results) => results,
            None => self.write_locked(group, None).await?,
        };
        self.remember(&results);
        Ok(results)
    }
}

impl Writer {
    /// One round trip: the group planned on the head this writer last wrote and on the versions it
    /// assumes its streams are at (what each stream's first append expects, or for `Any` what this
    /// writer last saw, else a new stream), sent to `cloudsync_append_group`, which writes it unless
    /// the log moved since. `None` when the plan cannot be sent (no head known: another process
    /// appended since this writer last did; nothing to write; a request refused on an assumed
    /// version, which only versions read under the lock may decide) or the database refused it;
    /// the group is then written under the lock.
    async fn write_planned(&self, group: &[&[StreamAppend]]) -> Result<Option<Vec<Result<AppendOutcome, StoreError>>>, StoreError> {
        let Some((head, previous)) = self.tip.get() else {
            return Ok(None);
        };
        let assumed = self.assume(group);
        let (rows, results) = plan_group(group, assumed.clone(), head);
        // The database checks an assumption only through the rows it writes: a stream the plan
        // writes nothing to (an append of no events) must be read, and so must a version below 0,
        // which only a reading can refuse.
        let written: std::collections::HashSet<&str> = rows.iter().map(|r| r.stream_id).collect();
        if rows.is_empty()
            || assumed
                .iter()
                .any(|(stream, version)| *version < 0 || !written.contains(stream.as_str()))
            || results.iter().any(|r| matches!(r, Err(StoreError::Concurrency { .. })))
        {
            return Ok(None);
        }
        let links = chain::links_of(previous, &rows);
        let (Some(first), Some(last), Some(link)) = (rows.first(), rows.last(), links.last()) else {
            return Ok(None);
        };
        // A stream assumed at version 0 needs no look: had it an event, its version 1 is taken.
        let (streams, reached): (Vec<String>, Vec<i64>) = assumed.into_iter().filter(|(_, version)| *version > 0).unzip();
        let query = append_group(&streams, reached, &rows, previous, &links);
        let lose = self.shared.take_lost_answer();
        let written = if lose == Some(false) {
            Err(lost_answer())
        } else if self.shared.pause_pending() {
            let mut tx = self.pool.begin().await?;
            match query.fetch_one(&mut *tx).await {
                Ok(true) => {
                    self.shared.before_commit().await;
                    tx.commit().await.map(|()| true)
                }
                other => other,
            }
        } else {
            query.fetch_one(&self.pool).await
        };
        let written = match written {
            Ok(true) if lose == Some(true) => Err(lost_answer()),
            other => other,
        };
        match written {
            Ok(true) => {
                self.shared.committed();
                self.tip.set(last.position, *link);
                Ok(Some(results))
            }
            Ok(false) => Ok(None),
            Err(error) if moved_on(&error) => Ok(None),
            Err(error) if unanswered(&error) => {
                tracing::warn!(error = %error, "A group's call went unanswered; the log tells whether it committed.");
                let call = Unanswered {
                    event_id: first.event.metadata.event_id,
                    first_position: first.position,
                    results,
                    tip: (last.position, *link),
                };
                self.write_locked(group, Some(call)).await.map(Some)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// What the group assumes of its streams: each one's version as its first append expects it
    /// (`NoStream`: 0), or for `Any`, the version this writer last saw it at, else 0.
    fn assume(&self, group: &[&[StreamAppend]]) -> HashMap<String, i64> {
        let seen = self.versions.lock().ok();
        let mut assumed = HashMap::new();
        for batch in group.iter().flat_map(|batches| batches.iter()) {
            if assumed.contains_key(&batch.stream) {
                continue;
            }
            let version = match batch.expected {
                ExpectedVersion::NoStream => 0,
                ExpectedVersion::Exact(version) => version,
                ExpectedVersion::Any => seen.as_ref().and_then(|v| v.get(&batch.stream).copied()).unwrap_or(0),
            };
            assumed.insert(batch.stream.clone(), version);
        }
        assumed
    }

    /// Remembers the versions a group left its streams at (a bounded set, cleared when full).
    fn remember(&self, results: &[Result<AppendOutcome, StoreError>]) {
        let Ok(mut versions) = self.versions.lock() else { return };
        for outcome in results.iter().flatten() {
            if versions.len() >= REMEMBERED_VERSIONS {
                versions.clear();
            }
            versions.extend(outcome.stream_versions.iter().map(|(s, v)| (s.clone(), *v)));
        }
    }

    /// The group under the append lock, taken first: the head, versions and chain tip read in the
    /// lock's transaction, so the group cannot go stale before it is written. For a writer that
    /// does not know the head (its first group, or another process appended since its last).
    ///
    /// After a call that went unanswered (`unanswered`), the log is asked first whether that call
    /// committed: once the lock is this transaction's, the call has ended, whichever way, or, if it
    /// never reached the database, can no longer write (its first position will be taken).
    async fn write_locked(
        &self,
        group: &[&[StreamAppend]],
        unanswered: Option<Unanswered>,
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let (mut tx, committed, state) = match self.lock(group, unanswered.as_ref()).await {
            Ok(locked) => locked,
            // Neither the call nor the log answered: nobody can say whether the group is written,
            // and writing it again request by request could write it twice.
            Err(error) => match unanswered {
                Some(call) => return Ok(call.unsettled(&error)),
                None => return Err(error.into()),
            },
        };
        if let Some(call) = unanswered.filter(|_| committed) {
            drop(tx);
            self.shared.committed();
            self.tip.set(call.tip.0, call.tip.1);
            return Ok(call.results);
        }
        let Locked { head, tip, current } = state;
        let (streams, reached): (Vec<String>, Vec<i64>) = current.iter().map(|(s, v)| (s.clone(), *v)).unzip();
        let (rows, results) = plan_group(group, current, head);
        let Some(last) = rows.last().map(|r| r.position) else {
            return Ok(results);
        };
        let previous = self.chain_tip(&mut tx, head, tip).await?;
        let links = chain::links_of(previous, &rows);
        // The same function as a planned group's, in this transaction (which holds the lock, so the
        // function's taking it again returns at once, and its checks pass).
        if !append_group(&streams, reached, &rows, previous, &links).fetch_one(&mut *tx).await? {
            return Err(StoreError::Invalid("a stream moved while the append lock was held".into()));
        }
        self.shared.before_commit().await;
        tx.commit().await?;
        self.shared.committed();
        if let Some(link) = links.last() {
            self.tip.set(last, *link);
        }
        Ok(results)
    }

    /// A transaction holding the append lock, whether `unanswered`'s group is in the log, and what
    /// the group is planned on, read under the lock in the same call.
    async fn lock(
        &self,
        group: &[&[StreamAppend]],
        unanswered: Option<&Unanswered>,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, bool, Locked), sqlx::Error> {
        // Not sent with the BEGIN in one round trip: sqlx rolls back only a transaction whose
        // BEGIN statement succeeded, so a lock that failed there would return the connection to
        // the pool inside a transaction.
        let mut tx = self.pool.begin().await?;
        // The lock is held until this transaction ends: other processes' groups wait (see the
        // module's doc).
        let found: Vec<(String, i64, Option<Vec<u8>>)> = sqlx::query_as("SELECT item, amount, link FROM cloudsync_lock_and_read($1, $2)")
            .bind(APPEND_LOCK_KEY)
            .bind(group_streams(group))
            .fetch_all(&mut *tx)
            .await?;
        let mut state = Locked {
            head: 0,
            tip: None,
            current: HashMap::new(),
        };
        for (item, amount, link) in found {
            match item.as_str() {
                "#head" => state.head = amount,
                "#tip" => state.tip = link.map(|link| (amount, link)),
                _ => {
                    state.current.insert(item, amount);
                }
            }
        }
        let Some(call) = unanswered else {
            return Ok((tx, false, state));
        };
        // At its planned position: an event id alone may be one a copied log already holds.
        let committed = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE event_id = $1 AND position = $2)")
            .bind(call.event_id)
            .bind(call.first_position)
            .fetch_one(&mut *tx)
            .await?;
        Ok((tx, committed, state))
    }

    /// The link at `head` (the log's last position, read under the append lock): this writer's
    /// last, or the stored one (`stored`, read with the head), after adding the links of events
    /// written without them.
    async fn chain_tip(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        head: i64,
        stored: Option<(i64, Vec<u8>)>,
    ) -> Result<chain::Link, StoreError> {
        if let Some(link) = self.tip.at(head) {
            return Ok(link);
        }
        let (mut at, mut link) = chain::parse_tip(stored)?;
        while at < head {
            let linked = chain::link_events(link, &fetch_events!(&mut **tx, reads::ALL, decode, at, 1000_i64)?);
            let Some(&(last, last_link)) = linked.last() else { break };
            let (positions, hashes): (Vec<i64>, Vec<Vec<u8>>) = linked.iter().map(|(p, l)| (*p, l.to_vec())).unzip();
            sqlx::query("INSERT INTO event_chain (position, hash) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])")
                .bind(positions)
                .bind(hashes)
                .execute(&mut **tx)
                .await?;
            (at, link) = (last, last_link);
        }
        Ok(link)
    }
}

/// What the locked path read under the lock.
struct Locked {
    head: i64,
    /// The chain's last link and its position, if any.
    tip: Option<(i64, Vec<u8>)>,
    /// The versions of the group's streams that have events.
    current: HashMap<String, i64>,
}

/// A planned group whose call went unanswered: what it would have answered had it committed.
struct Unanswered {
    /// The id of its first event and that event's position: in the log there if, and only if,
    /// the call committed.
    event_id: Uuid,
    first_position: i64,
    results: Vec<Result<AppendOutcome, StoreError>>,
    /// Its last position and link.
    tip: (i64, chain::Link),
}

impl Unanswered {
    /// Every request's answer when the log could not be asked either.
    fn unsettled(&self, error: &sqlx::Error) -> Vec<Result<AppendOutcome, StoreError>> {
        self.results
            .iter()
            .map(|_| {
                Err(StoreError::Unsettled(format!(
                    "the call went unanswered and the log could not be asked ({error})"
                )))
            })
            .collect()
    }
}

/// Whether a call may have reached the database and committed without its answer reaching here
/// (the connection dropped, or the answer could not be read), as opposed to an error the database
/// answered (the call rolled back) or one raised before anything was sent.
fn unanswered(error: &sqlx::Error) -> bool {
    match error {
        // The server's own word that the session is ending (shutdown, a connection failure):
        // sent instead of the call's answer, which may have committed.
        sqlx::Error::Database(e) => e.code().is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Encode(_) | sqlx::Error::Configuration(_) => false,
        _ => true,
    }
}

/// The error a test's lost answer stands for.
fn lost_answer() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "the group's answer was lost (a test asked for it)",
    ))
}

/// Whether the database refused a planned group because the log moved since it was planned: the
/// positions after the head it was planned on, or a stream's next version, are taken.
fn moved_on(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.constraint())
        .is_some_and(|c| matches!(c, "events_pkey" | "events_stream_id_stream_version_key" | "event_chain_pkey"))
}

/// The call of `cloudsync_append_group` for a planned group: `streams` and `reached`, the versions
/// that streams already holding events are assumed to be at; `previous`, the link before the first
/// row.
fn append_group<'q>(
    streams: &'q [String],
    reached: Vec<i64>,
    rows: &[Row<'_>],
    previous: chain::Link,
    links: &[chain::Link],
) -> sqlx::query::QueryScalar<'q, sqlx::Postgres, bool, sqlx::postgres::PgArguments> {
    let mut cols = Columns::default();
    for row in rows {
        let m = &row.event.metadata;
        cols.position.push(row.position);
        cols.stream_id.push(row.stream_id.to_owned());
        cols.stream_version.push(row.stream_version);
        cols.event_type.push(row.event.event_type.clone());
        cols.schema_version.push(row.event.schema_version);
        cols.payload.push(row.event.payload.to_string());
        cols.event_id.push(m.event_id);
        cols.correlation_id.push(m.correlation_id);
        cols.causation_id.push(m.causation_id);
        cols.actor_id.push(m.actor_id);
        cols.occurred_at.push(m.occurred_at);
    }
    sqlx::query_scalar(APPEND_GROUP)
        .bind(APPEND_LOCK_KEY)
        .bind(streams)
        .bind(reached)
        .bind(cols.position)
        .bind(cols.stream_id)
        .bind(cols.stream_version)
        .bind(cols.event_type)
        .bind(cols.schema_version)
        .bind(cols.payload)
        .bind(cols.event_id)
        .bind(cols.correlation_id)
        .bind(cols.causation_id)
        .bind(cols.actor_id)
        .bind(cols.occurred_at)
        .bind(previous.to_vec())
        .bind(links.iter().map(|l| l.to_vec()).collect::<Vec<Vec<u8>>>())
        .bind(CHANNEL)
}

#[async_trait]
impl EventStore for PgEventStore {
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
        fetch_events!(&self.pool, reads::BY_ACTOR, decode, actor, after, limit)
    }

    async fn read_filtered(&self, filter: &crate::EventFilter, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let sql = if filter.actor.is_some() {
            reads::FILTERED_ACTOR_PG
        } else {
            reads::FILTERED_PG
        };
        fetch_events!(
            &self.pool,
            sql,
            decode,
            after,
            filter.actor,
            filter.stream.as_deref(),
            &filter.event_types,
            filter.from,
            filter.to,
            limit
        )
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        reads::snapshot(&crate::DbPool::Postgres(self.pool.clone()), stream).await
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError> {
        reads::save_snapshot(&crate::DbPool::Postgres(self.pool.clone()), stream, snapshot).await
    }

    async fn head(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(position), 0)::BIGINT FROM events")
            .fetch_one(&self.pool)
            .await?)
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn commit_stats(&self) -> CommitStats {
        self.committer.stats()
    }

    #[cfg(feature = "testing")]
    fn pause_before_next_commit(&self) -> Option<(tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>)> {
        Some(self.committer.pause_before_next_commit())
    }

    #[cfg(feature = "testing")]
    fn lose_next_answer(&self, committed: bool) -> bool {
        self.committer.lose_next_answer(committed);
        true
    }
}

#[derive(Default)]
struct Columns {
    position: Vec<i64>,
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    event_type: Vec<String>,
    schema_version: Vec<i32>,
    payload: Vec<String>,
    event_id: Vec<Uuid>,
    correlation_id: Vec<Uuid>,
    causation_id: Vec<Option<Uuid>>,
    actor_id: Vec<Option<Uuid>>,
    occurred_at: Vec<DateTime<Utc>>,
}
