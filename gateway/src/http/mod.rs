//! The HTTP server: its routes, CORS and body limits, GraphiQL, readiness, and what the API takes
//! from each request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_graphql::http::GraphiQLSource;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

use crate::app::App;
use crate::config::Config;
use crate::graphql::request::RequestInfo;
use crate::graphql::{CloudSyncSchema, build};
use cloudsync_identity::sessions::Client;

mod callbacks;
mod graphql;

use callbacks::{oauth_callback, oidc_callback, saml_acs, saml_metadata};
use graphql::{graphql, graphql_ws};

#[derive(Clone)]
pub(crate) struct HttpState {
    app: Arc<App>,
    schema: CloudSyncSchema,
}

/// The HTTP routes, with the body limit and CORS from `config`.
///
/// # Errors
/// An origin that is not a valid header value.
pub fn router(app: Arc<App>, config: &Config) -> anyhow::Result<Router> {
    let schema = build(Arc::clone(&app));
    Ok(Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/oauth/callback", get(oauth_callback))
        .route("/auth/oidc/callback", get(oidc_callback))
        .route("/auth/saml/acs", post(saml_acs))
        .route("/auth/saml/metadata", get(saml_metadata))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(cors(config)?)
        .with_state(HttpState { app, schema }))
}

/// A worker's HTTP routes: only whether it is alive and can reach the database.
pub fn health_router(app: Arc<App>) -> Router {
    let schema = build(Arc::clone(&app));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(HttpState { app, schema })
}

/// Browser pages of the configured origins may call the API, with credentials (the refresh
/// cookie); any other origin gets no CORS headers, so its browser withholds the answer.
pub(crate) fn cors(config: &Config) -> anyhow::Result<CorsLayer> {
    let origins = config
        .cors_origins
        .iter()
        .map(|o| o.parse::<HeaderValue>().with_context(|| format!("cors_origins: {o:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, HeaderName::from_static(graphql::AFTER)])
        .expose_headers([HeaderName::from_static(graphql::POSITION)])
        .allow_credentials(true)
        .max_age(Duration::from_secs(600)))
}

/// What resolvers may need of the HTTP request besides its credentials.
pub(crate) fn request_info(headers: &HeaderMap, peer: Option<SocketAddr>) -> RequestInfo {
    RequestInfo {
        client: Client {
            user_agent: headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned),
            ip: peer.map(|p| p.ip().to_string()),
        },
        refresh_cookie: crate::graphql::request::cookie(headers, crate::graphql::request::REFRESH_COOKIE),
    }
}

pub(crate) async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })),
    )
        .into_response()
}

pub(crate) fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub(crate) async fn readyz(State(state): State<HttpState>) -> Response {
    match state.app.db.events.head().await {
        Ok(head) => {
            let projected = state.app.projections.position();
            axum::Json(json!({ "status": "ready", "backend": state.app.db.backend(), "head": head, "projected": projected }))
                .into_response()
        }
        Err(error) => {
            tracing::warn!(error = %error, "Not ready: the database is unreachable.");
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "unavailable" }))).into_response()
        }
    }
}
