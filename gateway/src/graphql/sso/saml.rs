//! Signing in with a SAML identity provider: `beginSamlLogin` returns the provider's sign-in URL
//! (carrying the `AuthnRequest`); the provider posts its answer to `/auth/saml/acs`, which checks it
//! (see `cloudsync_identity::saml`), finds the account like an OpenID sign-in (the linked identity, else the
//! trusted address, else a new account) and answers like `login`.

use async_graphql::{Context, Object, SimpleObject};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::oidc::{keep_pending, over_budget, pending_of, refused, signed_in};
use crate::app::App;
use crate::errors::{ApiError, code};
use crate::graphql::request::RequestInfo;
use crate::graphql::{app, client_ip, limit};
use cloudsync_identity::saml::PendingRequest;
use cloudsync_identity::sessions::hash;

#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    request: PendingRequest,
    cookie: bool,
    /// For a browser: the hash of the cookie that ties the sign-in to the browser that began it.
    binding: Option<String>,
}

/// The cookie that ties a browser's sign-in to the answer (so nobody can make another browser
/// finish their sign-in, landing it in their account).
pub const BINDING_COOKIE: &str = "cloudsync_saml";

fn key(relay_state: &str) -> String {
    format!("saml:{}", hash(relay_state))
}

#[derive(SimpleObject)]
pub struct SamlLoginStart {
    /// Open this in the browser; the provider posts its answer to `/auth/saml/acs`.
    redirect_url: String,
    expires_at: DateTime<Utc>,
}

#[derive(Default)]
pub struct SamlMutation;

#[Object]
impl SamlMutation {
    /// Starts signing in with a configured SAML identity provider. `cookie`: a browser client,
    /// whose refresh token the answer puts in a cookie.
    async fn begin_saml_login(&self, ctx: &Context<'_>, provider: String, cookie: Option<bool>) -> async_graphql::Result<SamlLoginStart> {
        let app = app(ctx);
        limit(ctx, app.rules.login, &format!("ip:{}", client_ip(ctx))).await?;
        let login = app
            .saml
            .as_ref()
            .ok_or_else(|| ApiError::BadInput("no SAML identity provider is configured on this server".into()))?;
        let started = login.begin(&provider).await.map_err(|err| ApiError::BadInput(err.to_string()))?;
        let cookie = cookie.unwrap_or(false);
        // SameSite=None: the provider's answer is a cross-site POST, which Lax would strip.
        let bound = format!("{BINDING_COOKIE}=; Max-Age=600; Path=/auth/saml; Secure; HttpOnly; SameSite=None");
        let expires_at = keep_pending(ctx, &key(&started.relay_state), cookie.then_some(bound.as_str()), |binding| {
            Pending {
                provider,
                request: started.request,
                cookie,
                binding,
            }
        })
        .await?;
        Ok(SamlLoginStart {
            redirect_url: started.url,
            expires_at,
        })
    }
}

fn pending_binding(pending: &Pending) -> Option<&String> {
    pending.binding.as_ref()
}

/// What the provider posts (HTTP-POST binding).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AcsParams {
    #[serde(rename = "SAMLResponse")]
    saml_response: Option<String>,
    relay_state: Option<String>,
}

/// `/auth/saml/acs`: finishes a sign-in begun by `beginSamlLogin`.
pub async fn acs(app: &App, params: AcsParams, info: RequestInfo, binding: Option<String>) -> Response {
    if let Some(refusal) = over_budget(app, &info).await {
        return refusal;
    }
    let Some(relay_state) = params.relay_state.filter(|s| !s.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "the identity provider's answer lacks RelayState (sign-ins the provider begins are not accepted)",
        );
    };
    let Some(saml_response) = params.saml_response.filter(|s| !s.is_empty()) else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "the identity provider's answer lacks SAMLResponse",
        );
    };
    // Left in place until the answer proves genuine: a junk post cannot use up someone's sign-in.
    let pending: Pending = match pending_of(app, &key(&relay_state), false, pending_binding, binding.as_deref()).await {
        Ok(pending) => pending,
        Err(refusal) => return refusal,
    };
    let Some(login) = app.saml.as_ref() else {
        return refused(
            StatusCode::BAD_REQUEST,
            code::BAD_REQUEST,
            "no SAML identity provider is configured on this server",
        );
    };
    let identity = match login
        .finish(&pending.provider, &pending.request, &saml_response, &relay_state)
        .await
    {
        Ok(identity) => identity,
        Err(why) => {
            tracing::info!(why = %why, "A SAML sign-in was refused.");
            return refused(StatusCode::UNAUTHORIZED, code::UNAUTHENTICATED, &why.to_string());
        }
    };
    // A genuine answer finishes its sign-in once.
    match app.tokens.sessions().store().take_state(&key(&relay_state)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return refused(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "this sign-in is unknown, expired or already used; begin again",
            );
        }
        Err(err) => return refused(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, &err.to_string()),
    }
    signed_in(app, &identity, pending.cookie, &info).await
}
