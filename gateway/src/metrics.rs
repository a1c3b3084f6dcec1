//! Prometheus metrics, served on `GET /metrics` by API processes and workers alike.
//!
//! Every crate records through the `metrics` facade (`metrics::histogram!`, `counter!`, `gauge!`);
//! this module installs the process's Prometheus recorder, serves what it holds, and records what
//! only the gateway sees: HTTP requests, GraphQL operations and their errors, searches, and how far
//! each projector lags behind the log. Names follow Prometheus's conventions (base units,
//! `_seconds`, `_total`); labels take only bounded values: routes as declared, schema field names
//! (anything else is `other`), error codes, kinds and outcomes; never a user, a path or an address.
//! `deploy/grafana/cloudsync.json` charts them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_graphql::extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection};
use async_graphql::{Response, ServerResult, Variables};
use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::errors::code;

/// Histogram buckets of every `_seconds` metric: half a millisecond to half an hour.
const BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use (`None` if another recorder was
/// installed first, which only an embedding program could do).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(error = %error, "Metrics are off: another recorder is installed.");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        "cloudsync_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP requests by route, method and status."
    );
    describe_histogram!(
        "cloudsync_graphql_operation_duration_seconds",
        Unit::Seconds,
        "GraphQL queries and mutations by type and root field."
    );
    describe_counter!("cloudsync_graphql_errors_total", "GraphQL errors by code.");
    describe_histogram!("cloudsync_search_duration_seconds", Unit::Seconds, "searchFiles by mode.");
    describe_gauge!(
        "cloudsync_projector_lag_events",
        "Events in the log that a projector has not applied yet."
    );
    describe_gauge!(
        "cloudsync_projector_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event a projector has not applied yet (0 when caught up)."
    );
    describe_histogram!(
        "cloudsync_job_duration_seconds",
        Unit::Seconds,
        "Job attempts (scans, sync runs) by kind and outcome."
    );
    describe_counter!("cloudsync_jobs_total", "Job attempts by kind and outcome.");
    describe_histogram!(
        "cloudsync_provider_request_duration_seconds",
        Unit::Seconds,
        "Storage provider requests by kind and operation."
    );
    describe_counter!(
        "cloudsync_provider_requests_total",
        "Storage provider requests by kind, operation and outcome."
    );
    describe_gauge!(
        "cloudsync_provider_up",
        "1 while the last request to a kind of provider was answered (an error of the provider's own makes it 0)."
    );
    describe_histogram!(
        "cloudsync_eventstore_append_duration_seconds",
        Unit::Seconds,
        "Appends to the event log, until durable."
    );
    describe_counter!("cloudsync_queue_published_total", "Jobs published to the job queue.");
    describe_counter!("cloudsync_queue_redelivered_total", "Jobs the queue delivered again.");
    describe_counter!(
        "cloudsync_queue_dead_lettered_total",
        "Jobs the queue gave up on (past its delivery limit)."
    );
    // Counters without labels are shown from the start, at 0, rather than from their first event.
    for name in [
        "cloudsync_queue_published_total",
        "cloudsync_queue_redelivered_total",
        "cloudsync_queue_dead_lettered_total",
    ] {
        metrics::counter!(name).increment(0);
    }
}

/// `GET /metrics`: everything recorded so far, in Prometheus's text format.
pub(crate) async fn serve() -> axum::response::Response {
    match recorder() {
        Some(handle) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "metrics are off").into_response(),
    }
}

/// Drains histograms into their buckets now and then (the recorder's upkeep), until `shutdown`.
pub(crate) async fn upkeep(shutdown: CancellationToken) {
    let Some(handle) = recorder() else { return };
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// Times each HTTP request (a layer of every router).
pub(crate) async fn track_http(request: Request, next: Next) -> axum::response::Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    metrics::histogram!(
        "cloudsync_http_request_duration_seconds",
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .record(start.elapsed().as_secs_f64());
    response
}

/// The root fields of the schema whose definition is `sdl`, as `<type>.<field>`, so that
/// operation names come only from the schema.
fn root_fields(sdl: &str) -> HashSet<String> {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    let mut fields = HashSet::new();
    let Ok(schema) = async_graphql::parser::parse_schema(sdl) else {
        return fields;
    };
    for definition in schema.definitions {
        if let TypeSystemDefinition::Type(ty) = definition
            && let TypeKind::Object(object) = &ty.node.kind
        {
            let kind = match ty.node.name.node.as_str() {
                "Query" => "query",
                "Mutation" => "mutation",
                "Subscription" => "subscription",
                _ => continue,
            };
            for field in &object.fields {
                fields.insert(format!("{kind}.{}", field.node.name.node));
            }
        }
    }
    fields
}

/// The type and name of `document`'s operation: its first root field where the schema has it
/// (`fields`, from [`root_fields`]), else `other`.
fn operation_of(document: &ExecutableDocument, fields: &HashSet<String>) -> (&'static str, String) {
    let mut operations = document.operations.iter();
    let Some((_, operation)) = operations.next() else {
        return ("unknown", "other".into());
    };
    let kind = match operation.node.ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    };
    if operations.next().is_some() {
        return (kind, "other".into());
    }
    let field = operation.node.selection_set.node.items.iter().find_map(|item| match &item.node {
        Selection::Field(field) => Some(field.node.name.node.to_string()),
        _ => None,
    });
    let name = field
        .filter(|name| name == "__schema" || name == "__type" || fields.contains(&format!("{kind}.{name}")))
        .unwrap_or_else(|| "other".into());
    (kind, name)
}

/// The error codes a label may take (anything else counts as `other`).
const CODES: [&str; 11] = [
    code::UNAUTHENTICATED,
    code::BAD_USER_INPUT,
    code::NOT_FOUND,
    code::ALREADY_EXISTS,
    code::CONFLICT,
    code::INTERNAL,
    code::PARSE_FAILED,
    code::VALIDATION_FAILED,
    code::BAD_REQUEST,
    code::RATE_LIMITED,
    code::FORBIDDEN,
];

fn error_code(error: &async_graphql::ServerError) -> &'static str {
    match error.extensions.as_ref().and_then(|e| e.get("code")) {
        // What no resolver raised is a validation error (see `http::graphql`).
        None => code::VALIDATION_FAILED,
        Some(async_graphql::Value::String(found)) => CODES.iter().find(|c| **c == found.as_str()).copied().unwrap_or("other"),
        Some(_) => "other",
    }
}

/// Times GraphQL queries and mutations and counts their errors: an extension of the WebSocket
/// schema, and called by the HTTP handler ([`MeasureGraphql::operation`], [`record_operation`]).
#[derive(Clone)]
pub struct MeasureGraphql {
    fields: Arc<HashSet<String>>,
}

impl MeasureGraphql {
    /// For the schema whose definition is `sdl` (operation names are its root fields).
    pub fn for_schema(sdl: &str) -> Self {
        Self {
            fields: Arc::new(root_fields(sdl)),
        }
    }

    /// The type and name `document`'s operation is measured under.
    pub fn operation(&self, document: &ExecutableDocument) -> (&'static str, String) {
        operation_of(document, &self.fields)
    }
}

/// Records one GraphQL operation's duration and its errors by code.
pub fn record_operation(kind: &'static str, name: String, took: Duration, errors: &[async_graphql::ServerError]) {
    metrics::histogram!("cloudsync_graphql_operation_duration_seconds", "type" => kind, "name" => name).record(took.as_secs_f64());
    for error in errors {
        metrics::counter!("cloudsync_graphql_errors_total", "code" => error_code(error)).increment(1);
    }
}

impl ExtensionFactory for MeasureGraphql {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(MeasureRequest {
            fields: Arc::clone(&self.fields),
            operation: Mutex::new(None),
        })
    }
}

struct MeasureRequest {
    fields: Arc<HashSet<String>>,
    operation: Mutex<Option<(&'static str, String)>>,
}

#[async_trait::async_trait]
impl Extension for MeasureRequest {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let start = Instant::now();
        let response = next.run(ctx).await;
        let (kind, name) = self
            .operation
            .lock()
            .ok()
            .and_then(|operation| operation.clone())
            .unwrap_or(("unknown", "other".to_owned()));
        record_operation(kind, name, start.elapsed(), &response.errors);
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        if let Ok(mut operation) = self.operation.lock() {
            *operation = Some(operation_of(&document, &self.fields));
        }
        Ok(document)
    }
}

/// How far each projector (the read models', the search index's, the vector index's) lags behind
/// the log, in events and in seconds, sampled every few seconds until `shutdown`.
pub(crate) async fn sample_lag(app: Arc<App>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let Ok(head) = app.db.events.head().await else { continue };
        let mut checkpoints = app.projections.checkpoints();
        checkpoints.push(("search", app.search.position()));
        checkpoints.push(("vectors", app.vectors.position()));
        for (projector, checkpoint) in checkpoints {
            let behind = (head - checkpoint).max(0);
            // The age of the first event not applied yet.
            let age = if behind > 0 {
                match app.db.events.read_all(checkpoint, 1).await {
                    Ok(events) => events.first().map_or(0.0, |event| {
                        (chrono::Utc::now() - event.metadata.occurred_at).num_milliseconds().max(0) as f64 / 1000.0
                    }),
                    Err(_) => continue,
                }
            } else {
                0.0
            };
            metrics::gauge!("cloudsync_projector_lag_events", "projector" => projector).set(behind as f64);
            metrics::gauge!("cloudsync_projector_lag_seconds", "projector" => projector).set(age);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(query: &str) -> (&'static str, String) {
        let fields = root_fields(include_str!("../../schema.graphql"));
        operation_of(&async_graphql::parser::parse_query(query).expect("parses"), &fields)
    }

    #[test]
    fn operations_are_named_by_their_schema_root_field_only() {
        assert_eq!(named("{ me { id } }"), ("query", "me".into()));
        assert_eq!(named("query Anything { me { id } files { id } }"), ("query", "me".into()));
        assert_eq!(
            named("mutation { register(email: \"a\", password: \"b\") { accessToken } }"),
            ("mutation", "register".into())
        );
        assert_eq!(
            named("{ whateverTheClientSays { id } }"),
            ("query", "other".into()),
            "not in the schema"
        );
        assert_eq!(
            named("mutation { me { id } }"),
            ("mutation", "other".into()),
            "a query field is no mutation"
        );
        assert_eq!(named("query A { me { id } } query B { me { id } }"), ("query", "other".into()));
        assert_eq!(named("{ __schema { queryType { name } } }"), ("query", "__schema".into()));
    }
}
