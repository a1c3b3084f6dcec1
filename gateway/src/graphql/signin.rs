//! What every way of signing in ends with: a session and its tokens ([`AuthPayload`]) once the
//! password (or a single sign-on) is right and no second factor is needed, or a second-factor
//! challenge ([`MfaChallenge`]) whose pending login `cloudsync_identity::login` keeps.

use super::limit;
use crate::app::App;
use crate::errors::{ApiError, ApiResult};
use crate::graphql::request::{RequestInfo, refresh_cookie};
use async_graphql::{Context, Enum, ID, Json, SimpleObject};
use chrono::{DateTime, Utc};
use cloudsync_domain::UserId;
use cloudsync_domain::user::User;
use cloudsync_identity::login::{AnswerError, ChallengeError, Challenges};
use cloudsync_identity::passwords::Verdict;
use cloudsync_identity::signin::{SignInError, SignedIn};
use serde_json::Value;
use std::sync::Arc;
use webauthn_rs::prelude::{Passkey, PasskeyAuthentication};

#[derive(SimpleObject)]
pub struct AuthPayload {
    /// Send as `Authorization: Bearer <accessToken>`; short-lived. Null while a second factor is
    /// required (see `mfa`).
    pub(super) access_token: Option<String>,
    pub(super) access_token_expires_at: Option<DateTime<Utc>>,
    /// Exchange it with `refresh` for new tokens (it works once). Null for browser clients, which
    /// get it in a cookie.
    pub(super) refresh_token: Option<String>,
    pub(super) session_id: Option<ID>,
    pub(super) user: AuthUser,
    /// Set when the password was right and the account needs a second factor: complete the login
    /// with `completeMfaLogin` or `completePasskeyLogin`.
    pub(super) mfa: Option<MfaChallenge>,
}

#[derive(SimpleObject)]
pub struct AuthUser {
    pub(super) id: ID,
    pub(super) email: String,
}

pub(super) fn info<'a>(ctx: &Context<'a>) -> RequestInfo {
    ctx.data_opt::<RequestInfo>().cloned().unwrap_or_default()
}

pub(super) fn unauthenticated(why: &str) -> ApiError {
    ApiError::Unauthenticated(why.to_owned())
}

/// Ends a login of `user_id` (see `cloudsync_identity::signin`) and answers with its tokens (the
/// refresh token in a cookie when `cookie`).
pub(crate) async fn signed_in(ctx: &Context<'_>, app: &App, user_id: UserId, email: String, cookie: bool) -> ApiResult<AuthPayload> {
    let user = app.commands.user(user_id).await.map_err(ApiError::from)?;
    let signed = cloudsync_identity::signin::sign_in(&app.tokens, user.as_ref(), &info(ctx).client)
        .await
        .map_err(sign_in_error)?;
    Ok(payload(ctx, app, signed, email, cookie))
}

/// A sign-in's refusal as the API answers it.
pub(super) fn sign_in_error(error: SignInError) -> ApiError {
    match error {
        SignInError::NoAccount | SignInError::Network => unauthenticated(&error.to_string()),
        SignInError::Store(_) | SignInError::Signing(_) => ApiError::internal(&error),
    }
}

/// The answer of a finished sign-in.
pub(super) fn payload(ctx: &Context<'_>, app: &App, signed: SignedIn, email: String, cookie: bool) -> AuthPayload {
    let refresh_token = if cookie {
        let max_age = signed.refresh_seconds_left(app.clock.now());
        ctx.append_http_header("set-cookie", refresh_cookie(&signed.refresh_token, max_age));
        None
    } else {
        Some(signed.refresh_token)
    };
    AuthPayload {
        access_token: Some(signed.access.token),
        access_token_expires_at: Some(signed.access.expires_at),
        refresh_token,
        session_id: Some(ID(signed.session.id.to_string())),
        user: AuthUser {
            id: ID(signed.session.user_id.to_string()),
            email,
        },
        mfa: None,
    }
}

/// A new argon2id hash, on a blocking thread.
pub(super) async fn hash_new(app: &App, password: String) -> ApiResult<String> {
    let passwords = app.passwords.clone();
    tokio::task::spawn_blocking(move || passwords.hash(&password))
        .await
        .map_err(|err| ApiError::internal(&err))?
        .map_err(|err| ApiError::internal(&err))
}

/// Checks `password` against `stored` (see `cloudsync_identity::login::check_password`).
pub(crate) async fn check(app: &App, password: String, stored: Option<String>) -> ApiResult<Verdict> {
    cloudsync_identity::login::check_password(&app.passwords, password, stored)
        .await
        .map_err(|err| ApiError::internal(&err))
}

/// Whether the caller knows the account's password (accounts without one, which sign in with an
/// OpenID provider, need none). Charged like a login, per account.
pub(crate) async fn confirm_password(ctx: &Context<'_>, app: &App, user_id: UserId, password: Option<String>) -> ApiResult<()> {
    limit(ctx, app.rules.login, &format!("account-id:{user_id}")).await?;
    let user = super::load_user(app, user_id).await?;
    let stored = user.password_hash().map(str::to_owned);
    if stored.as_deref() == Some(cloudsync_commands::NO_PASSWORD) {
        return Ok(());
    }
    let password = password.ok_or_else(|| ApiError::BadInput("give the account's password to confirm".into()))?;
    if password.chars().count() > 1024 || check(app, password, stored).await? == Verdict::Mismatch {
        return Err(ApiError::BadInput("the password is wrong".into()));
    }
    Ok(())
}

pub(super) use cloudsync_identity::login::{CHALLENGE_TTL, MAX_ATTEMPTS};

/// A second factor a pending login can be completed with.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
pub enum MfaMethod {
    /// A code of the authenticator app (`completeMfaLogin`).
    Totp,
    /// One of the single-use recovery codes (`completeMfaLogin`).
    RecoveryCode,
    /// A code sent by text message (`sendMfaSms`, then `completeMfaLogin`).
    Sms,
    /// A passkey (`completePasskeyLogin`).
    Passkey,
}

impl MfaMethod {
    /// Its GraphQL name, as the JSON answers outside GraphQL give it.
    fn name(self) -> &'static str {
        match self {
            Self::Totp => "TOTP",
            Self::RecoveryCode => "RECOVERY_CODE",
            Self::Sms => "SMS",
            Self::Passkey => "PASSKEY",
        }
    }
}

/// A login waiting for its second factor.
#[derive(SimpleObject)]
pub struct MfaChallenge {
    /// Give it to `completeMfaLogin` or `completePasskeyLogin`.
    pub(super) token: String,
    /// The second factors the account can answer with.
    pub(super) methods: Vec<MfaMethod>,
    /// For `PASSKEY`: the options to pass to `navigator.credentials.get`.
    pub(super) passkey_options: Option<Json<Value>>,
    pub(super) expires_at: DateTime<Utc>,
}

impl MfaChallenge {
    /// The challenge as `login` would show it, for answers outside GraphQL.
    pub(crate) fn to_json(&self) -> Value {
        serde_json::json!({
            "token": self.token,
            "methods": self.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "passkeyOptions": self.passkey_options.as_ref().map(|o| o.0.clone()),
            "expiresAt": self.expires_at})
    }
}

/// A login waiting for its second factor (identity's pending login, with a passkey ceremony).
pub(super) type PendingLogin = cloudsync_identity::login::PendingLogin<PasskeyAuthentication>;

/// The pending logins, in the session store and on the app's clock.
pub(super) fn challenges(app: &App) -> Challenges {
    Challenges::new(Arc::clone(app.tokens.sessions().store()), Arc::clone(&app.clock))
}

/// A pending login's refusal as the API answers it.
fn challenge_error(error: ChallengeError) -> ApiError {
    match error {
        ChallengeError::Store(_) => ApiError::internal(&error),
        ChallengeError::Gone | ChallengeError::TooMany(_) | ChallengeError::Wrong(_) => ApiError::Unauthenticated(error.to_string()),
    }
}

/// A second-factor answer's refusal (or its judge's failure) as the API answers it.
pub(super) fn answer_error(error: AnswerError<ApiError>) -> ApiError {
    match error {
        AnswerError::Refused(refused) => challenge_error(refused),
        AnswerError::Failed(failed) => failed,
    }
}

pub(super) fn passkeys_of(user: &User) -> Vec<Passkey> {
    user.passkeys()
        .filter_map(|p| serde_json::from_value(p.record.clone()).ok())
        .collect()
}

pub(super) fn store_error(err: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&err)
}

/// Starts the second step of a login for `user`, whose password was right.
pub(crate) async fn challenge(app: &App, user: &User, email: String, cookie: bool) -> ApiResult<MfaChallenge> {
    let user_id = user.id().ok_or_else(|| ApiError::not_found("user"))?;
    let mut methods = Vec::new();
    if user.totp_secret().is_some() {
        methods.extend([MfaMethod::Totp, MfaMethod::RecoveryCode]);
    }
    if user.sms_phone().is_some() {
        methods.push(MfaMethod::Sms);
    }
    let passkeys = passkeys_of(user);
    let (options, passkey) = match (passkeys.is_empty(), app.passkeys.as_deref()) {
        (false, Ok(webauthn)) => {
            let (options, state) = webauthn.start_passkey_authentication(&passkeys).map_err(store_error)?;
            methods.push(MfaMethod::Passkey);
            (Some(Json(serde_json::to_value(options).map_err(store_error)?)), Some(state))
        }
        _ => (None, None),
    };
    let (token, expires_at) = challenges(app)
        .begin(user_id, email, cookie, passkey)
        .await
        .map_err(challenge_error)?;
    Ok(MfaChallenge {
        token,
        methods,
        passkey_options: options,
        expires_at,
    })
}

/// Keeps (or puts back) the pending login of `token` until it ends.
pub(super) async fn keep(app: &App, token: &str, pending: &PendingLogin) -> ApiResult<()> {
    challenges(app).keep(token, pending).await.map_err(challenge_error)
}

/// Takes the pending login of `token`.
pub(super) async fn take(app: &App, token: &str) -> ApiResult<PendingLogin> {
    challenges(app).take(token).await.map_err(challenge_error)
}

/// Puts a pending login back after a wrong answer, unless it has had too many.
pub(super) async fn retry(app: &App, token: &str, pending: PendingLogin, why: String) -> ApiError {
    challenge_error(challenges(app).retry(token, pending, why).await)
}
