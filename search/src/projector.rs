//! The search projector: follows the log from the index's own checkpoint and keeps one document per
//! listed file. A file is findable by name and path from the event that lists it; its extracted text
//! joins when the content pipeline's event names it (read from the [`TextSource`], never from the
//! file). Each page of events becomes one [`Batch`], applied with the position it reaches, so a
//! crash replays at most that page, which only rewrites the same documents.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cloudsync_domain::{DecodeError, DomainEvent, FileId, ProviderId, UserId};
use cloudsync_eventstore::{EventStore, RecordedEvent};
use tokio_util::sync::CancellationToken;

use crate::engine::Search;
use cloudsync_eventstore::leader::Leadership;

use crate::follow::{Progress, Step, follow_shared};
use crate::{Batch, Content, Picture, SearchDoc, SearchError, SearchIndex, SearchResult};

const PAGE: i64 = 500;

/// Where the text an extraction event refers to is read from (the chunk store, opened with the
/// owner's key).
#[async_trait]
pub trait TextSource: Send + Sync {
    /// The text stored under `reference` for `owner`; `None` when it can no longer be read (the
    /// account was erased, or the text collected).
    async fn text(&self, owner: UserId, reference: &str) -> Result<Option<String>, String>;
}

/// Builds index batches from the log.
pub struct SearchProjector {
    events: Arc<dyn EventStore>,
    texts: Option<Arc<dyn TextSource>>,
}

/// The documents a page of events leaves, in the order they were touched.
#[derive(Default)]
struct Pending {
    docs: HashMap<FileId, Option<SearchDoc>>,
    erased: HashSet<UserId>,
    removed: HashSet<ProviderId>,
}

impl Pending {
    fn doc(&self, id: FileId) -> Option<SearchDoc> {
        self.docs.get(&id).cloned().flatten()
    }

    fn gone(&mut self, matches: impl Fn(&SearchDoc) -> bool) {
        for slot in self.docs.values_mut() {
            if slot.as_ref().is_some_and(&matches) {
                *slot = None;
            }
        }
    }
}

pub(crate) fn decode(event: &RecordedEvent) -> SearchResult<Option<DomainEvent>> {
    match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(DecodeError::UnknownType(_)) => Ok(None),
        Err(err) => Err(SearchError::Index(format!("event {} cannot be indexed: {err}", event.position))),
    }
}

/// The file an event concerns, if it is one the index keeps.
fn file_of(event: &DomainEvent) -> Option<FileId> {
    match event {
        DomainEvent::FileDiscovered(e) => Some(e.file_id),
        DomainEvent::FileChanged(e) => Some(e.file_id),
        DomainEvent::FileMoved(e) => Some(e.file_id),
        DomainEvent::FileContentExtracted(e) => Some(e.file_id),
        DomainEvent::FileAnalyzed(e) if e.labels.is_some() || e.image.is_some() => Some(e.file_id),
        _ => None,
    }
}

impl SearchProjector {
    pub fn new(events: Arc<dyn EventStore>, texts: Option<Arc<dyn TextSource>>) -> Self {
        Self { events, texts }
    }

    /// Applies the next page of events after the index's checkpoint. Returns how many it read.
    ///
    /// # Errors
    /// The log or the index failed (nothing is then skipped: the next step starts at the same place).
    pub async fn step(&self, index: &dyn SearchIndex) -> SearchResult<usize> {
        let from = index.checkpoint().await?;
        let events = self
            .events
            .read_all(from, PAGE)
            .await
            .map_err(|err| SearchError::Index(format!("reading the log: {err}")))?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(0);
        };
        let decoded: Vec<DomainEvent> = events
            .iter()
            .map(decode)
            .collect::<SearchResult<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let wanted: Vec<FileId> = decoded.iter().filter_map(file_of).collect::<HashSet<_>>().into_iter().collect();
        let mut pending = Pending::default();
        for doc in index.get(&wanted).await? {
            pending.docs.insert(doc.file_id, Some(doc));
        }
        for event in decoded {
            self.fold(&mut pending, event).await;
        }
        let mut batch = Batch {
            checkpoint: last,
            erased: pending.erased.into_iter().collect(),
            removed_providers: pending.removed.into_iter().collect(),
            ..Batch::default()
        };
        for (id, doc) in pending.docs {
            match doc {
                Some(doc) => batch.upserts.push(doc),
                None => batch.deletes.push(id),
            }
        }
        index.apply(batch).await?;
        Ok(events.len())
    }

    async fn fold(&self, pending: &mut Pending, event: DomainEvent) {
        match event {
            DomainEvent::FileDiscovered(e) => {
                let (content, picture) = pending.doc(e.file_id).map_or((None, None), |d| (d.content, d.picture));
                let doc = SearchDoc {
                    file_id: e.file_id,
                    owner_id: e.owner_id,
                    provider_id: e.provider_id,
                    path: e.path.as_str().to_owned(),
                    size: e.size_bytes,
                    modified_at: e.modified_at,
                    mime_type: e.mime_type,
                    checksum: e.checksum,
                    content,
                    picture,
                };
                pending.docs.insert(e.file_id, Some(doc));
            }
            DomainEvent::FileChanged(e) => {
                if let Some(mut doc) = pending.doc(e.file_id) {
                    doc.path = e.path.as_str().to_owned();
                    doc.size = e.size_bytes;
                    doc.modified_at = e.modified_at;
                    doc.checksum = e.checksum;
                    pending.docs.insert(e.file_id, Some(doc));
                }
            }
            DomainEvent::FileMoved(e) => {
                if let Some(mut doc) = pending.doc(e.file_id) {
                    doc.path = e.to.as_str().to_owned();
                    pending.docs.insert(e.file_id, Some(doc));
                }
            }
            DomainEvent::FileDeleted(e) => {
                pending.docs.insert(e.file_id, None);
            }
            DomainEvent::FileRemoved(e) => {
                pending.docs.insert(e.file_id, None);
            }
            DomainEvent::ProviderDisconnected(e) => {
                pending.removed.insert(e.provider_id);
                pending.gone(|d| d.provider_id == e.provider_id);
            }
            DomainEvent::UserDeleted(e) => {
                pending.erased.insert(e.user_id);
                pending.gone(|d| d.owner_id == e.user_id);
            }
            DomainEvent::FileAnalyzed(e) if e.labels.is_some() || e.image.is_some() => {
                let Some(mut doc) = pending.doc(e.file_id) else { return };
                // What is known of this version so far (the reader's and the classifier's results
                // come in separate events).
                let mut picture = doc.picture.take().filter(|p| p.checksum == e.checksum).unwrap_or(Picture {
                    checksum: e.checksum.clone(),
                    ..Picture::default()
                });
                if let Some(labels) = e.labels {
                    picture.labels = labels.into_iter().map(|l| l.label).collect();
                }
                if let Some(image) = e.image {
                    picture.taken_at = image.taken_at;
                }
                doc.picture = Some(picture);
                pending.docs.insert(e.file_id, Some(doc));
            }
            DomainEvent::FileContentExtracted(e) => {
                let Some(mut doc) = pending.doc(e.file_id) else { return };
                let text = match (&e.text, &self.texts) {
                    (Some(reference), Some(texts)) => match texts.text(e.owner_id, &reference.reference).await {
                        Ok(text) => text,
                        Err(error) => {
                            tracing::warn!(file = %e.file_id, error = %error, "Extracted text cannot be read; the file stays findable by name.");
                            None
                        }
                    },
                    _ => None,
                };
                doc.content = text.map(|text| Content {
                    checksum: e.checksum.clone(),
                    text,
                    language: e.language.clone(),
                });
                pending.docs.insert(e.file_id, Some(doc));
            }
            _ => {}
        }
    }

    /// Applies pages until the index has reached the log's head as it was when this began.
    ///
    /// # Errors
    /// See [`Self::step`].
    pub async fn catch_up(&self, index: &dyn SearchIndex) -> SearchResult<u64> {
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

/// The projector of a running server, following the log into the live index.
pub struct LiveSearch {
    search: Arc<Search>,
    projector: SearchProjector,
    events: Arc<dyn EventStore>,
    position: Progress,
    poll: Duration,
}

impl LiveSearch {
    pub fn new(search: Arc<Search>, events: Arc<dyn EventStore>, texts: Option<Arc<dyn TextSource>>) -> Arc<Self> {
        Arc::new(Self {
            search,
            projector: SearchProjector::new(Arc::clone(&events), texts),
            events,
            position: Progress::new(),
            poll: Duration::from_millis(500),
        })
    }

    pub fn search(&self) -> &Arc<Search> {
        &self.search
    }

    /// Follows the log until `shutdown`; into an index that several processes share, only while
    /// this one holds `leadership`'s lock (see `follow_shared`).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, leadership: Option<Leadership>) {
        follow_shared(
            &*self,
            &*self.events,
            self.poll,
            &shutdown,
            &self.position,
            "Search indexing",
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
impl Step for LiveSearch {
    async fn step(&self) -> (SearchResult<usize>, Option<i64>) {
        let index = self.search.index().await;
        let read = self.projector.step(&*index).await;
        (read, index.checkpoint().await.ok())
    }

    async fn checkpoint(&self) -> Option<i64> {
        self.search.index().await.checkpoint().await.ok()
    }
}

/// Builds a new index from the whole log while the live one keeps answering, then makes it the live
/// one (a server moves over within a second, and goes on from the new index's checkpoint). Returns
/// how many events it read.
///
/// # Errors
/// The log or the new index failed; the old index then stays live and the new one is left unused.
pub async fn rebuild(engine: &crate::Engine, events: Arc<dyn EventStore>, texts: Option<Arc<dyn TextSource>>) -> SearchResult<u64> {
    let (name, index) = engine.create().await?;
    let read = SearchProjector::new(events, texts).catch_up(&*index).await?;
    // tantivy: the writer's lock goes with the index, before a server opens it.
    drop(index);
    engine.swap(&name).await?;
    Ok(read)
}
