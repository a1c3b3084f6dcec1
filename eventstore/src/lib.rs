//! The event store: one append-only, globally ordered log behind the [`EventStore`] trait, with an
//! embedded SQLite backend and a PostgreSQL backend, catch-up-then-live subscriptions, and the database
//! handle (pool + migrations) that the write and read sides share.

pub mod chain;
mod database;
mod group;
pub mod leader;
mod postgres;
mod read_only;
mod reads;
mod sqlite;
mod subscription;
#[cfg(feature = "testing")]
pub mod testing;
mod types;

pub use database::{Database, DbPool, MIGRATION_SET};

/// The same sqlx expression on whichever pool a [`DbPool`] holds (each arm is typed on its own):
/// `on_pool!(pool, |p| sqlx::query(q).execute(p).await.map(drop))`.
#[macro_export]
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::DbPool::Sqlite($p) => $body,
            $crate::DbPool::Postgres($p) => $body,
        }
    };
}
pub use group::{CommitStats, MAX_EVENTS, MAX_REQUESTS};
pub use postgres::{APPEND_LOCK_KEY, PgEventStore};
pub use read_only::ReadOnlyStore;
pub use sqlite::SqliteEventStore;
pub use subscription::subscribe;
pub use types::{AppendOutcome, EventFilter, EventMetadata, ExpectedVersion, NewEvent, RecordedEvent, Snapshot, StoreError, StreamAppend};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

/// The event store contract, met by both backends and checked by one contract test suite.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends every batch in one transaction: all or nothing. Each batch names its stream and the
    /// version that stream must have; a mismatch is [`StoreError::Concurrency`] and writes nothing.
    /// Returns once the events are durable. Concurrent appends may share a transaction (group
    /// commit): each is still checked and written all or nothing on its own.
    async fn append(&self, batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError>;

    /// The whole history of one stream, in version order (empty for a stream that does not exist).
    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError>;

    /// The events of one stream after its version `after`, in version order: what a caller that
    /// folded the stream up to `after` has not seen.
    async fn read_stream_after(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut events = self.read_stream(stream).await?;
        events.retain(|e| e.stream_version > after);
        Ok(events)
    }

    /// Up to `limit` events with a global position greater than `after`, in global order.
    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events whose actor is `actor`, after `after`, in global order.
    async fn read_by_actor(&self, actor: Uuid, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events that `filter` lets through, after `after`, in global order. (The backends
    /// ask their database; this default reads the log page by page.)
    async fn read_filtered(&self, filter: &EventFilter, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let mut found = Vec::new();
        let mut after = after;
        while i64::try_from(found.len()).unwrap_or(i64::MAX) < limit {
            let page = self.read_all(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            found.extend(page.into_iter().filter(|e| filter.admits(e)));
        }
        found.truncate(usize::try_from(limit).unwrap_or(0));
        Ok(found)
    }

    /// The snapshot kept of `stream`, if any.
    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot` of `stream` in place of the one kept (one of a later version stays). A
    /// version the stream has not reached is [`StoreError::Invalid`].
    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), StoreError>;

    /// The position of the newest committed event (0 when the log is empty).
    async fn head(&self) -> Result<i64, StoreError>;

    /// Changes whenever this process learns of newer events (its own appends; LISTEN/NOTIFY on
    /// PostgreSQL). Subscribers use it to wake up early and poll as the fallback.
    fn watch(&self) -> watch::Receiver<i64>;

    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// How many appends this store has written and in how many transactions.
    fn commit_stats(&self) -> CommitStats {
        CommitStats::default()
    }

    /// For tests: the store's writer stops before its next commit, says so on the first channel and
    /// goes on once the second is sent to or dropped. `None` where the store has no such writer.
    #[cfg(feature = "testing")]
    fn pause_before_next_commit(&self) -> Option<(tokio::sync::oneshot::Receiver<()>, tokio::sync::oneshot::Sender<()>)> {
        None
    }

    /// For tests: the next group's call to the database goes unanswered, as when a connection
    /// drops, after it committed (`committed`) or before it was sent. `false` where a backend's
    /// answers cannot be lost so (SQLite, a library in this process).
    #[cfg(feature = "testing")]
    fn lose_next_answer(&self, _committed: bool) -> bool {
        false
    }
}

/// Appends to one stream.
///
/// # Errors
/// As [`EventStore::append`].
pub async fn append_to(
    store: &dyn EventStore,
    stream: &str,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendOutcome, StoreError> {
    store
        .append(vec![StreamAppend {
            stream: stream.to_owned(),
            expected,
            events,
        }])
        .await
}
