//! Issue 21, item 1: `GET /metrics` after real traffic, in Prometheus's text format, with the names,
//! types, labels and values the dashboard in `deploy/grafana/cloudsync.json` reads.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(metrics_follow_real_traffic_and_cover_the_dashboard);

/// The value of the sample `name{labels…}` whose labels include every pair of `labels`.
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().filter(|line| !line.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

fn type_of<'a>(scrape: &'a str, name: &str) -> Option<&'a str> {
    scrape.lines().find_map(|line| line.strip_prefix(&format!("# TYPE {name} ")))
}

async fn scrape(h: &Harness) -> String {
    let response = h.client.get(format!("{}/metrics", h.url)).send().await.expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.expect("text")
}

async fn metrics_follow_real_traffic_and_cover_the_dashboard(h: &Harness) {
    let scanned = h.scanned("metrics@example.com").await;
    h.indexed().await;
    let search = "query($q: String!) { searchFiles(query: $q, mode: KEYWORD) { total } }";
    for _ in 0..3 {
        let found = h.ok(Some(&scanned.token), search, json!({ "q": "readme" })).await;
        assert_eq!(found["searchFiles"]["total"], 1);
    }
    assert_eq!(h.error_code(None, "{ me { id } }", Value::Null).await, "UNAUTHENTICATED");
    assert_eq!(
        h.error_code(Some(&scanned.token), "{ notAField }", Value::Null).await,
        "GRAPHQL_VALIDATION_FAILED"
    );

    // The projector lag is sampled every 5 s; the first sample comes at start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        let scrape = scrape(h).await;
        if sample(&scrape, "cloudsync_projector_lag_events", &[("projector", "files")]).is_some()
            && sample(&scrape, "cloudsync_jobs_total", &[("kind", "scan"), ("outcome", "completed")]).is_some()
        {
            break scrape;
        }
        assert!(Instant::now() < deadline, "no projector lag or job sample:\n{scrape}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    let at_least = |name: &str, labels: &[(&str, &str)], min: f64| {
        let value = sample(&scrape, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{scrape}"));
        assert!(value >= min, "{name} {labels:?} = {value}, expected at least {min}");
    };
    assert_eq!(type_of(&scrape, "cloudsync_http_request_duration_seconds"), Some("histogram"));
    // register, connectProvider, files, the wait for the scan, three searches…
    at_least(
        "cloudsync_http_request_duration_seconds_count",
        &[("route", "/graphql"), ("method", "POST"), ("status", "200")],
        6.0,
    );
    at_least(
        "cloudsync_http_request_duration_seconds_bucket",
        &[("route", "/graphql"), ("le", "+Inf")],
        6.0,
    );
    assert_eq!(type_of(&scrape, "cloudsync_graphql_operation_duration_seconds"), Some("histogram"));
    at_least(
        "cloudsync_graphql_operation_duration_seconds_count",
        &[("type", "mutation"), ("name", "register")],
        1.0,
    );
    at_least(
        "cloudsync_graphql_operation_duration_seconds_count",
        &[("type", "query"), ("name", "searchFiles")],
        3.0,
    );
    at_least(
        "cloudsync_graphql_operation_duration_seconds_count",
        &[("type", "query"), ("name", "other")],
        1.0,
    );
    assert_eq!(type_of(&scrape, "cloudsync_graphql_errors_total"), Some("counter"));
    at_least("cloudsync_graphql_errors_total", &[("code", "UNAUTHENTICATED")], 1.0);
    at_least("cloudsync_graphql_errors_total", &[("code", "GRAPHQL_VALIDATION_FAILED")], 1.0);
    assert_eq!(type_of(&scrape, "cloudsync_jobs_total"), Some("counter"));
    at_least("cloudsync_jobs_total", &[("kind", "scan"), ("outcome", "completed")], 1.0);
    at_least(
        "cloudsync_job_duration_seconds_count",
        &[("kind", "scan"), ("outcome", "completed")],
        1.0,
    );
    at_least(
        "cloudsync_provider_requests_total",
        &[("kind", "local"), ("operation", "list"), ("outcome", "ok")],
        1.0,
    );
    at_least(
        "cloudsync_provider_requests_total",
        &[("kind", "local"), ("operation", "read"), ("outcome", "ok")],
        1.0,
    );
    at_least(
        "cloudsync_provider_request_duration_seconds_count",
        &[("kind", "local"), ("operation", "read")],
        1.0,
    );
    assert_eq!(type_of(&scrape, "cloudsync_provider_up"), Some("gauge"));
    at_least("cloudsync_provider_up", &[("kind", "local")], 1.0);
    at_least(
        "cloudsync_search_duration_seconds_count",
        &[("mode", "keyword"), ("cached", "false")],
        1.0,
    );
    at_least(
        "cloudsync_search_duration_seconds_count",
        &[("mode", "keyword"), ("cached", "true")],
        1.0,
    );
    assert_eq!(type_of(&scrape, "cloudsync_projector_lag_seconds"), Some("gauge"));
    for projector in ["users", "files", "search", "vectors"] {
        at_least("cloudsync_projector_lag_events", &[("projector", projector)], 0.0);
    }
    at_least("cloudsync_eventstore_append_duration_seconds_count", &[("outcome", "ok")], 5.0);
    at_least("cloudsync_queue_published_total", &[], 1.0);
    at_least("cloudsync_queue_redelivered_total", &[], 0.0);
    at_least("cloudsync_queue_dead_lettered_total", &[], 0.0);

    // Labels never carry who or what: no user id, address, provider id or path.
    for secret in [
        &scanned.user,
        &scanned.provider,
        "metrics@example.com",
        "readme",
        scanned.root.to_str().expect("utf-8"),
    ] {
        assert!(!scrape.contains(secret), "{secret:?} appears in the metrics");
    }

    // Every metric the shipped dashboard queries exists.
    let dashboard: Value = serde_json::from_str(include_str!("../../deploy/grafana/cloudsync.json")).expect("dashboard JSON");
    let mut queried = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("cloudsync_") {
                let name: String = rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                queried.insert(base.to_owned());
            }
        }
    }
    assert!(queried.len() >= 10, "{queried:?}");
    for name in &queried {
        assert!(
            type_of(&scrape, name).is_some(),
            "the dashboard queries {name}, which /metrics does not have"
        );
    }
}
