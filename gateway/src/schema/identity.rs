//! Accounts and sessions: `register`, `login`, `refresh`, `logout`, `sessions`, `revokeSession`.
//!
//! API clients get the refresh token in the payload. Browser clients ask for `cookie: true` and get
//! it in an `HttpOnly; Secure; SameSite=Strict` cookie instead (never in the payload, so page
//! scripts cannot read it); `refresh` without an argument then takes it from the cookie.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_domain::Email;
use uuid::Uuid;

use super::{app, caller, parse_id};
use crate::auth::{RequestInfo, check_password_rules, dummy_hash, hash_password, refresh_cookie, verify_password};
use crate::errors::{ApiError, ApiResult};
use crate::server::App;
use crate::sessions::{RefreshError, Session};

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <accessToken>`; short-lived.
    access_token: String,
    access_token_expires_at: DateTime<Utc>,
    /// Exchange it with `refresh` for new tokens (it works once). Null for browser clients, which
    /// get it in a cookie.
    refresh_token: Option<String>,
    session_id: ID,
    user: AuthUser,
}

#[derive(SimpleObject)]
pub struct AuthUser {
    id: ID,
    email: String,
}

/// A signed-in session of the caller.
#[derive(SimpleObject)]
pub struct SessionInfo {
    id: ID,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    /// Its refresh token stops working then unless exchanged before.
    expires_at: DateTime<Utc>,
    user_agent: Option<String>,
    ip: Option<String>,
    /// Whether the request's own access token belongs to it.
    current: bool,
}

fn info<'a>(ctx: &Context<'a>) -> RequestInfo {
    ctx.data_opt::<RequestInfo>().cloned().unwrap_or_default()
}

fn unauthenticated(why: &str) -> ApiError {
    ApiError::Unauthenticated(why.to_owned())
}

/// Opens a session for `user_id` and answers with its tokens (the refresh token in a cookie when
/// `cookie`).
async fn signed_in(ctx: &Context<'_>, app: &App, user_id: Uuid, email: String, cookie: bool) -> ApiResult<AuthPayload> {
    let (session, refresh_token) = app
        .tokens
        .sessions()
        .open(user_id, &info(ctx).client)
        .await
        .map_err(|err| ApiError::internal(&err))?;
    payload(ctx, app, &session, email, refresh_token, cookie)
}

fn payload(ctx: &Context<'_>, app: &App, session: &Session, email: String, refresh_token: String, cookie: bool) -> ApiResult<AuthPayload> {
    let access_token = app
        .tokens
        .issue(session.user_id, session.id)
        .map_err(|err| ApiError::internal(&err))?;
    let refresh_token = if cookie {
        let max_age = (session.expires_at - Utc::now()).num_seconds().max(0);
        ctx.append_http_header("set-cookie", refresh_cookie(&refresh_token, max_age));
        None
    } else {
        Some(refresh_token)
    };
    Ok(AuthPayload {
        access_token,
        access_token_expires_at: Utc::now() + chrono::Duration::minutes(app.token_ttl_minutes()),
        refresh_token,
        session_id: ID(session.id.to_string()),
        user: AuthUser {
            id: ID(session.user_id.to_string()),
            email,
        },
    })
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
    /// The caller's live sessions, oldest first.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SessionInfo>> {
        let caller = caller(ctx)?;
        let sessions = app(ctx)
            .tokens
            .sessions()
            .store()
            .list(caller.user_id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        Ok(sessions
            .into_iter()
            .map(|s| SessionInfo {
                id: ID(s.id.to_string()),
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                user_agent: s.user_agent,
                ip: s.ip,
                current: caller.session_id == Some(s.id),
            })
            .collect())
    }
}

#[derive(Default)]
pub struct IdentityMutation;

#[Object]
impl IdentityMutation {
    /// Creates an account and signs it in. `cookie`: a browser client, whose refresh token goes into
    /// a cookie.
    async fn register(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
        cookie: Option<bool>,
    ) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        let email = Email::parse(&email).map_err(|err| ApiError::BadInput(err.to_string()))?;
        check_password_rules(&password).map_err(ApiError::BadInput)?;
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|err| ApiError::internal(&err))?
            .map_err(|err| ApiError::internal(&err))?;
        let (user_id, position) = app.commands.register(email.clone(), hash).await.map_err(ApiError::from)?;
        app.wrote_for(user_id.as_uuid(), position);
        Ok(signed_in(ctx, app, user_id.as_uuid(), email.as_str().to_owned(), cookie.unwrap_or(false)).await?)
    }

    /// Signs in with email and password: a new session. `cookie`: a browser client, whose refresh
    /// token goes into a cookie.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String, cookie: Option<bool>) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        let refused = || unauthenticated("invalid email or password");
        let Ok(email) = Email::parse(&email) else {
            return Err(refused().into());
        };
        if password.chars().count() > 1024 {
            return Err(refused().into());
        }
        let user = app.commands.user_by_email(&email).await.map_err(ApiError::from)?;
        let hash = user
            .as_ref()
            .and_then(|u| u.password_hash())
            .unwrap_or_else(|| dummy_hash())
            .to_owned();
        let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|err| ApiError::internal(&err))?;
        let Some(user_id) = user.as_ref().and_then(|u| u.id()).filter(|_| matches) else {
            tracing::info!("A login was refused.");
            return Err(refused().into());
        };
        Ok(signed_in(ctx, app, user_id.as_uuid(), email.as_str().to_owned(), cookie.unwrap_or(false)).await?)
    }

    /// Exchanges a refresh token for a new access token and a new refresh token; the old one stops
    /// working. Presenting a refresh token a second time revokes its whole session. Without
    /// `refreshToken`, the browser's refresh cookie is used (and renewed).
    async fn refresh(&self, ctx: &Context<'_>, refresh_token: Option<String>) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        let (presented, cookie) = match refresh_token {
            Some(token) => (token, false),
            None => (
                info(ctx)
                    .refresh_cookie
                    .ok_or_else(|| ApiError::BadInput("give refreshToken, or send the refresh cookie".into()))?,
                true,
            ),
        };
        let failed = |why: &str| {
            if cookie {
                ctx.append_http_header("set-cookie", refresh_cookie("", 0));
            }
            unauthenticated(why)
        };
        let (session, next) = match app.tokens.sessions().refresh(&presented).await {
            Ok(exchanged) => exchanged,
            Err(RefreshError::Store(err)) => return Err(ApiError::internal(&err).into()),
            Err(err) => return Err(failed(&err.to_string()).into()),
        };
        let email = app
            .reads
            .user(session.user_id)
            .await
            .map_err(ApiError::from)?
            .map(|row| row.email)
            .ok_or_else(|| failed("the account of this refresh token no longer exists"))?;
        Ok(payload(ctx, app, &session, email, next, cookie)?)
    }

    /// Signs out: revokes the session of the request's access token (its refresh token and every
    /// access token of it stop working) and removes the browser's refresh cookie.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?;
        let session = caller
            .session_id
            .ok_or_else(|| ApiError::BadInput("this credential belongs to no session".into()))?;
        app(ctx)
            .tokens
            .sessions()
            .store()
            .revoke(caller.user_id, session)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        ctx.append_http_header("set-cookie", refresh_cookie("", 0));
        Ok(true)
    }

    /// Revokes one of the caller's sessions (see `sessions`), signing that device out.
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let caller = caller(ctx)?;
        let id = parse_id(&id, "session id")?;
        let revoked = app(ctx)
            .tokens
            .sessions()
            .store()
            .revoke(caller.user_id, id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        if !revoked {
            return Err(ApiError::not_found("session").into());
        }
        Ok(true)
    }
}
