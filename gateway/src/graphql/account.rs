//! Accounts and sessions: `register`, `login`, `refresh`, `logout`, `sessions`, `revokeSession`.
//!
//! API clients get the refresh token in the payload. Browser clients ask for `cookie: true` and get
//! it in an `HttpOnly; Secure; SameSite=Strict` cookie instead (never in the payload, so page
//! scripts cannot read it); `refresh` without an argument then takes it from the cookie.

use async_graphql::{Context, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_domain::events::PasswordChange;
use cloudsync_domain::{Email, UserId};
use uuid::Uuid;

use super::signin::{
    AuthPayload, AuthUser, challenge, check, confirm_password, hash_new, info, payload, sign_in_error, signed_in, unauthenticated,
};
use super::{app, caller_for, client_ip, limit, parse_id, session_caller};
use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use crate::graphql::request::refresh_cookie;
use cloudsync_identity::access::scope;
use cloudsync_identity::auth::check_password_rules;
use cloudsync_identity::login::{FirstStep, first_step};
use cloudsync_identity::mail::Mail;
use cloudsync_identity::passwords::Verdict;
use cloudsync_identity::sessions::RefreshError;
use cloudsync_identity::sessions::{fresh_secret, hash as secret_hash, join_token, split_token};

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

#[derive(SimpleObject)]
pub struct User {
    id: ID,
    email: String,
    created_at: DateTime<Utc>,
}

const RESET_PREFIX: &str = "rst1";

/// Revokes every session of the user but `keep`.
async fn revoke_sessions(app: &App, user_id: UserId, keep: Option<Uuid>) -> ApiResult<()> {
    let store = app.tokens.sessions().store();
    for session in store.list(user_id).await.map_err(|err| ApiError::internal(&err))? {
        if Some(session.id) != keep {
            store.revoke(user_id, session.id).await.map_err(|err| ApiError::internal(&err))?;
        }
    }
    Ok(())
}

/// Sends `email`'s owner a reset token, if there is one (errors are logged: the caller learns
/// nothing either way).
async fn send_reset(app: &App, email: Email) -> Result<(), String> {
    let Some(user) = app.commands.user_by_email(&email).await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let Some(user_id) = user.id() else { return Ok(()) };
    let secret = fresh_secret();
    let expires_at = Utc::now() + app.password_reset_ttl;
    app.commands
        .request_password_reset(user_id, secret_hash(&secret), expires_at)
        .await
        .map_err(|e| e.to_string())?;
    let token = join_token(RESET_PREFIX, user_id.as_uuid(), &secret);
    let body = format!(
        "Someone asked to reset the password of your CloudSync account {email}.\n\n\
         If it was you, set a new one with this token before {expires}:\n\n    {token}\n\n\
         (mutation {{ resetPassword(token: \"{token}\", newPassword: \"…\") }})\n\n\
         If it was not you, ignore this message: your password stays as it is.",
        email = email.as_str(),
        expires = expires_at.format("%Y-%m-%d %H:%M UTC"),
    );
    app.mailer
        .send(&Mail {
            to: email.as_str().to_owned(),
            subject: "Reset your CloudSync password".into(),
            body,
        })
        .await
        .map_err(|err| err.to_string())
}

#[derive(Default)]
pub struct IdentityQuery;

#[Object]
impl IdentityQuery {
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
            .reveal(caller.user_id, &cloudsync_domain::events::Personal::from_column(&row.email))
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("user"))?;
        Ok(User {
            id: ID(row.id.to_string()),
            email,
            created_at: row.created_at,
        })
    }

    /// The caller's live sessions, oldest first.
    async fn sessions(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<SessionInfo>> {
        let caller = session_caller(ctx)?;
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
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let email = Email::parse(&email).map_err(|err| ApiError::BadInput(err.to_string()))?;
        check_password_rules(&password).map_err(|err| ApiError::BadInput(err.to_string()))?;
        let hash = hash_new(app, password).await?;
        let (user_id, position) = app.commands.register(email.clone(), hash).await.map_err(ApiError::from)?;
        app.wrote_for(user_id, position);
        Ok(signed_in(ctx, app, user_id, email.as_str().to_owned(), cookie.unwrap_or(false)).await?)
    }

    /// Signs in with email and password: a new session. `cookie`: a browser client, whose refresh
    /// token goes into a cookie.
    async fn login(&self, ctx: &Context<'_>, email: String, password: String, cookie: Option<bool>) -> async_graphql::Result<AuthPayload> {
        let app = app(ctx);
        let refused = || unauthenticated("invalid email or password");
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let Ok(email) = Email::parse(&email) else {
            return Err(refused().into());
        };
        // Per account too: a guesser spreading over many addresses still gets five tries a minute
        // at each account.
        limit(ctx, app.rules.login, &format!("account:{}", email.as_str())).await?;
        if password.chars().count() > 1024 {
            return Err(refused().into());
        }
        let user = app.commands.user_by_email(&email).await.map_err(ApiError::from)?;
        let step = first_step(&app.passwords, user.as_ref(), &password)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        let (FirstStep::SignedIn { user: user_id, .. } | FirstStep::SecondFactor { user: user_id, .. }) = step else {
            tracing::info!("A login was refused.");
            return Err(refused().into());
        };
        if step.upgrade()
            && let Some(stored) = user.as_ref().and_then(|u| u.password_hash()).map(str::to_owned)
        {
            // An older or imported hash: store one made with today's parameters.
            let rehashed = async {
                let hash = hash_new(app, password).await?;
                app.commands
                    .set_password(user_id, hash, PasswordChange::Rehashed, &stored)
                    .await
                    .map_err(ApiError::from)
            };
            if let Err(error) = rehashed.await {
                tracing::warn!(user = %user_id, error = ?error, "A password hash could not be upgraded; the old one stays.");
            }
        }
        if let (FirstStep::SecondFactor { .. }, Some(user)) = (step, user.as_ref()) {
            let challenge = challenge(app, user, email.as_str().to_owned(), cookie.unwrap_or(false)).await?;
            return Ok(AuthPayload {
                access_token: None,
                access_token_expires_at: None,
                refresh_token: None,
                session_id: None,
                user: AuthUser {
                    id: ID(user_id.to_string()),
                    email: email.as_str().to_owned(),
                },
                mfa: Some(challenge),
            });
        }
        Ok(signed_in(ctx, app, user_id, email.as_str().to_owned(), cookie.unwrap_or(false)).await?)
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
        // From the account's own stream: a read model may not show a new account yet.
        let email = app
            .commands
            .email_of(session.user_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| failed("the account of this refresh token no longer exists"))?;
        let user = app.commands.user(session.user_id).await.map_err(ApiError::from)?;
        let signed = cloudsync_identity::signin::resume(&app.tokens, session, next, user.as_ref(), &info(ctx).client)
            .await
            .map_err(sign_in_error)?;
        Ok(payload(ctx, app, signed, email, cookie))
    }

    /// Signs out: revokes the session of the request's access token (its refresh token and every
    /// access token of it stop working) and removes the browser's refresh cookie.
    async fn logout(&self, ctx: &Context<'_>) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
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

    /// Changes the caller's password (the current one is required) and signs out every other
    /// session.
    async fn change_password(&self, ctx: &Context<'_>, current_password: String, new_password: String) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("account-id:{}", caller.user_id)).await?;
        let user_id = caller.user_id;
        let user = app
            .commands
            .user(user_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::not_found("user"))?;
        let stored = user.password_hash().map(str::to_owned);
        if current_password.chars().count() > 1024 || check(app, current_password, stored.clone()).await? == Verdict::Mismatch {
            return Err(ApiError::BadInput("the current password is wrong".into()).into());
        }
        check_password_rules(&new_password).map_err(|err| ApiError::BadInput(err.to_string()))?;
        let hash = hash_new(app, new_password).await?;
        let position = app
            .commands
            .set_password(user_id, hash, PasswordChange::Changed, stored.as_deref().unwrap_or_default())
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, position);
        revoke_sessions(app, caller.user_id, caller.session_id).await?;
        Ok(true)
    }

    /// Mails a single-use reset token to the address, if it belongs to an account. Always answers
    /// true, whether or not it does, so it cannot tell who has an account.
    async fn request_password_reset(&self, ctx: &Context<'_>, email: String) -> async_graphql::Result<bool> {
        let app = std::sync::Arc::clone(app(ctx));
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let email = Email::parse(&email).map_err(|err| ApiError::BadInput(err.to_string()))?;
        limit(ctx, app.rules.login, &format!("reset:{}", email.as_str())).await?;
        // In the background: the answer takes as long for an unknown address as for a known one
        // (still in the request's correlation and span).
        let correlation = cloudsync_commands::current_correlation().unwrap_or_else(uuid::Uuid::new_v4);
        let send = async move {
            if let Err(error) = send_reset(&app, email).await {
                tracing::error!(error = %error, "A password reset could not be sent.");
            }
        };
        tokio::spawn(tracing::Instrument::in_current_span(cloudsync_commands::correlated(
            correlation,
            send,
        )));
        Ok(true)
    }

    /// Sets a new password with a token from `requestPasswordReset` (it works once, only the latest
    /// one works, and it expires); every session of the account is signed out.
    async fn reset_password(&self, ctx: &Context<'_>, token: String, new_password: String) -> async_graphql::Result<bool> {
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let invalid = || ApiError::BadInput("the reset token is invalid, expired or already used".into());
        let (user_id, secret) = split_token(&token, RESET_PREFIX).ok_or_else(invalid)?;
        check_password_rules(&new_password).map_err(|err| ApiError::BadInput(err.to_string()))?;
        let hash = hash_new(app, new_password).await?;
        let position = match app
            .commands
            .reset_password(UserId::from_uuid(user_id), secret_hash(secret), hash)
            .await
        {
            Ok(position) => position,
            Err(cloudsync_commands::CommandError::Invalid(_) | cloudsync_commands::CommandError::NotFound(_)) => {
                return Err(invalid().into());
            }
            Err(err) => return Err(ApiError::from(err).into()),
        };
        let user_id = UserId::from_uuid(user_id);
        app.wrote_for(user_id, position);
        revoke_sessions(app, user_id, None).await?;
        Ok(true)
    }

    /// Erases the caller's account (confirmed with its password): every session ends, its data
    /// disappears from the read models, and its data key is destroyed, so the personal data sealed
    /// in its events (its address, its providers' credentials, its second factors) can never be
    /// read again. The events stay, so the log and its replay remain whole.
    async fn delete_account(&self, ctx: &Context<'_>, password: Option<String>) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
        let app = app(ctx);
        confirm_password(ctx, app, caller.user_id, password).await?;
        let passwordless = super::load_user(app, caller.user_id).await?.password_hash() == Some(cloudsync_commands::NO_PASSWORD);
        if passwordless {
            // No password to confirm with: the session must be a fresh sign-in.
            let session = match caller.session_id {
                Some(id) => app
                    .tokens
                    .sessions()
                    .store()
                    .get(id)
                    .await
                    .map_err(|err| ApiError::internal(&err))?,
                None => None,
            };
            if session.is_none_or(|s| Utc::now() - s.created_at >= chrono::Duration::minutes(10)) {
                return Err(ApiError::Forbidden("sign in again (within ten minutes) to erase this account".into()).into());
            }
        }
        let position = app.commands.delete_account(caller.user_id).await.map_err(ApiError::from)?;
        app.wrote(caller, position);
        app.tokens
            .sessions()
            .store()
            .revoke_all(caller.user_id)
            .await
            .map_err(|err| ApiError::internal(&err))?;
        ctx.append_http_header("set-cookie", refresh_cookie("", 0));
        tracing::info!(user = %caller.user_id, "An account was erased.");
        Ok(true)
    }

    /// Revokes one of the caller's sessions (see `sessions`), signing that device out.
    async fn revoke_session(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let caller = session_caller(ctx)?;
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
