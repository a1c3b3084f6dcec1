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
use crate::graphql::{CloudSyncSchema, build, build_for_http};
use cloudsync_identity::sessions::Client;

mod callbacks;
mod exports;
mod graphql;
pub mod tls;

use callbacks::{oauth_callback, oidc_callback, saml_acs, saml_metadata};
use graphql::{graphql, graphql_ws};

#[derive(Clone)]
pub(crate) struct HttpState {
    app: Arc<App>,
    /// What WebSocket operations run on (with its checking extensions).
    schema: CloudSyncSchema,
    /// What `POST /graphql` runs on (no extension; see [`build_for_http`]).
    http_schema: CloudSyncSchema,
    measure: crate::metrics::MeasureGraphql,
}

impl HttpState {
    fn new(app: Arc<App>) -> Self {
        Self {
            schema: build(Arc::clone(&app)),
            http_schema: build_for_http(Arc::clone(&app)),
            measure: crate::metrics::MeasureGraphql::for_schema(&crate::graphql::sdl()),
            app,
        }
    }
}

/// The HTTP routes, with the body limit and CORS from `config`.
///
/// # Errors
/// An origin that is not a valid header value.
pub fn router(app: Arc<App>, config: &Config) -> anyhow::Result<Router> {
    Ok(Router::new()
        .route("/graphql", get(graphiql).post(graphql))
        .route("/graphql/ws", get(graphql_ws))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/oauth/callback", get(oauth_callback))
        .route("/auth/oidc/callback", get(oidc_callback))
        .route("/auth/saml/acs", post(saml_acs))
        .route("/auth/saml/metadata", get(saml_metadata))
        .route("/metrics", get(crate::metrics::serve))
        .route("/exports/{file}", get(exports::download))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .layer(axum::middleware::from_fn(follow_request))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .layer(cors(config)?)
        .with_state(HttpState::new(app)))
}

/// A worker's HTTP routes: whether it is alive and can reach the database, and its metrics.
pub fn health_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(crate::metrics::serve))
        .layer(axum::middleware::from_fn(crate::metrics::track_http))
        .with_state(HttpState::new(app))
}

/// A request's id: its `X-Request-Id` where that is a UUID, else a new one; sent back in the same
/// header.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Serves a request under its id: every log line it causes carries the id (the span `request`),
/// and every event it appends has it as correlation id, as do the events of the jobs those start.
pub(crate) async fn follow_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument as _;
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| uuid::Uuid::parse_str(value.trim()).ok())
        .filter(|id| !id.is_nil() && !id.is_max())
        .unwrap_or_else(uuid::Uuid::new_v4);
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let span = tracing::info_span!("request", request_id = %id, route = %route);
    let mut response = cloudsync_commands::correlated(id, next.run(request)).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
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
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static(graphql::AFTER),
            HeaderName::from_static(REQUEST_ID),
        ])
        .expose_headers([HeaderName::from_static(graphql::POSITION), HeaderName::from_static(REQUEST_ID)])
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

/// Whether this process can do its work: the database answers, and so do Redis and the job
/// queue's broker where configured; in API processes, the search index answers and the read models
/// are no further behind the log than `ready_max_lag_events`. 503 with the reasons otherwise (the
/// checks run together, each for at most two seconds).
pub(crate) async fn readyz(State(state): State<HttpState>) -> Response {
    let app = &state.app;
    let ready = &app.readiness;
    let mut checks = serde_json::Map::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut note = |name: &str, outcome: Result<(), String>| {
        match outcome {
            Ok(()) => checks.insert(name.to_owned(), json!("ok")),
            Err(why) => {
                reasons.push(format!("{name}: {why}"));
                checks.insert(name.to_owned(), json!("unavailable"))
            }
        };
    };
    // Every check at once, so the answer takes at most one check's time limit.
    let (head, redis, broker, search) = tokio::join!(
        within(app.db.events.head()),
        async {
            match &ready.redis {
                Some(redis) => Some(within(redis.get("readyz")).await.map(drop)),
                None => None,
            }
        },
        async {
            match &ready.broker {
                Some(broker) => Some(within(broker.check()).await),
                None => None,
            }
        },
        async {
            if ready.serves_api {
                Some(
                    within(async { app.search.search().index().await.checkpoint().await })
                        .await
                        .map(drop),
                )
            } else {
                None
            }
        },
    );
    let projected = app.projections.position();
    note("database", head.as_ref().map(drop).map_err(Clone::clone));
    if let Some(redis) = redis {
        note("redis", redis);
    }
    if let Some(broker) = broker {
        note("rabbitmq", broker);
    }
    if let Some(search) = search {
        note("search", search);
        if let Ok(head) = &head {
            note(
                "projectors",
                lag_problem(*head, projected, ready.max_lag_events).map_or(Ok(()), Err),
            );
        }
    }
    let body = json!({
        "status": if reasons.is_empty() { "ready" } else { "unavailable" },
        "backend": app.db.backend(),
        "head": head.as_ref().ok(),
        "projected": projected,
        "checks": checks,
        "reason": reasons.join("; "),
    });
    if reasons.is_empty() {
        axum::Json(body).into_response()
    } else {
        tracing::warn!(reason = %reasons.join("; "), "Not ready.");
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// Waits at most two seconds for a check; its error as text.
async fn within<T, E: std::fmt::Display>(check: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(outcome) => outcome.map_err(|err| err.to_string()),
        Err(_) => Err("no answer within 2 s".into()),
    }
}

/// Why read models at `projected` are too far behind a log at `head`, if they are.
fn lag_problem(head: i64, projected: i64, max: i64) -> Option<String> {
    let behind = head - projected;
    (behind > max).then(|| format!("the read models are {behind} events behind the log (more than {max})"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn read_models_far_behind_make_a_process_unready() {
        assert_eq!(super::lag_problem(100, 100, 0), None);
        assert_eq!(super::lag_problem(100, 95, 10), None);
        assert_eq!(
            super::lag_problem(100, 80, 10).as_deref(),
            Some("the read models are 20 events behind the log (more than 10)")
        );
    }
}
