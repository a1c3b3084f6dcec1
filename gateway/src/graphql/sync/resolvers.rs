//! The sync resolvers: pairs, runs and their operations, conflicts, versions, and progress.

use std::sync::Arc;

use async_graphql::{Context, ID, Object, Subscription};
use cloudsync_commands::{Choice, DEFAULT_MAX_DELETE_PERCENT};
use cloudsync_domain::events::{DEFAULT_KEEP_DAYS, DEFAULT_KEEP_VERSIONS};
use cloudsync_domain::{SyncJobId, SyncPairId};
use cloudsync_eventstore::subscribe;
use futures::{Stream, StreamExt};

use super::{
    ConflictChoice, FileVersion, FolderInput, PairMode, PairPolicy, RestoredVersion, SyncConflict, SyncOperation, SyncPair, SyncPairInput,
    SyncProgress, operation_row, pair_row, user,
};
use crate::errors::{ApiError, ApiResult};
use crate::graphql::{app, caller_for, parse_id, parse_path};
use cloudsync_identity::access::scope;

/// The largest merged content `resolveConflict` takes.
const MAX_MERGED: usize = 8 * 1024 * 1024;

#[derive(Default)]
pub struct SyncQuery;

#[Object]
impl SyncQuery {
    /// The state and progress of a scan or sync operation.
    async fn sync_status(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        let id = parse_id(&operation_id, "operationId")?;
        Ok(operation_row(app, caller, 0, id).await?)
    }

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
        pair_row(app, caller, 0, id).await?;
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
        Ok(pair_row(app(ctx), caller, 0, id).await?)
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
        let job = job.ok_or_else(|| ApiError::internal(&"a new pair started no run"))?;
        Ok(operation_row(app, caller, position, job.as_uuid()).await?)
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
        Ok(pair_row(app, caller, position, pair_id.as_uuid()).await?)
    }

    /// Starts a run of a pair now. Refused while one is in progress.
    async fn run_sync(&self, ctx: &Context<'_>, pair_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::SYNC_RUN)?;
        let app = app(ctx);
        let id = SyncPairId::from_uuid(parse_id(&pair_id, "pairId")?);
        let (job_id, position) = app.commands.request_sync(user(caller), id).await.map_err(ApiError::from)?;
        Ok(operation_row(app, caller, position, job_id.as_uuid()).await?)
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
        match job {
            Some(job) => Ok(Some(operation_row(app, caller, position, job.as_uuid()).await?)),
            None => {
                app.wrote(caller, position);
                Ok(None)
            }
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
        let pair = pair_row(app, caller, position, row.pair_id).await?;
        let provider_id = match side {
            cloudsync_domain::merge::Side::Source => pair.source.provider_id,
            cloudsync_domain::merge::Side::Target => pair.target.provider_id,
        };
        let operation = match job {
            Some(job) => Some(operation_row(app, caller, position, job.as_uuid()).await?),
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
        Ok(operation_row(app, caller, position, id.as_uuid()).await?)
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
        Ok(operation_row(app, caller, position, id.as_uuid()).await?)
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
        let first = operation_row(&app, caller, head, id).await?;
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
                    let Ok(row) = operation_row(&app, caller, 0, id).await else {
                        continue;
                    };
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
