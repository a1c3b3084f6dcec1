//! Providers and files: connecting and disconnecting providers, listing, moving and deleting
//! files, scans and their schedules, and the live stream of file changes.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, Json, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use cloudsync_domain::{DomainEvent, FileId, ProviderId, ProviderPath};
use cloudsync_eventstore::subscribe;
use cloudsync_projections::{FileRow, ProviderRow, Providers};
use futures::{Stream, StreamExt};
use serde_json::Value;
use uuid::Uuid;

use super::sync::SyncOperation;
use super::{app, caller_for, parse_id, parse_path, truncate};
use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::access::scope;
use cloudsync_identity::auth::Caller;

/// Where to authorize CloudSync with an OAuth provider.
#[derive(SimpleObject)]
pub(crate) struct ProviderAuthorization {
    /// Open this in the user's browser.
    authorization_url: String,
    /// Identifies this authorization; the provider echoes it back to the callback.
    state: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(SimpleObject)]
pub struct Provider {
    id: ID,
    kind: String,
    display_name: String,
    /// `connected` or `disconnected`.
    status: String,
    /// The provider's non-secret configuration (for `local`: its root).
    config: Json<Value>,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    /// When it is rescanned on its own (a cron expression), if at all.
    scan_schedule: Option<String>,
    /// Whether it is rescanned as soon as its files change.
    realtime: bool,
    /// The scan started by `connectProvider` (only on its result).
    scan_operation_id: Option<ID>,
}

impl Provider {
    /// The row with its name and settings opened with the owner's key.
    async fn open(app: &App, owner: cloudsync_domain::UserId, row: ProviderRow) -> ApiResult<Self> {
        let display_name = app
            .commands
            .reveal(owner, &cloudsync_domain::events::Personal::from_column(&row.display_name))
            .await
            .map_err(ApiError::from)?
            .unwrap_or_default();
        let sealed = serde_json::from_value(row.config).map_err(|err| ApiError::internal(&err))?;
        let config = app
            .commands
            .reveal_value(owner, &sealed)
            .await
            .map_err(ApiError::from)?
            .unwrap_or_default();
        Ok(Self {
            id: ID(row.id.to_string()),
            kind: row.kind,
            display_name,
            status: row.status,
            config: Json(config),
            connected_at: row.connected_at,
            disconnected_at: row.disconnected_at,
            scan_schedule: row.scan_schedule,
            realtime: row.realtime,
            scan_operation_id: None,
        })
    }
}

#[derive(SimpleObject)]
pub struct File {
    id: ID,
    provider_id: ID,
    /// Relative to the provider's root, `/`-separated.
    path: String,
    name: String,
    size_bytes: i64,
    mime_type: String,
    /// BLAKE3 of the content, lower-case hex.
    checksum: String,
    modified_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Where `files(…, after:)` continues after this file.
    cursor: String,
    /// For pictures, once the content pipeline has read them.
    image: Option<ImageInfo>,
}

/// What the content pipeline read of a picture.
#[derive(SimpleObject, Clone)]
pub struct ImageInfo {
    width: i32,
    height: i32,
    /// EXIF `DateTimeOriginal`, the camera's local time (`YYYY-MM-DDTHH:MM:SS`, no zone).
    taken_at: Option<String>,
    /// EXIF make and model.
    camera: Option<String>,
    /// What the image classifier (EfficientNet-Lite0, ImageNet's 1,000 classes) sees in it, the
    /// likeliest first; empty until it has looked, or when it is sure of nothing.
    labels: Vec<String>,
}

impl ImageInfo {
    fn from_row(metadata: &serde_json::Value, labels: Vec<String>) -> Option<Self> {
        let image = metadata.get("image")?;
        let number = |key: &str| image[key].as_i64().and_then(|n| i32::try_from(n).ok());
        Some(Self {
            width: number("width")?,
            height: number("height")?,
            taken_at: image["takenAt"].as_str().map(str::to_owned),
            camera: image["camera"].as_str().map(str::to_owned),
            labels,
        })
    }
}

/// A file's place in `files`' order (path, then id), as an opaque cursor.
fn file_cursor(path: &str, id: Uuid) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{id}/{path}"))
}

fn parse_file_cursor(cursor: &str) -> ApiResult<(String, Uuid)> {
    use base64::Engine as _;
    let invalid = || ApiError::BadInput(format!("after {:?} is not a cursor of files", truncate(cursor)));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (id, path) = text.split_once('/').ok_or_else(invalid)?;
    Ok((path.to_owned(), Uuid::parse_str(id).map_err(|_| invalid())?))
}

impl From<FileRow> for File {
    fn from(row: FileRow) -> Self {
        Self {
            cursor: file_cursor(&row.path, row.id),
            id: ID(row.id.to_string()),
            provider_id: ID(row.provider_id.to_string()),
            path: row.path,
            name: row.name,
            size_bytes: row.size_bytes,
            mime_type: row.mime_type,
            checksum: row.checksum,
            modified_at: row.modified_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
            image: ImageInfo::from_row(&row.metadata, row.labels),
        }
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum FileChangeKind {
    Discovered,
    Changed,
    Moved,
    /// Deleted through CloudSync.
    Deleted,
    /// Found gone by a rescan (removed outside CloudSync).
    Removed,
}

#[derive(SimpleObject, Debug)]
pub struct FileChange {
    kind: FileChangeKind,
    file_id: ID,
    provider_id: ID,
    path: String,
    /// For moves: where the file was.
    previous_path: Option<String>,
    size_bytes: Option<i64>,
    checksum: Option<String>,
    /// The event's global position in the log.
    position: i64,
    occurred_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct FilesQuery;

#[Object]
impl FilesQuery {
    /// The caller's provider connections.
    async fn providers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Provider>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        app.consistent(caller).await;
        let rows = app.reads.providers(caller.user_id).await.map_err(ApiError::from)?;
        let mut providers = Vec::with_capacity(rows.len());
        for row in rows {
            providers.push(Provider::open(app, caller.user_id, row).await?);
        }
        Ok(providers)
    }

    /// The caller's files, by path: of one provider (`provider` is its id) or of all of the caller's
    /// providers of one kind (`provider` is a kind such as `s3`), or of all of them; optionally only
    /// inside one folder (recursively). In path order; `after` (a file's `cursor`) continues after
    /// that file, so pages of `limit` walk any number of files.
    async fn files(
        &self,
        ctx: &Context<'_>,
        provider: Option<String>,
        path: Option<String>,
        #[graphql(default = 100)] limit: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<File>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadInput("limit must be between 1 and 1000".into()).into());
        }
        let kind = provider
            .as_deref()
            .filter(|p| Uuid::parse_str(p.trim()).is_err())
            .map(|p| {
                cloudsync_domain::ProviderKind::parse(p).map_err(|_| {
                    ApiError::BadInput(format!(
                        "provider {:?} is neither a provider id nor a provider kind (local, s3, webdav, sftp, azblob, gdrive, dropbox, onedrive)",
                        truncate(p)
                    ))
                })
            })
            .transpose()?;
        let id = match (&provider, kind) {
            (Some(p), None) => Some(parse_id(&ID(p.clone()), "provider")?),
            _ => None,
        };
        let folder = path.as_deref().map(parse_path).transpose()?;
        let after = after.as_deref().map(parse_file_cursor).transpose()?;
        app.consistent(caller).await;
        let providers = match (id, kind) {
            (Some(id), _) => Providers::Id(id),
            (None, Some(kind)) => Providers::Kind(kind.as_str()),
            (None, None) => Providers::All,
        };
        let rows = app
            .reads
            .files(
                caller.user_id,
                providers,
                folder.as_ref().map(ProviderPath::as_str),
                after.as_ref().map(|(path, id)| (path.as_str(), *id)),
                i64::from(limit),
            )
            .await
            .map_err(ApiError::from)?;
        // Files found are the caller's, and so is their provider; no file may mean that the
        // provider is someone else's, or none.
        if let (Some(id), true) = (id, rows.is_empty()) {
            app.reads
                .provider(caller.user_id, id)
                .await
                .map_err(ApiError::from)?
                .ok_or_else(|| ApiError::not_found("provider"))?;
        }
        Ok(rows.into_iter().map(File::from).collect())
    }
}

#[derive(Default)]
pub struct FilesMutation;

#[Object]
impl FilesMutation {
    /// Connects a storage provider and starts indexing it. `provider` is the kind (`local`);
    /// `credentials` are its configuration keys (for `local`: `{root: "/absolute/folder"}`).
    async fn connect_provider(&self, ctx: &Context<'_>, provider: String, credentials: Json<Value>) -> async_graphql::Result<Provider> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let connected = app
            .commands
            .connect_provider(caller.user_id, &provider, &credentials.0)
            .await
            .map_err(ApiError::from)?;
        let id = connected.provider_id.as_uuid();
        let row = app
            .read_back(
                caller,
                connected.position,
                async |reads| reads.provider(caller.user_id, id).await,
                || ApiError::internal(&"the new provider is not visible yet"),
            )
            .await?;
        Ok(Provider {
            scan_operation_id: Some(ID(connected.job_id.to_string())),
            ..Provider::open(app, caller.user_id, row).await?
        })
    }

    /// Starts connecting an OAuth provider (`gdrive`, `dropbox`, `onedrive`): open the returned URL
    /// in a browser and authorize CloudSync; the provider sends the browser back to
    /// `/oauth/callback`, which connects the provider and starts indexing it. `root` is the folder
    /// inside the account to index (default: all of it). The authorization expires after ten minutes.
    async fn begin_provider_authorization(
        &self,
        ctx: &Context<'_>,
        provider: String,
        name: Option<String>,
        root: Option<String>,
    ) -> async_graphql::Result<ProviderAuthorization> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let authorization = app(ctx)
            .commands
            .begin_authorization(caller.user_id, &provider, name, root)
            .await
            .map_err(ApiError::from)?;
        Ok(ProviderAuthorization {
            authorization_url: authorization.url,
            state: authorization.state,
            expires_at: authorization.expires_at,
        })
    }

    /// Disconnects a provider; its files stay where they are but leave CloudSync's index.
    async fn disconnect_provider(&self, ctx: &Context<'_>, provider_id: ID) -> async_graphql::Result<bool> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = ProviderId::from_uuid(parse_id(&provider_id, "providerId")?);
        let position = app.commands.disconnect_provider(caller.user_id, id).await.map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }

    /// Rescans a provider: only what changed since the last scan is recorded. Returns the operation
    /// to follow with `syncStatus`.
    async fn rescan_provider(&self, ctx: &Context<'_>, provider_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = ProviderId::from_uuid(parse_id(&provider_id, "providerId")?);
        let (job_id, position) = app.commands.request_scan(caller.user_id, id).await.map_err(ApiError::from)?;
        Ok(SyncOperation::started(app, caller, job_id, position).await?)
    }

    /// Sets when a provider is rescanned on its own: `schedule` is a cron expression (5 fields, or 6
    /// with seconds first; null for none); `realtime` rescans a local folder as soon as it changes.
    async fn set_scan_schedule(
        &self,
        ctx: &Context<'_>,
        provider_id: ID,
        schedule: Option<String>,
        realtime: Option<bool>,
    ) -> async_graphql::Result<Provider> {
        let realtime = realtime.unwrap_or(false);
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = ProviderId::from_uuid(parse_id(&provider_id, "providerId")?);
        let schedule = schedule
            .as_deref()
            .map(cloudsync_domain::ScanSchedule::parse)
            .transpose()
            .map_err(|err| ApiError::BadInput(err.to_string()))?;
        let position = app
            .commands
            .set_scan_schedule(caller.user_id, id, schedule, realtime)
            .await
            .map_err(ApiError::from)?;
        let row = app
            .read_back(
                caller,
                position,
                async |reads| reads.provider(caller.user_id, id.as_uuid()).await,
                || ApiError::not_found("provider"),
            )
            .await?;
        Ok(Provider::open(app, caller.user_id, row).await?)
    }

    /// Moves files into `targetPath`, a folder relative to each file's provider root, keeping names.
    async fn move_files(&self, ctx: &Context<'_>, file_ids: Vec<ID>, target_path: String) -> async_graphql::Result<Vec<File>> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let ids = file_ids
            .iter()
            .map(|id| parse_id(id, "fileId").map(FileId::from_uuid))
            .collect::<ApiResult<Vec<_>>>()?;
        let folder = parse_path(&target_path)?;
        let (moved, position) = app
            .commands
            .move_files(caller.user_id, &ids, &folder)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        app.consistent(caller).await;
        let mut files = Vec::with_capacity(moved.len());
        for m in moved {
            if let Some(row) = app.reads.file(caller.user_id, m.file_id.as_uuid()).await.map_err(ApiError::from)? {
                files.push(row.into());
            }
        }
        Ok(files)
    }

    /// Deletes files from their providers and records it. Every id is checked first: one that is
    /// unknown or not the caller's (`NOT_FOUND`) deletes nothing. True once every file is deleted.
    async fn delete_files(&self, ctx: &Context<'_>, file_ids: Vec<ID>) -> async_graphql::Result<bool> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let ids = file_ids
            .iter()
            .map(|id| parse_id(id, "fileId").map(FileId::from_uuid))
            .collect::<ApiResult<Vec<_>>>()?;
        let (_, position) = app.commands.delete_files(caller.user_id, &ids).await.map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }
}

#[derive(Default)]
pub struct FilesSubscription;

#[Subscription]
impl FilesSubscription {
    /// Files discovered, moved and deleted on one of the caller's providers, live.
    async fn file_changes(&self, ctx: &Context<'_>, provider_id: ID) -> async_graphql::Result<impl Stream<Item = FileChange> + use<>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = Arc::clone(app(ctx));
        let provider = parse_id(&provider_id, "providerId")?;
        app.consistent(caller).await;
        app.reads
            .provider(caller.user_id, provider)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("provider"))?;
        let head = app.db.events.head().await.map_err(|err| ApiError::internal(&err))?;
        let events = subscribe(Arc::clone(&app.db.events), head, std::time::Duration::from_millis(250));
        Ok(events.filter_map(move |event| {
            let change = event.ok().and_then(|e| file_change(&e, caller, provider));
            async move { change }
        }))
    }
}

pub(crate) fn file_change(event: &cloudsync_eventstore::RecordedEvent, caller: Caller, provider: Uuid) -> Option<FileChange> {
    if !matches!(
        event.event_type.as_str(),
        "FileDiscovered" | "FileChanged" | "FileMoved" | "FileDeleted" | "FileRemoved"
    ) {
        return None;
    }
    let decoded = DomainEvent::decode(&event.event_type, event.schema_version, &event.payload).ok()?;
    let base = |kind, file_id: FileId, path: &ProviderPath| FileChange {
        kind,
        file_id: ID(file_id.to_string()),
        provider_id: ID(provider.to_string()),
        path: path.as_str().to_owned(),
        previous_path: None,
        size_bytes: None,
        checksum: None,
        position: event.position,
        occurred_at: event.metadata.occurred_at,
    };
    let mine = |owner: cloudsync_domain::UserId, p: ProviderId| owner == caller.user_id && p.as_uuid() == provider;
    match decoded {
        DomainEvent::FileDiscovered(e) if mine(e.owner_id, e.provider_id) => Some(FileChange {
            size_bytes: i64::try_from(e.size_bytes).ok(),
            checksum: Some(e.checksum.clone()),
            ..base(FileChangeKind::Discovered, e.file_id, &e.path)
        }),
        DomainEvent::FileMoved(e) if mine(e.owner_id, e.provider_id) => Some(FileChange {
            previous_path: Some(e.from.as_str().to_owned()),
            ..base(FileChangeKind::Moved, e.file_id, &e.to)
        }),
        DomainEvent::FileDeleted(e) if mine(e.owner_id, e.provider_id) => Some(base(FileChangeKind::Deleted, e.file_id, &e.path)),
        DomainEvent::FileRemoved(e) if mine(e.owner_id, e.provider_id) => Some(base(FileChangeKind::Removed, e.file_id, &e.path)),
        DomainEvent::FileChanged(e) if mine(e.owner_id, e.provider_id) => Some(FileChange {
            size_bytes: i64::try_from(e.size_bytes).ok(),
            checksum: Some(e.checksum.clone()),
            ..base(FileChangeKind::Changed, e.file_id, &e.path)
        }),
        _ => None,
    }
}
