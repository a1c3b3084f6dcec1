//! Issue 20, item 5: with Redis configured, search answers are shared by every API process and
//! dropped when the log moves on. The test plants a doctored answer in Redis and shows that another
//! process answers with it (so the entry is shared, not recomputed), then that an event makes it
//! unreachable. (The chunk store's shared metadata is tested in `chunks/src/store.rs`.)

use std::time::Duration;

use cloudsync_eventstore::testing::Backend;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

use crate::harness::{Harness, on_both_backends};

on_both_backends!(with super::on_redis; search_answers_are_shared_until_an_event_moves_the_index);

/// A server with sessions and caches in Redis, under a namespace of the test's own.
async fn on_redis(backend: Backend) -> Harness {
    Harness::with_config(backend, |config| {
        config.redis_url = Some("redis://127.0.0.1:6379/0".into());
        config.redis_namespace = format!("cloudsync-test-{}:", uuid::Uuid::new_v4().simple());
    })
    .await
}

async fn redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open("redis://127.0.0.1:6379/0").expect("URL");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("the Redis scripts/services runs")
}

const SEARCH: &str = "query($q: String!) { searchFiles(query: $q, mode: KEYWORD) { total indexedPosition hits { file { path } } } }";

/// `searchFiles` on the server at `base` as `token`, read after `after` (a log position).
async fn search(h: &Harness, base: &str, token: &str, after: i64) -> Value {
    let response: Value = h
        .client
        .post(format!("{base}/graphql"))
        .bearer_auth(token)
        .header("X-CloudSync-After", after.to_string())
        .json(&json!({ "query": SEARCH, "variables": { "q": "readme" } }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert!(response["errors"].is_null(), "{response}");
    response["data"]["searchFiles"].clone()
}

async fn search_answers_are_shared_until_an_event_moves_the_index(h: &Harness) {
    let scanned = h.scanned("cache@example.com").await;
    h.indexed().await;
    let second = h.second_api_process().await;
    let second_url = format!("http://{}", second.addr());
    let namespace = &h.config.redis_namespace;
    let mut redis = redis().await;
    // Both processes' indexes at the log's head (the content pipeline's readings are in: nothing
    // more comes), so both answer at one index position.
    let head = h.server().app().db.events.head().await.expect("head");
    assert!(
        second.app().search.wait_for(head, Duration::from_secs(20)).await,
        "the second index catches up"
    );
    let first = search(h, &h.url, &scanned.token, 0).await;
    assert_eq!(first["total"], 1, "{first}");
    let position = first["indexedPosition"].as_i64().expect("position");
    let keys: Vec<String> = redis.keys(format!("{namespace}cache:search:{position}:*")).await.expect("keys");
    assert!(!keys.is_empty(), "the answer is kept in Redis under its index position");
    for key in &keys {
        let kept: Vec<u8> = redis.get(key).await.expect("get");
        let mut doctored: Value = serde_json::from_slice(&kept).expect("JSON");
        doctored["total"] = json!(999);
        let _: () = redis.set_ex(key, doctored.to_string(), 60).await.expect("set");
    }
    let other = search(h, &second_url, &scanned.token, position).await;
    assert_eq!(
        other["indexedPosition"], first["indexedPosition"],
        "the two processes answered at one index position"
    );
    assert_eq!(other["total"], 999, "the second process answered from the shared cache: {other}");
    // A change on the provider is an event: the index moves on, and with it the answers.
    std::fs::write(scanned.root.join("readme-two.txt"), "more").expect("write");
    h.rescan(&scanned.token, &scanned.provider).await;
    h.indexed().await;
    let after = search(h, &h.url, &scanned.token, 0).await;
    assert_eq!(after["total"], 2, "a fresh answer once the index moved: {after}");
    second.stop().await;
}
