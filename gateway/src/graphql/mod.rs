//! The GraphQL schema: queries and mutations over HTTP, subscriptions over WebSocket. Every resolver
//! that touches data first resolves the caller and scopes everything to them.

use std::sync::Arc;

use async_graphql::{Context, ID, MergedObject, MergedSubscription, Schema};
use cloudsync_domain::ProviderPath;
use futures::StreamExt;
use uuid::Uuid;

use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::auth::{Authentication, Caller};

mod account;
mod admin;
pub mod depth;
mod duplicates;
mod files;
mod mfa;
pub mod request;
mod search;
mod signin;
mod sso;
mod sync;

pub use sso::oidc::{BINDING_COOKIE as OIDC_BINDING_COOKIE, CallbackParams as OidcCallbackParams, callback as oidc_callback};
pub use sso::saml::{AcsParams as SamlAcsParams, BINDING_COOKIE as SAML_BINDING_COOKIE, acs as saml_acs};

pub type CloudSyncSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    files::FilesQuery,
    search::SearchQuery,
    search::SimilarQuery,
    duplicates::DuplicatesQuery,
    duplicates::DeletedFilesQuery,
    account::IdentityQuery,
    mfa::MfaQuery,
    admin::AdminQuery,
    sync::SyncQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    account::IdentityMutation,
    mfa::MfaMutation,
    sso::oidc::OidcMutation,
    sso::saml::SamlMutation,
    admin::AdminMutation,
    files::FilesMutation,
    duplicates::DuplicatesMutation,
    sync::SyncMutation,
);

#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(files::FilesSubscription, sync::SyncSubscription);

/// The schema that WebSocket operations run on: the limits, and extensions that check each
/// operation ([`Admit`], [`Recheck`]) and measure it.
pub fn build(app: Arc<App>) -> CloudSyncSchema {
    let read_only = app.read_only;
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(app)
        .extension(Recheck)
        .extension(Admit { read_only })
        .extension(crate::metrics::MeasureGraphql::for_schema(&sdl()))
        .limit_complexity(1000)
        .finish()
}

/// The schema that `POST /graphql` runs on: the same limits, and no extension. Its handler parses
/// each document once and applies [`refusal`] and the measuring itself: once a schema has any
/// extension, async-graphql calls it around every field and every list item, which cost a page of
/// 50 files more than its query did.
pub fn build_for_http(app: Arc<App>) -> CloudSyncSchema {
    Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .data(app)
        .limit_complexity(1000)
        .finish()
}

/// An error an extension answers with, carrying its stable `code`.
fn coded(message: impl Into<String>, code: &str) -> async_graphql::ServerError {
    let mut error = async_graphql::ServerError::new(message, None);
    let mut extensions = async_graphql::ErrorExtensionValues::default();
    extensions.set("code", code);
    error.extensions = Some(extensions);
    error
}

/// The mutations a read-only server (a replay) still answers: signing in and out, which record
/// nothing in the log.
const READ_ONLY_MUTATIONS: [&str; 3] = ["login", "refresh", "logout"];

/// Why a parsed document is refused before anything runs: it nests deeper than [`depth`]'s limits,
/// or, on a read-only server, it has a mutation other than [`READ_ONLY_MUTATIONS`] (`FORBIDDEN`).
pub fn refusal(document: &async_graphql::parser::types::ExecutableDocument, read_only: bool) -> Option<async_graphql::ServerError> {
    use async_graphql::parser::types::{OperationType, Selection};
    if depth::too_deep(document) {
        return Some(async_graphql::ServerError::new("Query is nested too deep.", None));
    }
    let changes = || {
        document.operations.iter().any(|(_, operation)| {
            operation.node.ty == OperationType::Mutation
                && operation
                    .node
                    .selection_set
                    .node
                    .items
                    .iter()
                    .any(|selection| match &selection.node {
                        Selection::Field(field) => !READ_ONLY_MUTATIONS.contains(&field.node.name.node.as_str()),
                        Selection::FragmentSpread(_) | Selection::InlineFragment(_) => true,
                    })
        })
    };
    (read_only && changes()).then(|| {
        coded(
            "this server is read-only (a replay of the log): only signing in and out is possible",
            crate::errors::code::FORBIDDEN,
        )
    })
}

/// Applies [`refusal`] to every document a WebSocket sends, once it is parsed.
struct Admit {
    read_only: bool,
}

impl async_graphql::extensions::ExtensionFactory for Admit {
    fn create(&self) -> Arc<dyn async_graphql::extensions::Extension> {
        Arc::new(Admit { read_only: self.read_only })
    }
}

#[async_trait::async_trait]
impl async_graphql::extensions::Extension for Admit {
    async fn parse_query(
        &self,
        ctx: &async_graphql::extensions::ExtensionContext<'_>,
        query: &str,
        variables: &async_graphql::Variables,
        next: async_graphql::extensions::NextParseQuery<'_>,
    ) -> async_graphql::ServerResult<async_graphql::parser::types::ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        match refusal(&document, self.read_only) {
            Some(error) => Err(error),
            None => Ok(document),
        }
    }
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
            return Err(coded(
                format!("too many requests; try again in {} s", wait.as_secs() + 1),
                crate::errors::code::RATE_LIMITED,
            ));
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
                        let error = coded(
                            "the credential of this subscription is no longer valid (signed out, revoked or expired); subscribe again",
                            crate::errors::code::UNAUTHENTICATED,
                        );
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
pub(crate) async fn load_user(app: &App, user_id: cloudsync_domain::UserId) -> ApiResult<cloudsync_domain::user::User> {
    app.commands
        .user(user_id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found("user"))
}

/// The caller, if its credential carries `scope` (`cloudsync_identity::access::scope`).
pub(crate) fn caller_for(ctx: &Context<'_>, scope: cloudsync_identity::access::Scopes) -> ApiResult<Caller> {
    let caller = caller(ctx)?;
    if !caller.scopes.contains(scope) {
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
    administers(app(ctx), caller(ctx)?, write).await
}

/// [`admin_caller`] for a caller authenticated outside GraphQL (an export's download).
pub(crate) async fn administers(app: &App, caller: Caller, write: bool) -> ApiResult<Caller> {
    use cloudsync_identity::access::role;
    if !caller.scopes.contains(cloudsync_identity::access::scope::ADMIN) {
        return Err(ApiError::Forbidden("this credential lacks the scope admin".into()));
    }
    let needed = if write { role::ADMIN } else { role::ADMIN | role::AUDITOR };
    // The role must be in the token and still be held now (a role revoked from the command line
    // ends no session, and the token keeps its roles until it expires).
    let held = cloudsync_identity::access::roles_from(&load_user(app, caller.user_id).await?.roles());
    if (caller.roles & held & needed).is_empty() {
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

pub(crate) fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The opaque cursor of the item at `offset` (0-based) of a list paged by position, whose cursors
/// are marked `list`.
pub(crate) fn offset_cursor(list: &str, offset: usize) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{list}:{offset}"))
}

/// Where a page of the field `field` starts: after the item whose [`offset_cursor`] (marked `list`)
/// is `after`, or at 0.
pub(crate) fn offset_after(list: &str, field: &str, after: Option<&str>) -> Result<usize, crate::errors::ApiError> {
    use base64::Engine as _;
    let Some(after) = after else { return Ok(0) };
    let invalid = || crate::errors::ApiError::BadInput(format!("after {:?} is not a cursor of {field}", truncate(after)));
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(after.trim())
        .map_err(|_| invalid())?;
    let text = String::from_utf8(text).map_err(|_| invalid())?;
    let offset: usize = text
        .strip_prefix(list)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(invalid)?;
    offset.checked_add(1).ok_or_else(invalid)
}

pub(crate) fn parse_path(raw: &str) -> ApiResult<ProviderPath> {
    ProviderPath::parse(raw).map_err(|err| ApiError::BadInput(err.to_string()))
}
