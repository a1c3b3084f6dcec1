//! The sync engine: one run of a sync pair, as a job.
//!
//! 1. **Scanning**: both folders are listed; a file whose listing shows what the pair's history says
//!    it showed at the last agreement (same size, same ETag or modification time) keeps its agreed
//!    checksum; of the others, those planning needs (on both sides, in the base, or of a rename
//!    partner's size) are read and hashed (BLAKE3), and the rest are hashed while they are copied.
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
//! A conflict the owner has settled (`resolve_conflict`) is carried out by the next run.
//!
//! After each batch of finished decisions the base advances with the paths both sides now agree on,
//! in the same transaction as the job's progress: that is the run's recorded step. A run that is
//! interrupted (crash, restart, cancel) leaves the base where its last batch left it, and the next
//! attempt plans again from fresh listings, so it neither redoes finished work nor mistakes a
//! half-finished step for a user's change (a file that a crash left absent on one side is restored
//! from the other, because the base still holds it).
//!
//! Here: the run's shared vocabulary (the [`Executor`] and what a step leaves); `run` (the phases),
//! `listing` (listing and hashing both sides), `executor` (carrying out one decision), `write`
//! (verified copies and their group commit), `delta` (ranged writes of changed large files),
//! `versions` (keeping and restoring earlier versions), `recorder` (the run's recorded steps).

use std::sync::Arc;
use std::time::Duration;

use cloudsync_chunks::ChunkStore;
use cloudsync_domain::events::BaseChange;
use cloudsync_domain::merge::{self, Action, Decision, Side, Version};
use cloudsync_domain::sync_pair::SyncPair;
use cloudsync_domain::{ProviderId, ProviderPath, SyncJobId, SyncPairId, UserId};
use cloudsync_providers::{ProviderError, StorageProvider};

use listing::Listing;
use write::Flusher;

mod delta;
mod executor;
mod listing;
mod recorder;
mod run;
mod versions;
mod write;

pub(crate) use run::run_sync;
pub(crate) use versions::{keep_whole, write_back};

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
    /// What the step did could not be recorded.
    #[error("{0}")]
    Log(String),
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
    /// Where writes in place record their intent and outcome (on the pair's stream), and whom for.
    commands: crate::Commands,
    ctx: crate::core::Context,
    /// The run's chunk-store lease: nothing that stored chunks is recorded once it has lapsed.
    lease: Option<crate::workers::gc::LeaseWatch>,
    /// The pair's events it recorded itself, in order (for the recorder's view of the pair).
    recorded: std::sync::Mutex<Vec<cloudsync_domain::DomainEvent>>,
}

fn index(side: Side) -> usize {
    match side {
        Side::Source => 0,
        Side::Target => 1,
    }
}

/// What an action led to.
enum Step {
    /// Done: the bytes it had to move, and the bytes it wrote (less, for a ranged write).
    Done(u64, u64),
    /// Replaced by these actions.
    Instead(Vec<Action>),
}

/// The paths an action reads or writes.
fn action_paths(action: &Action) -> Vec<&ProviderPath> {
    match action {
        Action::Copy { from, path, .. } => vec![from, path],
        Action::Rename { from, to, .. } => vec![from, to],
        Action::Delete { path, .. } | Action::MergeText { path, .. } | Action::Unresolved { path, .. } => vec![path],
    }
}
