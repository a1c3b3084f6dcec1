//! Signing in with an OpenID provider: `beginOidcLogin` returns the provider's authorization URL;
//! the provider sends the browser back to `/auth/oidc/callback`, which verifies the ID token, finds
//! the account (by the external identity, else by the verified address, which links them, else a
//! new account) and answers like `login`: tokens (the refresh token in a cookie for browsers), or a
//! second-factor challenge.

use std::time::Duration;

use async_graphql::{Context, Object, SimpleObject};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cloudsync_commands::CommandError;
use cloudsync_domain::{Email, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::errors::{ApiError, ApiResult, code};
use crate::graphql::request::{RequestInfo, refresh_cookie};
use crate::graphql::signin::sign_in_error;
use crate::graphql::{app, client_ip, limit, load_user};
use cloudsync_identity::login::{SsoAccount, SsoRefusal, sso_account};
use cloudsync_identity::sessions::hash;

const PENDING_TTL: Duration = Duration::from_secs(10 * 60);

#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    verifier: String,
    nonce: String,
    cookie: bool,
    /// For a browser: the hash of the cookie that ties the sign-in to the browser that began it.
    #[serde(default)]
    binding: Option<String>,
}

/// The cookie that ties a browser's sign-in to the callback (so nobody can make another browser
/// finish their sign-in, landing it in their account).
pub const BINDING_COOKIE: &str = "cloudsync_oidc";

fn key(state: &str) -> String {
    format!("oidc:{}", hash(state))
}

#[derive(SimpleObject)]
pub struct OidcLoginStart {
    /// Open this in the browser; the provider sends it back to `/auth/oidc/callback`.
    authorization_url: String,
    state: String,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct OidcMutation;

#[Object]
impl OidcMutation {
    /// Starts signing in with a configured OpenID provider. `cookie`: a browser client, whose
    /// refresh token the callback puts in a cookie.
    async fn begin_oidc_login(&self, ctx: &Context<'_>, provider: String, cookie: Option<bool>) -> async_graphql::Result<OidcLoginStart> {
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let login = app
            .oidc
            .as_ref()
            .ok_or_else(|| ApiError::BadInput("no OpenID provider is configured on this server".into()))?;
        let started = login.begin(&provider).await.map_err(|err| ApiError::BadInput(err.to_string()))?;
        let cookie = cookie.unwrap_or(false);
        // Lax, not Strict: the provider sends the browser back with a top-level navigation.
        let bound = format!("{BINDING_COOKIE}=; Max-Age=600; Path=/auth/oidc; Secure; HttpOnly; SameSite=Lax");
        let expires_at = keep_pending(ctx, &key(&started.state), cookie.then_some(bound.as_str()), |binding| Pending {
            provider,
            verifier: started.verifier,
            nonce: started.nonce,
            cookie,
            binding,
        })
        .await?;
        Ok(OidcLoginStart {
            authorization_url: started.url,
            state: started.state,
            expires_at,
        })
    }
}

/// What the provider sends the browser back with.
#[derive(Deserialize)]
pub struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub(super) fn refused(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

/// The command side as identity's directory of people.
struct Accounts<'a>(&'a App);

#[async_trait::async_trait]
impl cloudsync_identity::login::Directory for Accounts<'_> {
    type Error = ApiError;

    async fn linked(&self, issuer: &str, subject: &str) -> ApiResult<Option<UserId>> {
        self.0.commands.user_by_identity(issuer, subject).await.map_err(ApiError::from)
    }

    async fn holder(&self, email: &Email) -> ApiResult<Option<UserId>> {
        Ok(self
            .0
            .commands
            .user_by_email(email)
            .await
            .map_err(ApiError::from)?
            .and_then(|u| u.id()))
    }
}

/// The account an external identity signs in to (`cloudsync_identity::login::sso_account`),
/// linking or registering it as that decides.
async fn account_of(app: &App, identity: &cloudsync_identity::oidc::Identity) -> ApiResult<(UserId, String)> {
    let found = sso_account(&Accounts(app), identity).await?.map_err(|refusal| match refusal {
        SsoRefusal::Taken => ApiError::Conflict(refusal.to_string()),
        SsoRefusal::Unverified | SsoRefusal::BadAddress(_) => ApiError::Unauthenticated(refusal.to_string()),
    })?;
    let (user, email) = match found {
        SsoAccount::Linked(user) => {
            let Some(email) = app.commands.email_of(user).await.map_err(ApiError::from)? else {
                return Err(ApiError::Unauthenticated("the account of this external identity was erased".into()));
            };
            return Ok((user, email));
        }
        SsoAccount::Link(user, email) => {
            let position = app
                .commands
                .link_identity(user, &identity.issuer, &identity.subject)
                .await
                .map_err(ApiError::from)?;
            app.wrote_for(user, position);
            (user, email)
        }
        SsoAccount::Register(email) => {
            let (user, position) = app
                .commands
                .register_external(email.clone(), &identity.issuer, &identity.subject)
                .await
                .map_err(|err| match err {
                    CommandError::AlreadyExists(why) => ApiError::Conflict(why),
                    other => ApiError::from(other),
                })?;
            app.wrote_for(user, position);
            (user, email)
        }
    };
    tracing::info!(user = %user, issuer = %identity.issuer, "An external identity was linked to an account.");
    Ok((user, email.as_str().to_owned()))
}

/// Keeps a begun sign-in under `key` for [`PENDING_TTL`]; returns when it expires. For a browser,
/// `bound` is the binding cookie's `Set-Cookie` with an empty value (`name=; attributes`): a fresh
/// secret goes into it, and its hash into the pending sign-in (`make` gets it).
pub(super) async fn keep_pending<T: Serialize>(
    ctx: &Context<'_>,
    key: &str,
    bound: Option<&str>,
    make: impl FnOnce(Option<String>) -> T,
) -> ApiResult<DateTime<Utc>> {
    let binding = bound.map(|set_cookie| {
        let secret = cloudsync_identity::sessions::fresh_secret();
        ctx.append_http_header("set-cookie", set_cookie.replacen("=;", &format!("={secret};"), 1));
        hash(&secret)
    });
    let pending = serde_json::to_string(&make(binding)).map_err(|err| ApiError::internal(&err))?;
    app(ctx)
        .tokens
        .sessions()
        .store()
        .put_state(key, &pending, PENDING_TTL)
        .await
        .map_err(|err| ApiError::internal(&err))?;
    Ok(Utc::now() + chrono::Duration::from_std(PENDING_TTL).unwrap_or_default())
}

/// Charges a returning sign-in to its IP address's sign-in budget: the refusal when it is spent.
pub(super) async fn over_budget(app: &App, info: &RequestInfo) -> Option<Response> {
    let ip = info.client.ip.clone().unwrap_or_else(|| "unknown".into());
    match app.limiter.take(&format!("ip:{ip}"), app.rules.login).await {
        Ok(Some(wait)) => Some(refused(
            StatusCode::TOO_MANY_REQUESTS,
            code::RATE_LIMITED,
            &format!("too many sign-ins; try again in {} s", wait.as_secs() + 1),
        )),
        _ => None,
    }
}

/// The pending sign-in under `key`, taken (`take`: so that it finishes once) or left in place
/// (the caller takes it once the answer proved genuine) and, when it was begun by a browser
/// (`bound` gives the hash of its binding cookie), checked to come back to that browser.
pub(super) async fn pending_of<T: serde::de::DeserializeOwned>(
    app: &App,
    key: &str,
    take: bool,
    bound: impl Fn(&T) -> Option<&String>,
    binding: Option<&str>,
) -> Result<T, Response> {
    let store = app.tokens.sessions().store();
    let found = if take {
        store.take_state(key).await
    } else {
        store.peek_state(key).await
    };
    let pending = match found {
        Ok(Some(pending)) => pending,
        Ok(None) => {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "this sign-in is unknown, expired or already used; begin again",
            ));
        }
        Err(err) => return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, &err.to_string())),
    };
    let Ok(pending) = serde_json::from_str::<T>(&pending) else {
        return Err(refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            code::INTERNAL,
            "a pending sign-in is malformed",
        ));
    };
    if let Some(expected) = bound(&pending)
        && binding.map(hash).as_ref() != Some(expected)
    {
        return Err(refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "this sign-in was begun in another browser; begin again here",
        ));
    }
    Ok(pending)
}

fn pending_binding(pending: &Pending) -> Option<&String> {
    pending.binding.as_ref()
}

/// `/auth/oidc/callback`: finishes a sign-in begun by `beginOidcLogin`.
pub async fn callback(app: &App, params: CallbackParams, info: RequestInfo, binding: Option<String>) -> Response {
    if let Some(refusal) = over_budget(app, &info).await {
        return refusal;
    }
    let Some(state) = params.state.filter(|s| !s.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "the provider's answer lacks the state parameter",
        );
    };
    let pending: Pending = match pending_of(app, &key(&state), true, pending_binding, binding.as_deref()).await {
        Ok(pending) => pending,
        Err(refusal) => return refusal,
    };
    if let Some(error) = params.error {
        let detail = params.error_description.unwrap_or(error);
        return refused(
            StatusCode::UNAUTHORIZED,
            code::UNAUTHENTICATED,
            &format!("the provider did not sign you in: {detail}"),
        );
    }
    let Some(code_value) = params.code.filter(|c| !c.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "the provider's answer lacks the code parameter",
        );
    };
    let Some(login) = app.oidc.as_ref() else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "no OpenID provider is configured on this server",
        );
    };
    let identity = match login
        .finish(&pending.provider, &code_value, &pending.verifier, &pending.nonce)
        .await
    {
        Ok(identity) => identity,
        Err(why) => {
            tracing::info!(why = %why, "An OpenID sign-in was refused.");
            return refused(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, &why.to_string());
        }
    };
    signed_in(app, &identity, pending.cookie, &info).await
}

/// Signs the external `identity` in (see `account_of`) and answers like `login`, or refuses.
pub(super) async fn signed_in(app: &App, identity: &cloudsync_identity::oidc::Identity, cookie: bool, info: &RequestInfo) -> Response {
    match session_for(app, identity, cookie, info).await {
        Ok(response) => response,
        Err(ApiError::Unauthenticated(why)) => refused(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, &why),
        Err(ApiError::Conflict(why)) => refused(StatusCode::CONFLICT, code::CONFLICT, &why),
        Err(other) => {
            let error = async_graphql::Error::from(other);
            refused(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, &error.message)
        }
    }
}

async fn session_for(app: &App, identity: &cloudsync_identity::oidc::Identity, cookie: bool, info: &RequestInfo) -> ApiResult<Response> {
    let (user_id, email) = account_of(app, identity).await?;
    let user = load_user(app, user_id).await?;
    cloudsync_identity::signin::admit(Some(&user), &info.client).map_err(sign_in_error)?;
    if user.mfa_enabled() {
        let challenge = crate::graphql::signin::challenge(app, &user, email.clone(), cookie).await?;
        let body = json!({ "user": { "id": user_id.to_string(), "email": email }, "mfa": challenge.to_json() });
        return Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(body)).into_response());
    }
    let signed = cloudsync_identity::signin::sign_in(&app.tokens, Some(&user), &info.client)
        .await
        .map_err(sign_in_error)?;
    let mut body = json!({
        "accessToken": signed.access.token,
        "accessTokenExpiresAt": signed.access.expires_at,
        "sessionId": signed.session.id.to_string(),
        "user": { "id": user_id.to_string(), "email": email },
    });
    let mut response_headers = vec![(header::CACHE_CONTROL, "no-store".to_owned())];
    if cookie {
        let max_age = signed.refresh_seconds_left(app.clock.now());
        response_headers.push((header::SET_COOKIE, refresh_cookie(&signed.refresh_token, max_age)));
        body["refreshToken"] = serde_json::Value::Null;
    } else {
        body["refreshToken"] = json!(signed.refresh_token);
    }
    let mut response = axum::Json(body).into_response();
    for (name, value) in response_headers {
        if let Ok(value) = value.parse() {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}
