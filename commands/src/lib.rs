//! The write side: command handlers that load aggregates from their streams, decide, and append events
//! with an expected version; the vault that seals provider secrets; and the workers that carry out
//! long work (scans, sync runs, garbage collection, schedules) and report back by appending events.
//!
//! - `core`: what every handler shares (context, load, append, expected versions, errors); it
//!   imports nothing else of the crate.
//! - `handlers`: one module per aggregate (user, MFA, provider, file, job, sync pair).
//! - `workers`: the job runner and its leases, the scheduler, the garbage collector, scans and the
//!   sync engine.
//! - `secrets` (the vault, master keys, and the chunk store's account keys), `sealing` (the event store that seals paths), `oauth`.

mod core;
mod handlers;
mod oauth;
mod sealing;
mod secrets;
mod workers;

use std::sync::Arc;

use cloudsync_chunks::{AccountStore, ChunkStore, ProviderStore};
use cloudsync_domain::clock::Clock;
use cloudsync_domain::{Aggregate, DomainEvent, ProviderId, UserId};
use cloudsync_eventstore::EventStore;
use cloudsync_providers::StorageProvider;

pub use crate::core::{CommandError, Context, correlated, current_correlation};
pub use handlers::{
    Choice, CodeKind, Connected, DEFAULT_MAX_DELETE_PERCENT, DUPLICATE, Moved, NO_PASSWORD, Resolution, Resolved, SyncSettings,
    TOTP_PERIOD, totp_base32, totp_code, totp_uri,
};
pub use oauth::{Authorization, DEFAULT_RENEW_MARGIN, MemoryPending, OAuth, OAuthApp, PendingStore, is_oauth_kind};
pub use sealing::SealingStore;
pub use secrets::{AccountKeys, KeyLookup, MasterKey, Vault};
pub use workers::{
    ContentPipeline, ContentRetries, ExportProgress, Exporter, GcReport, JOB_LEASE_TTL, JOB_QUEUE, JobRelay, JobRetries, JobRunner,
    LEASE_TTL, Lease, SINGLETON_LEASE_TTL, Scheduler,
};

/// The command side of CloudSync.
/// Days a deleted file's kept content stays restorable unless configured otherwise.
pub const DELETED_KEEP_DAYS: u32 = 30;

/// Events recorded in a sync pair's stream past its snapshot that make the next load of the pair
/// save a new snapshot (a run records one event for each of its decisions).
pub const PAIR_SNAPSHOT_EVERY: i64 = 500;

#[derive(Clone)]
pub struct Commands {
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) vault: Vault,
    oauth: Option<Arc<OAuth>>,
    chunks: Option<Chunks>,
    layer: Option<ProviderLayer>,
    clock: Arc<dyn Clock>,
    /// Days a file deleted with its content kept stays restorable.
    deleted_keep_days: u32,
    /// Sync pairs as last loaded (their history grows with every run), brought up to date by
    /// reading only the events after their version.
    pairs: Arc<core::PairCache>,
    /// Writes analytics exports (none: export jobs fail, saying so).
    pub(crate) exporter: Option<Arc<dyn Exporter>>,
}

/// The chunk store and the keys its accounts seal their chunks with.
#[derive(Clone)]
pub(crate) struct Chunks {
    pub(crate) store: Arc<ProviderStore>,
    pub(crate) keys: AccountKeys,
}

/// What wraps every provider the commands open, given the connection's id (instrumentation, or
/// faults on purpose in tests).
pub type ProviderLayer = Arc<dyn Fn(ProviderId, Arc<dyn StorageProvider>) -> Arc<dyn StorageProvider> + Send + Sync>;

impl Commands {
    pub fn new(store: Arc<dyn EventStore>, vault: Vault) -> Self {
        Self {
            store,
            vault,
            oauth: None,
            chunks: None,
            layer: None,
            clock: cloudsync_domain::clock::system(),
            deleted_keep_days: DELETED_KEEP_DAYS,
            pairs: Arc::new(core::PairCache::default()),
            exporter: None,
        }
    }

    /// Writes analytics export jobs with `exporter`.
    #[must_use]
    pub fn with_exporter(mut self, exporter: Arc<dyn Exporter>) -> Self {
        self.exporter = Some(exporter);
        self
    }

    /// Days a file deleted by `resolve_duplicate` stays restorable.
    pub fn deleted_keep_days(&self) -> u32 {
        self.deleted_keep_days
    }

    /// Keeps the content of files deleted by `resolve_duplicate` restorable for `days` (30 by default).
    #[must_use]
    pub fn with_deleted_keep_days(mut self, days: u32) -> Self {
        self.deleted_keep_days = days;
        self
    }

    /// Reads the time for second-factor windows from `clock` (the system's by default).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps file versions, merge bases, extracted texts and model results in `store`, each
    /// account's sealed under its own key, kept wrapped by `keys` (the chunk-store key ring).
    #[must_use]
    pub fn with_chunks(mut self, store: Arc<ProviderStore>, keys: MasterKey) -> Self {
        let keys = AccountKeys::for_chunk_store(keys, self.vault.pool().clone());
        self.chunks = Some(Chunks { store, keys });
        self
    }

    /// The chunk store's files, as stored (for the collector and for tests that look inside).
    pub fn chunk_store(&self) -> Option<&Arc<ProviderStore>> {
        self.chunks.as_ref().map(|chunks| &chunks.store)
    }

    /// The chunk store's account keys, when there is a chunk store.
    pub fn chunk_keys(&self) -> Option<&AccountKeys> {
        self.chunks.as_ref().map(|chunks| &chunks.keys)
    }

    /// `owner`'s view of the chunk store (its chunks sealed under its key, made on first use);
    /// `None` when no chunk store is configured.
    ///
    /// # Errors
    /// An erased account ([`CommandError::NotFound`]); the key store is unreachable.
    pub async fn chunks_for(&self, owner: UserId) -> Result<Option<Arc<dyn ChunkStore>>, CommandError> {
        Ok(self
            .account_chunks(owner)
            .await?
            .map(|store| Arc::new(store) as Arc<dyn ChunkStore>))
    }

    /// [`Commands::chunks_for`], as the concrete store (which also names the account's files).
    pub(crate) async fn account_chunks(&self, owner: UserId) -> Result<Option<AccountStore>, CommandError> {
        let Some(chunks) = &self.chunks else { return Ok(None) };
        let key = chunks.keys.to_seal(owner).await?;
        Ok(Some(AccountStore::new(Arc::clone(&chunks.store), &key)))
    }

    /// `owner`'s view of the chunk store to read from, which makes no key: `None` when the
    /// account was erased (what it kept reads as gone); an account without a key yet reads what
    /// was stored before chunks were sealed.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] when no chunk store is configured; the key store is unreachable,
    /// or the chunk-store key does not open the account's key.
    pub(crate) async fn chunks_to_open(&self, owner: UserId) -> Result<Option<AccountStore>, CommandError> {
        let Some(chunks) = &self.chunks else {
            return Err(CommandError::Invalid("no chunk store is configured".into()));
        };
        Ok(match chunks.keys.lookup(owner).await? {
            KeyLookup::Key(key) => Some(AccountStore::new(Arc::clone(&chunks.store), &key)),
            KeyLookup::Missing => Some(AccountStore::unsealed(Arc::clone(&chunks.store))),
            KeyLookup::Erased => None,
        })
    }

    /// Enables connecting OAuth providers through `oauth`'s apps.
    #[must_use]
    pub fn with_oauth(mut self, oauth: Arc<OAuth>) -> Self {
        self.oauth = Some(oauth);
        self
    }

    /// Wraps every provider opened from now on (by [`Commands::provider`], and so by scans and sync
    /// runs) in `layer`.
    #[must_use]
    pub fn with_provider_layer(mut self, layer: ProviderLayer) -> Self {
        self.layer = Some(layer);
        self
    }

    pub fn oauth(&self) -> Option<&Arc<OAuth>> {
        self.oauth.as_ref()
    }

    /// The database of the write side's own bookkeeping (leases, checkpoints, wrapped keys).
    pub(crate) fn pool(&self) -> &cloudsync_eventstore::DbPool {
        self.vault.pool()
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// An aggregate and the version of its stream.
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub async fn load<A: Aggregate<Event = DomainEvent> + 'static>(&self, stream: &str) -> Result<(A, i64), CommandError> {
        if std::any::TypeId::of::<A>() == std::any::TypeId::of::<cloudsync_domain::sync_pair::SyncPair>() {
            let loaded: Box<dyn std::any::Any> = Box::new(self.pairs.load(&*self.store, stream).await?);
            return loaded
                .downcast::<(A, i64)>()
                .map(|loaded| *loaded)
                .map_err(|_| CommandError::Storage("a sync pair loaded as another aggregate".into()));
        }
        core::load(&*self.store, stream).await
    }

    /// Takes `pair`, the fold of its stream up to `version` that a run kept as it appended, into
    /// the pairs held in memory and the stream's snapshot (see `PairCache::fold_in`).
    ///
    /// # Errors
    /// Store failures and undecodable events.
    pub(crate) async fn fold_into_pair(
        &self,
        stream: &str,
        pair: cloudsync_domain::sync_pair::SyncPair,
        version: i64,
    ) -> Result<(), CommandError> {
        self.pairs.fold_in(&*self.store, stream, pair, version).await
    }

    /// Forgets the sync pairs held in memory (an account was erased: its paths, opened before,
    /// go); the next load of each starts from its snapshot.
    pub fn forget_pairs(&self) {
        self.pairs.clear();
    }

    /// Appends one stream's events at the version it was loaded at; returns the last position.
    pub(crate) async fn append(&self, stream: String, version: i64, events: &[DomainEvent], ctx: &Context) -> Result<i64, CommandError> {
        core::append(&*self.store, stream, version, events, ctx).await
    }
}
