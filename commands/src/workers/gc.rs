//! Garbage collection of the chunk store, and the leases that keep it from racing the work that
//! writes chunks.
//!
//! Whatever stores chunks and records references to them afterwards (a sync run, an uploaded merge,
//! a restore) holds a *use* lease for as long as it may hold chunks it has not recorded yet. The
//! collector takes the one *collect* lease, beside which no use lease is granted, waits for the use
//! leases already granted to end, and only then marks every chunk that a pair's history references
//! and deletes the rest. Lease changes are serialised (SQLite has one writer; on PostgreSQL each
//! change locks the lease table first), so a use lease is either granted before the collect lease,
//! and waited for, or refused until the collector is done.
//!
//! Chunks are marked by the files that hold them as their account names them (sealed under the
//! account's key, or plain from before sealing), so what an erased account kept, which nobody can
//! name or open any more, is deleted with the rest.
//!
//! Leases expire unless renewed, so a killed process's lease lapses after [`LEASE_TTL`] (by the
//! database's clock). A holder that could not renew in time (a stalled process) finds its lease no
//! longer valid and records nothing more: the run fails and the next one starts over.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use cloudsync_chunks::{AccountStore, Stored, get_manifest};
use cloudsync_domain::file::FileCommand;
use cloudsync_domain::sync_pair::{SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, DomainEvent, SyncPairId, UserId};
use cloudsync_eventstore::{DbPool, on_pool};
use tokio_util::sync::CancellationToken;

use super::leases::{RENEW_EVERY, db_error, db_now_ms, keep_renewed, millis};
use crate::core::{Context, encode};
use crate::{CommandError, Commands};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};

/// How long a lease lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(60);
/// How often a waiting lease asks again.
const POLL: Duration = Duration::from_millis(200);
/// The worker checkpoint of the collector's scan of the log for pairs.
const CHECKPOINT: &str = "chunk-gc";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Use,
    Collect,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Use => "use",
            Self::Collect => "collect",
        }
    }
}

fn store_error(err: cloudsync_chunks::StoreError) -> CommandError {
    CommandError::Storage(err.to_string())
}

/// Takes (or extends) `holder`'s lease of `kind` unless another holder's unexpired lease forbids
/// it: a use lease beside a collect lease, or a second collect lease. True when taken.
async fn try_take(pool: &DbPool, holder: &str, kind: Kind) -> Result<bool, CommandError> {
    let blocking = match kind {
        Kind::Use => "kind = 'collect'",
        Kind::Collect => "kind = 'collect' AND holder <> $1",
    };
    let now = db_now_ms(pool);
    let insert = format!(
        "INSERT INTO chunk_store_leases (holder, kind, expires_at) SELECT $1, $2, {now} + $3 \
         WHERE NOT EXISTS (SELECT 1 FROM chunk_store_leases WHERE {blocking} AND expires_at > {now}) \
         ON CONFLICT (holder) DO UPDATE SET expires_at = excluded.expires_at"
    );
    let ttl = millis(LEASE_TTL);
    let taken = match pool {
        // One statement is one write transaction: SQLite runs them one at a time.
        DbPool::Sqlite(p) => sqlx::query(&insert)
            .bind(holder)
            .bind(kind.as_str())
            .bind(ttl)
            .execute(p)
            .await
            .map_err(db_error)?
            .rows_affected(),
        DbPool::Postgres(p) => {
            let mut tx = p.begin().await.map_err(db_error)?;
            // Serialises lease changes: the check and the insert see every committed lease.
            sqlx::query("LOCK TABLE chunk_store_leases IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            let rows = sqlx::query(&insert)
                .bind(holder)
                .bind(kind.as_str())
                .bind(ttl)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
            tx.commit().await.map_err(db_error)?;
            rows
        }
    };
    Ok(taken == 1)
}

/// Extends an unexpired lease; false when it had expired or is gone.
async fn renew(pool: &DbPool, holder: &str) -> Result<bool, CommandError> {
    let now = db_now_ms(pool);
    let query = format!("UPDATE chunk_store_leases SET expires_at = {now} + $1 WHERE holder = $2 AND expires_at > {now}");
    let rows = on_pool!(pool, |p| sqlx::query(&query)
        .bind(millis(LEASE_TTL))
        .bind(holder)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    Ok(rows == 1)
}

async fn remove(pool: &DbPool, holder: &str) -> Result<(), CommandError> {
    let query = "DELETE FROM chunk_store_leases WHERE holder = $1";
    on_pool!(pool, |p| sqlx::query(query).bind(holder).execute(p).await.map(drop)).map_err(db_error)
}

/// Unexpired use leases.
async fn users(pool: &DbPool) -> Result<i64, CommandError> {
    let query = format!(
        "SELECT COUNT(*) FROM chunk_store_leases WHERE kind = 'use' AND expires_at > {}",
        db_now_ms(pool)
    );
    on_pool!(pool, |p| sqlx::query_scalar(&query).fetch_one(p).await).map_err(db_error)
}

/// A lease on the chunk store, renewed in the background until released.
pub struct Lease {
    pool: DbPool,
    holder: String,
    /// When the last renewal (or the taking) succeeded.
    renewed: Arc<Mutex<Instant>>,
    stop: CancellationToken,
}

/// Whether a [`Lease`] is still valid, for work that runs beside its holder.
#[derive(Clone)]
pub(crate) struct LeaseWatch(Arc<Mutex<Instant>>);

impl LeaseWatch {
    pub(crate) fn valid(&self) -> bool {
        self.0.lock().is_ok_and(|at| at.elapsed() + RENEW_EVERY < LEASE_TTL)
    }
}

impl Lease {
    async fn take(pool: &DbPool, holder: String, kind: Kind, cancel: &CancellationToken) -> Result<Option<Self>, CommandError> {
        loop {
            let started = Instant::now();
            if try_take(pool, &holder, kind).await? {
                let lease = Self {
                    pool: pool.clone(),
                    holder,
                    renewed: Arc::new(Mutex::new(started)),
                    stop: CancellationToken::new(),
                };
                lease.keep_renewed();
                return Ok(Some(lease));
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(POLL) => {}
            }
        }
    }

    fn keep_renewed(&self) {
        let (pool, holder) = (self.pool.clone(), self.holder.clone());
        keep_renewed(
            "chunk store",
            self.holder.clone(),
            LEASE_TTL,
            Arc::clone(&self.renewed),
            self.stop.clone(),
            None,
            move || {
                let (pool, holder) = (pool.clone(), holder.clone());
                Box::pin(async move { renew(&pool, &holder).await })
            },
        );
    }

    /// Whether the lease certainly still holds: renewed less than its lifetime ago, with a margin
    /// for clocks and the write about to be made.
    pub fn valid(&self) -> bool {
        self.renewed.lock().is_ok_and(|at| at.elapsed() + RENEW_EVERY < LEASE_TTL)
    }

    /// A handle that tells whether the lease is still [`Lease::valid`].
    pub(crate) fn watch(&self) -> LeaseWatch {
        LeaseWatch(Arc::clone(&self.renewed))
    }

    /// Gives the lease up.
    pub async fn release(self) {
        self.stop.cancel();
        if let Err(error) = remove(&self.pool, &self.holder).await {
            tracing::warn!(holder = %self.holder, error = %error, "Could not release a chunk-store lease; it expires on its own.");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What a collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Pairs whose histories were read.
    pub pairs: usize,
    /// Versions let go because they fell out of their pair's retention.
    pub versions_pruned: usize,
    /// Pairs of erased accounts, whose versions were let go with them (and are forgotten).
    pub erased_pairs: usize,
    /// Chunks in the store before.
    pub chunks: usize,
    /// Chunks deleted: nothing referenced them.
    pub deleted: usize,
    /// Temporary files of interrupted chunk writes removed.
    pub temporaries: usize,
    /// Files whose extracted text and model results were let go: the file was deleted or changed,
    /// or its account erased.
    pub texts_released: usize,
    /// Deleted files whose kept content fell out of its retention (they can no longer be restored).
    pub deleted_released: usize,
}

/// Keeps the files of the chunk `id` that `account` references and, where it is a manifest (as
/// every reference is), those of its chunks.
async fn keep_referenced(account: &AccountStore, id: &str, keep: &mut HashSet<Stored>) -> Result<(), cloudsync_chunks::StoreError> {
    keep.extend(account.files_of(id)?);
    let manifest = get_manifest(account, id).await?;
    for chunk in &manifest.chunks {
        keep.extend(account.files_of(&chunk.id)?);
    }
    Ok(())
}

impl Commands {
    /// A use lease for work that stores chunks and records references to them afterwards (`holder`
    /// names it): the collector leaves the store alone until it is released. Waits while a
    /// collection goes on; `None` when cancelled while waiting.
    ///
    /// # Errors
    /// Database failures.
    pub async fn chunk_lease(&self, holder: String, cancel: &CancellationToken) -> Result<Option<Lease>, CommandError> {
        Lease::take(self.pool(), holder, Kind::Use, cancel).await
    }

    /// A use lease for the content pipeline's work on `file` (results stored, then recorded).
    pub(crate) async fn content_lease(
        &self,
        file: cloudsync_domain::FileId,
        cancel: &CancellationToken,
    ) -> Result<Option<Lease>, CommandError> {
        self.chunk_lease(format!("content-{file}-{}", uuid::Uuid::now_v7().simple()), cancel)
            .await
    }

    /// Collects the chunk store's garbage: lets go of versions outside their pair's retention, then
    /// deletes every chunk that no pair's history references. Waits up to `wait` for sync runs in
    /// progress to end (new ones wait for the collector).
    ///
    /// # Errors
    /// [`CommandError::Invalid`] without a chunk store; [`CommandError::Conflict`] when runs were
    /// still going after `wait`, or another collection is going on; store errors.
    pub async fn collect_garbage(&self, wait: Duration) -> Result<GcReport, CommandError> {
        let chunks = self
            .chunk_store()
            .cloned()
            .ok_or_else(|| CommandError::Invalid("no chunk store is configured".into()))?;
        let pool = self.pool().clone();
        let deadline = Instant::now() + wait;
        let holder = format!("collect-{}", uuid::Uuid::now_v7());
        if !try_take(&pool, &holder, Kind::Collect).await? {
            return Err(CommandError::Conflict("another garbage collection is going on".into()));
        }
        let lease = Lease {
            pool: pool.clone(),
            holder,
            renewed: Arc::new(Mutex::new(Instant::now())),
            stop: CancellationToken::new(),
        };
        lease.keep_renewed();
        let result = async {
            // Runs that took their lease before ours go on to their end; none starts meanwhile.
            loop {
                let running = users(&pool).await?;
                if running == 0 {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(CommandError::Conflict(format!(
                        "{running} sync run(s) still use the chunk store; try again later"
                    )));
                }
                tokio::time::sleep(POLL).await;
            }
            let mut report = GcReport::default();
            let pairs = self.known_pairs().await?;
            report.pairs = pairs.len();
            // The files of every chunk a kept account references, as that account names them.
            let mut referenced: HashSet<Stored> = HashSet::new();
            // Each owner's view of the store; `None` for an erased account.
            let mut accounts: HashMap<UserId, Option<AccountStore>> = HashMap::new();
            for pair_id in pairs {
                let (mut pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
                // A pair that was never created has nothing kept.
                let Some(owner) = pair.settings().map(|created| created.owner_id) else {
                    continue;
                };
                if self.account_of(owner, &mut accounts).await?.is_none() {
                    // An erased account's versions go with it: nothing of its pairs is kept.
                    let forget = "DELETE FROM chunk_store_pairs WHERE pair_id = $1";
                    let id = pair_id.to_string();
                    on_pool!(&pool, |p| sqlx::query(forget).bind(id).execute(p).await.map(drop)).map_err(db_error)?;
                    report.erased_pairs += 1;
                    continue;
                }
                let pruned = pair.handle(SyncPairCommand::PruneVersions { at: Utc::now() })?;
                if !pruned.is_empty() {
                    let ctx = Context::new(None);
                    self.store()
                        .append(vec![StreamAppend {
                            stream: pair_id.stream(),
                            // Runs are waited out; only versions are let go here.
                            expected: ExpectedVersion::Any,
                            events: pruned.iter().map(|e| encode(e, &ctx)).collect(),
                        }])
                        .await?;
                    for event in &pruned {
                        if let DomainEvent::FileVersionsPruned(e) = event {
                            report.versions_pruned += e.version_ids.len();
                        }
                        pair.apply(event);
                    }
                }
                let Some(Some(account)) = accounts.get(&owner) else { continue };
                for id in pair.stored_references() {
                    // A manifest's chunks: all of them for a kept content, whichever are stored
                    // for a manifest kept for ranged writes.
                    if let Err(error) = keep_referenced(account, id, &mut referenced).await {
                        tracing::warn!(pair = %pair_id, manifest = id, error = %error, "A referenced manifest is not readable.");
                    }
                }
            }
            // The current extracted text and model results of every live file of a kept account.
            let files = "SELECT file_id FROM chunk_store_files";
            let ids: Vec<String> = on_pool!(&pool, |p| sqlx::query_scalar(files).fetch_all(p).await).map_err(db_error)?;
            for id in ids.iter().filter_map(|id| id.parse::<cloudsync_domain::FileId>().ok()) {
                let (mut file, _) = self.file_with_content(id).await?;
                // A deleted file's kept content past its retention is let go.
                let released = file.handle(FileCommand::ReleaseKept {
                    now: Utc::now(),
                    days: self.deleted_keep_days,
                })?;
                if !released.is_empty() {
                    self.store()
                        .append(vec![StreamAppend {
                            stream: id.stream(),
                            // Only a restore races with this, and it finds the content still there.
                            expected: ExpectedVersion::Any,
                            events: released.iter().map(|e| encode(e, &Context::new(None))).collect(),
                        }])
                        .await?;
                    released.iter().for_each(|e| file.apply(e));
                    report.deleted_released += 1;
                }
                let mut references = file.content_references();
                references.extend(file.kept().map(|(kept, _)| kept.manifest.as_str()));
                let account = match file.owner() {
                    Some(owner) if !references.is_empty() => self.account_of(owner, &mut accounts).await?,
                    _ => None,
                };
                let Some(account) = account else {
                    let forget = "DELETE FROM chunk_store_files WHERE file_id = $1";
                    let id = id.to_string();
                    on_pool!(&pool, |p| sqlx::query(forget).bind(id).execute(p).await.map(drop)).map_err(db_error)?;
                    report.texts_released += 1;
                    continue;
                };
                for reference in references {
                    if let Err(error) = keep_referenced(account, reference, &mut referenced).await {
                        tracing::warn!(file = %id, error = %error, "A kept text's or vector's manifest is not readable.");
                    }
                }
            }
            // Temporary files of chunk writes whose process is gone.
            report.temporaries = chunks.remove_temporaries().await.map_err(store_error)?;
            let stored = chunks.list().await.map_err(store_error)?;
            report.chunks = stored.len();
            for file in stored.iter().filter(|file| !referenced.contains(*file)) {
                if !lease.valid() {
                    return Err(CommandError::Conflict("the collector's lease lapsed; run it again".into()));
                }
                chunks.remove(file).await.map_err(store_error)?;
                report.deleted += 1;
            }
            Ok(report)
        }
        .await;
        lease.release().await;
        let report = result?;
        tracing::info!(
            pairs = report.pairs,
            pruned = report.versions_pruned,
            erased = report.erased_pairs,
            chunks = report.chunks,
            deleted = report.deleted,
            "Chunk store collected."
        );
        Ok(report)
    }

    /// `owner`'s view of the chunk store, remembered in `accounts`; `None` for an erased account
    /// (whose chunks are kept for nobody).
    async fn account_of<'a>(
        &self,
        owner: UserId,
        accounts: &'a mut HashMap<UserId, Option<AccountStore>>,
    ) -> Result<Option<&'a AccountStore>, CommandError> {
        if let std::collections::hash_map::Entry::Vacant(entry) = accounts.entry(owner) {
            entry.insert(match self.user(owner).await? {
                Some(_) => self.chunks_to_open(owner).await?,
                None => None,
            });
        }
        Ok(accounts.get(&owner).and_then(Option::as_ref))
    }

    /// Every sync pair in the log: the collector's list, brought up to the head (from its
    /// checkpoint) first.
    async fn known_pairs(&self) -> Result<Vec<SyncPairId>, CommandError> {
        let pool = self.pool();
        let checkpoint = "SELECT position FROM worker_checkpoints WHERE name = $1";
        let mut after: i64 = on_pool!(pool, |p| sqlx::query_scalar(checkpoint).bind(CHECKPOINT).fetch_optional(p).await)
            .map_err(db_error)?
            .unwrap_or(0);
        let insert = "INSERT INTO chunk_store_pairs (pair_id) VALUES ($1) ON CONFLICT (pair_id) DO NOTHING";
        let save = "INSERT INTO worker_checkpoints (name, position) VALUES ($1, $2) \
                    ON CONFLICT (name) DO UPDATE SET position = excluded.position";
        loop {
            let page = self.store().read_all(after, 1000).await?;
            let Some(last) = page.last().map(|e| e.position) else { break };
            for recorded in page.iter().filter(|e| match e.event_type.as_str() {
                "FileContentExtracted" | "FileAnalyzed" => true,
                // A deleted file's kept content.
                "FileDeleted" => e.payload.get("kept").is_some_and(|kept| !kept.is_null()),
                _ => false,
            }) {
                if let Some(id) = recorded.payload.get("file_id").and_then(|v| v.as_str()).map(str::to_owned) {
                    let insert = "INSERT INTO chunk_store_files (file_id) VALUES ($1) ON CONFLICT (file_id) DO NOTHING";
                    on_pool!(pool, |p| sqlx::query(insert).bind(id).execute(p).await.map(drop)).map_err(db_error)?;
                }
            }
            for recorded in page.iter().filter(|e| e.event_type == "SyncPairCreated") {
                let Ok(DomainEvent::SyncPairCreated(created)) =
                    DomainEvent::decode(&recorded.event_type, recorded.schema_version, &recorded.payload)
                else {
                    continue;
                };
                let id = created.pair_id.to_string();
                on_pool!(pool, |p| sqlx::query(insert).bind(id).execute(p).await.map(drop)).map_err(db_error)?;
            }
            on_pool!(pool, |p| sqlx::query(save).bind(CHECKPOINT).bind(last).execute(p).await.map(drop)).map_err(db_error)?;
            after = last;
        }
        let ids: Vec<String> = on_pool!(pool, |p| sqlx::query_scalar("SELECT pair_id FROM chunk_store_pairs")
            .fetch_all(p)
            .await)
        .map_err(db_error)?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }
}
