//! Personal API tokens and network restrictions (the account's own, with a signed-in session), and
//! administration: the user list, quotas and tiers, roles, the audit log and analytics exports. Administration needs
//! the `admin` scope and the role `admin`; reading it, `admin` or `auditor`.
//! The user list waits for the read models to reach the log's head; `auditLog` reads the log by
//! actor.

use async_graphql::{Context, ID, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_domain::UserId;
use serde_json::Value;
use uuid::Uuid;

use super::sync::SyncOperation;
use super::{admin_caller, app, load_user, parse_id, session_caller};
use crate::errors::{ApiError, ApiResult};
use cloudsync_identity::access::{api_token, ip_allowed, parse_network};
use cloudsync_identity::sessions::{fresh_secret, hash};

#[derive(SimpleObject)]
pub struct ApiTokenInfo {
    id: ID,
    name: String,
    scopes: Vec<String>,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(SimpleObject)]
pub struct CreatedApiToken {
    /// Send as `Authorization: Bearer <token>`. Shown only now: only its hash is kept.
    token: String,
    info: ApiTokenInfo,
}

#[derive(SimpleObject)]
pub struct Account {
    id: ID,
    email: String,
    roles: Vec<String>,
    /// Null: unlimited.
    quota_bytes: Option<i64>,
    tier: String,
    created_at: DateTime<Utc>,
}

#[derive(SimpleObject)]
pub struct AuditEvent {
    /// The event's position in the log (`after` for the next page).
    position: i64,
    event_type: String,
    stream: String,
    /// The event's version in its stream.
    stream_version: i64,
    occurred_at: DateTime<Utc>,
    /// Who caused it (none: CloudSync itself).
    actor_id: Option<ID>,
    /// The request (its `X-Request-Id`) or job it belongs to.
    correlation_id: ID,
    /// As stored: sealed fields stay sealed, password and token hashes are redacted.
    payload: Json<Value>,
}

/// Which events `auditLog` returns: every set condition must hold.
#[derive(async_graphql::InputObject, Default)]
pub struct AuditFilter {
    /// Caused by this user (administrators and auditors; anyone else sees only their own).
    user_id: Option<ID>,
    /// Of this stream (`user-<id>`, `provider-<id>`, `file-<id>`, …).
    stream_id: Option<String>,
    /// Of any of these event types.
    event_types: Option<Vec<String>>,
    /// At or after this time.
    from: Option<DateTime<Utc>>,
    /// Before this time.
    to: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct AdminQuery;

#[Object]
impl AdminQuery {
    /// The caller's personal API tokens (never their secrets).
    async fn api_tokens(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiTokenInfo>> {
        let caller = session_caller(ctx)?;
        let user = load_user(app(ctx), caller.user_id).await?;
        Ok(user
            .api_tokens()
            .map(|t| ApiTokenInfo {
                id: ID(t.id.to_string()),
                name: t.name.clone(),
                scopes: t.scopes.clone(),
                created_at: t.created_at,
                expires_at: t.expires_at,
            })
            .collect())
    }

    /// The networks the caller's credentials work from (empty: anywhere).
    async fn ip_allowlist(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        let caller = session_caller(ctx)?;
        let user = load_user(app(ctx), caller.user_id).await?;
        Ok(user.ip_allowlist().to_vec())
    }

    /// Every account, oldest first (administrators and auditors).
    async fn users(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100)] limit: i32,
        #[graphql(default = 0)] offset: i32,
    ) -> async_graphql::Result<Vec<Account>> {
        admin_caller(ctx, false).await?;
        if !(1..=1000).contains(&limit) || offset < 0 {
            return Err(ApiError::BadInput("limit must be between 1 and 1000, offset not negative".into()).into());
        }
        app(ctx).caught_up().await;
        let rows = app(ctx)
            .reads
            .accounts(i64::from(limit), i64::from(offset))
            .await
            .map_err(ApiError::from)?;
        let mut accounts = Vec::with_capacity(rows.len());
        for r in rows {
            let sealed = cloudsync_domain::events::Personal::from_column(&r.email);
            // One unreadable address (a key no configured master key opens) spoils no more than its row.
            let email = match app(ctx).commands.reveal(UserId::from_uuid(r.id), &sealed).await {
                Ok(email) => email.unwrap_or_default(),
                Err(error) => {
                    tracing::error!(user = %r.id, error = %error, "An address cannot be opened.");
                    String::new()
                }
            };
            accounts.push(Account {
                id: ID(r.id.to_string()),
                email,
                roles: r.roles,
                quota_bytes: r.quota_bytes,
                tier: r.tier,
                created_at: r.created_at,
            });
        }
        Ok(accounts)
    }

    /// The event log, in order, as `filter` narrows it: pages of `first` (or `limit`) events after
    /// the position `after`. Administrators and auditors see everyone's; anyone else their own
    /// (naming another user is `FORBIDDEN`).
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        user_id: Option<ID>,
        filter: Option<AuditFilter>,
        #[graphql(default = 0)] after: i64,
        #[graphql(default = 100)] limit: i32,
        first: Option<i32>,
    ) -> async_graphql::Result<Vec<AuditEvent>> {
        let filter = filter.unwrap_or_default();
        let limit = first.unwrap_or(limit);
        if !(1..=1000).contains(&limit) || after < 0 {
            return Err(ApiError::BadInput("first (or limit) must be between 1 and 1000, after not negative".into()).into());
        }
        let named = match (&user_id, &filter.user_id) {
            (Some(a), Some(b)) if a != b => return Err(ApiError::BadInput("userId and filter.userId differ".into()).into()),
            (Some(id), _) | (None, Some(id)) => Some(parse_id(id, "userId")?),
            (None, None) => None,
        };
        if let (Some(from), Some(to)) = (filter.from, filter.to)
            && from >= to
        {
            return Err(ApiError::BadInput("filter.from must be before filter.to".into()).into());
        }
        let actor = match admin_caller(ctx, false).await {
            Ok(_) => named,
            Err(ApiError::Forbidden(_)) => {
                // One's own history (sessions, tokens, second factors) is a signed-in session's to
                // read, not a scoped API token's.
                let caller = session_caller(ctx)?;
                match named {
                    Some(other) if other != caller.user_id.as_uuid() => {
                        return Err(ApiError::Forbidden("only administrators and auditors see other users' history".into()).into());
                    }
                    _ => Some(caller.user_id.as_uuid()),
                }
            }
            Err(error) => return Err(error.into()),
        };
        let wanted = cloudsync_eventstore::EventFilter {
            actor,
            stream: filter.stream_id.map(|s| s.trim().to_owned()),
            event_types: filter.event_types.unwrap_or_default(),
            from: filter.from,
            to: filter.to,
        };
        let events = app(ctx)
            .db
            .events
            .read_filtered(&wanted, after, i64::from(limit))
            .await
            .map_err(|err| ApiError::internal(&err))?;
        Ok(events
            .into_iter()
            .map(|e| AuditEvent {
                position: e.position,
                event_type: e.event_type,
                stream: e.stream_id,
                stream_version: e.stream_version,
                occurred_at: e.metadata.occurred_at,
                actor_id: e.metadata.actor_id.map(|a| ID(a.to_string())),
                correlation_id: ID(e.metadata.correlation_id.to_string()),
                payload: Json(cloudsync_domain::events::redacted(e.payload, true)),
            })
            .collect())
    }
}

/// What an analytics export holds.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "cloudsync_domain::events::ExportSubject")]
pub enum ExportSubject {
    /// The event log as stored (sealed fields sealed, hashes of secrets redacted).
    Events,
    /// Every indexed file.
    Files,
    /// Every scan, sync run and export.
    SyncOperations,
}

/// An analytics export's file format.
#[derive(async_graphql::Enum, Clone, Copy, PartialEq, Eq)]
#[graphql(remote = "cloudsync_domain::events::ExportFormat")]
pub enum ExportFormat {
    /// Apache Parquet, zstd-compressed row groups.
    Parquet,
    Csv,
}

#[derive(Default)]
pub struct AdminMutation;

#[Object]
impl AdminMutation {
    /// Exports the event log, the files or the sync operations (administrators): a job that
    /// writes `<operation id>.<format>` into the server's export folder, leaving out erased
    /// accounts; `since` and `until` bound when things happened (events), changed (files) or
    /// started (sync operations); `format` is Parquet unless given. Follow it with `syncStatus`;
    /// `exportFile` names the file.
    async fn export_analytics(
        &self,
        ctx: &Context<'_>,
        what: ExportSubject,
        format: Option<ExportFormat>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> async_graphql::Result<SyncOperation> {
        let caller = admin_caller(ctx, true).await?;
        let app = app(ctx);
        let request = cloudsync_domain::events::ExportRequest {
            what: what.into(),
            format: format.unwrap_or(ExportFormat::Parquet).into(),
            since,
            until,
        };
        let (job_id, position) = app.commands.request_export(caller.user_id, request).await.map_err(ApiError::from)?;
        Ok(SyncOperation::started(app, caller, job_id, position).await?)
    }

    /// Creates a personal API token with `scopes` (`files:read`, `files:write`, `sync:run`;
    /// `admin` for administrators and auditors), expiring after `expiresInDays` (none: never).
    async fn create_api_token(
        &self,
        ctx: &Context<'_>,
        name: String,
        scopes: Vec<String>,
        expires_in_days: Option<i32>,
    ) -> async_graphql::Result<CreatedApiToken> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        let expires_at = match expires_in_days {
            None => None,
            Some(days) if (1..=3650).contains(&days) => Some(Utc::now() + chrono::Duration::days(i64::from(days))),
            Some(_) => return Err(ApiError::BadInput("expiresInDays must be between 1 and 3650".into()).into()),
        };
        let (id, secret) = (Uuid::new_v4(), fresh_secret());
        let position = app
            .commands
            .create_api_token(caller.user_id, id, name.clone(), scopes.clone(), hash(&secret), expires_at)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(CreatedApiToken {
            token: api_token(caller.user_id, id, &secret),
            info: ApiTokenInfo {
                id: ID(id.to_string()),
                name: name.trim().to_owned(),
                scopes,
                created_at: Utc::now(),
                expires_at,
            },
        })
    }

    /// Revokes one of the caller's API tokens; it stops working at once.
    async fn revoke_api_token(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        let id = parse_id(&id, "token id")?;
        app(ctx)
            .commands
            .revoke_api_token(caller.user_id, id)
            .await
            .map_err(ApiError::from)?;
        Ok(true)
    }

    /// Restricts the caller's credentials (sign-ins, refreshes, API tokens) to these networks
    /// (`203.0.113.0/24`, `2001:db8::/32`, single addresses); an empty list lifts it. The request's
    /// own address must be inside, so nobody locks themselves out.
    async fn set_ip_allowlist(&self, ctx: &Context<'_>, networks: Vec<String>) -> async_graphql::Result<Vec<String>> {
        let caller = session_caller(ctx)?;
        let networks = networks.iter().map(|n| n.trim().to_owned()).collect::<Vec<_>>();
        for network in &networks {
            parse_network(network).map_err(|err| ApiError::BadInput(err.to_string()))?;
        }
        let ip = super::client_ip(ctx);
        if !ip_allowed(Some(&ip), &networks) {
            return Err(ApiError::BadInput(format!("this request comes from {ip}, which is outside these networks")).into());
        }
        let app = app(ctx);
        let position = app
            .commands
            .set_ip_allowlist(caller.user_id, networks.clone())
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(networks)
    }

    /// Sets a user's storage quota (null: unlimited) and tier (`free`, `pro`, `team`).
    async fn set_user_plan(&self, ctx: &Context<'_>, user_id: ID, quota_bytes: Option<i64>, tier: String) -> async_graphql::Result<bool> {
        let caller = admin_caller(ctx, true).await?;
        let user = UserId::from_uuid(parse_id(&user_id, "userId")?);
        let quota = quota_bytes
            .map(|q| u64::try_from(q).map_err(|_| ApiError::BadInput("quotaBytes cannot be negative".into())))
            .transpose()?;
        let app = app(ctx);
        let position = app
            .commands
            .set_plan(user, quota, &tier, caller.user_id)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        Ok(true)
    }

    /// Gives a user a role (`admin`, `auditor`); it takes effect at their next sign-in or refresh.
    async fn grant_role(&self, ctx: &Context<'_>, user_id: ID, role: String) -> async_graphql::Result<bool> {
        Ok(change_role(ctx, &user_id, &role, true).await?)
    }

    /// Takes a role from a user.
    async fn revoke_role(&self, ctx: &Context<'_>, user_id: ID, role: String) -> async_graphql::Result<bool> {
        Ok(change_role(ctx, &user_id, &role, false).await?)
    }
}

/// Gives (`grant`) or takes a role, as an administrator.
async fn change_role(ctx: &Context<'_>, user_id: &ID, role: &str, grant: bool) -> ApiResult<bool> {
    let caller = admin_caller(ctx, true).await?;
    let user = UserId::from_uuid(parse_id(user_id, "userId")?);
    let app = app(ctx);
    let position = if grant {
        app.commands.grant_role(user, role).await
    } else {
        app.commands.revoke_role(user, role).await
    }
    .map_err(ApiError::from)?;
    app.wrote(caller, position);
    if !grant {
        // Access tokens carry roles: the user's sessions end, so the role goes at once.
        app.tokens
            .sessions()
            .store()
            .revoke_all(user)
            .await
            .map_err(|err| ApiError::internal(&err))?;
    }
    Ok(true)
}
