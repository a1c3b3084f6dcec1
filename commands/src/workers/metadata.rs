//! Keeps the providers' shared metadata cache true to what the log learns another way: a scan that
//! finds a file changed, moved or removed on the provider (a change CloudSync did not make itself;
//! its own writes drop their entries as they happen) removes the entries of the paths concerned.
//! One worker process at a time runs it (the singleton lease `metadata`), from the head of the log
//! when it takes over; what is missed while none runs expires with the entries' time to live.

use std::sync::Arc;
use std::time::Duration;

use cloudsync_cache::Cache;
use cloudsync_domain::events::DomainEvent;
use cloudsync_eventstore::{RecordedEvent, subscribe};
use cloudsync_providers::meta_key;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::Commands;

/// The event types that say a file on a provider is not what it was.
const CHANGES: [&str; 7] = [
    "FileDiscovered",
    "FileChanged",
    "FileRemoved",
    "FileMoved",
    "FileDeleted",
    "DeletedFileRestored",
    "FilePatchStarted",
];

/// The shared-metadata keys that `event` makes out of date.
pub fn stale_keys(event: &RecordedEvent) -> Vec<String> {
    if !CHANGES.contains(&event.event_type.as_str()) {
        return Vec::new();
    }
    let key = |provider: &cloudsync_domain::ProviderId, path| meta_key(&provider.to_string(), path);
    match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload) {
        Ok(DomainEvent::FileDiscovered(e)) => vec![key(&e.provider_id, &e.path)],
        Ok(DomainEvent::FileChanged(e)) => vec![key(&e.provider_id, &e.path)],
        Ok(DomainEvent::FileRemoved(e)) => vec![key(&e.provider_id, &e.path)],
        Ok(DomainEvent::FileMoved(e)) => vec![key(&e.provider_id, &e.from), key(&e.provider_id, &e.to)],
        Ok(DomainEvent::FileDeleted(e)) => vec![key(&e.provider_id, &e.path)],
        Ok(DomainEvent::DeletedFileRestored(e)) => vec![key(&e.provider_id, &e.path)],
        Ok(DomainEvent::FilePatchStarted(e)) => vec![key(&e.provider_id, &e.path)],
        _ => Vec::new(),
    }
}

/// Follows the log from its head until `shutdown`, removing what [`stale_keys`] names from `cache`.
pub struct MetadataInvalidator {
    commands: Commands,
    cache: Arc<dyn Cache>,
}

impl MetadataInvalidator {
    pub fn new(commands: Commands, cache: Arc<dyn Cache>) -> Self {
        Self { commands, cache }
    }

    /// Runs while this process holds the lease `metadata`, standing by while another does, until
    /// `shutdown`.
    pub async fn lead(self, shutdown: CancellationToken) {
        let pool = self.commands.pool().clone();
        super::leases::lead(pool, "metadata", shutdown, move |lead| {
            let this = Self {
                commands: self.commands.clone(),
                cache: Arc::clone(&self.cache),
            };
            Box::pin(this.run(lead))
        })
        .await;
    }

    /// Runs until `shutdown` (see [`MetadataInvalidator::lead`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let head = loop {
            match self.commands.store().head().await {
                Ok(head) => break head,
                Err(err) => {
                    tracing::warn!(error = %err, "The metadata invalidator cannot read the log's head; retrying.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), head, Duration::from_millis(500)));
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let event = match event {
                Some(Ok(event)) => event,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "The metadata invalidator lost the log for a moment.");
                    continue;
                }
                None => return,
            };
            let keys = stale_keys(&event);
            if !keys.is_empty()
                && let Err(err) = self.cache.remove(&keys).await
            {
                tracing::warn!(error = %err, "Changed files' metadata could not be dropped from the shared cache.");
            }
        }
    }
}
