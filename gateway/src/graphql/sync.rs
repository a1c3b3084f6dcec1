//! The sync engine's API: pairs of folders kept in agreement, their runs, approval of runs held by
//! the max-delete rail, and live progress.

use std::sync::Arc;

use async_graphql::resolver_utils::EnumType;
use async_graphql::{Context, Enum, ID, InputObject, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use cloudsync_commands::{Choice, DEFAULT_MAX_DELETE_PERCENT, SyncSettings};
use cloudsync_domain::events::{DEFAULT_KEEP_DAYS, DEFAULT_KEEP_VERSIONS};
use cloudsync_domain::merge::{ConflictPolicy, SyncMode};
use cloudsync_domain::sync_pair::SyncEndpoint;
use cloudsync_domain::{ProviderId, ScanSchedule, SyncJobId, SyncPairId, UserId};
use cloudsync_eventstore::subscribe;
use cloudsync_projections::{FileVersionRow, SyncConflictRow, SyncPairRow};
use futures::{Stream, StreamExt};

use super::{SyncOperation, app, caller_for, parse_id, parse_path};
use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::access::scope;
use cloudsync_identity::auth::Caller;

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
        Ok(Some(pair_row(app(ctx), caller, parse_id(pair_id, "pairId")?).await?))
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

/// The largest merged content `resolveConflict` takes.
const MAX_MERGED: usize = 8 * 1024 * 1024;

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

fn endpoint(folder: &FolderInput, what: &str) -> ApiResult<SyncEndpoint> {
    Ok(SyncEndpoint {
        provider_id: ProviderId::from_uuid(parse_id(&folder.provider_id, &format!("{what}.providerId"))?),
        path: parse_path(&folder.path)?,
    })
}

fn user(caller: Caller) -> UserId {
    UserId::from_uuid(caller.user_id)
}

async fn pair_row(app: &App, caller: Caller, id: uuid::Uuid) -> ApiResult<SyncPair> {
    app.consistent(caller).await;
    let row = app
        .reads
        .sync_pairs(caller.user_id, Some(id))
        .await
        .map_err(ApiError::from)?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found("sync pair"))?;
    row.try_into()
}

pub(super) async fn operation_row(app: &App, caller: Caller, id: uuid::Uuid) -> ApiResult<SyncOperation> {
    app.consistent(caller).await;
    let row = app
        .reads
        .sync_operation(caller.user_id, id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("sync operation"))?;
    Ok(row.into())
}

#[derive(Default)]
pub struct SyncQuery;

#[Object]
impl SyncQuery {
    /// The caller's sync pairs, oldest first.
    async fn sync_pairs(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SyncPair>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        app.consistent(caller).await;
        let rows = app.reads.sync_pairs(caller.user_id, None).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(SyncPair::try_from).collect::<ApiResult<_>>()?)
    }

    /// The conflicts left for the caller in one of their pairs (policy `MANUAL`).
    async fn sync_conflicts(&self, ctx: &Context<'_>, pair_id: ID) -> async_graphql::Result<Vec<SyncConflict>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        let id = parse_id(&pair_id, "pairId")?;
        pair_row(app, caller, id).await?;
        let rows = app.reads.sync_conflicts(caller.user_id, id).await.map_err(ApiError::from)?;
        Ok(rows.into_iter().map(SyncConflict::try_from).collect::<ApiResult<_>>()?)
    }

    /// The earlier versions kept of a file, newest first: the file `fileId` of the index, or the
    /// file at `path` on provider `providerId` (also once it is deleted).
    async fn file_versions(
        &self,
        ctx: &Context<'_>,
        file_id: Option<ID>,
        provider_id: Option<ID>,
        path: Option<String>,
    ) -> async_graphql::Result<Vec<FileVersion>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        app.consistent(caller).await;
        let (provider, path) = match (file_id, provider_id, path) {
            (Some(file_id), None, None) => {
                let id = parse_id(&file_id, "fileId")?;
                let file = app
                    .reads
                    .file(caller.user_id, id)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::not_found("file"))?;
                (file.provider_id, file.path)
            }
            (None, Some(provider_id), Some(path)) => {
                let provider = parse_id(&provider_id, "providerId")?;
                let path = parse_path(&path)?;
                app.reads
                    .provider(caller.user_id, provider)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::not_found("provider"))?;
                (provider, path.as_str().to_owned())
            }
            _ => return Err(ApiError::BadInput("give either fileId, or providerId and path".into()).into()),
        };
        let rows = app
            .reads
            .file_versions(caller.user_id, Some(provider), Some(&path), None)
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(FileVersion::from).collect())
    }

    /// One of the caller's sync pairs.
    async fn sync_pair(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<SyncPair> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let id = parse_id(&id, "id")?;
        Ok(pair_row(app(ctx), caller, id).await?)
    }
}

#[derive(Default)]
pub struct SyncMutation;

#[Object]
impl SyncMutation {
    /// Keeps two folders (of any two of the caller's providers) in agreement and starts the first
    /// run: the operation returned, whose `pair` is the new pair. `schedule` is a cron expression for
    /// later runs; `realtime` (local folders only) runs whenever either folder changes. To create a
    /// pair without running it, use `createSyncPair`.
    #[allow(clippy::too_many_arguments)]
    async fn sync_folders(
        &self,
        ctx: &Context<'_>,
        source: FolderInput,
        target: FolderInput,
        #[graphql(default_with = "PairMode::TwoWay")] mode: PairMode,
        #[graphql(default_with = "PairPolicy::KeepBoth")] conflict_policy: PairPolicy,
        schedule: Option<String>,
        #[graphql(default = false)] realtime: bool,
        #[graphql(default_with = "i32::from(DEFAULT_MAX_DELETE_PERCENT)")] max_delete_percent: i32,
        #[graphql(default_with = "DEFAULT_KEEP_VERSIONS as i32")] keep_versions: i32,
        #[graphql(default_with = "DEFAULT_KEEP_DAYS as i32")] keep_days: i32,
    ) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let input = SyncPairInput {
            source,
            target,
            mode,
            conflict_policy,
            schedule,
            realtime,
            max_delete_percent,
            keep_versions,
            keep_days,
        };
        let (_, job, position) = app
            .commands
            .sync_folders(user(caller), input.settings()?, true)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        let job = job.ok_or_else(|| ApiError::internal(&"a new pair started no run"))?;
        Ok(operation_row(app, caller, job.as_uuid()).await?)
    }

    /// Creates a sync pair without running it (it runs by its schedule, in real time, or with
    /// `runSync`).
    async fn create_sync_pair(&self, ctx: &Context<'_>, input: SyncPairInput) -> async_graphql::Result<SyncPair> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let (pair_id, _, position) = app
            .commands
            .sync_folders(user(caller), input.settings()?, false)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(pair_row(app, caller, pair_id.as_uuid()).await?)
    }

    /// Starts a run of a pair now. Refused while one is in progress.
    async fn run_sync(&self, ctx: &Context<'_>, pair_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let id = SyncPairId::from_uuid(parse_id(&pair_id, "pairId")?);
        let (job_id, position) = app.commands.request_sync(user(caller), id).await.map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(operation_row(app, caller, job_id.as_uuid()).await?)
    }

    /// Settles a conflict left at `path` of a pair, and starts a run that carries the choice out
    /// (returned; null when a run is in progress: the next one carries it out). The choice holds
    /// only while both sides keep the versions it was made about.
    async fn resolve_conflict(
        &self,
        ctx: &Context<'_>,
        pair_id: ID,
        path: String,
        keep: ConflictChoice,
        merged_content: Option<String>,
    ) -> async_graphql::Result<Option<SyncOperation>> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let id = SyncPairId::from_uuid(parse_id(&pair_id, "pairId")?);
        let path = parse_path(&path)?;
        let choice = match (keep, merged_content) {
            (ConflictChoice::Merged, Some(content)) if content.len() <= MAX_MERGED => Choice::Merged(content.into_bytes()),
            (ConflictChoice::Merged, Some(_)) => return Err(ApiError::BadInput("mergedContent is larger than 8 MiB".into()).into()),
            (ConflictChoice::Merged, None) => return Err(ApiError::BadInput("keep: MERGED needs mergedContent".into()).into()),
            (_, Some(_)) => return Err(ApiError::BadInput("mergedContent goes only with keep: MERGED".into()).into()),
            (ConflictChoice::Source, None) => Choice::Source,
            (ConflictChoice::Target, None) => Choice::Target,
            (ConflictChoice::Both, None) => Choice::Both,
        };
        let (job, position) = app
            .commands
            .resolve_conflict(user(caller), id, path, choice)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        match job {
            Some(job) => Ok(Some(operation_row(app, caller, job.as_uuid()).await?)),
            None => Ok(None),
        }
    }

    /// Brings an earlier version of a file back (see `fileVersions`): it is written over the file
    /// (whose content is kept as a version first) on its side of a two-way pair, or on the source
    /// of a one-way pair, and a run carries it to the other side.
    async fn restore_file_version(&self, ctx: &Context<'_>, version_id: ID) -> async_graphql::Result<RestoredVersion> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = parse_id(&version_id, "versionId")?;
        app.consistent(caller).await;
        let row = app
            .reads
            .file_versions(caller.user_id, None, None, Some(id))
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found("file version"))?;
        let (side, path, job, position) = app
            .commands
            .restore_file_version(user(caller), SyncPairId::from_uuid(row.pair_id), id)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        let pair = pair_row(app, caller, row.pair_id).await?;
        let provider_id = match side {
            cloudsync_domain::merge::Side::Source => pair.source.provider_id,
            cloudsync_domain::merge::Side::Target => pair.target.provider_id,
        };
        let operation = match job {
            Some(job) => Some(operation_row(app, caller, job.as_uuid()).await?),
            None => None,
        };
        Ok(RestoredVersion {
            version: row.into(),
            provider_id,
            path: path.as_str().to_owned(),
            side: side.name().to_owned(),
            operation,
        })
    }

    /// Lets a run held by the max-delete rail go on, deletes included.
    async fn approve_sync(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let id = SyncJobId::from_uuid(parse_id(&operation_id, "operationId")?);
        let position = app.commands.approve_sync(user(caller), id).await.map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(operation_row(app, caller, id.as_uuid()).await?)
    }

    /// Pauses a scan or sync operation at its next step.
    async fn pause_operation(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        self.control(ctx, operation_id, Control::Pause).await
    }

    /// Resumes a paused operation.
    async fn resume_operation(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        self.control(ctx, operation_id, Control::Resume).await
    }

    /// Cancels an operation; what it finished stays done and recorded.
    async fn cancel_operation(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        self.control(ctx, operation_id, Control::Cancel).await
    }
}

enum Control {
    Pause,
    Resume,
    Cancel,
}

impl SyncMutation {
    async fn control(&self, ctx: &Context<'_>, operation_id: ID, control: Control) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let id = SyncJobId::from_uuid(parse_id(&operation_id, "operationId")?);
        let commands = &app.commands;
        let position = match control {
            Control::Pause => commands.pause_job(user(caller), id).await,
            Control::Resume => commands.resume_job(user(caller), id).await,
            Control::Cancel => commands.cancel_job(user(caller), id).await,
        }
        .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(operation_row(app, caller, id.as_uuid()).await?)
    }
}

#[derive(Default)]
pub struct SyncSubscription;

#[Subscription]
impl SyncSubscription {
    /// The operation's state now, then again whenever it changes (checked after every step it
    /// records, and every second), until it ends.
    async fn sync_progress(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<impl Stream<Item = SyncProgress> + use<>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = Arc::clone(app(ctx));
        let id = parse_id(&operation_id, "operationId")?;
        let head = app.db.events.head().await.map_err(|err| ApiError::internal(&err))?;
        app.wrote(caller, head);
        let first = operation_row(&app, caller, id).await?;
        let stream_name = SyncJobId::from_uuid(id).stream();
        let steps = subscribe(Arc::clone(&app.db.events), head, std::time::Duration::from_millis(250))
            .filter_map(move |event| {
                let position = event.ok().filter(|e| e.stream_id == stream_name).map(|e| e.position);
                async move { position }
            })
            // Should the log's subscription end, the second-by-second check goes on alone.
            .chain(futures::stream::pending())
            .boxed();
        let seen = first.fingerprint();
        let ended = first.is_finished();
        let updates = futures::stream::unfold((steps, seen, ended), move |(mut steps, mut seen, ended)| {
            let app = Arc::clone(&app);
            async move {
                if ended {
                    return None;
                }
                loop {
                    // The next step of this operation, or a second: whichever comes first (a read
                    // model that lagged behind a step is read again).
                    if let Ok(Some(position)) = tokio::time::timeout(std::time::Duration::from_secs(1), steps.next()).await {
                        app.wrote(caller, position);
                    }
                    let Ok(row) = operation_row(&app, caller, id).await else { continue };
                    let fingerprint = row.fingerprint();
                    if fingerprint != seen {
                        seen = fingerprint;
                        let ended = row.is_finished();
                        return Some((row, (steps, seen, ended)));
                    }
                }
            }
        });
        Ok(futures::stream::once(async move { first }).chain(updates).map(SyncProgress::from))
    }
}
