//! The GraphQL schema: queries and mutations over HTTP, subscriptions over WebSocket. Every resolver
//! that touches data first resolves the caller and scopes everything to them.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, Json, MergedObject, MergedSubscription, Object, Schema, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use cloudsync_domain::{DomainEvent, FileId, ProviderId, ProviderPath};
use cloudsync_eventstore::subscribe;
use cloudsync_projections::{FileRow, ProviderRow, Providers, SyncOperationRow};
use futures::{Stream, StreamExt};
use serde_json::Value;
use uuid::Uuid;

use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::access::scope;
use cloudsync_identity::auth::{Authentication, Caller};

mod account;
mod admin;
pub mod depth;
mod mfa;
pub mod request;
mod signin;
mod sso;
mod sync;

pub use sso::oidc::{BINDING_COOKIE as OIDC_BINDING_COOKIE, CallbackParams as OidcCallbackParams, callback as oidc_callback};
pub use sso::saml::{AcsParams as SamlAcsParams, BINDING_COOKIE as SAML_BINDING_COOKIE, acs as saml_acs};

pub type CloudSyncSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(CoreQuery, account::IdentityQuery, mfa::MfaQuery, admin::AdminQuery, sync::SyncQuery);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    account::IdentityMutation,
    mfa::MfaMutation,
    sso::oidc::OidcMutation,
    sso::saml::SamlMutation,
    admin::AdminMutation,
    CoreMutation,
    sync::SyncMutation,
);

#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(CoreSubscription, sync::SyncSubscription);

/// Builds the schema with its limits.
pub fn build(app: Arc<App>) -> CloudSyncSchema {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(app)
        .extension(Recheck)
        .extension(depth::DepthLimit)
        .limit_complexity(1000)
        .finish()
}

/// The schema in GraphQL's schema definition language, as `cloudsync schema` prints it and the
/// repository keeps it in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .finish()
        .sdl()
}

/// The credential a WebSocket connection opened with (its `Authorization` value and the peer's
/// address), kept so that every operation sent over it is checked again.
#[derive(Debug, Clone)]
pub struct SocketCredential {
    pub header: Option<String>,
    pub ip: Option<String>,
}

/// Checks the credential of every operation sent over a WebSocket again, as an HTTP request's is:
/// a session revoked or a token expired since the connection opened stops working at once, and
/// each operation is charged to the caller's rate limit. A subscription's credential is checked
/// again before each event it sends (at most once a second): once it is no longer valid, the
/// subscription sends an `UNAUTHENTICATED` error and ends (queries and mutations, anonymous
/// connections, and a session store that cannot answer for a moment leave the stream alone).
struct Recheck;

impl async_graphql::extensions::ExtensionFactory for Recheck {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(RecheckRequest::default())
    }
}

/// [`Recheck`] for one request: whether its operation is a subscription.
#[derive(Default)]
struct RecheckRequest {
    subscription: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for RecheckRequest {
    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<async_graphql::parser::types::ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let subscription = document
            .operations
            .iter()
            .any(|(_, operation)| operation.node.ty == async_graphql::parser::types::OperationType::Subscription);
        self.subscription.store(subscription, std::sync::atomic::Ordering::Relaxed);
        Ok(document)
    }

    async fn prepare_request(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        request: async_graphql::Request,
        next: async_graphql::extensions::NextPrepareRequest<'_>,
    ) -> async_graphql::ServerResult<async_graphql::Request> {
        let Some(credential) = ctx.data_opt::<SocketCredential>() else {
            return next.run(ctx, request).await;
        };
        let app = ctx.data_unchecked::<Arc<App>>();
        let authentication = app.authenticate(credential.header.as_deref(), credential.ip.as_deref()).await;
        let key = match &authentication {
            Authentication::User(caller) => format!("user:{}", caller.user_id),
            _ => format!("ip:{}", credential.ip.as_deref().unwrap_or("unknown")),
        };
        if let Ok(Some(wait)) = app.limiter.take(&key, app.rules.api).await {
            let mut error = async_graphql::ServerError::new(format!("too many requests; try again in {} s", wait.as_secs() + 1), None);
            let mut extensions = async_graphql::ErrorExtensionValues::default();
            extensions.set("code", crate::errors::code::RATE_LIMITED);
            error.extensions = Some(extensions);
            return Err(error);
        }
        next.run(ctx, request.data(authentication)).await
    }

    fn subscribe<'s>(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        stream: futures::stream::BoxStream<'s, async_graphql::Response>,
        next: async_graphql::extensions::NextSubscribe<'_>,
    ) -> futures::stream::BoxStream<'s, async_graphql::Response> {
        let stream = next.run(ctx, stream);
        let (Some(credential), Some(app)) = (ctx.data_opt::<SocketCredential>().cloned(), ctx.data_opt::<Arc<App>>().cloned()) else {
            return stream;
        };
        if credential.header.is_none() {
            // An anonymous connection has no credential to lose.
            return stream;
        }
        let subscription = Arc::clone(&self.subscription);
        const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        // (the events, when the credential was last found valid, whether the stream has ended)
        let state = (stream, None::<std::time::Instant>, false);
        futures::stream::unfold(state, move |(mut inner, checked, ended)| {
            let (app, credential, subscription) = (Arc::clone(&app), credential.clone(), Arc::clone(&subscription));
            async move {
                if ended {
                    return None;
                }
                let response = inner.next().await?;
                // A query's or mutation's one answer (a logout's included) goes out as it is.
                if !subscription.load(std::sync::atomic::Ordering::Relaxed) || checked.is_some_and(|at| at.elapsed() < RECHECK_EVERY) {
                    return Some((response, (inner, checked, false)));
                }
                match app.authenticate(credential.header.as_deref(), credential.ip.as_deref()).await {
                    Authentication::User(_) => Some((response, (inner, Some(std::time::Instant::now()), false))),
                    Authentication::Unavailable(why) => {
                        tracing::warn!(why = %why, "A subscription's credential cannot be checked now; it goes on.");
                        Some((response, (inner, checked, false)))
                    }
                    _ => {
                        let mut error = async_graphql::ServerError::new(
                            "the credential of this subscription is no longer valid (signed out, revoked or expired); subscribe again",
                            None,
                        );
                        let mut extensions = async_graphql::ErrorExtensionValues::default();
                        extensions.set("code", crate::errors::code::UNAUTHENTICATED);
                        error.extensions = Some(extensions);
                        Some((async_graphql::Response::from_errors(vec![error]), (inner, checked, true)))
                    }
                }
            }
        })
        .boxed()
    }
}

pub(crate) fn app<'a>(ctx: &Context<'a>) -> &'a Arc<App> {
    // The schema is always built with the app (see `build`).
    ctx.data_unchecked::<Arc<App>>()
}

pub(crate) fn caller(ctx: &Context<'_>) -> ApiResult<Caller> {
    match ctx.data_opt::<Authentication>() {
        Some(Authentication::User(caller)) => Ok(*caller),
        Some(Authentication::Invalid(why)) => Err(ApiError::Unauthenticated(why.clone())),
        Some(Authentication::Unavailable(why)) => Err(ApiError::internal(why)),
        _ => Err(ApiError::Unauthenticated(
            "this operation needs a bearer access token (log in first)".into(),
        )),
    }
}

/// Takes a token from `key`'s bucket of `rule` (see `cloudsync_identity::limits`); a `RATE_LIMITED` error when
/// it is empty. An unreachable store lets the request through (and is logged).
pub(crate) async fn limit(ctx: &Context<'_>, rule: cloudsync_identity::limits::Rule, key: &str) -> ApiResult<()> {
    match app(ctx).limiter.take(key, rule).await {
        Ok(None) => Ok(()),
        Ok(Some(wait)) => Err(ApiError::RateLimited(wait)),
        Err(error) => {
            tracing::error!(error = %error, "Rate limits cannot be checked; the request goes through.");
            Ok(())
        }
    }
}

/// The client's IP address as the request showed it.
pub(crate) fn client_ip(ctx: &Context<'_>) -> String {
    ctx.data_opt::<crate::graphql::request::RequestInfo>()
        .and_then(|info| info.client.ip.clone())
        .unwrap_or_else(|| "unknown".into())
}

/// The user with this id, from its own stream (never a lagging read model).
pub(crate) async fn load_user(app: &App, user_id: Uuid) -> ApiResult<cloudsync_domain::user::User> {
    app.commands
        .user(cloudsync_domain::UserId::from_uuid(user_id))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// The caller, if its credential carries `scope` (`cloudsync_identity::access::scope`).
pub(crate) fn caller_for(ctx: &Context<'_>, scope: u8) -> ApiResult<Caller> {
    let caller = caller(ctx)?;
    if caller.scopes & scope == 0 {
        return Err(ApiError::Forbidden(format!(
            "this credential lacks the scope {}",
            cloudsync_identity::access::scope_name(scope)
        )));
    }
    Ok(caller)
}

/// The caller, if it signed in (account management is not open to API tokens).
pub(crate) fn session_caller(ctx: &Context<'_>) -> ApiResult<Caller> {
    let caller = caller(ctx)?;
    if caller.session_id.is_none() {
        return Err(ApiError::Forbidden(
            "this needs a signed-in session; API tokens cannot manage the account".into(),
        ));
    }
    Ok(caller)
}

/// The caller, if it may administer (`write`) or read administrative data: the `admin` scope and
/// the role `admin` (or `auditor`, to read).
pub(crate) async fn admin_caller(ctx: &Context<'_>, write: bool) -> ApiResult<Caller> {
    use cloudsync_identity::access::role;
    let caller = caller_for(ctx, cloudsync_identity::access::scope::ADMIN)?;
    let needed = if write { role::ADMIN } else { role::ADMIN | role::AUDITOR };
    // The role must be in the token and still be held now (a role revoked from the command line
    // ends no session, and the token keeps its roles until it expires).
    let held = cloudsync_identity::access::roles_from(&load_user(app(ctx), caller.user_id).await?.roles());
    if caller.roles & held & needed == 0 {
        return Err(ApiError::Forbidden(if write {
            "this needs the role admin".into()
        } else {
            "this needs the role admin or auditor".into()
        }));
    }
    Ok(caller)
}

pub(crate) fn parse_id(id: &ID, what: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(id.as_str().trim()).map_err(|_| ApiError::BadInput(format!("{what} {:?} is not a valid id", truncate(id.as_str()))))
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

pub(crate) fn parse_path(raw: &str) -> ApiResult<ProviderPath> {
    ProviderPath::parse(raw).map_err(|err| ApiError::BadInput(err.to_string()))
}

/// Where to authorize CloudSync with an OAuth provider.
#[derive(SimpleObject)]
struct ProviderAuthorization {
    /// Open this in the user's browser.
    authorization_url: String,
    /// Identifies this authorization; the provider echoes it back to the callback.
    state: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(SimpleObject)]
pub struct User {
    id: ID,
    email: String,
    created_at: DateTime<Utc>,
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
    async fn open(app: &App, user: Uuid, row: ProviderRow) -> ApiResult<Self> {
        let owner = cloudsync_domain::UserId::from_uuid(user);
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
}

impl From<FileRow> for File {
    fn from(row: FileRow) -> Self {
        Self {
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
        }
    }
}

#[derive(SimpleObject)]
#[graphql(complex)]
pub struct SyncOperation {
    id: ID,
    /// `scan` (index one provider) or `sync` (one run of a sync pair).
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
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    completed_at: Option<DateTime<Utc>>,
}

#[derive(SimpleObject)]
pub struct HeldDeletes {
    /// `source` or `target`.
    side: String,
    deletes: i64,
}

impl SyncOperation {
    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }

    /// What a progress update would tell that the last one did not.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "{} {} {:?} {} {} {:?} {:?}",
            self.status,
            self.paused,
            self.held.as_ref().map(|h| h.deletes),
            self.files_done,
            self.bytes_done,
            self.bytes_written,
            self.error
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
            created_at: row.created_at,
            updated_at: row.updated_at,
            completed_at: row.completed_at,
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
pub struct CoreQuery;

#[Object]
impl CoreQuery {
    /// The signed-in user.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<User> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        app.consistent(caller).await;
        let row = app
            .reads
            .user(caller.user_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("user"))?;
        let email = app
            .commands
            .reveal(
                cloudsync_domain::UserId::from_uuid(caller.user_id),
                &cloudsync_domain::events::Personal::from_column(&row.email),
            )
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("user"))?;
        Ok(User {
            id: ID(row.id.to_string()),
            email,
            created_at: row.created_at,
        })
    }

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
    /// inside one folder (recursively).
    async fn files(
        &self,
        ctx: &Context<'_>,
        provider: Option<String>,
        path: Option<String>,
        #[graphql(default = 100)] limit: i32,
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
        app.consistent(caller).await;
        let providers = match (id, kind) {
            (Some(id), _) => {
                app.reads
                    .provider(caller.user_id, id)
                    .await
                    .map_err(ApiError::from)?
                    .ok_or_else(|| ApiError::not_found("provider"))?;
                Providers::Id(id)
            }
            (None, Some(kind)) => Providers::Kind(kind.as_str()),
            (None, None) => Providers::All,
        };
        let rows = app
            .reads
            .files(
                caller.user_id,
                providers,
                folder.as_ref().map(ProviderPath::as_str),
                i64::from(limit),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(rows.into_iter().map(File::from).collect())
    }

    /// The state and progress of a scan or sync operation.
    async fn sync_status(&self, ctx: &Context<'_>, operation_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        let id = parse_id(&operation_id, "operationId")?;
        Ok(sync::operation_row(app, caller, id).await?)
    }
}

#[derive(Default)]
pub struct CoreMutation;

#[Object]
impl CoreMutation {
    /// Connects a storage provider and starts indexing it. `provider` is the kind (`local`);
    /// `credentials` are its configuration keys (for `local`: `{root: "/absolute/folder"}`).
    async fn connect_provider(&self, ctx: &Context<'_>, provider: String, credentials: Json<Value>) -> async_graphql::Result<Provider> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let connected = app
            .commands
            .connect_provider(cloudsync_domain::UserId::from_uuid(caller.user_id), &provider, &credentials.0)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, connected.position);
        app.consistent(caller).await;
        let row = app
            .reads
            .provider(caller.user_id, connected.provider_id.as_uuid())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::internal(&"the new provider is not visible yet"))?;
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
            .begin_authorization(cloudsync_domain::UserId::from_uuid(caller.user_id), &provider, name, root)
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
        let position = app
            .commands
            .disconnect_provider(cloudsync_domain::UserId::from_uuid(caller.user_id), id)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }

    /// Rescans a provider: only what changed since the last scan is recorded. Returns the operation
    /// to follow with `syncStatus`.
    async fn rescan_provider(&self, ctx: &Context<'_>, provider_id: ID) -> async_graphql::Result<SyncOperation> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = ProviderId::from_uuid(parse_id(&provider_id, "providerId")?);
        let (job_id, position) = app
            .commands
            .request_scan(cloudsync_domain::UserId::from_uuid(caller.user_id), id)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        app.consistent(caller).await;
        let row = app
            .reads
            .sync_operation(caller.user_id, job_id.as_uuid())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::internal(&"the new operation is not visible yet"))?;
        Ok(row.into())
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
            .set_scan_schedule(cloudsync_domain::UserId::from_uuid(caller.user_id), id, schedule, realtime)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        app.consistent(caller).await;
        let row = app
            .reads
            .provider(caller.user_id, id.as_uuid())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("provider"))?;
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
            .move_files(cloudsync_domain::UserId::from_uuid(caller.user_id), &ids, &folder)
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
        let (_, position) = app
            .commands
            .delete_files(cloudsync_domain::UserId::from_uuid(caller.user_id), &ids)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }
}

#[derive(Default)]
pub struct CoreSubscription;

#[Subscription]
impl CoreSubscription {
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

fn file_change(event: &cloudsync_eventstore::RecordedEvent, caller: Caller, provider: Uuid) -> Option<FileChange> {
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
    let mine = |owner: cloudsync_domain::UserId, p: ProviderId| owner.as_uuid() == caller.user_id && p.as_uuid() == provider;
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
