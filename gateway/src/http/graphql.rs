//! GraphQL over HTTP (`POST /graphql`) and over WebSocket (`graphql-transport-ws`).

use std::net::SocketAddr;

use async_graphql::parser::parse_query;
use async_graphql::{Data, ServerError};
use async_graphql_axum::{GraphQLProtocol, GraphQLResponse, GraphQLWebSocket};
use axum::body::Bytes;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::errors::code;
use cloudsync_identity::auth::Authentication;

use super::{HttpState, error_response, request_info};

pub(super) async fn graphql(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                &format!("the body must be a GraphQL request in JSON: {err}"),
            );
        }
    };
    // Parsed once, here: the schema runs this document (see `graphql::build_for_http`).
    let document = match parse_query(&request.query) {
        Ok(document) => document,
        Err(err) => return error_response(StatusCode::BAD_REQUEST, code::PARSE_FAILED, &err.to_string()),
    };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>().map(|c| c.0);
    let info = request_info(&headers, peer);
    let authentication = state.app.authenticate(authorization, info.client.ip.as_deref()).await;
    let key = match &authentication {
        Authentication::User(caller) => format!("user:{}", caller.user_id),
        _ => format!("ip:{}", info.client.ip.as_deref().unwrap_or("unknown")),
    };
    match state.app.limiter.take(&key, state.app.rules.api).await {
        Ok(None) => {}
        Ok(Some(wait)) => {
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                code::RATE_LIMITED,
                &format!("too many requests; try again in {seconds} s"),
            );
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
            return response;
        }
        // Limits are a protection, not a dependency: an unreachable store lets requests through.
        Err(error) => tracing::error!(error = %error, "Rate limits cannot be checked; the request goes through."),
    }
    // Read-your-writes across processes: a position this caller's writes reached through another
    // process (its `X-CloudSync-Position`) is waited for here too.
    let after = match headers
        .get(AFTER)
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()))
    {
        None => None,
        Some(Some(position)) if position >= 0 => Some(position),
        Some(_) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                code::BAD_REQUEST,
                "X-CloudSync-After must be a position of the log (a whole number, as X-CloudSync-Position gives it)",
            );
        }
    };
    // A position the log has not reached was never given by a server of this log: waiting for it
    // would hold every later read of the caller.
    if let Some(after) = after
        && after > 0
    {
        match state.app.db.events.head().await {
            Ok(head) if after <= head => {}
            Ok(head) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    code::BAD_REQUEST,
                    &format!("X-CloudSync-After {after} is beyond the log's head ({head}): it is not a position this service gave"),
                );
            }
            Err(error) => {
                tracing::error!(error = %error, "The log's head cannot be read.");
                return error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code::INTERNAL,
                    "the service cannot read its log; try again",
                );
            }
        }
    }
    let caller = match &authentication {
        Authentication::User(caller) => Some(caller.user_id),
        _ => None,
    };
    if let Some(after) = after {
        match caller {
            // Every read the caller makes waits for it, as for a write of its own.
            Some(user) => state.app.wrote_for(user, after),
            None => {
                if !state.app.projections.wait_for(after, state.app.consistency_timeout).await {
                    tracing::warn!(
                        after,
                        "The read models did not reach the requested position in time; answering from a stale view."
                    );
                }
            }
        }
    }
    let (kind, name) = state.measure.operation(&document);
    let started = std::time::Instant::now();
    let mut response = match crate::graphql::refusal(&document, state.app.read_only) {
        Some(refused) => async_graphql::Response::from_errors(vec![refused]),
        None => {
            request.set_parsed_query(document);
            state.http_schema.execute(request.data(authentication).data(info)).await
        }
    };
    crate::metrics::record_operation(kind, name, started.elapsed(), &response.errors);
    for error in &mut response.errors {
        tag_validation_error(error);
    }
    let position = caller.map_or(0, |user| state.app.written_by(user)).max(after.unwrap_or(0));
    response
        .extensions
        .insert("position".to_owned(), async_graphql::Value::from(position));
    let mut answer = GraphQLResponse::from(response).into_response();
    answer.headers_mut().insert(POSITION, HeaderValue::from(position));
    answer
}

/// How far the log has got for the caller's writes (on every answer).
pub(crate) const POSITION: &str = "x-cloudsync-position";
/// A position the answer must reflect (a request's header).
pub(crate) const AFTER: &str = "x-cloudsync-after";

/// Errors that no resolver raised (validation, limits) get the validation code.
pub(super) fn tag_validation_error(error: &mut ServerError) {
    let extensions = error.extensions.get_or_insert_with(Default::default);
    if extensions.get("code").is_none() {
        extensions.set("code", code::VALIDATION_FAILED);
    }
}

pub(super) async fn graphql_ws(
    State(state): State<HttpState>,
    extensions: axum::http::Extensions,
    protocol: GraphQLProtocol,
    upgrade: WebSocketUpgrade,
) -> Response {
    let app = state.app;
    let ip = extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let schema = state.schema;
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, schema, protocol)
                .on_connection_init(move |payload| async move {
                    let header = payload
                        .get("Authorization")
                        .or_else(|| payload.get("authorization"))
                        .and_then(|v| v.as_str())
                        .map(str::to_owned)
                        .or_else(|| payload.get("token").and_then(|v| v.as_str()).map(|t| format!("Bearer {t}")));
                    let mut data = Data::default();
                    match app.authenticate(header.as_deref(), ip.as_deref()).await {
                        Authentication::Invalid(why) | Authentication::Unavailable(why) => return Err(async_graphql::Error::new(why)),
                        authentication => data.insert(authentication),
                    }
                    // Every operation on this connection is checked again (see `schema::Recheck`).
                    data.insert(crate::graphql::SocketCredential { header, ip });
                    Ok(data)
                })
                .serve()
        })
}
