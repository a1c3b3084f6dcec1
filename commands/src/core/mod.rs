//! The shared core of every handler: who issues a command ([`Context`]), how its events are encoded
//! with their metadata, the expected version of a stream, and how storage errors map to command
//! errors. It imports nothing else of this crate.

mod error;

use chrono::Utc;
use cloudsync_domain::{Aggregate, DomainEvent, UserId};
use cloudsync_eventstore::{EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend};
use cloudsync_providers::ProviderError;
use uuid::Uuid;

pub use error::CommandError;

tokio::task_local! {
    /// The correlation of the request or job this task serves (see [`correlated`]).
    static CORRELATION: Uuid;
}

/// Runs `work` as part of the request or job `correlation`: every [`Context::new`] made inside it
/// (in this task) stamps its events with that correlation id.
pub async fn correlated<F: std::future::Future>(correlation: Uuid, work: F) -> F::Output {
    CORRELATION.scope(correlation, work).await
}

/// The correlation the current task serves, if it serves one.
pub fn current_correlation() -> Option<Uuid> {
    CORRELATION.try_with(|id| *id).ok()
}

/// Who issues a command and which request it belongs to; stamped on every event it causes.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub actor: Option<UserId>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

impl Context {
    /// On behalf of `actor`, in the correlation of the request or job being served (see
    /// [`correlated`]), else in a new one.
    pub fn new(actor: Option<UserId>) -> Self {
        Self {
            actor,
            correlation_id: current_correlation().unwrap_or_else(Uuid::new_v4),
            causation_id: None,
        }
    }

    pub(crate) fn metadata(&self) -> EventMetadata {
        EventMetadata {
            event_id: Uuid::now_v7(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor_id: self.actor.map(|u| u.as_uuid()),
            occurred_at: Utc::now(),
        }
    }
}

pub(crate) fn encode(event: &DomainEvent, ctx: &Context) -> NewEvent {
    let encoded = event.encode();
    NewEvent {
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        payload: encoded.payload,
        metadata: ctx.metadata(),
    }
}

/// How a provider's refusal reaches the caller.
pub(crate) fn storage_error(error: ProviderError) -> CommandError {
    match error {
        ProviderError::NotFound(_) => CommandError::NotFound("file"),
        ProviderError::AlreadyExists(what) => CommandError::Conflict(format!("{what} already exists")),
        ProviderError::PermissionDenied(why) | ProviderError::Invalid(why) => CommandError::Invalid(why),
        other => CommandError::Storage(other.to_string()),
    }
}

pub(crate) fn expected(version: i64) -> ExpectedVersion {
    if version == 0 {
        ExpectedVersion::NoStream
    } else {
        ExpectedVersion::Exact(version)
    }
}

/// An aggregate and the version of its stream.
///
/// # Errors
/// Store failures and undecodable events.
pub async fn load<A: Aggregate<Event = DomainEvent>>(store: &dyn EventStore, stream: &str) -> Result<(A, i64), CommandError> {
    let recorded = store.read_stream(stream).await?;
    let version = recorded.last().map_or(0, |e| e.stream_version);
    let events = recorded
        .iter()
        .map(|e| DomainEvent::decode(&e.event_type, e.schema_version, &e.payload))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((A::load(&events), version))
}

/// Sync pairs as last loaded, at most [`PairCache::CAPACITY`] for at most [`PairCache::TTL`], the
/// least recently used going first. A pair's history grows with every run (each decision is an
/// event), so loading it again reads only the events after the version held, from the store
/// itself: what other processes appended is seen as if the whole stream had been read. A pair not
/// held starts from its stream's snapshot, where one can be read, and a load that folded
/// [`crate::PAIR_SNAPSHOT_EVERY`] events or more past the snapshot saves a new one (sealed with the
/// owner's key by the sealing store), so that a new process does not replay every decision. A pair is
/// held no longer than the sealing store keeps a user's unwrapped key, so an erased account's
/// paths leave this process's memory as soon as they would have without it; [`PairCache::clear`]
/// drops everything at once, loads in flight included.
#[derive(Default)]
pub(crate) struct PairCache {
    held: std::sync::Mutex<std::collections::VecDeque<Held>>,
    /// Bumped by every clear: a load that began before one keeps nothing.
    generation: std::sync::atomic::AtomicU64,
}

/// One pair held: its stream, state, version, the version of its newest snapshot, and when it was
/// read.
struct Held {
    stream: String,
    pair: cloudsync_domain::sync_pair::SyncPair,
    version: i64,
    snapshot: i64,
    at: std::time::Instant,
}

impl PairCache {
    const CAPACITY: usize = 32;
    /// As long as the sealing store keeps a user's unwrapped key.
    const TTL: std::time::Duration = std::time::Duration::from_secs(30);

    pub(crate) async fn load(
        &self,
        store: &dyn EventStore,
        stream: &str,
    ) -> Result<(cloudsync_domain::sync_pair::SyncPair, i64), CommandError> {
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::SeqCst);
        let held = {
            let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.retain(|h| h.at.elapsed() < Self::TTL);
            held.iter().position(|h| h.stream == stream).and_then(|at| held.remove(at))
        };
        let (mut pair, mut version, mut snapshot, at) = match held {
            Some(h) => (h.pair, h.version, h.snapshot, h.at),
            None => {
                let (pair, version) = Self::from_snapshot(store, stream).await;
                (pair, version, version, std::time::Instant::now())
            }
        };
        for recorded in store.read_stream_after(stream, version).await? {
            let event = DomainEvent::decode_owned(&recorded.event_type, recorded.schema_version, recorded.payload)?;
            pair.apply(&event);
            version = recorded.stream_version;
        }
        // Tried once per so many events, saved or not (a read-only server keeps none).
        if version - snapshot >= crate::PAIR_SNAPSHOT_EVERY {
            Self::save_snapshot(store, stream, &pair, version).await;
            snapshot = version;
        }
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another load of the same stream may have come back meanwhile: the newer one stays.
        if self.generation.load(Ordering::SeqCst) == generation && !held.iter().any(|h| h.stream == stream && h.version >= version) {
            held.retain(|h| h.stream != stream);
            held.push_front(Held {
                stream: stream.to_owned(),
                pair: pair.clone(),
                version,
                snapshot,
                at,
            });
            held.truncate(Self::CAPACITY);
        }
        Ok((pair, version))
    }

    /// The pair as its stream's snapshot holds it, and the version it holds; a pair at version 0
    /// where there is none, or it cannot be read.
    async fn from_snapshot(store: &dyn EventStore, stream: &str) -> (cloudsync_domain::sync_pair::SyncPair, i64) {
        use cloudsync_domain::sync_pair::SyncPair;
        match store.snapshot(stream).await {
            Ok(Some(snapshot)) => match SyncPair::from_snapshot(&snapshot.schema, &snapshot.data) {
                // Only the owner's own: a snapshot is sealed for the account it names.
                Some(pair) if snapshot.owner.is_some() && pair.owner().map(|o| o.as_uuid()) == snapshot.owner => {
                    return (pair, snapshot.version);
                }
                _ => tracing::debug!(stream, schema = %snapshot.schema, "Passed over a snapshot of another schema or owner."),
            },
            Ok(None) => {}
            Err(error) => tracing::warn!(stream, error = %error, "Could not read a snapshot; reading the stream from its start."),
        }
        (SyncPair::default(), 0)
    }

    /// Saves `pair`, folded up to `version`, as its stream's snapshot (a snapshot is a saving of
    /// time, so a failure is only logged). The sealing store seals it for the pair's owner; a pair
    /// without one gets none.
    async fn save_snapshot(store: &dyn EventStore, stream: &str, pair: &cloudsync_domain::sync_pair::SyncPair, version: i64) {
        let Some(owner) = pair.owner() else { return };
        let saved = match pair.snapshot() {
            Ok(data) => {
                let snapshot = cloudsync_eventstore::Snapshot {
                    version,
                    schema: cloudsync_domain::sync_pair::SyncPair::snapshot_schema().to_owned(),
                    owner: Some(owner.as_uuid()),
                    data,
                };
                store.save_snapshot(stream, snapshot).await
            }
            Err(error) => Err(cloudsync_eventstore::StoreError::Invalid(error.to_string())),
        };
        match &saved {
            Ok(()) => {}
            // A read-only server keeps none; an erased account gets none.
            Err(error @ cloudsync_eventstore::StoreError::Invalid(_)) => {
                tracing::debug!(stream, version, error = %error, "No snapshot of the sync pair kept.");
            }
            Err(error) => tracing::warn!(stream, version, error = %error, "Could not save a snapshot of a sync pair."),
        }
    }

    /// Puts `pair`, the fold of `stream` up to `version`, in place of the pair held for `stream`,
    /// keeping when that was read (an erased account's paths leave memory as they would have) and
    /// its snapshot's version, then brings it up to date as [`PairCache::load`] does. Where no pair
    /// is held (cleared, gone past its time) or a newer one is, `pair` is saved as the stream's
    /// snapshot instead (a fold at its version, whatever came after).
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub(crate) async fn fold_in(
        &self,
        store: &dyn EventStore,
        stream: &str,
        pair: cloudsync_domain::sync_pair::SyncPair,
        version: i64,
    ) -> Result<(), CommandError> {
        let replaced = {
            let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            held.retain(|h| h.at.elapsed() < Self::TTL);
            held.iter_mut().find(|h| h.stream == stream && h.version <= version).map(|h| {
                h.pair = pair.clone();
                h.version = version;
            })
        };
        match replaced {
            Some(()) => self.load(store, stream).await.map(|_| ()),
            None => {
                Self::save_snapshot(store, stream, &pair, version).await;
                Ok(())
            }
        }
    }

    pub(crate) fn clear(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

/// Appends one stream's events at the version it was loaded at; returns the last position.
///
/// # Errors
/// [`CommandError::Concurrency`] when the stream has moved on; store failures.
pub async fn append(
    store: &dyn EventStore,
    stream: String,
    version: i64,
    events: &[DomainEvent],
    ctx: &Context,
) -> Result<i64, CommandError> {
    let events = events.iter().map(|e| encode(e, ctx)).collect();
    let outcome = store
        .append(vec![StreamAppend {
            stream,
            expected: expected(version),
            events,
        }])
        .await?;
    Ok(outcome.last_position)
}
