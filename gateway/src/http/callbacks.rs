//! The browser callbacks: a provider's OAuth authorization, an OpenID provider's sign-in, SAML's
//! assertion consumer service and metadata.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::{HttpState, html_escape, request_info};

/// What an OAuth provider sends the browser back with.
#[derive(serde::Deserialize)]
pub(super) struct CallbackParams {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The OAuth redirect target: exchanges the code and connects the provider, then tells the person in
/// the browser what happened. Authenticated by `state` alone (it was issued to one user, works once,
/// and expires), because the browser arrives without CloudSync's access token.
pub(super) async fn oauth_callback(
    State(state): State<HttpState>,
    axum::extract::Query(params): axum::extract::Query<CallbackParams>,
) -> Response {
    let page = |status: StatusCode, title: &str, detail: &str| {
        let body = format!(
            "<!doctype html><meta charset=utf-8><title>{0}</title><h1>{0}</h1><p>{1}</p>",
            html_escape(title),
            html_escape(detail)
        );
        (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
    };
    let Some(oauth_state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "The provider's answer lacks the state parameter.",
        );
    };
    if let Some(error) = params.error.as_deref() {
        let detail = params.error_description.as_deref().unwrap_or(error);
        return match state.app.commands.abandon_authorization(oauth_state).await {
            Ok(_) => page(
                StatusCode::BAD_REQUEST,
                "Not connected",
                &format!("The provider did not authorize CloudSync: {detail}"),
            ),
            Err(error) => page(StatusCode::BAD_REQUEST, "Not connected", &error.to_string()),
        };
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Not connected",
            "The provider's answer lacks the code parameter.",
        );
    };
    match state.app.commands.finish_authorization(oauth_state, code).await {
        Ok((user, connected)) => {
            state.app.wrote_for(user, connected.position);
            page(
                StatusCode::OK,
                "Connected",
                &format!(
                    "{} ({}) is connected as provider {}; indexing has started. You can close this window.",
                    connected.display_name,
                    connected.kind.as_str(),
                    connected.provider_id
                ),
            )
        }
        Err(error) => {
            tracing::info!(error = %error, "An OAuth authorization could not be completed.");
            page(StatusCode::BAD_REQUEST, "Not connected", &error.to_string())
        }
    }
}

/// Where an OpenID provider sends the browser back after a sign-in (see `schema::oidc`).
pub(super) async fn oidc_callback(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    axum::extract::Query(params): axum::extract::Query<crate::graphql::OidcCallbackParams>,
) -> Response {
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let binding = crate::graphql::request::cookie(&headers, crate::graphql::OIDC_BINDING_COOKIE);
    crate::graphql::oidc_callback(&state.app, params, request_info(&headers, peer), binding).await
}

/// Where a SAML identity provider posts its answer to a sign-in (see `schema::saml`).
pub(super) async fn saml_acs(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    axum::extract::Form(params): axum::extract::Form<crate::graphql::SamlAcsParams>,
) -> Response {
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let binding = crate::graphql::request::cookie(&headers, crate::graphql::SAML_BINDING_COOKIE);
    crate::graphql::saml_acs(&state.app, params, request_info(&headers, peer), binding).await
}

/// CloudSync's SAML service-provider metadata, for the identity provider's administrator.
pub(super) async fn saml_metadata(State(state): State<HttpState>) -> Response {
    match &state.app.saml {
        Some(login) => (
            [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
            login.metadata_xml().to_owned(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no SAML identity provider is configured on this server").into_response(),
    }
}
