//! Issue 3: resilience. A fault-injecting proxy in front of the S3 server refuses every third request
//! with `503 SlowDown` and delays others; a scan through it still records exactly the right events,
//! none twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::StreamExt;
use serde_json::json;

use crate::harness::{Harness, on_both_backends};

on_both_backends!(a_scan_through_a_failing_server_records_every_file_exactly_once);

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    requests: AtomicU64,
    refused: AtomicU64,
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let n = proxy.requests.fetch_add(1, Ordering::SeqCst);
    if n % 3 == 1 {
        proxy.refused.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/xml")], body).into_response();
    }
    if n % 7 == 3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut upstream = proxy
        .client
        .request(parts.method.clone(), format!("{}{path}", proxy.upstream))
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            upstream = upstream.header(name, value);
        }
    }
    match upstream.send().await {
        Ok(answer) => {
            let mut response = Response::builder().status(answer.status().as_u16());
            for (name, value) in answer.headers() {
                // Content-Length stays: a HEAD answer's length is the object's size.
                if name != "transfer-encoding" {
                    response = response.header(name.as_str(), value.as_bytes());
                }
            }
            let bytes = answer.bytes().await.unwrap_or_default();
            response
                .body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(_) => StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Starts the proxy on a free loopback port; returns its state and address.
async fn start_proxy(upstream: String) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        upstream,
        client: reqwest::Client::new(),
        requests: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let router = axum::Router::new().fallback(forward).with_state(Arc::clone(&proxy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (proxy, format!("http://{addr}"))
}

async fn a_scan_through_a_failing_server_records_every_file_exactly_once(h: &Harness) {
    let endpoint = std::env::var("CLOUDSYNC_TEST_S3_ENDPOINT").expect("CLOUDSYNC_TEST_S3_ENDPOINT: run through scripts/test");
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/cloudsync-faults"))
        .send()
        .await
        .expect("S3 reachable");
    assert!(created.status().is_success() || created.status().as_u16() == 409);
    let root = format!("/faults-{}/", uuid::Uuid::new_v4().simple());
    let direct =
        json!({ "endpoint": endpoint, "bucket": "cloudsync-faults", "access_key_id": "a", "secret_access_key": "b", "root": root });
    let seeding = cloudsync_providers::open(ProviderKind::S3, direct.as_object().expect("object")).expect("opens");
    let mut expected = BTreeMap::new();
    for i in 0..60 {
        let path = format!("f{}/file-{i:02}.txt", i % 4);
        let content = format!("content number {i}");
        expected.insert(path.clone(), blake3::hash(content.as_bytes()).to_hex().to_string());
        let data = futures::stream::iter([Ok(Bytes::from(content))]).boxed();
        seeding
            .write(&ProviderPath::parse(&path).expect("path"), data)
            .await
            .expect("seeded");
    }

    let (proxy, proxy_url) = start_proxy(endpoint).await;
    let (token, _) = h.register("faults@example.org").await;
    let through_proxy =
        json!({ "endpoint": proxy_url, "bucket": "cloudsync-faults", "access_key_id": "a", "secret_access_key": "b", "root": root });
    let data = h
        .ok(
            Some(&token),
            "mutation($c: JSON!) { connectProvider(provider: \"s3\", credentials: $c) { id scanOperationId } }",
            json!({ "c": through_proxy }),
        )
        .await;
    let provider = data["connectProvider"]["id"].as_str().expect("id").to_owned();
    h.wait_for_operation(&token, data["connectProvider"]["scanOperationId"].as_str().expect("operation"))
        .await;
    assert!(
        proxy.refused.load(Ordering::SeqCst) >= 20,
        "the proxy refused {} requests",
        proxy.refused.load(Ordering::SeqCst)
    );

    let files = h.files(&token, &provider).await;
    let found: BTreeMap<String, String> = files
        .iter()
        .map(|(p, f)| (p.clone(), f["checksum"].as_str().expect("checksum").to_owned()))
        .collect();
    assert_eq!(found, expected);
    let discovered: Vec<String> = h
        .server()
        .app()
        .db
        .events
        .read_all(0, 100_000)
        .await
        .expect("log")
        .into_iter()
        .filter(|e| e.event_type == "FileDiscovered")
        .map(|e| e.payload["path"].as_str().expect("path").to_owned())
        .collect();
    assert_eq!(discovered.len(), 60, "every file recorded exactly once");
    // A rescan through the failing server changes nothing.
    let rescan = h
        .ok(
            Some(&token),
            "mutation($p: ID!) { rescanProvider(providerId: $p) { id } }",
            json!({ "p": provider }),
        )
        .await;
    let before = h.server().app().db.events.head().await.expect("head");
    h.wait_for_operation(&token, rescan["rescanProvider"]["id"].as_str().expect("id"))
        .await;
    let after = h.server().app().db.events.read_all(before, 1000).await.expect("log");
    assert!(
        // (The content pipeline reads the files meanwhile, into their content streams.)
        after
            .iter()
            .all(|e| !e.event_type.starts_with("File") || e.event_type == "FileContentExtracted"),
        "{:?}",
        after.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
}
