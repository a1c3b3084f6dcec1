//! What happens to jobs (scans and sync runs) and to sync pairs: their runs, decisions, merge
//! base, conflicts and kept versions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{ProviderId, SyncJobId, SyncPairId, UserId};
use crate::merge::{ConflictPolicy, Decision, Side, SyncMode, Version};
use crate::values::{ProviderPath, ScanSchedule};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobCreated {
    pub job_id: SyncJobId,
    pub owner_id: UserId,
    pub kind: JobKind,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobPhaseEntered {
    pub job_id: SyncJobId,
    pub phase: JobPhase,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobProgressed {
    pub job_id: SyncJobId,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: Option<u64>,
    pub bytes_total: Option<u64>,
    /// A sync run's bytes written to the sides so far (less than `bytes_done` where only changed
    /// ranges were written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobFinished {
    pub job_id: SyncJobId,
    pub at: DateTime<Utc>,
    /// Why it failed or was cancelled; `None` when it completed.
    pub reason: Option<String>,
}

/// Two folders are to be kept in agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPairCreated {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub source: SyncEndpoint,
    pub target: SyncEndpoint,
    pub mode: SyncMode,
    pub policy: ConflictPolicy,
    pub max_delete_percent: u8,
    /// When the pair runs on its own: a cron schedule (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScanSchedule>,
    /// Whether a change reported by either side's change feed starts a run.
    #[serde(default)]
    pub realtime: bool,
    /// How many earlier versions of each file are kept (0: none).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
    /// How many days an earlier version is kept (0: as long as `keep_versions` allows).
    #[serde(default = "default_keep_days")]
    pub keep_days: u32,
    pub at: DateTime<Utc>,
}

/// Versions kept per file unless a pair says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 10;

/// Days a version is kept unless a pair says otherwise.
pub const DEFAULT_KEEP_DAYS: u32 = 30;

fn default_keep_versions() -> u32 {
    DEFAULT_KEEP_VERSIONS
}

fn default_keep_days() -> u32 {
    DEFAULT_KEEP_DAYS
}

/// Why a file's content was kept as an earlier version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionReason {
    /// A run was about to write other content over it.
    Replaced,
    /// A run was about to delete it.
    Deleted,
    /// A restore was about to bring back an earlier version over it.
    Restored,
}

impl VersionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "REPLACED",
            Self::Deleted => "DELETED",
            Self::Restored => "RESTORED",
        }
    }
}

/// Content of one side of a pair that was about to be overwritten or deleted, kept in the chunk
/// store: whole (recorded before the change is made), or, for a file written in place, as the
/// bytes the write destroyed (`base` set; recorded once the write is done, its undo having been
/// recorded by [`FilePatchStarted`] first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionKept {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_id: Uuid,
    pub side: Side,
    pub provider_id: ProviderId,
    /// The file's path relative to the pair's folder.
    pub path: ProviderPath,
    /// The file's path on its provider.
    pub provider_path: ProviderPath,
    pub version: Version,
    /// The chunk-store id of the content's manifest.
    pub content: String,
    pub reason: VersionReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<SyncJobId>,
    pub at: DateTime<Utc>,
    /// For a content kept as a change of a newer one (a patch manifest): that content's BLAKE3.
    /// Restoring needs it: the file as it is now, or another kept version of the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// A file on one side of a pair is about to be written in place (only the bytes that differ).
/// What those bytes held is already in the chunk store (`undo`, a patch manifest of `old` over
/// `new`), so that whatever stops the write, the next run puts the file back to `old` or finds it
/// at `new` ([`FilePatchSettled`]). Until then `undo` is the pair's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilePatchStarted {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub patch_id: Uuid,
    pub job_id: SyncJobId,
    pub side: Side,
    pub provider_id: ProviderId,
    /// The file's path relative to the pair's folder.
    pub path: ProviderPath,
    /// The file's path on its provider.
    pub provider_path: ProviderPath,
    pub old: Version,
    pub new: Version,
    /// The chunk-store id of the patch manifest that turns `new` back into `old`.
    pub undo: String,
    /// Whether `old` is kept as a version once the write is done.
    pub keep: bool,
    pub at: DateTime<Utc>,
}

/// How a write in place ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PatchOutcome {
    /// The file holds the new content.
    Written,
    /// The file holds the old content again (nothing was written, or what was written was undone).
    Undone,
    /// The file holds neither (someone else changed it meanwhile): left as it is, for the next
    /// run to see as a change.
    Abandoned,
}

/// A write in place has ended, in the run that made it or in the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilePatchSettled {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub patch_id: Uuid,
    pub outcome: PatchOutcome,
    pub at: DateTime<Utc>,
}

/// Earlier versions that fell out of the pair's retention (too many, or too old): their content
/// may be collected from the chunk store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionsPruned {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_ids: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

/// The owner brought an earlier version back: it was written over the file at `path` on `side`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionRestored {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_id: Uuid,
    pub side: Side,
    pub path: ProviderPath,
    pub at: DateTime<Utc>,
}

/// A run of a pair was requested: the job that carries it out. One run of a pair at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRunRequested {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub at: DateTime<Utc>,
}

/// The owner settled a conflict left for them (`MANUAL`): the next run carries the choice out, as
/// long as both sides still hold the versions it was made about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncConflictResolved {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub resolution: Resolution,
    pub source: Option<Version>,
    pub target: Option<Version>,
    pub at: DateTime<Utc>,
}

/// How a conflict is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keep", rename_all = "snake_case")]
pub enum Resolution {
    Source,
    Target,
    /// Both versions, the target's renamed as a conflict copy.
    Both,
    /// Content the owner merged, kept in the chunk store under `content` (a manifest id), with
    /// its checksum and size.
    Merged {
        content: String,
        version: Version,
    },
}

/// A sync run stopped before its first change: its plan deletes more of a side than the pair allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobHeld {
    pub job_id: SyncJobId,
    pub side: Side,
    pub deletes: u64,
    pub at: DateTime<Utc>,
}

/// An attempt at a job stopped short (its run failed, or the worker running it went away); it is
/// tried again from its last recorded step at `retry_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobRetrying {
    pub job_id: SyncJobId,
    /// The attempt that stopped (1 the first time).
    pub attempt: u32,
    pub reason: String,
    pub retry_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A run's decision about one path, with its reason, recorded before it is carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncDecisionRecorded {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub decision: Decision,
    pub at: DateTime<Utc>,
}

/// One path's agreed state after a run; `None` when both sides agreed it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChange {
    pub path: ProviderPath,
    pub version: Option<Version>,
    /// What each side's listing showed of the agreed file (its ETag, or size and modification
    /// time): a later listing that shows the same is not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tag: Option<String>,
    /// The chunk-store id of the agreed content's manifest, where the content is kept (text files,
    /// for the next line merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    /// The chunk-store id of the agreed content's chunk manifest (large files): the next change of
    /// the file is written as the byte ranges that differ, where the side accepts ranged writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// A run ended with both sides agreeing on these paths: the merge base of the next run moves on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncBaseAdvanced {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub changes: Vec<BaseChange>,
    pub at: DateTime<Utc>,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Index every file of one provider.
    Scan { provider_id: ProviderId },
    /// One run of a sync pair: list both folders, plan by three-way merge, carry the plan out.
    Sync {
        pair_id: SyncPairId,
        source: ProviderId,
        target: ProviderId,
    },
    /// An analytics export (an administrator's), into the server's export folder as
    /// `<job id>.<format>`.
    Export(ExportRequest),
}

impl JobKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Scan { .. } => "scan",
            Self::Sync { .. } => "sync",
            Self::Export { .. } => "export",
        }
    }

    /// The provider the job reads first (a sync's source); none for an export.
    pub fn provider_id(&self) -> Option<ProviderId> {
        match self {
            Self::Scan { provider_id } => Some(*provider_id),
            Self::Sync { source, .. } => Some(*source),
            Self::Export { .. } => None,
        }
    }
}

/// What an analytics export writes: `what` in `format`, of the window `[since, until)` (events by
/// when they happened, files by when the index last changed them, sync operations by when they
/// started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRequest {
    pub what: ExportSubject,
    pub format: ExportFormat,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl ExportRequest {
    /// The file an export job writes: `<job id>.<format>`.
    pub fn file_name(&self, job_id: SyncJobId) -> String {
        format!("{}.{}", job_id.as_uuid(), self.format.extension())
    }

    /// Whether `at` falls in the window.
    pub fn admits(&self, at: DateTime<Utc>) -> bool {
        self.since.is_none_or(|since| at >= since) && self.until.is_none_or(|until| at < until)
    }
}

/// What an analytics export holds: the event log, or one of the read models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportSubject {
    Events,
    Files,
    SyncOperations,
}

impl ExportSubject {
    pub const ALL: [Self; 3] = [Self::Events, Self::Files, Self::SyncOperations];

    /// As the command line spells it (`events`, `files`, `sync-operations`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Files => "files",
            Self::SyncOperations => "sync-operations",
        }
    }
}

/// An analytics export's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    Parquet,
    Csv,
}

impl ExportFormat {
    /// The file name's extension, which is also how the command line spells it.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet => "parquet",
            Self::Csv => "csv",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobPhase {
    Pending,
    Scanning,
    Planning,
    Transferring,
    Completed,
    Failed,
    Cancelled,
}

impl JobPhase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scanning => "scanning",
            Self::Planning => "planning",
            Self::Transferring => "transferring",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One side of a pair: a folder of a provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEndpoint {
    pub provider_id: ProviderId,
    pub path: ProviderPath,
}

impl SyncEndpoint {
    /// Whether the two folders share files: same provider, and one folder inside the other.
    pub fn overlaps(&self, other: &SyncEndpoint) -> bool {
        self.provider_id == other.provider_id && (self.path.is_within(&other.path) || other.path.is_within(&self.path))
    }
}
