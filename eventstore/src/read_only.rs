//! The log of a read-only server (a point-in-time replay): reads pass through, appends are refused.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{AppendOutcome, CommitStats, EventFilter, EventStore, RecordedEvent, Snapshot, StoreError, StreamAppend};

/// The event store of a read-only server: it reads, and refuses every append.
pub struct ReadOnlyStore(pub Arc<dyn EventStore>);

#[async_trait]
impl EventStore for ReadOnlyStore {
    async fn append(&self, _batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        Err(StoreError::Invalid("this server is read-only: nothing is recorded".into()))
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream(stream).await
    }

    async fn read_stream_after(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_stream_after(stream, after).await
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_all(after, limit).await
    }

    async fn read_by_actor(&self, actor: Uuid, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_by_actor(actor, after, limit).await
    }

    async fn read_filtered(&self, filter: &EventFilter, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        self.0.read_filtered(filter, after, limit).await
    }

    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        self.0.snapshot(stream).await
    }

    async fn save_snapshot(&self, _stream: &str, _snapshot: Snapshot) -> Result<(), StoreError> {
        Err(StoreError::Invalid("this server is read-only: nothing is recorded".into()))
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.0.head().await
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.0.watch()
    }

    fn backend(&self) -> &'static str {
        self.0.backend()
    }

    fn commit_stats(&self) -> CommitStats {
        self.0.commit_stats()
    }
}
