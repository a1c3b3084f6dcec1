//! The sync engine's executor: one run of a sync pair, as a job.
//!
//! 1. **Scanning**: both folders are listed; a file whose listing shows what the pair's history says
//!    it showed at the last agreement (same size, same ETag or modification time) keeps its agreed
//!    checksum, every other file is read and hashed (BLAKE3).
//! 2. **Planning**: [`merge::plan`] against the merge base (the fold of the pair's
//!    `SyncBaseAdvanced` events). A plan that would delete more of a side than the pair allows holds
//!    the job until the owner approves (or cancels). Every decision is recorded with its reason.
//! 3. **Transferring**: the decisions are carried out by a bounded pool (each provider also enforces
//!    its own concurrency quota). Every step checks what it is about to replace or delete is still
//!    what was listed, so a change made during the run is never overwritten: the step is skipped and
//!    the next run sees it. Copies are verified against the planned checksum while they stream, and
//!    only a verified copy becomes visible: through the provider's atomic write (local folders,
//!    object stores) or through a temporary name and a rename (WebDAV, SFTP).
//!
//! After each batch of finished decisions the base advances with the paths both sides now agree on,
//! in the same transaction as the job's progress: that is the run's recorded step. A run that is
//! interrupted (crash, restart, cancel) leaves the base where its last batch left it, and the next
//! attempt plans again from fresh listings, so it neither redoes finished work nor mistakes a
//! half-finished step for a user's change (a file that a crash left absent on one side is restored
//! from the other, because the base still holds it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use cloudsync_chunks::{ChunkRef, ChunkStore, Chunker, Manifest, get_content, get_manifest, put_content, put_manifest, put_stream};
use cloudsync_domain::events::{BaseChange, FileVersionKept, Resolution, SyncPairCreated, VersionReason};
use cloudsync_domain::merge::{self, Action, ConflictKind, Decision, Side, SyncMode, Tree, Version};
use cloudsync_domain::provider::ProviderConnection;
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::sync_pair::{SyncEndpoint, SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, DomainEvent, ProviderId, ProviderKind, ProviderPath, ScanSchedule, SyncJobId, SyncPairId, UserId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use cloudsync_providers::{ByteStream, Entry, ProviderError, StorageProvider, is_temporary, stale};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gc::Lease;
use crate::handlers::{Context, encode, expected, storage_error};
use crate::{CommandError, Commands};

/// Files read at once per side while listing, and versions kept at once.
const CONCURRENCY: usize = 8;
/// Decisions carried out at once: small files spend most of their time waiting on the file system
/// (and on the group commit that makes them durable), so many go on together; each provider's own
/// transfer quota still bounds what it takes on.
const TRANSFERS: usize = 32;
/// Decisions per recorded step (one transaction with the job's progress), at most.
const BATCH: usize = 500;
/// How long finished decisions wait, at most, before they are recorded.
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// Text files up to this size are copied through memory. Every text file the merge takes (up to
/// [`merge::TEXT_MERGE_LIMIT`]) is kept in the chunk store when both sides agree on it, so that the
/// next run can merge concurrent edits line by line.
const KEEP_TEXT: u64 = 1024 * 1024;
/// Files from this size on are copied with their chunk manifest kept, so that their next change is
/// written as the byte ranges that differ, where the side takes ranged writes.
const DELTA_MIN: u64 = 1024 * 1024;
/// The most changed bytes a ranged write holds in memory; beyond it (or beyond a quarter of the
/// file) the file is copied whole.
const MAX_PATCH: u64 = 64 * 1024 * 1024;

/// How a pair is set up.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub source: SyncEndpoint,
    pub target: SyncEndpoint,
    pub mode: SyncMode,
    pub policy: merge::ConflictPolicy,
    /// A run that would delete more than this share of a side's files waits for approval.
    pub max_delete_percent: u8,
    pub schedule: Option<ScanSchedule>,
    pub realtime: bool,
    /// Earlier versions kept of each file (0: none), and for how many days (0: no age limit).
    pub keep_versions: u32,
    pub keep_days: u32,
}

/// How the owner settles a conflict.
#[derive(Debug, Clone)]
pub enum Choice {
    Source,
    Target,
    /// Both versions: the older change is kept as a conflict copy.
    Both,
    /// The owner's own merge, written to both sides.
    Merged(Vec<u8>),
}

/// The default share of a side a run may delete without asking.
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;

impl Commands {
    /// Creates a sync pair of two of `user`'s folders and, when `run_now`, its first run.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown, disconnected or someone else's providers; overlapping
    /// folders, bad limits, and real time on a provider without a change feed are
    /// [`CommandError::Invalid`].
    pub async fn sync_folders(
        &self,
        user: UserId,
        settings: SyncSettings,
        run_now: bool,
    ) -> Result<(SyncPairId, Option<SyncJobId>, i64), CommandError> {
        for endpoint in [&settings.source, &settings.target] {
            let (provider, _) = self.load::<ProviderConnection>(&endpoint.provider_id.stream()).await?;
            let connected = provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
            if settings.realtime && connected.kind != ProviderKind::Local {
                return Err(CommandError::Invalid(format!(
                    "real-time sync needs a change feed, which {} providers do not offer; use a schedule",
                    connected.kind.as_str()
                )));
            }
        }
        let pair_id = SyncPairId::from_uuid(Uuid::now_v7());
        let now = Utc::now();
        let mut pair = SyncPair::default();
        let created = pair.handle(SyncPairCommand::Create(SyncPairCreated {
            pair_id,
            owner_id: user,
            source: settings.source,
            target: settings.target,
            mode: settings.mode,
            policy: settings.policy,
            max_delete_percent: settings.max_delete_percent,
            schedule: settings.schedule,
            realtime: settings.realtime,
            keep_versions: settings.keep_versions,
            keep_days: settings.keep_days,
            at: now,
        }))?;
        created.iter().for_each(|e| pair.apply(e));
        let ctx = Context::new(Some(user));
        let mut pair_events = created;
        let mut appends = Vec::new();
        let job_id = if run_now {
            let (job_events, run) = new_run(&pair, user)?;
            pair_events.extend(run.1);
            appends.push(StreamAppend {
                stream: run.0.stream(),
                expected: ExpectedVersion::NoStream,
                events: job_events.iter().map(|e| encode(e, &ctx)).collect(),
            });
            Some(run.0)
        } else {
            None
        };
        appends.insert(
            0,
            StreamAppend {
                stream: pair_id.stream(),
                expected: ExpectedVersion::NoStream,
                events: pair_events.iter().map(|e| encode(e, &ctx)).collect(),
            },
        );
        let outcome = self.store().append(appends).await?;
        Ok((pair_id, job_id, outcome.last_position))
    }

    /// Starts a run of one of `user`'s sync pairs.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs; [`CommandError::Conflict`]
    /// while a run of the pair has not ended (the message names it).
    pub async fn request_sync(&self, user: UserId, pair_id: SyncPairId) -> Result<(SyncJobId, i64), CommandError> {
        // An erased account's pairs do not run again.
        self.user(user).await?.ok_or(CommandError::NotFound("sync pair"))?;
        let (pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
        if let Some(last) = self.run_in_progress(&pair).await? {
            return Err(CommandError::Conflict(format!(
                "a run of this pair is still in progress: operation {last}"
            )));
        }
        let (job_events, (job_id, pair_events)) = new_run(&pair, user)?;
        let ctx = Context::new(Some(user));
        let outcome = self
            .store()
            .append(vec![
                StreamAppend {
                    stream: pair_id.stream(),
                    expected: expected(version),
                    events: pair_events.iter().map(|e| encode(e, &ctx)).collect(),
                },
                StreamAppend {
                    stream: job_id.stream(),
                    expected: ExpectedVersion::NoStream,
                    events: job_events.iter().map(|e| encode(e, &ctx)).collect(),
                },
            ])
            .await?;
        Ok((job_id, outcome.last_position))
    }

    /// Lets a run held by the max-delete rail go on, deletes included.
    ///
    /// # Errors
    /// Not found (or someone else's), or a job that is not held.
    pub async fn approve_sync(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Approve { by: user, at: Utc::now() })
            .await
    }

    /// Settles a conflict left for `user` at `path` of their pair, and starts a run to carry the
    /// choice out (unless one is in progress: it is then carried out by the next run). `merged` is
    /// the owner's own merge, for [`Resolution::Merged`]-style resolutions.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs and paths without a conflict;
    /// [`CommandError::Invalid`] for conflicts a choice cannot settle.
    pub async fn resolve_conflict(
        &self,
        user: UserId,
        pair_id: SyncPairId,
        path: ProviderPath,
        choice: Choice,
    ) -> Result<(Option<SyncJobId>, i64), CommandError> {
        let (pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
        let mut lease = None;
        let resolution = match choice {
            Choice::Source => Resolution::Source,
            Choice::Target => Resolution::Target,
            Choice::Both => Resolution::Both,
            Choice::Merged(content) => {
                pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
                pair.conflicts().get(&path).ok_or(CommandError::NotFound("conflict"))?;
                let chunks = self
                    .chunks()
                    .ok_or_else(|| CommandError::Invalid("this server keeps no chunk store for merged content".into()))?;
                // Held until the resolution naming the content is recorded.
                lease = Some(self.lease_now(format!("merge-{}", Uuid::now_v7())).await?);
                let id = put_content(&**chunks, &content)
                    .await
                    .map_err(|err| CommandError::Storage(err.to_string()))?;
                Resolution::Merged {
                    content: id,
                    version: Version {
                        checksum: blake3::hash(&content).to_hex().to_string(),
                        size: content.len() as u64,
                        modified_at: Utc::now(),
                    },
                }
            }
        };
        let events = pair.handle(SyncPairCommand::ResolveConflict {
            by: user,
            path,
            resolution,
            at: Utc::now(),
        })?;
        let recorded = self.append(pair_id.stream(), version, &events, &Context::new(Some(user))).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        let recorded = recorded?;
        match self.request_sync(user, pair_id).await {
            Ok((job_id, position)) => Ok((Some(job_id), position)),
            Err(CommandError::Conflict(_)) => Ok((None, recorded)),
            Err(err) => Err(err),
        }
    }

    /// `user`'s pair's latest run, if it has not ended (it may be going on elsewhere, or have been
    /// interrupted: [`Commands::run_job`] carries it on either way).
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs.
    pub async fn unfinished_run(&self, user: UserId, pair_id: SyncPairId) -> Result<Option<SyncJobId>, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
        self.run_in_progress(&pair).await
    }

    /// The pair's latest run, if it has not ended.
    async fn run_in_progress(&self, pair: &SyncPair) -> Result<Option<SyncJobId>, CommandError> {
        let Some(last) = pair.last_run() else { return Ok(None) };
        let (job, _) = self.load::<SyncJob>(&last.stream()).await?;
        Ok(job.phase().is_some_and(|p| !p.is_terminal()).then_some(last))
    }

    /// A chunk-store lease for a short piece of work, waiting while the collector runs.
    async fn lease_now(&self, holder: String) -> Result<Lease, CommandError> {
        self.chunk_lease(holder, &CancellationToken::new())
            .await?
            .ok_or_else(|| CommandError::Conflict("the chunk store is busy; try again".into()))
    }

    /// Brings an earlier version of a file of one of `user`'s pairs back: it is written over the
    /// file (whose current content is kept as a version first), on the side it was kept from in a
    /// two-way pair and on the source of a one-way pair, and a run then carries it to the other
    /// side. Returns the side and path written, the run (unless one is in progress) and the last
    /// position.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown versions and someone else's;
    /// [`CommandError::Conflict`] while a run of the pair is in progress; storage errors (nothing
    /// is replaced unless the whole version was read back and checked).
    pub async fn restore_file_version(
        &self,
        user: UserId,
        pair_id: SyncPairId,
        version_id: Uuid,
    ) -> Result<(Side, ProviderPath, Option<SyncJobId>, i64), CommandError> {
        const UNKNOWN: CommandError = CommandError::NotFound("file version");
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        let settings = pair.live_for(user).cloned().ok_or(UNKNOWN)?;
        let kept = pair.kept_version(version_id).cloned().ok_or(UNKNOWN)?;
        let chunks = Arc::clone(self.chunks().ok_or(UNKNOWN)?);
        if let Some(last) = self.run_in_progress(&pair).await? {
            return Err(CommandError::Conflict(format!(
                "a run of this pair is in progress (operation {last}); restore once it has ended"
            )));
        }
        let side = if settings.mode == SyncMode::TwoWay {
            kept.side
        } else {
            Side::Source
        };
        let endpoint = match side {
            Side::Source => &settings.source,
            Side::Target => &settings.target,
        };
        let provider = self.provider(user, endpoint.provider_id).await?;
        let destination = kept.path.under(&endpoint.path);
        let lease = self.lease_now(format!("restore-{}", Uuid::now_v7())).await?;
        let restored = async {
            let manifest = get_manifest(&*chunks, &kept.content).await?;
            if manifest.checksum != kept.version.checksum {
                return Err(StepError::Changed("the kept version's manifest does not match it".into()));
            }
            // What is there now becomes a version of its own.
            let mut replaced = Vec::new();
            let current = match provider.stat(&destination).await {
                Ok(entry) => Some(entry),
                Err(ProviderError::NotFound(_)) => None,
                Err(err) => return Err(err.into()),
            };
            if let Some(entry) = &current {
                let (content, now) = store_whole(&*chunks, &*provider, &destination, entry.size).await?;
                replaced.push(FileVersionKept {
                    pair_id,
                    owner_id: user,
                    version_id: Uuid::now_v7(),
                    side,
                    provider_id: endpoint.provider_id,
                    path: kept.path.clone(),
                    provider_path: destination.clone(),
                    version: Version {
                        checksum: now.checksum,
                        size: now.size,
                        modified_at: entry.modified_at.unwrap_or_else(Utc::now),
                    },
                    content,
                    reason: VersionReason::Restored,
                    job_id: None,
                    at: Utc::now(),
                });
            }
            let expected = current.as_ref().map(Entry::tag);
            let temporary = temporary_name(&destination, pair_id);
            let data = stored_stream(Arc::clone(&chunks), manifest);
            write_checked(&*provider, None, &destination, &temporary, data, &kept.version, expected.as_deref()).await?;
            Ok(replaced)
        }
        .await;
        let recorded = async {
            let replaced = restored.map_err(|err| CommandError::Storage(err.to_string()))?;
            let (mut pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
            let mut events = pair.handle(SyncPairCommand::KeepVersions(replaced))?;
            events.iter().for_each(|e| pair.apply(e));
            events.extend(pair.handle(SyncPairCommand::RecordRestore {
                by: user,
                version_id,
                side,
                path: kept.path.clone(),
                at: Utc::now(),
            })?);
            self.append(pair_id.stream(), version, &events, &Context::new(Some(user))).await
        }
        .await;
        lease.release().await;
        let recorded = recorded?;
        match self.request_sync(user, pair_id).await {
            Ok((job_id, position)) => Ok((side, destination, Some(job_id), position)),
            Err(CommandError::Conflict(_)) => Ok((side, destination, None, recorded)),
            Err(err) => Err(err),
        }
    }

    /// The owner of a sync pair, for operators' tools that act on a pair by id.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown pairs.
    pub async fn pair_owner(&self, pair_id: SyncPairId) -> Result<UserId, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.settings().map(|s| s.owner_id).ok_or(CommandError::NotFound("sync pair"))
    }

    /// The pair's settings, for its owner.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs.
    pub async fn sync_pair(&self, user: UserId, pair_id: SyncPairId) -> Result<SyncPairCreated, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).cloned().ok_or(CommandError::NotFound("sync pair"))
    }
}

/// The events of a new run of `pair`: the job's creation, and the pair's note of it.
#[allow(clippy::type_complexity)]
fn new_run(pair: &SyncPair, user: UserId) -> Result<(Vec<DomainEvent>, (SyncJobId, Vec<DomainEvent>)), CommandError> {
    let settings = pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
    let job_id = SyncJobId::from_uuid(Uuid::now_v7());
    let now = Utc::now();
    let job = SyncJob::default().handle(SyncJobCommand::Create {
        job_id,
        owner_id: user,
        kind: JobKind::Sync {
            pair_id: settings.pair_id,
            source: settings.source.provider_id,
            target: settings.target.provider_id,
        },
        at: now,
    })?;
    let requested = pair.handle(SyncPairCommand::RequestRun { job_id, at: now })?;
    Ok((job, (job_id, requested)))
}

/// One side's files, relative to its folder, with what the listing showed of each.
#[derive(Default)]
struct Listing {
    tree: Tree,
    tags: HashMap<ProviderPath, String>,
    /// Temporary files found (full paths): this pair's earlier, interrupted runs', or others'.
    abandoned: Vec<Entry>,
    /// Files whose content is not known yet (not as last agreed), by path, with their full path.
    unhashed: HashMap<ProviderPath, ProviderPath>,
}

/// Which of `listing`'s unhashed files planning needs the checksum of: those the other side also
/// has, those in the base, and those of a size that a rename partner has (a base file gone from
/// this side, a file only the other side has). The rest exist on one side only and are hashed while
/// they are copied.
fn needs_hash(listing: &Listing, other: &Listing, base: &Tree) -> Vec<(ProviderPath, ProviderPath, u64)> {
    let mut partners: HashSet<u64> = base
        .iter()
        .filter(|(path, _)| !listing.tree.contains_key(*path))
        .map(|(_, v)| v.size)
        .collect();
    partners.extend(
        other
            .tree
            .iter()
            .filter(|(path, _)| !listing.tree.contains_key(*path) && !base.contains_key(*path))
            .map(|(_, v)| v.size),
    );
    listing
        .unhashed
        .iter()
        .filter_map(|(path, full)| {
            let size = listing.tree.get(path)?.size;
            (other.tree.contains_key(path) || base.contains_key(path) || partners.contains(&size))
                .then(|| (path.clone(), full.clone(), size))
        })
        .collect()
}

/// Hashes `files` (path, full path, size); a file gone since it was listed is dropped from the
/// listing, as if it had not been listed.
async fn hash_into(
    provider: &dyn StorageProvider,
    listing: &mut Listing,
    files: Vec<(ProviderPath, ProviderPath, u64)>,
) -> Result<(), CommandError> {
    let hashed: Vec<(ProviderPath, Option<String>)> = futures::stream::iter(files)
        .map(|(path, full, size)| async move {
            match crate::scan::hash(provider, &full, size).await {
                Ok(checksum) => Ok((path, Some(checksum))),
                Err(ProviderError::NotFound(_)) => Ok((path, None)),
                Err(err) => Err(storage_error(err)),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    for (path, checksum) in hashed {
        listing.unhashed.remove(&path);
        match checksum {
            Some(checksum) => {
                if let Some(version) = listing.tree.get_mut(&path) {
                    version.checksum = checksum;
                }
            }
            None => {
                listing.tree.remove(&path);
                listing.tags.remove(&path);
            }
        }
    }
    Ok(())
}

fn agreed_tag(pair: &SyncPair, side: Side, path: &ProviderPath) -> Option<String> {
    let agreed = pair.agreed(path)?;
    match side {
        Side::Source => agreed.source_tag.clone(),
        Side::Target => agreed.target_tag.clone(),
    }
}

/// Lists one side. A folder that does not exist yet is empty (the max-delete rail stops a run that
/// would empty the other side because a folder vanished).
async fn list_side(provider: Arc<dyn StorageProvider>, folder: ProviderPath, pair: &SyncPair, side: Side) -> Result<Listing, CommandError> {
    let mut first = true;
    let mut abandoned = Vec::new();
    let mut listing = Listing::default();
    {
        let entries = provider
            .list(&folder)
            .take_while(move |item| {
                let missing = first && matches!(item, Err(ProviderError::NotFound(_)));
                first = false;
                futures::future::ready(!missing)
            })
            .map_err(storage_error)
            .try_filter_map(|entry| {
                let found = match entry.path.relative_to(&folder) {
                    Some(relative) if is_temporary(relative.name()) => {
                        abandoned.push(entry);
                        None
                    }
                    Some(relative) => Some((relative, entry)),
                    None => None,
                };
                futures::future::ready(Ok(found))
            })
            .map_ok(|(relative, entry)| {
                let tag = entry.tag();
                let known = pair
                    .base()
                    .get(&relative)
                    .filter(|v| v.size == entry.size && agreed_tag(pair, side, &relative).as_deref() == Some(tag.as_str()))
                    .map(|v| v.checksum.clone());
                (relative, entry, tag, known)
            });
        let mut entries = std::pin::pin!(entries);
        while let Some((path, entry, tag, known)) = entries.try_next().await? {
            if known.is_none() {
                listing.unhashed.insert(path.clone(), entry.path.clone());
            }
            let version = Version {
                checksum: known.unwrap_or_default(),
                size: entry.size,
                modified_at: entry.modified_at.unwrap_or_default(),
            };
            listing.tags.insert(path.clone(), tag);
            listing.tree.insert(path, version);
        }
    }
    listing.abandoned = abandoned;
    Ok(listing)
}

/// Runs (or resumes) a sync job to its end. Returns quietly when the job has already ended, or is
/// cancelled while it runs.
pub(crate) async fn run_sync(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken) -> Result<(), CommandError> {
    let (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    let (Some(owner), Some(JobKind::Sync { pair_id, .. }), Some(phase)) = (job.owner(), job.kind().cloned(), job.phase()) else {
        return Err(CommandError::NotFound("sync job"));
    };
    if phase.is_terminal() {
        return Ok(());
    }
    let mut tracker = Tracker {
        commands,
        ctx: Context::new(Some(owner)),
        job_id,
        job,
        version,
        cancel,
    };
    let (pair, _) = commands.load::<SyncPair>(&pair_id.stream()).await?;
    let Some(settings) = pair.live_for(owner).cloned() else {
        return tracker.fail("the sync pair no longer exists".into()).await;
    };
    let sides = match futures::try_join!(
        commands.provider(owner, settings.source.provider_id),
        commands.provider(owner, settings.target.provider_id)
    ) {
        Ok(sides) => sides,
        Err(err) => return tracker.fail(err.to_string()).await,
    };
    if !tracker.enter(JobPhase::Scanning).await? {
        return Ok(());
    }
    tracing::info!(job = %job_id, pair = %pair_id, "Sync started.");
    // Writes that a killed process left half-done are cleared away first: on local folders here
    // (their listings leave temporary files out); elsewhere from what the listings find, below.
    for (provider, endpoint) in [(&sides.0, &settings.source), (&sides.1, &settings.target)] {
        if provider.kind() != ProviderKind::Local {
            continue;
        }
        match provider.remove_abandoned_writes(&endpoint.path).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(job = %job_id, removed, "Removed temporary files of interrupted writes."),
            Err(error) => tracing::warn!(job = %job_id, error = %error, "Could not look for interrupted writes."),
        }
    }
    let listing = async {
        futures::try_join!(
            list_side(Arc::clone(&sides.0), settings.source.path.clone(), &pair, Side::Source),
            list_side(Arc::clone(&sides.1), settings.target.path.clone(), &pair, Side::Target),
        )
    };
    let (mut source, mut target) = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        listed = listing => listed?,
    };
    let (for_source, for_target) = (needs_hash(&source, &target, pair.base()), needs_hash(&target, &source, pair.base()));
    let hashing = async {
        futures::try_join!(
            hash_into(&*sides.0, &mut source, for_source),
            hash_into(&*sides.1, &mut target, for_target)
        )
    };
    tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        hashed = hashing => hashed?,
    };
    if !tracker.running().await? || !tracker.enter(JobPhase::Planning).await? {
        return Ok(());
    }
    let decisions = merge::plan(settings.mode, settings.policy, pair.base(), &source.tree, &target.tree, Utc::now());
    if let Some((side, count)) = merge::exceeds_delete_limit(&decisions, &source.tree, &target.tree, settings.max_delete_percent)
        && !tracker.job.deletes_approved()
    {
        tracing::warn!(job = %job_id, side = side.name(), deletes = count, "Sync held: it would delete more than the pair allows.");
        let hold = SyncJobCommand::Hold {
            side,
            deletes: count as u64,
            at: Utc::now(),
        };
        tracker.step(hold).await?;
        if !tracker.running().await? {
            return Ok(());
        }
    }
    // From here on the run stores chunks that it records later: the collector waits for it.
    let lease = match commands.chunks() {
        // Each worker its own name: one that lost the job cannot release its successor's lease.
        Some(_) => match commands
            .chunk_lease(format!("sync-{job_id}-{}", Uuid::now_v7().simple()), cancel)
            .await?
        {
            Some(lease) => Some(lease),
            None => return Ok(()),
        },
        None => None,
    };
    let result = transfer(
        commands,
        tracker,
        &settings,
        pair,
        [sides.0, sides.1],
        [source, target],
        &decisions,
        lease.as_ref(),
    )
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result
}

/// The rest of a run, once it holds its chunk-store lease: keeps the versions its decisions would
/// replace, carries the decisions out and records what the sides agree on.
#[allow(clippy::too_many_arguments)]
async fn transfer(
    commands: &Commands,
    tracker: Tracker<'_>,
    settings: &SyncPairCreated,
    pair: SyncPair,
    sides: [Arc<dyn StorageProvider>; 2],
    listings: [Listing; 2],
    decisions: &[Decision],
    lease: Option<&Lease>,
) -> Result<(), CommandError> {
    let (job_id, pair_id, cancel) = (tracker.job_id, settings.pair_id, tracker.cancel);
    let flushers = [Flusher::new(Arc::clone(&sides[0])), Flusher::new(Arc::clone(&sides[1]))];
    let executor = Executor {
        sides,
        folders: [settings.source.path.clone(), settings.target.path.clone()],
        providers: [settings.source.provider_id, settings.target.provider_id],
        listings,
        pair_id,
        owner: settings.owner_id,
        job_id,
        chunks: commands.chunks().cloned(),
        flushers,
        versions: settings.keep_versions > 0,
        pair: pair.clone(),
        policy: settings.policy,
    };
    let mut run = Recorder {
        tracker,
        pair_id,
        pair,
        pending: Vec::new(),
        late: Vec::new(),
        files: 0,
        bytes: 0,
        written: 0,
        failures: Vec::new(),
        last_commit: Instant::now(),
        totals: None,
        lease,
    };
    run.record_decisions(decisions).await?;
    let files_total = decisions.len() as u64;
    let bytes_total: u64 = decisions.iter().flat_map(|d| &d.actions).map(transfer_size).sum();
    run.totals = Some((files_total, bytes_total));
    if !run.tracker.enter(JobPhase::Transferring).await? {
        return Ok(());
    }
    // What both sides agree on already (unchanged, or changed the same way on both): the base
    // catches up without any transfer.
    executor.remove_abandoned().await;
    let agreed = executor.already_agreed(decisions).await;
    for batch in agreed.chunks(BATCH) {
        run.pending.extend_from_slice(batch);
        run.commit().await?;
    }
    // What the decisions would overwrite or delete is kept (and recorded) first; a decision whose
    // version could not be kept is not carried out.
    let blocked = executor.keep_versions(decisions, &mut run).await?;

    // Decisions that rename or resolve conflicts move files between paths that other decisions may
    // use: they run one at a time, first. The rest touch one path each and run in parallel.
    let (ordered, parallel): (Vec<&Decision>, Vec<&Decision>) = decisions.iter().partition(|d| {
        d.actions.len() > 1
            || d.actions
                .iter()
                .any(|a| matches!(a, Action::Rename { .. } | Action::MergeText { .. } | Action::Unresolved { .. }))
    });
    for decision in ordered {
        if !run.tracker.running().await? {
            return Ok(());
        }
        let outcome = match blocked_by(&blocked, decision) {
            Some(why) => Outcome::failed(why.clone()),
            None => executor.carry_out(decision).await,
        };
        run.finished(decision, outcome).await?;
    }
    let mut queue = parallel.into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < TRANSFERS {
            match queue.next() {
                Some(decision) => in_flight.push(carry_out(&executor, decision, blocked_by(&blocked, decision))),
                None => break,
            }
        }
        let next = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            next = in_flight.next() => next,
        };
        let Some((decision, outcome)) = next else { break };
        run.finished(decision, outcome).await?;
        if !run.tracker.running().await? {
            return Ok(());
        }
    }
    drop(in_flight);
    run.finish().await
}

async fn carry_out<'a>(executor: &'a Executor, decision: &'a Decision, blocked: Option<&String>) -> (&'a Decision, Outcome) {
    match blocked {
        Some(why) => (decision, Outcome::failed(why.clone())),
        None => (decision, executor.carry_out(decision).await),
    }
}

/// Content at risk, and its id in the chunk store once kept.
type AtRisk = (Side, ProviderPath, Present, VersionReason);

async fn keep_one<'a>(executor: &'a Executor, item: &'a AtRisk) -> (&'a AtRisk, Result<(String, String), StepError>) {
    (item, executor.keep_version(item.0, &item.1, &item.2).await)
}

/// Why a decision may not be carried out: a path it touches had content that could not be kept.
fn blocked_by<'a>(blocked: &'a HashMap<ProviderPath, String>, decision: &Decision) -> Option<&'a String> {
    if blocked.is_empty() {
        return None;
    }
    std::iter::once(&decision.path)
        .chain(decision.actions.iter().flat_map(action_paths))
        .find_map(|path| blocked.get(path))
}

/// How many bytes an action moves.
fn transfer_size(action: &Action) -> u64 {
    match action {
        Action::Copy { version, .. } => version.size,
        Action::MergeText { source, target, .. } => source.size + target.size,
        _ => 0,
    }
}

/// The job's state and its steps.
struct Tracker<'a> {
    commands: &'a Commands,
    ctx: Context,
    job_id: SyncJobId,
    job: SyncJob,
    version: i64,
    cancel: &'a CancellationToken,
}

impl Tracker<'_> {
    async fn step(&mut self, command: SyncJobCommand) -> Result<(), CommandError> {
        self.version = self
            .commands
            .job_step(self.job_id, self.version, &mut self.job, command, &self.ctx)
            .await?;
        Ok(())
    }

    async fn fail(&mut self, reason: String) -> Result<(), CommandError> {
        tracing::warn!(job = %self.job_id, reason = %reason, "Sync failed.");
        self.step(SyncJobCommand::Fail { reason, at: Utc::now() }).await
    }

    /// Moves the job forward to `phase` unless it is there or beyond (a resumed run). False when
    /// the run must stop (the job ended, or `cancel` fired). Only the job lease's holder moves a
    /// job on, so a conflict here is a pause or a cancel that came meanwhile.
    async fn enter(&mut self, phase: JobPhase) -> Result<bool, CommandError> {
        let order = |p: JobPhase| {
            [JobPhase::Pending, JobPhase::Scanning, JobPhase::Planning, JobPhase::Transferring]
                .iter()
                .position(|q| *q == p)
        };
        for _ in 0..3 {
            // A pause (or a cancel) lands between steps: wait it out first.
            if !self.running().await? {
                return Ok(false);
            }
            let current = self.job.phase().unwrap_or(JobPhase::Pending);
            if order(current) >= order(phase) {
                return Ok(true);
            }
            match self.step(SyncJobCommand::EnterPhase { phase, at: Utc::now() }).await {
                Ok(()) => return Ok(true),
                // Paused or cancelled meanwhile: look again.
                Err(CommandError::Conflict(_)) => {
                    (self.job, self.version) = self.commands.load::<SyncJob>(&self.job_id.stream()).await?;
                }
                Err(err) => return Err(err),
            }
        }
        Err(CommandError::Conflict(
            "the job kept changing while it was started; run it again".into(),
        ))
    }

    /// Whether to go on (see [`crate::jobs::keep_running`]).
    async fn running(&mut self) -> Result<bool, CommandError> {
        crate::jobs::keep_running(self.commands, self.job_id, &mut self.job, &mut self.version, self.cancel).await
    }
}

/// What carrying out one decision did.
#[derive(Default)]
struct Outcome {
    /// Paths both sides now agree on.
    changes: Vec<BaseChange>,
    /// Bytes the decision had to bring across (for progress).
    bytes: u64,
    /// Bytes it wrote to the sides (only changed ranges, where a side takes ranged writes).
    written: u64,
    /// Conflicts left for the owner that the plan did not show (a line merge that was not clean).
    late: Vec<Decision>,
    error: Option<String>,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }
}

/// Records decisions, finished steps and progress.
struct Recorder<'a> {
    tracker: Tracker<'a>,
    pair_id: SyncPairId,
    pair: SyncPair,
    pending: Vec<BaseChange>,
    late: Vec<Decision>,
    files: u64,
    bytes: u64,
    written: u64,
    failures: Vec<String>,
    last_commit: Instant,
    totals: Option<(u64, u64)>,
    /// The run's chunk-store lease: nothing is recorded once it may have lapsed (the collector may
    /// have taken chunks the records would name).
    lease: Option<&'a Lease>,
}

impl Recorder<'_> {
    async fn record_decisions(&mut self, decisions: &[Decision]) -> Result<(), CommandError> {
        for batch in decisions.chunks(BATCH) {
            let mut events = Vec::new();
            for decision in batch {
                events.extend(self.pair.handle(SyncPairCommand::RecordDecision {
                    job_id: self.tracker.job_id,
                    decision: decision.clone(),
                    at: Utc::now(),
                })?);
            }
            self.append_pair(&events, None).await?;
        }
        Ok(())
    }

    /// Appends pair events, with the job's progress when given, in one transaction.
    async fn append_pair(&mut self, events: &[DomainEvent], progress: Option<SyncJobCommand>) -> Result<(), CommandError> {
        if self.lease.is_some_and(|lease| !lease.valid()) {
            return Err(CommandError::Conflict(
                "the run could not renew its chunk-store lease in time; it stopped, and the next run starts over".into(),
            ));
        }
        let ctx = self.tracker.ctx;
        loop {
            let mut appends = Vec::new();
            if !events.is_empty() {
                appends.push(StreamAppend {
                    stream: self.pair_id.stream(),
                    // Only the pair's one running job appends its runs' facts; a concurrent settings
                    // change does not conflict with them.
                    expected: ExpectedVersion::Any,
                    events: events.iter().map(|e| encode(e, &ctx)).collect(),
                });
            }
            let progressed = match &progress {
                Some(command) if !self.tracker.job.phase().is_some_and(JobPhase::is_terminal) => {
                    self.tracker.job.handle(command.clone())?
                }
                _ => Vec::new(),
            };
            if !progressed.is_empty() {
                appends.push(StreamAppend {
                    stream: self.tracker.job_id.stream(),
                    expected: expected(self.tracker.version),
                    events: progressed.iter().map(|e| encode(e, &ctx)).collect(),
                });
            }
            if appends.is_empty() {
                return Ok(());
            }
            match self.tracker.commands.store().append(appends).await {
                Ok(_) => {
                    events.iter().for_each(|e| self.pair.apply(e));
                    progressed.iter().for_each(|e| self.tracker.job.apply(e));
                    self.tracker.version += i64::try_from(progressed.len()).unwrap_or(0);
                    return Ok(());
                }
                // The job was paused, resumed or cancelled meanwhile: reload it and record the
                // finished steps again (they did happen), with progress only if the job still
                // takes it.
                Err(err) if err.is_concurrency() => {
                    (self.tracker.job, self.tracker.version) = self.tracker.commands.load::<SyncJob>(&self.tracker.job_id.stream()).await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn finished(&mut self, decision: &Decision, outcome: Outcome) -> Result<(), CommandError> {
        self.files += 1;
        self.bytes += outcome.bytes;
        self.written += outcome.written;
        if let Some(error) = outcome.error {
            tracing::warn!(job = %self.tracker.job_id, path = %decision.path, error = %error, "A sync step was not carried out.");
            self.failures.push(format!("{}: {error}", decision.path));
        }
        self.pending.extend(outcome.changes);
        self.late.extend(outcome.late);
        if self.pending.len() >= BATCH || self.last_commit.elapsed() >= RECORD_EVERY {
            self.commit().await?;
        }
        Ok(())
    }

    /// Records the finished steps: the base advances over them, with the job's progress.
    async fn commit(&mut self) -> Result<(), CommandError> {
        self.last_commit = Instant::now();
        let changes = std::mem::take(&mut self.pending);
        let mut advanced = Vec::new();
        // Conflicts that only carrying a decision out revealed (a line merge that was not clean,
        // under `MANUAL`) are recorded like the plan's own.
        for decision in std::mem::take(&mut self.late) {
            advanced.extend(self.pair.handle(SyncPairCommand::RecordDecision {
                job_id: self.tracker.job_id,
                decision,
                at: Utc::now(),
            })?);
        }
        if !changes.is_empty() {
            advanced.extend(self.pair.handle(SyncPairCommand::AdvanceBase {
                job_id: self.tracker.job_id,
                changes,
                at: Utc::now(),
            })?);
        }
        let (files_total, bytes_total) = self.totals.unzip();
        let progress = SyncJobCommand::RecordProgress {
            files_done: self.files,
            bytes_done: self.bytes,
            files_total,
            bytes_total,
            bytes_written: Some(self.written),
            at: Utc::now(),
        };
        self.append_pair(&advanced, Some(progress)).await
    }

    /// Records versions kept before the decisions that replace them are carried out.
    async fn keep(&mut self, versions: Vec<FileVersionKept>) -> Result<(), CommandError> {
        let events = self.pair.handle(SyncPairCommand::KeepVersions(versions))?;
        self.append_pair(&events, None).await
    }

    async fn finish(mut self) -> Result<(), CommandError> {
        self.commit().await?;
        // Versions beyond the pair's retention are let go (the collector frees their chunks).
        let pruned = self.pair.handle(SyncPairCommand::PruneVersions { at: Utc::now() })?;
        self.append_pair(&pruned, None).await?;
        if !self.tracker.running().await? {
            return Ok(());
        }
        if self.failures.is_empty() {
            self.tracker.step(SyncJobCommand::Complete { at: Utc::now() }).await?;
            tracing::info!(job = %self.tracker.job_id, files = self.files, bytes = self.bytes, written = self.written, "Sync finished.");
            return Ok(());
        }
        let count = self.failures.len();
        let first = self.failures.swap_remove(0);
        let reason = format!(
            "{count} of {} changes could not be made (they are retried by the next run); first: {first}",
            self.files
        );
        self.tracker.fail(reason).await
    }
}

/// Why a step was not carried out.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// A side changed since it was listed: nothing is overwritten; the next run sees the change.
    #[error("{0}")]
    Changed(String),
    #[error("{0}")]
    Provider(#[from] ProviderError),
    #[error("{0}")]
    Chunks(#[from] cloudsync_chunks::StoreError),
}

/// The state of one path on one side during a decision: listed, or as the decision left it.
#[derive(Clone, Debug)]
struct Present {
    version: Version,
    tag: String,
    stored: Option<String>,
    manifest: Option<String>,
}

/// What a copy left on its side.
struct Copied {
    tag: String,
    /// The content's BLAKE3 (computed on the way when the listing had not hashed the file).
    checksum: String,
    stored: Option<String>,
    manifest: Option<String>,
    /// Bytes sent to the side: the whole file, or only its changed ranges.
    written: u64,
}

/// Carries out decisions.
struct Executor {
    sides: [Arc<dyn StorageProvider>; 2],
    folders: [ProviderPath; 2],
    providers: [ProviderId; 2],
    listings: [Listing; 2],
    pair_id: SyncPairId,
    owner: UserId,
    job_id: SyncJobId,
    chunks: Option<Arc<dyn ChunkStore>>,
    /// Each side's group commit of copies.
    flushers: [Flusher; 2],
    /// Whether the pair keeps earlier versions.
    versions: bool,
    /// The pair as the run found it: the base and where agreed contents are kept.
    pair: SyncPair,
    policy: merge::ConflictPolicy,
}

fn index(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Target => 1,
    }
}

impl Executor {
    fn provider(&self, side: Side) -> &dyn StorageProvider {
        &*self.sides[index(side)]
    }

    fn full(&self, side: Side, path: &ProviderPath) -> ProviderPath {
        path.under(&self.folders[index(side)])
    }

    fn listed(&self, side: Side, path: &ProviderPath) -> Option<Present> {
        let listing = &self.listings[index(side)];
        listing.tree.get(path).map(|version| Present {
            version: version.clone(),
            tag: listing.tags.get(path).cloned().unwrap_or_default(),
            // The agreed content is kept; so is this one if it is still that content.
            stored: self
                .pair
                .agreed(path)
                .and_then(|a| a.stored.clone())
                .filter(|_| self.pair.base().get(path).is_some_and(|b| b.same_content(version))),
            manifest: self
                .pair
                .agreed(path)
                .and_then(|a| a.manifest.clone())
                .filter(|_| self.pair.base().get(path).is_some_and(|b| b.same_content(version))),
        })
    }

    /// Paths whose two sides hold the same content already but whose base says otherwise (or whose
    /// listings look different from the last agreement): the base catches up. Small text files are
    /// kept in the chunk store for later line merges.
    async fn already_agreed(&self, decisions: &[Decision]) -> Vec<BaseChange> {
        let pair = &self.pair;
        let [source, target] = &self.listings;
        // What a decision is about is the decision's to settle (a conflict left open keeps its base).
        let decided: HashSet<&ProviderPath> = decisions
            .iter()
            .flat_map(|d| std::iter::once(&d.path).chain(d.actions.iter().flat_map(action_paths)))
            .collect();
        let mut changes = Vec::new();
        for (path, version) in &source.tree {
            let Some(other) = target.tree.get(path) else { continue };
            if decided.contains(path) {
                continue;
            }
            if !version.same_content(other) {
                continue;
            }
            let (source_tag, target_tag) = (source.tags.get(path).cloned(), target.tags.get(path).cloned());
            let agreed = pair.agreed(path);
            let mut stored = agreed.and_then(|a| a.stored.clone());
            let base_same = pair.base().get(path).is_some_and(|b| b.same_content(version));
            if !base_same {
                stored = None;
            }
            if stored.is_none() && self.keeps_base(path, version.size) {
                stored = self.keep(Side::Source, path, version).await;
            }
            let unchanged =
                base_same && agreed.is_some_and(|a| a.source_tag == source_tag && a.target_tag == target_tag && a.stored == stored);
            if !unchanged {
                changes.push(BaseChange {
                    path: path.clone(),
                    version: Some(version.clone()),
                    source_tag,
                    target_tag,
                    stored,
                    manifest: agreed.and_then(|a| a.manifest.clone()).filter(|_| base_same),
                });
            }
        }
        // Gone from both sides: gone from the base.
        for path in pair.base().keys() {
            if !source.tree.contains_key(path) && !target.tree.contains_key(path) && !decided.contains(path) {
                changes.push(BaseChange {
                    path: path.clone(),
                    version: None,
                    source_tag: None,
                    target_tag: None,
                    stored: None,
                    manifest: None,
                });
            }
        }
        changes
    }

    /// Deletes the temporary files that the listings found of this pair's interrupted runs (only
    /// one run of a pair goes on at a time, so they are nobody's write in progress), and others
    /// older than a day ([`stale`]: a killed process's ranged write on a remote kind). Younger
    /// ones of others (another pair's, a local write's) are left alone.
    async fn remove_abandoned(&self) {
        let ours = format!(".cloudsync-{}-", pair_token(self.pair_id));
        for side in [Side::Source, Side::Target] {
            let abandoned = self.listings[index(side)]
                .abandoned
                .iter()
                .filter(|entry| entry.path.name().starts_with(&ours) || entry.modified_at.is_some_and(stale));
            for path in abandoned.map(|entry| &entry.path) {
                if let Err(error) = self.provider(side).delete(path).await {
                    tracing::warn!(path = %path, error = %error, "Could not remove an interrupted run's temporary file.");
                }
            }
        }
    }

    /// Whether a file is a small text file, copied through memory and kept.
    fn keeps(&self, path: &ProviderPath, size: u64) -> bool {
        size <= KEEP_TEXT && self.keeps_base(path, size)
    }

    /// Whether a file is a text file the merge takes, whose agreed content is kept.
    fn keeps_base(&self, path: &ProviderPath, size: u64) -> bool {
        self.chunks.is_some() && size <= merge::TEXT_MERGE_LIMIT && merge::is_text(path)
    }

    /// Reads a text file and keeps it in the chunk store (through memory when small, streamed
    /// otherwise); `None` when it cannot, or it is no longer `version` (the next merge of the file
    /// then falls back to the conflict policy).
    async fn keep(&self, side: Side, path: &ProviderPath, version: &Version) -> Option<String> {
        let chunks = self.chunks.as_ref()?;
        if version.size <= KEEP_TEXT {
            let data = self.read_verified(side, path, version).await.ok()?;
            return put_content(&**chunks, &data).await.ok();
        }
        let stream = self.provider(side).read(&self.full(side, path), 0..version.size).await.ok()?;
        let (id, manifest) = put_stream(&**chunks, stream).await.ok()?;
        let unhashed = version.checksum.is_empty();
        (manifest.size == version.size && (unhashed || manifest.checksum == version.checksum)).then_some(id)
    }

    /// The whole content of a (small) file, checked against the version it should have.
    async fn read_verified(&self, side: Side, path: &ProviderPath, version: &Version) -> Result<Vec<u8>, StepError> {
        let stream = self.provider(side).read(&self.full(side, path), 0..version.size).await?;
        let data: Vec<u8> = stream
            .try_fold(Vec::new(), |mut data, piece| {
                data.extend_from_slice(&piece);
                futures::future::ready(Ok(data))
            })
            .await?;
        let unhashed = version.checksum.is_empty();
        if data.len() as u64 != version.size || (!unhashed && blake3::hash(&data).to_hex().as_str() != version.checksum) {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} since it was listed",
                side.name()
            )));
        }
        Ok(data)
    }

    /// What carrying out `decisions` would overwrite or delete: each side's listed content that an
    /// action replaces with other content, deletes, or merges over.
    fn at_risk(&self, decisions: &[Decision]) -> Vec<AtRisk> {
        let mut seen = HashSet::new();
        let mut risky = Vec::new();
        let mut add = |side: Side, path: &ProviderPath, reason: VersionReason, instead: Option<&Version>| {
            if let Some(present) = self.listed(side, path)
                && !instead.is_some_and(|v| v.same_content(&present.version))
                && seen.insert((side, path.clone()))
            {
                risky.push((side, path.clone(), present, reason));
            }
        };
        for action in decisions.iter().flat_map(|d| &d.actions) {
            match action {
                Action::Copy { to, path, version, .. } => add(*to, path, VersionReason::Replaced, Some(version)),
                Action::Delete { side, path, .. } => add(*side, path, VersionReason::Deleted, None),
                Action::MergeText { path, .. } => {
                    add(Side::Source, path, VersionReason::Replaced, None);
                    add(Side::Target, path, VersionReason::Replaced, None);
                }
                Action::Unresolved { path, source, target, .. } => {
                    let sides = match self.pair.resolution(path, source.as_ref(), target.as_ref()) {
                        Some(Resolution::Source) => vec![Side::Target],
                        Some(Resolution::Target) => vec![Side::Source],
                        Some(Resolution::Merged { .. }) => vec![Side::Source, Side::Target],
                        Some(Resolution::Both) | None => Vec::new(),
                    };
                    for side in sides {
                        add(side, path, VersionReason::Replaced, None);
                    }
                }
                Action::Rename { .. } => {}
            }
        }
        risky
    }

    /// Keeps (and records) the contents that `decisions` would overwrite or delete; returns the
    /// paths whose content could not be kept, with why: their decisions are not carried out.
    async fn keep_versions(&self, decisions: &[Decision], run: &mut Recorder<'_>) -> Result<HashMap<ProviderPath, String>, CommandError> {
        let mut blocked = HashMap::new();
        if !self.versions || self.chunks.is_none() {
            return Ok(blocked);
        }
        let risky = self.at_risk(decisions);
        let mut queue = risky.iter();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut batch = Vec::new();
        loop {
            while in_flight.len() < CONCURRENCY {
                match queue.next() {
                    Some(item) => in_flight.push(keep_one(self, item)),
                    None => break,
                }
            }
            let Some(((side, path, present, reason), content)) = in_flight.next().await else {
                break;
            };
            match content {
                Ok((content, checksum)) => batch.push(FileVersionKept {
                    pair_id: self.pair_id,
                    owner_id: self.owner,
                    version_id: Uuid::now_v7(),
                    side: *side,
                    provider_id: self.providers[index(*side)],
                    path: path.clone(),
                    provider_path: self.full(*side, path),
                    version: Version {
                        checksum,
                        ..present.version.clone()
                    },
                    content,
                    reason: *reason,
                    job_id: Some(self.job_id),
                    at: Utc::now(),
                }),
                Err(err) => {
                    blocked.insert(
                        path.clone(),
                        format!("the {}'s version could not be kept, so it was not replaced: {err}", side.name()),
                    );
                }
            }
            if batch.len() >= BATCH {
                run.keep(std::mem::take(&mut batch)).await?;
            }
        }
        run.keep(batch).await?;
        Ok(blocked)
    }

    /// Stores the content `present` in the chunk store, whole, and returns its manifest's id; what
    /// the store holds already (a kept text, a manifest whose chunks are all stored) is not read
    /// again.
    async fn keep_version(&self, side: Side, path: &ProviderPath, present: &Present) -> Result<(String, String), StepError> {
        let Some(chunks) = &self.chunks else {
            return Err(StepError::Changed("no chunk store".into()));
        };
        if let Some(stored) = &present.stored {
            return Ok((stored.clone(), present.version.checksum.clone()));
        }
        if let Some(id) = &present.manifest
            && let Ok(manifest) = get_manifest(&**chunks, id).await
            && manifest.checksum == present.version.checksum
        {
            let mut whole = true;
            for chunk in &manifest.chunks {
                if !chunks.has(&chunk.id).await? {
                    whole = false;
                    break;
                }
            }
            if whole {
                return Ok((id.clone(), manifest.checksum));
            }
        }
        let version = &present.version;
        let (id, manifest) = store_whole(&**chunks, self.provider(side), &self.full(side, path), version.size).await?;
        // An unhashed file (new on one side) is kept as it reads.
        if manifest.size != version.size || (!version.checksum.is_empty() && manifest.checksum != version.checksum) {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} since it was listed",
                side.name()
            )));
        }
        Ok((id, manifest.checksum))
    }

    async fn carry_out(&self, decision: &Decision) -> Outcome {
        let mut state: HashMap<(Side, ProviderPath), Option<Present>> = HashMap::new();
        let mut touched: BTreeSet<ProviderPath> = BTreeSet::new();
        touched.insert(decision.path.clone());
        let (mut bytes, mut written) = (0, 0);
        let mut late = Vec::new();
        let mut actions: Vec<Action> = decision.actions.clone();
        actions.reverse();
        while let Some(action) = actions.pop() {
            if let Action::Unresolved { path, kind, .. } = &action
                && !decision.actions.contains(&action)
            {
                late.push(Decision {
                    path: path.clone(),
                    reason: merge::Reason::Conflict {
                        kind: *kind,
                        policy: self.policy,
                    },
                    actions: vec![action.clone()],
                });
            }
            let result = self.act(&action, &mut state, &mut touched).await;
            match result {
                Ok(Step::Done(moved, wrote)) => (bytes, written) = (bytes + moved, written + wrote),
                // A text merge that was not clean: settle it by the policy instead.
                Ok(Step::Instead(more)) => actions.extend(more.into_iter().rev()),
                Err(err) => {
                    return Outcome {
                        changes: Vec::new(),
                        bytes,
                        written,
                        late,
                        error: Some(err.to_string()),
                    };
                }
            }
        }
        let mut changes = Vec::new();
        for path in touched {
            match (self.current(&state, Side::Source, &path), self.current(&state, Side::Target, &path)) {
                (None, None) => changes.push(BaseChange {
                    path,
                    version: None,
                    source_tag: None,
                    target_tag: None,
                    stored: None,
                    manifest: None,
                }),
                (Some(s), Some(t)) if s.version.same_content(&t.version) => {
                    changes.push(BaseChange {
                        path,
                        version: Some(s.version),
                        source_tag: Some(s.tag),
                        target_tag: Some(t.tag),
                        stored: s.stored.or(t.stored),
                        manifest: s.manifest.or(t.manifest),
                    });
                }
                _ => {}
            }
        }
        Outcome {
            changes,
            bytes,
            written,
            late,
            error: None,
        }
    }

    fn current(&self, state: &HashMap<(Side, ProviderPath), Option<Present>>, side: Side, path: &ProviderPath) -> Option<Present> {
        match state.get(&(side, path.clone())) {
            Some(present) => present.clone(),
            None => self.listed(side, path),
        }
    }

    async fn act(
        &self,
        action: &Action,
        state: &mut HashMap<(Side, ProviderPath), Option<Present>>,
        touched: &mut BTreeSet<ProviderPath>,
    ) -> Result<Step, StepError> {
        match action {
            Action::Copy { to, from, path, version } => {
                touched.insert(path.clone());
                let expected = self.current(state, *to, path).map(|p| p.tag);
                let copied = self.copy(*to, from, path, version, expected.as_deref()).await?;
                let version = Version {
                    checksum: copied.checksum,
                    ..version.clone()
                };
                // A file the listing did not hash is known now, on the side it came from too.
                if let Some(source) = self.current(state, to.other(), from)
                    && source.version.checksum.is_empty()
                {
                    state.insert(
                        (to.other(), from.clone()),
                        Some(Present {
                            version: version.clone(),
                            ..source
                        }),
                    );
                }
                state.insert(
                    (*to, path.clone()),
                    Some(Present {
                        version: version.clone(),
                        tag: copied.tag,
                        stored: copied.stored,
                        manifest: copied.manifest,
                    }),
                );
                // The source side of the copy is as listed.
                Ok(Step::Done(version.size, copied.written))
            }
            Action::Delete { side, path, version } => {
                touched.insert(path.clone());
                let expected = self.current(state, *side, path).map(|p| p.tag);
                self.delete(*side, path, version, expected.as_deref()).await?;
                state.insert((*side, path.clone()), None);
                Ok(Step::Done(0, 0))
            }
            Action::Rename { side, from, to } => {
                touched.insert(from.clone());
                touched.insert(to.clone());
                let moved = self
                    .current(state, *side, from)
                    .ok_or_else(|| StepError::Changed(format!("{from} is no longer on the {}", side.name())))?;
                let provider = self.provider(*side);
                let (full_from, full_to) = (self.full(*side, from), self.full(*side, to));
                self.check_unchanged(*side, from, Some(&moved.tag)).await?;
                provider.rename(&full_from, &full_to).await?;
                let tag = (provider.stat(&full_to).await?).tag();
                state.insert((*side, from.clone()), None);
                state.insert(
                    (*side, to.clone()),
                    Some(Present {
                        version: moved.version,
                        tag,
                        stored: moved.stored,
                        manifest: moved.manifest,
                    }),
                );
                Ok(Step::Done(0, 0))
            }
            Action::MergeText {
                path,
                base,
                source,
                target,
            } => {
                touched.insert(path.clone());
                match self.merge_text(path, base.as_ref(), source, target).await? {
                    Some(merged) => {
                        let version = Version {
                            checksum: blake3::hash(&merged).to_hex().to_string(),
                            size: merged.len() as u64,
                            modified_at: Utc::now(),
                        };
                        let stored = match &self.chunks {
                            Some(chunks) => Some(put_content(&**chunks, &merged).await?),
                            None => None,
                        };
                        self.write_both(path, &merged, &version, stored, state).await
                    }
                    None => {
                        let kind = if base.is_some() {
                            ConflictKind::BothModified
                        } else {
                            ConflictKind::BothCreated
                        };
                        Ok(Step::Instead(merge::resolve(self.policy, kind, path, source, target, Utc::now())))
                    }
                }
            }
            Action::Unresolved {
                path,
                kind,
                source,
                target,
            } => {
                touched.insert(path.clone());
                match (self.pair.resolution(path, source.as_ref(), target.as_ref()), source, target) {
                    // Left for the owner: nothing changes until they choose.
                    (None, _, _) => Ok(Step::Done(0, 0)),
                    (Some(Resolution::Merged { content, version }), _, _) => {
                        let chunks = self
                            .chunks
                            .as_ref()
                            .ok_or_else(|| StepError::Changed("no chunk store holds the merged content".into()))?;
                        let merged = get_content(&**chunks, content).await?;
                        let version = Version {
                            modified_at: Utc::now(),
                            ..version.clone()
                        };
                        self.write_both(path, &merged, &version, Some(content.clone()), state).await
                    }
                    (Some(choice), Some(source), Some(target)) => {
                        let policy = match choice {
                            Resolution::Source => merge::ConflictPolicy::SourceWins,
                            Resolution::Target => merge::ConflictPolicy::TargetWins,
                            Resolution::Both | Resolution::Merged { .. } => merge::ConflictPolicy::KeepBoth,
                        };
                        Ok(Step::Instead(merge::resolve(policy, *kind, path, source, target, Utc::now())))
                    }
                    (Some(_), _, _) => Ok(Step::Done(0, 0)),
                }
            }
        }
    }

    /// Writes the same content to `path` on both sides (a merge), each over what was listed there.
    async fn write_both(
        &self,
        path: &ProviderPath,
        data: &[u8],
        version: &Version,
        stored: Option<String>,
        state: &mut HashMap<(Side, ProviderPath), Option<Present>>,
    ) -> Result<Step, StepError> {
        let mut moved = 0;
        for side in [Side::Source, Side::Target] {
            let expected = self.current(state, side, path).map(|p| p.tag);
            let tag = self.write_bytes(side, path, data, version, expected.as_deref()).await?;
            moved += version.size;
            state.insert(
                (side, path.clone()),
                Some(Present {
                    version: version.clone(),
                    tag,
                    stored: stored.clone(),
                    manifest: None,
                }),
            );
        }
        Ok(Step::Done(moved, moved))
    }

    /// The clean line merge of both sides' edits, or `None` when it is not clean (or the base's
    /// content is not kept).
    async fn merge_text(
        &self,
        path: &ProviderPath,
        base: Option<&Version>,
        source: &Version,
        target: &Version,
    ) -> Result<Option<Vec<u8>>, StepError> {
        let Some(chunks) = &self.chunks else { return Ok(None) };
        let base_text = match base {
            None => String::new(),
            Some(base) => {
                let Some(id) = self.pair.agreed(path).and_then(|a| a.stored.clone()) else {
                    return Ok(None);
                };
                let Ok(data) = get_content(&**chunks, &id).await else {
                    return Ok(None);
                };
                if blake3::hash(&data).to_hex().as_str() != base.checksum {
                    return Ok(None);
                }
                match String::from_utf8(data) {
                    Ok(text) => text,
                    Err(_) => return Ok(None),
                }
            }
        };
        let source_data = self.read_verified(Side::Source, path, source).await?;
        let target_data = self.read_verified(Side::Target, path, target).await?;
        let (Ok(source_text), Ok(target_text)) = (String::from_utf8(source_data), String::from_utf8(target_data)) else {
            return Ok(None);
        };
        Ok(merge::merge_lines(&base_text, &source_text, &target_text).map(String::into_bytes))
    }

    /// Fails when `path` on `side` is no longer what was listed (`None`: absent).
    async fn check_unchanged(&self, side: Side, path: &ProviderPath, expected: Option<&str>) -> Result<(), StepError> {
        if still_there(self.provider(side), &self.full(side, path), expected).await? {
            return Ok(());
        }
        Err(StepError::Changed(format!(
            "{path} changed on the {} since it was listed; the next run takes it into account",
            side.name()
        )))
    }

    /// Copies `from` on the other side to `path` on side `to`: small text files through memory (and
    /// kept in the chunk store), large files as their changed byte ranges where the side takes
    /// ranged writes and still holds the agreed version, everything else streamed whole.
    async fn copy(
        &self,
        to: Side,
        from: &ProviderPath,
        path: &ProviderPath,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<Copied, StepError> {
        if self.keeps(path, version.size) {
            let data = self.read_verified(to.other(), from, version).await?;
            let tag = self.write_bytes(to, path, &data, version, expected).await?;
            let stored = match &self.chunks {
                Some(chunks) => put_content(&**chunks, &data).await.ok(),
                None => None,
            };
            return Ok(Copied {
                tag,
                checksum: blake3::hash(&data).to_hex().to_string(),
                stored,
                manifest: None,
                written: version.size,
            });
        }
        let large = version.size >= DELTA_MIN && self.chunks.is_some();
        if large && let Some(mut patched) = self.patch(to, from, path, version, expected).await? {
            patched.stored = self.keep_copied(to, path, version, &patched.checksum).await;
            return Ok(patched);
        }
        let stream = self
            .provider(to.other())
            .read(&self.full(to.other(), from), 0..version.size)
            .await?;
        let chunked = Arc::new(std::sync::Mutex::new(None));
        let stream = if large { chunking(stream, Arc::clone(&chunked)) } else { stream };
        let (tag, checksum) = self.write_stream(to, path, stream, version, expected).await?;
        let manifest = chunked.lock().ok().and_then(|mut m| m.take());
        let manifest = match (&self.chunks, manifest) {
            (Some(chunks), Some(mut manifest)) => {
                manifest.checksum.clone_from(&checksum);
                put_manifest(&**chunks, &manifest).await.ok()
            }
            _ => None,
        };
        let stored = self.keep_copied(to, path, version, &checksum).await;
        Ok(Copied {
            tag,
            checksum,
            stored,
            manifest,
            written: version.size,
        })
    }

    /// Keeps a text file too large to copy through memory, as just written to `path` on side `to`
    /// with `checksum`, when the merge takes it.
    async fn keep_copied(&self, to: Side, path: &ProviderPath, version: &Version, checksum: &str) -> Option<String> {
        if !self.keeps_base(path, version.size) {
            return None;
        }
        let written = Version {
            checksum: checksum.to_owned(),
            ..version.clone()
        };
        self.keep(to, path, &written).await
    }

    /// Writes only the byte ranges of `version` that differ from what side `to` holds at `path`,
    /// when that side takes ranged writes and still holds the agreed version, whose manifest is
    /// kept. `None` when this does not apply, or when so much changed that a whole copy is better.
    async fn patch(
        &self,
        to: Side,
        from: &ProviderPath,
        path: &ProviderPath,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<Option<Copied>, StepError> {
        let (Some(chunks), Some(agreed)) = (&self.chunks, self.pair.agreed(path)) else {
            return Ok(None);
        };
        let agreed_tag = match to {
            Side::Source => agreed.source_tag.as_deref(),
            Side::Target => agreed.target_tag.as_deref(),
        };
        if !self.provider(to).patches() || expected.is_none() || expected != agreed_tag {
            return Ok(None);
        }
        let Some(old) = agreed.manifest.as_deref() else { return Ok(None) };
        let Ok(old) = get_manifest(&**chunks, old).await else {
            return Ok(None);
        };
        let before: HashSet<(&str, u64)> = old.spans().map(|(c, span)| (c.id.as_str(), span.start)).collect();
        let limit = (version.size / 4).min(MAX_PATCH);
        let mut stream = self
            .provider(to.other())
            .read(&self.full(to.other(), from), 0..version.size)
            .await?;
        let mut hasher = blake3::Hasher::new();
        let mut chunker = Chunker::without_checksum();
        let mut ranges: Vec<(u64, Vec<u8>)> = Vec::new();
        // The new chunks (id, offset, length), stored after the write when versions are kept, so
        // that keeping this version later needs no read.
        let mut fresh: Vec<(String, u64, usize)> = Vec::new();
        let (mut offset, mut changed) = (0_u64, 0_u64);
        let mut note = |chunk: &ChunkRef, bytes: &[u8]| -> Result<(), TooMuch> {
            let start = offset;
            offset += bytes.len() as u64;
            if before.contains(&(chunk.id.as_str(), start)) {
                return Ok(());
            }
            fresh.push((chunk.id.clone(), start, bytes.len()));
            changed += bytes.len() as u64;
            if changed > limit {
                return Err(TooMuch);
            }
            match ranges.last_mut() {
                Some((at, range)) if *at + range.len() as u64 == start => range.extend_from_slice(bytes),
                _ => ranges.push((start, bytes.to_vec())),
            }
            Ok(())
        };
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            hasher.update(&piece);
            if chunker.push(&piece, &mut note).is_err() {
                return Ok(None);
            }
        }
        let Ok(mut manifest) = chunker.finish(&mut note) else {
            return Ok(None);
        };
        if manifest.size != version.size || hasher.finalize().to_hex().as_str() != version.checksum {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} while it was read",
                to.other().name()
            )));
        }
        manifest.checksum.clone_from(&version.checksum);
        self.check_unchanged(to, path, expected).await?;
        let destination = self.full(to, path);
        let provider = self.provider(to);
        let ranges: Vec<(u64, Bytes)> = ranges.into_iter().map(|(at, bytes)| (at, Bytes::from(bytes))).collect();
        let kept = ranges.clone();
        let written = match provider.patch(&destination, version.size, ranges, &version.checksum).await {
            Ok(written) => written,
            // The destination was not the agreed version after all (changed without its size or
            // modification time showing it): nothing was replaced; the next run sees it.
            Err(ProviderError::Invalid(why)) => return Err(StepError::Changed(format!("{path}: {why}"))),
            // The side cannot after all (an SFTP server without copy-data): copied whole instead.
            Err(ProviderError::Unsupported(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let tag = (provider.stat(&destination).await?).tag();
        if self.versions {
            let mut batch: Vec<(String, &[u8])> = Vec::new();
            for (id, start, len) in fresh {
                let Some((at, bytes)) = kept.iter().rev().find(|(at, _)| *at <= start) else {
                    continue;
                };
                let from = usize::try_from(start - at).unwrap_or(usize::MAX);
                if let Some(chunk) = bytes.get(from..from.saturating_add(len)) {
                    batch.push((id, chunk));
                }
            }
            chunks.put_many(&batch).await?;
        }
        Ok(Some(Copied {
            tag,
            checksum: version.checksum.clone(),
            stored: None,
            manifest: put_manifest(&**chunks, &manifest).await.ok(),
            written,
        }))
    }

    async fn write_bytes(
        &self,
        to: Side,
        path: &ProviderPath,
        data: &[u8],
        version: &Version,
        expected: Option<&str>,
    ) -> Result<String, StepError> {
        let bytes = Bytes::copy_from_slice(data);
        let stream: ByteStream = futures::stream::once(async move { Ok(bytes) }).boxed();
        Ok(self.write_stream(to, path, stream, version, expected).await?.0)
    }

    /// Writes `data` to `path` on side `to` so that only a complete copy whose checksum is the
    /// planned one ever becomes visible, and only over what was listed there.
    async fn write_stream(
        &self,
        to: Side,
        path: &ProviderPath,
        data: ByteStream,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<(String, String), StepError> {
        let destination = self.full(to, path);
        let temporary = temporary_name(&destination, self.pair_id);
        let flusher = Some(&self.flushers[index(to)]);
        write_checked(self.provider(to), flusher, &destination, &temporary, data, version, expected).await
    }

    async fn delete(&self, side: Side, path: &ProviderPath, version: &Version, expected: Option<&str>) -> Result<(), StepError> {
        let _ = version;
        self.check_unchanged(side, path, expected).await?;
        self.provider(side).delete(&self.full(side, path)).await?;
        Ok(())
    }
}

/// Whether `path` still shows `expected` (its tag), or is gone: either way, writing over it loses
/// nothing that was not listed.
async fn still_there(provider: &dyn StorageProvider, path: &ProviderPath, expected: Option<&str>) -> Result<bool, ProviderError> {
    match provider.stat(path).await {
        Ok(found) => Ok(Some(found.tag().as_str()) == expected),
        Err(ProviderError::NotFound(_)) => Ok(true),
        Err(err) => Err(err),
    }
}

/// Writes `data` to `destination` so that only a complete copy whose checksum is `version`'s ever
/// becomes visible, and only over what `expected` says is there (its tag; `None`: absent, or
/// anything that appeared meanwhile is left alone); returns the written file's tag and checksum. Object stores
/// publish an upload whole, so they are checked before it starts. Elsewhere the copy lands under
/// `temporary`, is made durable (`flusher`: together with other copies), and replaces the file in
/// one step once checked again, so an edit made while the copy ran is never overwritten.
async fn write_checked(
    provider: &dyn StorageProvider,
    flusher: Option<&Flusher>,
    destination: &ProviderPath,
    temporary: &ProviderPath,
    data: ByteStream,
    version: &Version,
    expected: Option<&str>,
) -> Result<(String, String), StepError> {
    let mismatch = Arc::new(AtomicBool::new(false));
    let computed = Arc::new(std::sync::Mutex::new(String::new()));
    let data = verified(data, version.clone(), Arc::clone(&mismatch), Arc::clone(&computed));
    let checksum = || computed.lock().map(|c| c.clone()).unwrap_or_default();
    let changed = || {
        StepError::Changed(format!(
            "{destination}: the copy did not match the planned content (the file changed while it was copied)"
        ))
    };
    let moved_on = || {
        StepError::Changed(format!(
            "{destination} changed since it was listed; the next run takes it into account"
        ))
    };
    if provider.atomic_writes() && provider.kind() != ProviderKind::Local {
        // Over only what was listed (atomically where the store takes conditional writes).
        match provider.write_if(destination, data, expected).await {
            Ok(_) => {}
            Err(_) if mismatch.load(Ordering::SeqCst) => return Err(changed()),
            Err(ProviderError::AlreadyExists(_)) => return Err(moved_on()),
            Err(err) => return Err(err.into()),
        }
        return Ok((provider.stat(destination).await?.tag(), checksum()));
    }
    let committed = async {
        match provider.write_unsynced(temporary, data).await {
            Ok(_) => {}
            Err(_) if mismatch.load(Ordering::SeqCst) => return Err(changed()),
            Err(err) => return Err(err.into()),
        }
        match flusher {
            Some(flusher) => flusher.flush(temporary.clone()).await?,
            None => provider.flush(std::slice::from_ref(temporary)).await?,
        }
        // In one step: the destination is never missing on the way (a crash there would read as
        // a delete on this side).
        match provider.replace_if(temporary, destination, expected).await {
            Ok(entry) => Ok((entry.tag(), checksum())),
            Err(ProviderError::AlreadyExists(_)) => Err(moved_on()),
            Err(err) => Err(err.into()),
        }
    }
    .await;
    if committed.is_err() {
        let _ = provider.delete(temporary).await;
    }
    committed
}

/// Group commit of one side's unsynced copies: a copy that finds no flush going on flushes
/// everything written so far at once; the others wait for a flush that covers them. On a local
/// folder that is one file-system flush for many files instead of one per file.
struct Flusher {
    provider: Arc<dyn StorageProvider>,
    state: std::sync::Mutex<FlushState>,
    done: tokio::sync::Notify,
}

#[derive(Default)]
struct FlushState {
    queued: Vec<ProviderPath>,
    /// The ticket the next queued file gets.
    next: u64,
    /// Every ticket below this one has been flushed (or failed).
    flushed: u64,
    flushing: bool,
    /// Ticket ranges whose flush failed, with why.
    failed: Vec<(std::ops::Range<u64>, String)>,
}

impl Flusher {
    fn new(provider: Arc<dyn StorageProvider>) -> Self {
        Self {
            provider,
            state: std::sync::Mutex::new(FlushState::default()),
            done: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn flush(&self, path: ProviderPath) -> Result<(), ProviderError> {
        let ticket = {
            let mut state = self.state();
            state.queued.push(path);
            state.next += 1;
            state.next - 1
        };
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let batch = {
                let mut state = self.state();
                if state.flushed > ticket {
                    return match state.failed.iter().find(|(range, _)| range.contains(&ticket)) {
                        Some((_, why)) => Err(ProviderError::Other(why.clone())),
                        None => Ok(()),
                    };
                }
                if state.flushing {
                    None
                } else {
                    state.flushing = true;
                    Some((std::mem::take(&mut state.queued), state.flushed..state.next))
                }
            };
            match batch {
                Some((paths, range)) => {
                    let result = self.provider.flush(&paths).await;
                    let mut state = self.state();
                    if let Err(err) = result {
                        state.failed.push((range.clone(), err.to_string()));
                    }
                    state.flushed = range.end;
                    state.flushing = false;
                    drop(state);
                    self.done.notify_waiters();
                }
                None => notified.await,
            }
        }
    }
}

/// Reads `path` (`size` bytes) from `provider` into the chunk store, whole; returns its
/// manifest's id and the manifest (with the content's checksum).
async fn store_whole(
    chunks: &dyn ChunkStore,
    provider: &dyn StorageProvider,
    path: &ProviderPath,
    size: u64,
) -> Result<(String, Manifest), StepError> {
    let stream = provider.read(path, 0..size).await?;
    Ok(put_stream(chunks, stream).await?)
}

/// A content kept in the chunk store, chunk by chunk.
fn stored_stream(chunks: Arc<dyn ChunkStore>, manifest: Manifest) -> ByteStream {
    futures::stream::iter(manifest.chunks)
        .then(move |chunk| {
            let chunks = Arc::clone(&chunks);
            async move {
                chunks
                    .get(&chunk.id)
                    .await
                    .map(Bytes::from)
                    .map_err(|err| ProviderError::Invalid(format!("the kept version cannot be read: {err}")))
            }
        })
        .boxed()
}

/// What an action led to.
enum Step {
    /// Done: the bytes it had to move, and the bytes it wrote (less, for a ranged write).
    Done(u64, u64),
    /// Replaced by these actions.
    Instead(Vec<Action>),
}

/// The part of a temporary file's name that says which pair wrote it.
fn pair_token(pair_id: SyncPairId) -> String {
    blake3::hash(pair_id.to_string().as_bytes()).to_hex().as_str()[..8].to_owned()
}

/// A temporary name beside `path`, the same for a pair and a path, that listings leave out:
/// `.cloudsync-<pair token>-<path token>.tmp`.
fn temporary_name(path: &ProviderPath, pair_id: SyncPairId) -> ProviderPath {
    let token = blake3::hash(format!("{pair_id}/{path}").as_bytes()).to_hex();
    let name = format!(".cloudsync-{}-{}.tmp", pair_token(pair_id), &token.as_str()[..16]);
    path.parent().join(&name).unwrap_or_else(|_| path.clone())
}

/// The paths an action reads or writes.
fn action_paths(action: &Action) -> Vec<&ProviderPath> {
    match action {
        Action::Copy { from, path, .. } => vec![from, path],
        Action::Rename { from, to, .. } => vec![from, to],
        Action::Delete { path, .. } | Action::MergeText { path, .. } | Action::Unresolved { path, .. } => vec![path],
    }
}

/// More changed bytes than a ranged write is worth.
struct TooMuch;

/// The stream, passed on unchanged, cut into chunks as it goes; once it has ended, `manifest`
/// holds its manifest (without the whole-content checksum, which the copy verifies itself).
fn chunking(data: ByteStream, manifest: Arc<std::sync::Mutex<Option<Manifest>>>) -> ByteStream {
    let state = (data, Some(Chunker::without_checksum()));
    futures::stream::unfold(state, move |(mut data, mut chunker)| {
        let manifest = Arc::clone(&manifest);
        async move {
            match data.next().await {
                Some(Ok(piece)) => {
                    if let Some(chunker) = chunker.as_mut() {
                        let _ = chunker.push(&piece, |_, _| Ok::<(), std::convert::Infallible>(()));
                    }
                    Some((Ok(piece), (data, chunker)))
                }
                Some(Err(err)) => Some((Err(err), (data, None))),
                None => {
                    if let (Some(chunker), Ok(mut slot)) = (chunker.take(), manifest.lock()) {
                        *slot = chunker.finish(|_, _| Ok::<(), std::convert::Infallible>(())).ok();
                    }
                    None
                }
            }
        }
    })
    .boxed()
}

/// The stream, checked as it goes: after its last piece it fails (and sets `mismatch`) unless the
/// bytes hash to the planned checksum and have the planned length, so a provider's write never
/// completes with content other than what was planned.
fn verified(data: ByteStream, version: Version, mismatch: Arc<AtomicBool>, computed: Arc<std::sync::Mutex<String>>) -> ByteStream {
    let state = (data, blake3::Hasher::new(), 0_u64, false);
    futures::stream::unfold(state, move |(mut data, mut hasher, mut length, ended)| {
        let version = version.clone();
        let mismatch = Arc::clone(&mismatch);
        let computed = Arc::clone(&computed);
        async move {
            if ended {
                return None;
            }
            match data.next().await {
                Some(Ok(piece)) => {
                    hasher.update(&piece);
                    length += piece.len() as u64;
                    Some((Ok(piece), (data, hasher, length, false)))
                }
                Some(Err(err)) => Some((Err(err), (data, hasher, length, true))),
                None => {
                    let checksum = hasher.finalize().to_hex().to_string();
                    // An unhashed file (new on one side) is taken as it reads.
                    if length == version.size && (version.checksum.is_empty() || checksum == version.checksum) {
                        if let Ok(mut slot) = computed.lock() {
                            *slot = checksum;
                        }
                        return None;
                    }
                    mismatch.store(true, Ordering::SeqCst);
                    let error = ProviderError::Invalid("the content read does not match the planned checksum".into());
                    Some((Err(error), (data, hasher, length, true)))
                }
            }
        }
    })
    .boxed()
}
