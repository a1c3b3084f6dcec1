//! Search by meaning: each file's text-embedding vectors (its name's, then one per passage of its
//! text) in a [`VectorIndex`], asked for the files nearest a query's vector. [`SqliteVectors`] is
//! the embedded backend (a database in the data dir); [`PgVectors`] (PostgreSQL with pgvector) and
//! [`ElasticVectors`] (Elasticsearch 8 `dense_vector` kNN) are the scale ones. Every backend passes
//! `tests/it/vectors.rs`.
//!
//! The [`VectorProjector`] follows the log from the index's own checkpoint: a listed file gets a
//! record (owner, provider, the checksum of its current version); the content pipeline's
//! `FileAnalyzed` brings its vectors (read from the [`VectorSource`], never computed again), which
//! are kept only while they are of the file's current version; a changed file loses its old vectors
//! at once, a deleted or removed one, a disconnected provider's and an erased account's lose all.

mod elastic;
mod postgres;
mod sqlite;

pub use elastic::ElasticVectors;
pub use postgres::PgVectors;
pub use sqlite::SqliteVectors;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudsync_domain::events::AnalysisOutcome;
use cloudsync_domain::{DomainEvent, FileId, ProviderId, UserId};
use cloudsync_eventstore::EventStore;
use tokio_util::sync::CancellationToken;

use cloudsync_eventstore::leader::Leadership;

use crate::follow::{Progress, Step, follow_shared};
use crate::{SearchError, SearchResult};

/// The model whose vectors the index holds (its name in `FileAnalyzed`).
pub const TEXT_MODEL: &str = "all-minilm-l6-v2";

const PAGE: i64 = 500;

/// A file as the vector index knows it: whose it is, the version its vectors are of, and the
/// vectors (none until the pipeline has embedded the current version).
#[derive(Debug, Clone, PartialEq)]
pub struct FileVectors {
    pub file_id: FileId,
    pub owner_id: UserId,
    pub provider_id: ProviderId,
    pub checksum: String,
    /// In a batch: `None` leaves the stored vectors as they are, `Some` replaces them (`Some` of
    /// none removes them). Read back from [`VectorIndex::records`]: `None`.
    pub vectors: Option<Vec<Vec<f32>>>,
}

/// One batch of changes, applied together with the checkpoint it reaches.
#[derive(Debug, Clone, Default)]
pub struct VectorBatch {
    /// Files whose record (and vectors) is replaced by this one.
    pub upserts: Vec<FileVectors>,
    pub deletes: Vec<FileId>,
    /// Accounts whose every file goes (erasure).
    pub erased: Vec<UserId>,
    /// Providers whose every file goes (disconnected).
    pub removed_providers: Vec<ProviderId>,
    /// The checkpoint the batch was read from: it applies only while the index is still there (a
    /// rebuild that reset the index meanwhile, or another projector that went on, makes it fail).
    pub from: i64,
    pub checkpoint: i64,
}

/// A file near a query, with the cosine of its nearest vector.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Near {
    pub file_id: FileId,
    pub score: f32,
}

/// Where a file's vectors are kept (an index of one installation).
#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// The records of these files (missing ones are left out), without their vectors.
    async fn records(&self, ids: &[FileId]) -> SearchResult<Vec<FileVectors>>;
    /// Applies a batch: the checkpoint is durable only together with the changes before it.
    async fn apply(&self, batch: VectorBatch) -> SearchResult<()>;
    /// The log position everything before which is in the index (0: nothing yet).
    async fn checkpoint(&self) -> SearchResult<i64>;
    /// `owner`'s files nearest `query` (a unit vector), each scored by its nearest vector, best
    /// first, at most `limit`, leaving out `except`.
    async fn nearest(&self, owner: UserId, query: &[f32], limit: usize, except: Option<FileId>) -> SearchResult<Vec<Near>>;
    /// The vectors of one of `owner`'s files (none for another owner's file).
    async fn vectors(&self, owner: UserId, file: FileId) -> SearchResult<Vec<Vec<f32>>>;
    /// The vectors of several files at once, as [`VectorIndex::vectors`] gives them, for those of
    /// `files` that are `owner`'s and have any.
    async fn vectors_of(&self, owner: UserId, files: &[FileId]) -> SearchResult<HashMap<FileId, Vec<Vec<f32>>>>;
    /// How many of `owner`'s files have vectors.
    async fn embedded_files(&self, owner: UserId) -> SearchResult<u64>;
    /// `owner`'s files that have vectors (at most `limit`).
    async fn files_with_vectors(&self, owner: UserId, limit: usize) -> SearchResult<Vec<FileId>>;
    /// Forgets everything and goes back to position 0, for a rebuild from the log.
    async fn reset(&self) -> SearchResult<()>;
}

/// Each file once, with the best score any of its vectors had among `hits`, best first (ties by
/// id), at most `limit`.
pub(crate) fn best_per_file(hits: impl IntoIterator<Item = (FileId, f32)>, limit: usize) -> Vec<Near> {
    let mut best: HashMap<FileId, f32> = HashMap::new();
    for (file, score) in hits {
        let slot = best.entry(file).or_insert(score);
        *slot = slot.max(score);
    }
    let mut near: Vec<Near> = best.into_iter().map(|(file_id, score)| Near { file_id, score }).collect();
    near.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.file_id.cmp(&b.file_id)));
    near.truncate(limit);
    near
}

/// Why a batch read at `from` is refused: the index has moved since (a rebuild reset it, or
/// another projector applied that page first).
pub(crate) fn moved_on(from: i64) -> SearchError {
    SearchError::Index(format!(
        "the vector index is no longer at position {from} (rebuilt, or another projector went on); the page is read again"
    ))
}

/// Where the vectors a `FileAnalyzed` names are read from (the chunk store, opened with the
/// owner's key).
#[async_trait]
pub trait VectorSource: Send + Sync {
    /// The vectors stored under `reference` for `owner`; `None` when they can no longer be read
    /// (the account was erased, or they were collected).
    async fn vectors(&self, owner: UserId, reference: &str) -> Result<Option<Vec<Vec<f32>>>, String>;
}

/// Builds vector batches from the log.
pub struct VectorProjector {
    events: Arc<dyn EventStore>,
    source: Arc<dyn VectorSource>,
}

#[derive(Default)]
struct Pending {
    files: HashMap<FileId, Option<FileVectors>>,
    erased: HashSet<UserId>,
    removed: HashSet<ProviderId>,
}

impl Pending {
    fn gone(&mut self, matches: impl Fn(&FileVectors) -> bool) {
        for slot in self.files.values_mut() {
            if slot.as_ref().is_some_and(&matches) {
                *slot = None;
            }
        }
    }
}

fn file_of(event: &DomainEvent) -> Option<FileId> {
    match event {
        DomainEvent::FileDiscovered(e) => Some(e.file_id),
        DomainEvent::FileChanged(e) => Some(e.file_id),
        DomainEvent::FileAnalyzed(e) => Some(e.file_id),
        DomainEvent::FileDeleted(e) => Some(e.file_id),
        DomainEvent::FileRemoved(e) => Some(e.file_id),
        _ => None,
    }
}

impl VectorProjector {
    pub fn new(events: Arc<dyn EventStore>, source: Arc<dyn VectorSource>) -> Self {
        Self { events, source }
    }

    /// Applies the next page of events after the index's checkpoint. Returns how many it read.
    ///
    /// # Errors
    /// The log or the index failed (nothing is then skipped).
    pub async fn step(&self, index: &dyn VectorIndex) -> SearchResult<usize> {
        let from = index.checkpoint().await?;
        let events = self
            .events
            .read_all(from, PAGE)
            .await
            .map_err(|err| SearchError::Index(format!("reading the log: {err}")))?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        let mut decoded = Vec::with_capacity(events.len());
        for event in &events {
            if let Some(event) = crate::projector::decode(event)? {
                decoded.push(event);
            }
        }
        let wanted: Vec<FileId> = decoded.iter().filter_map(file_of).collect::<HashSet<_>>().into_iter().collect();
        let mut pending = Pending::default();
        for record in index.records(&wanted).await? {
            pending.files.insert(record.file_id, Some(record));
        }
        for event in decoded {
            self.fold(&mut pending, event).await?;
        }
        let mut batch = VectorBatch {
            from,
            checkpoint: last,
            erased: pending.erased.into_iter().collect(),
            removed_providers: pending.removed.into_iter().collect(),
            ..VectorBatch::default()
        };
        for (id, record) in pending.files {
            match record {
                Some(record) => batch.upserts.push(record),
                None => batch.deletes.push(id),
            }
        }
        index.apply(batch).await?;
        Ok(events.len())
    }

    async fn fold(&self, pending: &mut Pending, event: DomainEvent) -> SearchResult<()> {
        match event {
            DomainEvent::FileDiscovered(e) => {
                pending.files.insert(
                    e.file_id,
                    Some(FileVectors {
                        file_id: e.file_id,
                        owner_id: e.owner_id,
                        provider_id: e.provider_id,
                        checksum: e.checksum,
                        vectors: Some(Vec::new()),
                    }),
                );
            }
            DomainEvent::FileChanged(e) => {
                if let Some(Some(record)) = pending.files.get_mut(&e.file_id)
                    && record.checksum != e.checksum
                {
                    record.checksum = e.checksum;
                    record.vectors = Some(Vec::new());
                }
            }
            DomainEvent::FileDeleted(e) => {
                pending.files.insert(e.file_id, None);
            }
            DomainEvent::FileRemoved(e) => {
                pending.files.insert(e.file_id, None);
            }
            DomainEvent::ProviderDisconnected(e) => {
                pending.removed.insert(e.provider_id);
                pending.gone(|f| f.provider_id == e.provider_id);
            }
            DomainEvent::UserDeleted(e) => {
                pending.erased.insert(e.user_id);
                pending.gone(|f| f.owner_id == e.user_id);
            }
            DomainEvent::FileAnalyzed(e) => {
                if e.model != TEXT_MODEL || e.outcome != AnalysisOutcome::Analyzed {
                    return Ok(());
                }
                let Some(Some(record)) = pending.files.get_mut(&e.file_id) else {
                    return Ok(());
                };
                // Vectors of a version the file has moved on from are not its.
                if record.checksum != e.checksum || record.owner_id != e.owner_id {
                    return Ok(());
                }
                let Some(reference) = &e.vectors else { return Ok(()) };
                match self.source.vectors(e.owner_id, &reference.reference).await {
                    Ok(Some(vectors)) => record.vectors = Some(vectors),
                    Ok(None) => record.vectors = Some(Vec::new()),
                    // The page is applied again later: vectors are not forgotten for a store that
                    // did not answer.
                    Err(error) => return Err(SearchError::Index(format!("the vectors of file {}: {error}", e.file_id))),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies pages until the index has reached the log's head as it was when this began.
    ///
    /// # Errors
    /// See [`Self::step`].
    pub async fn catch_up(&self, index: &dyn VectorIndex) -> SearchResult<u64> {
        let mut read = 0;
        loop {
            let count = self.step(index).await?;
            if count == 0 {
                return Ok(read);
            }
            read += count as u64;
        }
    }
}

/// Rebuilds the index from the whole log: forgets everything, then replays every page (the vectors
/// read from the [`VectorSource`], never computed again). A running server's projector follows
/// along from the reset checkpoint: a batch applies only from the checkpoint it was read at, so of
/// two projectors on one page one applies it and the other reads on from there. Returns how many
/// events it read.
///
/// # Errors
/// The log, the source or the index failed.
pub async fn rebuild(index: &dyn VectorIndex, events: Arc<dyn EventStore>, source: Arc<dyn VectorSource>) -> SearchResult<u64> {
    index.reset().await?;
    VectorProjector::new(events, source).catch_up(index).await
}

/// The vector projector of a running server, following the log into the index.
pub struct LiveVectors {
    index: Arc<dyn VectorIndex>,
    projector: VectorProjector,
    events: Arc<dyn EventStore>,
    position: Progress,
    poll: Duration,
}

impl LiveVectors {
    pub fn new(index: Arc<dyn VectorIndex>, events: Arc<dyn EventStore>, source: Arc<dyn VectorSource>) -> Arc<Self> {
        Arc::new(Self {
            index,
            projector: VectorProjector::new(Arc::clone(&events), source),
            events,
            position: Progress::new(),
            poll: Duration::from_millis(500),
        })
    }

    pub fn index(&self) -> &Arc<dyn VectorIndex> {
        &self.index
    }

    /// Follows the log until `shutdown`; into an index that several processes share, only while
    /// this one holds `leadership`'s lock.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, leadership: Option<Leadership>) {
        follow_shared(
            &*self,
            &*self.events,
            self.poll,
            &shutdown,
            &self.position,
            "Vector indexing",
            leadership,
        )
        .await;
    }

    /// The position the index has reached.
    pub fn position(&self) -> i64 {
        self.position.position()
    }

    /// Waits until the index has reached `position`; false on timeout.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        self.position.wait_for(position, timeout).await
    }
}

#[async_trait]
impl Step for LiveVectors {
    async fn step(&self) -> (SearchResult<usize>, Option<i64>) {
        let read = self.projector.step(&*self.index).await;
        (read, self.index.checkpoint().await.ok())
    }

    async fn checkpoint(&self) -> Option<i64> {
        self.index.checkpoint().await.ok()
    }
}
