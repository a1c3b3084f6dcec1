//! Issue 3: resilience. A fault-injecting proxy in front of the S3 server refuses every third request
//! with `503 SlowDown` and delays others; a scan through it still records exactly the right events,
//! none twice. Issue 16: while the proxy refuses the content pipeline's reads, the files wait for a
//! retry (findable by name), and are read once the server serves them again.

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
mod retried {
    use super::{quick_retries, unread_contents_are_read_again_once_the_provider_serves_them};
    use crate::harness::on_both_backends;
    on_both_backends!(with super::quick_retries; unread_contents_are_read_again_once_the_provider_serves_them);
}
mod jobs {
    use super::{a_job_that_fails_is_retried_and_fails_for_good_past_its_attempts, few_attempts};
    use crate::harness::on_both_backends;
    on_both_backends!(with super::few_attempts; a_job_that_fails_is_retried_and_fails_for_good_past_its_attempts);
}
mod given_up {
    use super::{no_retries, unread_contents_past_the_retry_limit_are_recorded_as_failed};
    use crate::harness::on_both_backends;
    on_both_backends!(with super::no_retries; unread_contents_past_the_retry_limit_are_recorded_as_failed);
}

struct Proxy {
    upstream: String,
    client: reqwest::Client,
    requests: AtomicU64,
    refused: AtomicU64,
    /// Refuse every third request (else only what `refuse_range` names).
    flaky: bool,
    /// Reads with exactly this `Range` header are refused while it is set.
    refuse_range: std::sync::Mutex<Option<String>>,
    /// Every request is refused while it is set.
    refuse_all: std::sync::atomic::AtomicBool,
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let n = proxy.requests.fetch_add(1, Ordering::SeqCst);
    let range = request.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    if proxy.refuse_all.load(Ordering::SeqCst) {
        // An answer the client does not retry itself, and does not take for a lack of permission.
        proxy.refused.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\"?><Error><Code>InvalidRequest</Code><Message>The gateway refused the request.</Message></Error>";
        return (StatusCode::BAD_REQUEST, [("content-type", "application/xml")], body).into_response();
    }
    let refused_range = range.is_some() && *proxy.refuse_range.lock().expect("lock") == range;
    if refused_range {
        // Refused outright (the client does not retry this itself), as a bucket whose access was
        // taken away for a while.
        proxy.refused.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        return (StatusCode::FORBIDDEN, [("content-type", "application/xml")], body).into_response();
    }
    if proxy.flaky && n % 3 == 1 {
        proxy.refused.fetch_add(1, Ordering::SeqCst);
        let body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
        return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "application/xml")], body).into_response();
    }
    if proxy.flaky && n % 7 == 3 {
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
async fn start_proxy(upstream: String, flaky: bool) -> (Arc<Proxy>, String) {
    let proxy = Arc::new(Proxy {
        upstream,
        client: reqwest::Client::new(),
        requests: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        flaky,
        refuse_range: std::sync::Mutex::new(None),
        refuse_all: std::sync::atomic::AtomicBool::new(false),
    });
    let router = axum::Router::new().fallback(forward).with_state(Arc::clone(&proxy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router).await });
    (proxy, format!("http://{addr}"))
}

/// A new folder of the test bucket on the S3 server: its endpoint, root, and a provider on it.
async fn s3_folder(prefix: &str) -> (String, String, Box<dyn cloudsync_providers::StorageProvider>) {
    let endpoint = std::env::var("CLOUDSYNC_TEST_S3_ENDPOINT").expect("CLOUDSYNC_TEST_S3_ENDPOINT: run through scripts/test");
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/cloudsync-faults"))
        .send()
        .await
        .expect("S3 reachable");
    assert!(created.status().is_success() || created.status().as_u16() == 409);
    let root = format!("/{prefix}-{}/", uuid::Uuid::new_v4().simple());
    let direct =
        json!({ "endpoint": endpoint, "bucket": "cloudsync-faults", "access_key_id": "a", "secret_access_key": "b", "root": root });
    let seeding = cloudsync_providers::open(ProviderKind::S3, direct.as_object().expect("object")).expect("opens");
    (endpoint, root, seeding)
}

/// Connects the folder `root` of the test bucket through `endpoint`: the `connectProvider` answer.
async fn connect_s3(h: &Harness, token: &str, endpoint: &str, root: &str) -> serde_json::Value {
    let settings =
        json!({ "endpoint": endpoint, "bucket": "cloudsync-faults", "access_key_id": "a", "secret_access_key": "b", "root": root });
    h.ok(
        Some(token),
        "mutation($c: JSON!) { connectProvider(provider: \"s3\", credentials: $c) { id scanOperationId } }",
        json!({ "c": settings }),
    )
    .await
}

async fn a_scan_through_a_failing_server_records_every_file_exactly_once(h: &Harness) {
    let (endpoint, root, seeding) = s3_folder("faults").await;
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

    let (proxy, proxy_url) = start_proxy(endpoint, true).await;
    let (token, _) = h.register("faults@example.org").await;
    let data = connect_s3(h, &token, &proxy_url, &root).await;
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
            .all(|e| !e.event_type.starts_with("File") || matches!(e.event_type.as_str(), "FileContentExtracted" | "FileAnalyzed")),
        "{:?}",
        after.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
}

/// A server whose pipeline reads 10 bytes of each file (the scan reads all of it to hash it, so the
/// proxy can tell the two apart by their `Range`), and tries a refused read again after a second.
async fn quick_retries(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.extract_max_input_bytes = 10;
        config.extract_retry_seconds = 1;
    })
    .await
}

/// Three text files on S3 behind a proxy that refuses the pipeline's reads; connected by a new
/// user and scanned. The proxy and the user's token.
async fn connected_behind_a_refusing_proxy(h: &Harness) -> (Arc<Proxy>, String) {
    let (endpoint, root, seeding) = s3_folder("retries").await;
    for (i, animal) in ["wombat", "pangolin", "aardvark"].into_iter().enumerate() {
        let data = futures::stream::iter([Ok(Bytes::from(format!("{animal} lives in the text of this file")))]).boxed();
        seeding
            .write(&ProviderPath::parse(&format!("burrow-{i}.txt")).expect("path"), data)
            .await
            .expect("seeded");
    }
    let (proxy, proxy_url) = start_proxy(endpoint, false).await;
    *proxy.refuse_range.lock().expect("lock") = Some("bytes=0-9".into());
    let (token, _) = h.register("retries@example.org").await;
    let data = connect_s3(h, &token, &proxy_url, &root).await;
    h.wait_for_operation(&token, data["connectProvider"]["scanOperationId"].as_str().expect("operation"))
        .await;
    (proxy, token)
}

async fn unread_contents_are_read_again_once_the_provider_serves_them(h: &Harness) {
    let (proxy, token) = connected_behind_a_refusing_proxy(h).await;
    let search = |q: &'static str| {
        let token = token.clone();
        async move {
            h.ok(
                Some(&token),
                "query($q: String!) { searchFiles(query: $q) { total } }",
                json!({ "q": q }),
            )
            .await["searchFiles"]["total"]
                .as_u64()
                .expect("total")
        }
    };
    // Every read of the pipeline is refused: the files wait for a retry, findable by name, and
    // nothing is recorded of their contents.
    let pool = h.server().app().db.pool.clone();
    assert_eq!(waiting_for_retry(&pool, 3).await, 3, "every file waits for a retry");
    assert!(
        proxy.refused.load(Ordering::SeqCst) >= 3 * 4,
        "each read was tried a few times first"
    );
    assert_eq!(search("burrow").await, 3);
    assert_eq!(search("wombat").await, 0);
    let events = h.server().app().db.events.read_all(0, 100_000).await.expect("the log");
    assert!(
        !events.iter().any(|e| e.event_type == "FileContentExtracted"),
        "nothing was recorded of unread contents"
    );

    // The provider serves them again: the next retry reads each file once.
    *proxy.refuse_range.lock().expect("lock") = None;
    h.contents_indexed(3).await;
    assert_eq!(search("wombat").await, 1, "the retried file is found by its contents");
    assert_eq!(search("pangolin OR aardvark").await, 2);
    let events = h.server().app().db.events.read_all(0, 100_000).await.expect("the log");
    let read: Vec<_> = events.iter().filter(|e| e.event_type == "FileContentExtracted").collect();
    assert_eq!(read.len(), 3, "each file was read once");
    assert!(read.iter().all(|e| e.payload["outcome"] == "extracted"), "{read:?}");
    // The pipeline forgets a retry once the reading it made is recorded.
    assert_eq!(waiting_for_retry(&pool, 0).await, 0, "the retries are done");
}

/// How many files wait for a retry, once that is `wanted` (or a minute has passed). The pipeline
/// keeps its retries in a table, not in the log, so there is no append to wait on: it asks every
/// 100 ms.
async fn waiting_for_retry(pool: &cloudsync_eventstore::DbPool, wanted: i64) -> i64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: i64 = cloudsync_eventstore::on_pool!(pool, |p| sqlx::query_scalar("SELECT count(*) FROM content_retries")
            .fetch_one(p)
            .await)
        .expect("retries");
        if waiting == wanted || std::time::Instant::now() >= deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As [`quick_retries`], with no retry: the first round of refused reads is the last.
async fn no_retries(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.extract_max_input_bytes = 10;
        config.extract_retry_limit = 0;
    })
    .await
}

async fn unread_contents_past_the_retry_limit_are_recorded_as_failed(h: &Harness) {
    let (_proxy, token) = connected_behind_a_refusing_proxy(h).await;
    h.contents_read(3).await;
    let events = h.server().app().db.events.read_all(0, 100_000).await.expect("the log");
    let read: Vec<_> = events.iter().filter(|e| e.event_type == "FileContentExtracted").collect();
    assert_eq!(read.len(), 3);
    for event in read {
        assert_eq!(event.payload["outcome"], "failed", "{}", event.payload);
        let reason = event.payload["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("its provider did not serve it"), "{reason}");
    }
    assert_eq!(waiting_for_retry(&h.server().app().db.pool, 0).await, 0);
    let found = h
        .ok(Some(&token), "query { searchFiles(query: \"burrow\") { total } }", json!({}))
        .await;
    assert_eq!(found["searchFiles"]["total"], 3, "still findable by name");
}

/// Jobs get three attempts, two seconds apart, then four.
async fn few_attempts(backend: cloudsync_eventstore::testing::Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.job_attempts = 3;
        config.job_retry_seconds = 2;
    })
    .await
}

/// `syncStatus` of `operation` once `done` says so (60 s deadline), asking again after each append.
async fn status_once(h: &Harness, token: &str, operation: &str, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut appended = h.server().app().db.events.watch();
    loop {
        let status = h
            .ok(
                Some(token),
                "query($o: ID!) { syncStatus(operationId: $o) { status error attempts retryReason retryAt } }",
                json!({ "o": operation }),
            )
            .await["syncStatus"]
            .clone();
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "not in time: {status}");
        h.next_append(&mut appended, deadline).await;
    }
}

async fn a_job_that_fails_is_retried_and_fails_for_good_past_its_attempts(h: &Harness) {
    let (endpoint, root, seeding) = s3_folder("jobs").await;
    let data = futures::stream::iter([Ok(Bytes::from_static(b"a file to list"))]).boxed();
    seeding
        .write(&ProviderPath::parse("listed.txt").expect("path"), data)
        .await
        .expect("seeded");
    let (proxy, proxy_url) = start_proxy(endpoint, false).await;
    let (token, _) = h.register("attempts@example.org").await;
    let connected = connect_s3(h, &token, &proxy_url, &root).await;
    h.wait_for_operation(&token, connected["connectProvider"]["scanOperationId"].as_str().expect("operation"))
        .await;
    let provider = connected["connectProvider"]["id"].as_str().expect("provider").to_owned();
    let rescan = || async {
        h.ok(
            Some(&token),
            "mutation($p: ID!) { rescanProvider(providerId: $p) { id attempts } }",
            json!({ "p": provider }),
        )
        .await["rescanProvider"]["id"]
            .as_str()
            .expect("operation")
            .to_owned()
    };

    // The server refuses everything: each attempt fails, is retried after its wait, and the third
    // is the last.
    proxy.refuse_all.store(true, Ordering::SeqCst);
    let operation = rescan().await;
    let failed = status_once(h, &token, &operation, |s| s["status"] == "failed").await;
    assert_eq!(failed["attempts"], 3, "{failed}");
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("gave up after 3 attempts: "), "{failed}");
    assert!(failed["retryReason"].as_str().is_some_and(|r| !r.is_empty()), "{failed}");
    let events = h
        .server()
        .app()
        .db
        .events
        .read_stream(&format!("sync-{operation}"))
        .await
        .expect("the job's events");
    let retried: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type == "SyncJobRetrying")
        .map(|e| e.payload["attempt"].as_u64().expect("attempt"))
        .collect();
    assert_eq!(retried, [1, 2], "each failed attempt but the last is retried once");

    // Served again while the job waits for its second attempt: that attempt completes it.
    let operation = rescan().await;
    let waiting = status_once(h, &token, &operation, |s| {
        s["attempts"].as_i64() >= Some(2) || matches!(s["status"].as_str(), Some("completed" | "failed"))
    })
    .await;
    assert_eq!(waiting["attempts"], 2, "the first attempt failed: {waiting}");
    proxy.refuse_all.store(false, Ordering::SeqCst);
    let done = status_once(h, &token, &operation, |s| {
        matches!(s["status"].as_str(), Some("completed" | "failed"))
    })
    .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempts"], 2, "{done}");
}
