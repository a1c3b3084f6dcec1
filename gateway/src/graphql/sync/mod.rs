//! The sync engine's API: pairs of folders kept in agreement, their runs, approval of runs held by
//! the max-delete rail, and live progress.

use async_graphql::resolver_utils::EnumType;
use async_graphql::{Context, Enum, ID, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_commands::{DEFAULT_MAX_DELETE_PERCENT, SyncSettings};
use cloudsync_domain::events::{DEFAULT_KEEP_DAYS, DEFAULT_KEEP_VERSIONS};
use cloudsync_domain::merge::{ConflictPolicy, SyncMode};
use cloudsync_domain::sync_pair::SyncEndpoint;
use cloudsync_domain::{ProviderId, ScanSchedule, UserId};
use cloudsync_projections::{FileVersionRow, SyncConflictRow, SyncPairRow};

use crate::app::App;
mod resolvers;

pub use resolvers::{SyncMutation, SyncQuery, SyncSubscription};

use crate::errors::{ApiError, ApiResult};
use crate::graphql::{app, caller_for, parse_id, parse_path};
use cloudsync_identity::access::scope;
use cloudsync_identity::auth::Caller;
use cloudsync_projections::{ReadModels, SyncOperationRow};
use serde_json::Value;

/// A folder of one of the caller's providers.
#[derive(InputObject)]
pub struct FolderInput {
    provider_id: ID,
    /// Relative to the provider's root; empty for the root.
    path: String,
}

#[derive(SimpleObject)]
pub struct Folder {
    provider_id: ID,
    path: String,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "SyncMode")]
pub enum PairMode {
    /// One-way: the target receives new and changed files; nothing is deleted.
    Copy,
    /// One-way: the target is made identical to the source, deletes included.
    Mirror,
    /// Both ways, by three-way merge against the state both sides last agreed on.
    TwoWay,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "ConflictPolicy")]
pub enum PairPolicy {
    /// Both versions survive; the older change is renamed `name.conflict-<time>-<side>.ext`.
    KeepBoth,
    NewestWins,
    SourceWins,
    TargetWins,
    /// Left as it is until the user settles it.
    Manual,
}

#[derive(SimpleObject)]
pub struct SyncPair {
    id: ID,
    source: Folder,
    target: Folder,
    mode: PairMode,
    conflict_policy: PairPolicy,
    /// A run that would delete more than this share of a side's files waits for `approveSync`.
    max_delete_percent: i32,
    /// When it runs on its own (a cron expression), if at all.
    schedule: Option<String>,
    /// Whether a change in either folder starts a run.
    realtime: bool,
    /// How many earlier versions of each file are kept (0: none).
    keep_versions: i32,
    /// How many days an earlier version is kept (0: as long as `keepVersions` allows).
    keep_days: i32,
    /// The latest run, to follow with `syncStatus` or `syncProgress`.
    last_operation_id: Option<ID>,
    created_at: DateTime<Utc>,
}

/// A value of a read model's column as the enum the schema gives it (the projector writes the
/// enum's GraphQL names).
pub(super) fn from_column<E: EnumType>(raw: &str) -> ApiResult<E> {
    E::items()
        .iter()
        .find(|item| item.name == raw)
        .map(|item| item.value)
        .ok_or_else(|| ApiError::internal(&format!("the read model holds an unknown value {raw:?}")))
}

impl TryFrom<SyncPairRow> for SyncPair {
    type Error = ApiError;

    fn try_from(row: SyncPairRow) -> ApiResult<Self> {
        Ok(Self {
            id: ID(row.id.to_string()),
            source: Folder {
                provider_id: ID(row.source_provider_id.to_string()),
                path: row.source_path,
            },
            target: Folder {
                provider_id: ID(row.target_provider_id.to_string()),
                path: row.target_path,
            },
            mode: from_column(&row.mode)?,
            conflict_policy: from_column(&row.conflict_policy)?,
            max_delete_percent: i32::try_from(row.max_delete_percent).unwrap_or(100),
            schedule: row.schedule,
            realtime: row.realtime,
            keep_versions: i32::try_from(row.keep_versions).unwrap_or(i32::MAX),
            keep_days: i32::try_from(row.keep_days).unwrap_or(i32::MAX),
            last_operation_id: row.last_operation_id.map(|id| ID(id.to_string())),
            created_at: row.created_at,
        })
    }
}

/// One side's version of a file in conflict.
#[derive(SimpleObject)]
pub struct ConflictVersion {
    /// BLAKE3, lower-case hex.
    checksum: String,
    size_bytes: i64,
}

/// A conflict left for the owner (policy `MANUAL`); settle it with `resolveConflict`.
#[derive(SimpleObject)]
pub struct SyncConflict {
    /// Relative to the pair's folders.
    path: String,
    /// `BOTH_MODIFIED`, `BOTH_CREATED` or `BOTH_RENAMED`.
    kind: String,
    source: Option<ConflictVersion>,
    target: Option<ConflictVersion>,
    /// The owner's last choice, until a run carries it out.
    resolution: Option<ConflictChoice>,
    detected_at: DateTime<Utc>,
}

impl TryFrom<SyncConflictRow> for SyncConflict {
    type Error = ApiError;

    fn try_from(row: SyncConflictRow) -> ApiResult<Self> {
        let version = |side: Option<(String, i64)>| side.map(|(checksum, size_bytes)| ConflictVersion { checksum, size_bytes });
        Ok(Self {
            path: row.path,
            kind: row.kind,
            source: version(row.source),
            target: version(row.target),
            resolution: row.resolution.as_deref().map(from_column).transpose()?,
            detected_at: row.detected_at,
        })
    }
}

/// An earlier version of a file, kept in the chunk store by a sync pair before a run replaced or
/// deleted it; `restoreFileVersion` brings it back.
#[derive(SimpleObject)]
pub struct FileVersion {
    id: ID,
    pair_id: ID,
    provider_id: ID,
    /// The file's path on its provider.
    path: String,
    /// The pair's side the file is on: `source` or `target`.
    side: String,
    /// BLAKE3 of the content, lower-case hex.
    checksum: String,
    size_bytes: i64,
    modified_at: DateTime<Utc>,
    /// Why it was kept: `REPLACED`, `DELETED` or `RESTORED` (replaced by a restore).
    reason: String,
    kept_at: DateTime<Utc>,
}

impl From<FileVersionRow> for FileVersion {
    fn from(row: FileVersionRow) -> Self {
        Self {
            id: ID(row.id.to_string()),
            pair_id: ID(row.pair_id.to_string()),
            provider_id: ID(row.provider_id.to_string()),
            path: row.path,
            side: row.side,
            checksum: row.checksum,
            size_bytes: row.size_bytes,
            modified_at: row.modified_at,
            reason: row.reason,
            kept_at: row.kept_at,
        }
    }
}

/// Where `restoreFileVersion` wrote a version back, and the run that carries it to the other side.
#[derive(SimpleObject)]
pub struct RestoredVersion {
    version: FileVersion,
    provider_id: ID,
    path: String,
    /// `source` or `target`.
    side: String,
    /// The run started to carry the restored file to the other side (null when a run was already
    /// in progress: the next one does).
    operation: Option<SyncOperation>,
}

/// Where a scan or sync operation has got: what `syncProgress` sends.
#[derive(SimpleObject)]
pub struct SyncProgress {
    operation_id: ID,
    /// pending, scanning, planning, transferring, completed, failed or cancelled.
    status: String,
    paused: bool,
    /// Scans: files and bytes read. Sync runs: decisions carried out, bytes transferred.
    files_done: i64,
    files_total: Option<i64>,
    bytes_done: i64,
    bytes_total: Option<i64>,
    /// Sync runs: bytes written to the folders (less than `bytesDone` where only changed byte
    /// ranges of large files were written).
    bytes_written: Option<i64>,
    /// How much is done, from 0 to 100, once a total is known (by bytes, or by files when there
    /// are no bytes to move).
    percent: Option<f64>,
    /// Bytes per second since the operation started.
    bytes_per_second: Option<f64>,
    /// Seconds left at that rate, once the total is known.
    eta_seconds: Option<f64>,
    error: Option<String>,
    updated_at: DateTime<Utc>,
    /// The operation as `syncStatus` shows it.
    operation: SyncOperation,
}

impl From<SyncOperation> for SyncProgress {
    fn from(operation: SyncOperation) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let share = |done: i64, total: Option<i64>| total.filter(|&t| t > 0).map(|t| (done.min(t) as f64 * 100.0) / t as f64);
        let percent = if operation.is_finished() && operation.status == "completed" {
            Some(100.0)
        } else {
            share(operation.bytes_done, operation.bytes_total).or_else(|| share(operation.files_done, operation.files_total))
        };
        Self {
            operation_id: operation.id.clone(),
            status: operation.status.clone(),
            paused: operation.paused,
            files_done: operation.files_done,
            files_total: operation.files_total,
            bytes_done: operation.bytes_done,
            bytes_total: operation.bytes_total,
            bytes_written: operation.bytes_written,
            percent,
            bytes_per_second: operation.bytes_per_second,
            eta_seconds: operation.eta_seconds,
            error: operation.error.clone(),
            updated_at: operation.updated_at,
            operation,
        }
    }
}

#[async_graphql::ComplexObject]
impl SyncOperation {
    /// A sync run's pair.
    async fn pair(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<SyncPair>> {
        let Some(pair_id) = &self.pair_id else { return Ok(None) };
        let caller = caller_for(ctx, scope::FILES_READ)?;
        Ok(Some(pair_row(app(ctx), caller, 0, parse_id(pair_id, "pairId")?).await?))
    }
}

/// How to settle a conflict.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum ConflictChoice {
    /// The source's version, on both sides.
    Source,
    /// The target's version, on both sides.
    Target,
    /// Both: the older change is kept as `name.conflict-<time>-<side>.ext` on both sides.
    Both,
    /// `mergedContent`, on both sides.
    Merged,
}

/// A sync pair's settings (the arguments of `syncFolders`).
#[derive(InputObject)]
pub struct SyncPairInput {
    source: FolderInput,
    target: FolderInput,
    #[graphql(default_with = "PairMode::TwoWay")]
    mode: PairMode,
    #[graphql(default_with = "PairPolicy::KeepBoth")]
    conflict_policy: PairPolicy,
    /// A cron expression for runs of its own (5 fields, or 6 with seconds first).
    schedule: Option<String>,
    /// Local folders only: run whenever either folder changes.
    #[graphql(default = false)]
    realtime: bool,
    /// A run that would delete more than this share of a side's files waits for `approveSync`.
    #[graphql(default_with = "i32::from(DEFAULT_MAX_DELETE_PERCENT)")]
    max_delete_percent: i32,
    /// How many earlier versions of each file are kept (0: none).
    #[graphql(default_with = "DEFAULT_KEEP_VERSIONS as i32")]
    keep_versions: i32,
    /// How many days an earlier version is kept (0: as long as `keepVersions` allows).
    #[graphql(default_with = "DEFAULT_KEEP_DAYS as i32")]
    keep_days: i32,
}

impl SyncPairInput {
    fn settings(self) -> ApiResult<SyncSettings> {
        let keep_versions =
            u32::try_from(self.keep_versions).map_err(|_| ApiError::BadInput("keepVersions must not be negative".into()))?;
        let keep_days = u32::try_from(self.keep_days).map_err(|_| ApiError::BadInput("keepDays must not be negative".into()))?;
        let max_delete_percent =
            u8::try_from(self.max_delete_percent).map_err(|_| ApiError::BadInput("maxDeletePercent must be between 0 and 100".into()))?;
        let schedule = self
            .schedule
            .as_deref()
            .map(ScanSchedule::parse)
            .transpose()
            .map_err(|err| ApiError::BadInput(err.to_string()))?;
        Ok(SyncSettings {
            source: endpoint(&self.source, "source")?,
            target: endpoint(&self.target, "target")?,
            mode: match self.mode {
                PairMode::Copy => SyncMode::Copy,
                PairMode::Mirror => SyncMode::Mirror,
                PairMode::TwoWay => SyncMode::TwoWay,
            },
            policy: match self.conflict_policy {
                PairPolicy::KeepBoth => ConflictPolicy::KeepBoth,
                PairPolicy::NewestWins => ConflictPolicy::NewestWins,
                PairPolicy::SourceWins => ConflictPolicy::SourceWins,
                PairPolicy::TargetWins => ConflictPolicy::TargetWins,
                PairPolicy::Manual => ConflictPolicy::Manual,
            },
            max_delete_percent,
            schedule,
            realtime: self.realtime,
            keep_versions,
            keep_days,
        })
    }
}

pub(crate) fn endpoint(folder: &FolderInput, what: &str) -> ApiResult<SyncEndpoint> {
    Ok(SyncEndpoint {
        provider_id: ProviderId::from_uuid(parse_id(&folder.provider_id, &format!("{what}.providerId"))?),
        path: parse_path(&folder.path)?,
    })
}

pub(crate) fn user(caller: Caller) -> UserId {
    caller.user_id
}

/// A pair of `caller`'s, once the read models show what they wrote up to `position`.
pub(crate) async fn pair_row(app: &App, caller: Caller, position: i64, id: uuid::Uuid) -> ApiResult<SyncPair> {
    let read = async |reads: &ReadModels| reads.sync_pairs(caller.user_id, Some(id)).await.map(|rows| rows.into_iter().next());
    app.read_back(caller, position, read, || ApiError::not_found("sync pair"))
        .await?
        .try_into()
}

/// An operation of `caller`'s, once the read models show what they wrote up to `position`.
pub(super) async fn operation_row(app: &App, caller: Caller, position: i64, id: uuid::Uuid) -> ApiResult<SyncOperation> {
    let read = async |reads: &ReadModels| reads.sync_operation(caller.user_id, id).await;
    Ok(app
        .read_back(caller, position, read, || ApiError::not_found("sync operation"))
        .await?
        .into())
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct SyncOperation {
    id: ID,
    /// `scan` (index one provider), `sync` (one run of a sync pair) or `export` (an analytics
    /// export).
    kind: String,
    /// The provider scanned, or a sync's source.
    provider_id: Option<ID>,
    /// A sync run's pair.
    pair_id: Option<ID>,
    /// pending, scanning, planning, transferring, completed, failed or cancelled.
    status: String,
    paused: bool,
    /// A sync run stopped by the max-delete rail: what it would delete. Approve it with
    /// `approveSync`, or cancel it.
    held: Option<HeldDeletes>,
    /// Scans: files and bytes read. Sync runs: decisions carried out, bytes transferred.
    files_done: i64,
    bytes_done: i64,
    files_total: Option<i64>,
    bytes_total: Option<i64>,
    /// Sync runs: bytes written to the folders (less than `bytesDone` where only changed byte
    /// ranges of large files were written).
    bytes_written: Option<i64>,
    /// Bytes per second since the operation started.
    bytes_per_second: Option<f64>,
    /// Seconds left at that rate, once the total is known.
    eta_seconds: Option<f64>,
    error: Option<String>,
    /// The attempt it is on (1 the first time): an attempt whose run failed, or whose worker went
    /// away, is retried after a backoff, up to the server's limit (then it fails).
    attempts: i64,
    /// Why the last attempt stopped short, once one has.
    retry_reason: Option<String>,
    /// When the last retry was due.
    retry_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
    /// An export: its file in the server's export folder (`export_dir`), there once completed.
    export_file: Option<String>,
}

#[derive(SimpleObject)]
pub struct HeldDeletes {
    /// `source` or `target`.
    side: String,
    deletes: i64,
}

impl SyncOperation {
    /// The operation of the job that `caller` started at `position`, once the read models show it.
    pub(crate) async fn started(app: &App, caller: Caller, job_id: cloudsync_domain::SyncJobId, position: i64) -> ApiResult<Self> {
        app.read_back(
            caller,
            position,
            async |reads| reads.sync_operation(caller.user_id, job_id.as_uuid()).await,
            || ApiError::internal(&"the new operation is not visible yet"),
        )
        .await
        .map(Self::from)
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }

    /// What a progress update would tell that the last one did not.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "{} {} {:?} {} {} {:?} {:?} {}",
            self.status,
            self.paused,
            self.held.as_ref().map(|h| h.deletes),
            self.files_done,
            self.bytes_done,
            self.bytes_written,
            self.error,
            self.attempts
        )
    }
}

impl From<SyncOperationRow> for SyncOperation {
    fn from(row: SyncOperationRow) -> Self {
        let elapsed = (row.completed_at.unwrap_or(row.updated_at) - row.created_at).num_milliseconds() as f64 / 1000.0;
        #[allow(clippy::cast_precision_loss)]
        let rate = (elapsed > 0.0 && row.bytes_done > 0).then(|| row.bytes_done as f64 / elapsed);
        #[allow(clippy::cast_precision_loss)]
        let eta = match (rate, row.bytes_total, row.completed_at) {
            (_, _, Some(_)) => Some(0.0),
            (Some(rate), Some(total), None) => Some((total - row.bytes_done).max(0) as f64 / rate),
            _ => None,
        };
        let held = row.held.as_ref().map(|h| HeldDeletes {
            side: h.get("side").and_then(Value::as_str).unwrap_or_default().to_owned(),
            deletes: h.get("deletes").and_then(Value::as_i64).unwrap_or_default(),
        });
        let export_file = (row.kind == "export")
            .then(|| row.details.get("file").and_then(Value::as_str).map(str::to_owned))
            .flatten();
        Self {
            id: ID(row.id.to_string()),
            kind: row.kind,
            provider_id: row.provider_id.map(|p| ID(p.to_string())),
            pair_id: row.details.get("pair_id").and_then(Value::as_str).map(|p| ID(p.to_owned())),
            status: row.status,
            paused: row.paused,
            held,
            files_done: row.files_done,
            bytes_done: row.bytes_done,
            files_total: row.files_total,
            bytes_total: row.bytes_total,
            bytes_written: row.bytes_written,
            bytes_per_second: rate,
            eta_seconds: eta,
            error: row.error,
            attempts: row.retries + 1,
            retry_reason: row.retry_reason,
            retry_at: row.retry_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            completed_at: row.completed_at,
            export_file,
        }
    }
}
