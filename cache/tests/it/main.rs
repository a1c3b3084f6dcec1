//! The cache contract, run against both backends: the in-process cache and Redis (the one
//! `scripts/services` runs on 127.0.0.1:6379, or `CLOUDSYNC_TEST_REDIS_URL`), each test under a
//! namespace of its own.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use cloudsync_cache::{Cache, MemoryCache, RedisCache};

fn redis_url() -> String {
    std::env::var("CLOUDSYNC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis(namespace: &str) -> RedisCache {
    RedisCache::connect(&redis_url(), namespace)
        .await
        .unwrap_or_else(|err| panic!("Redis at {} is required for this test (run scripts/services): {err}", redis_url()))
}

fn namespace() -> String {
    format!("cs_test_{}:", uuid::Uuid::new_v4().simple())
}

/// Two handles on one cache: the same object in process, two connections on one Redis namespace.
async fn pairs() -> Vec<(&'static str, Arc<dyn Cache>, Arc<dyn Cache>)> {
    let memory: Arc<dyn Cache> = Arc::new(MemoryCache::new(100));
    let namespace = namespace();
    vec![
        ("memory", Arc::clone(&memory), memory),
        ("redis", Arc::new(redis(&namespace).await), Arc::new(redis(&namespace).await)),
    ]
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn what_is_put_is_got_until_replaced_or_removed() {
    for (backend, cache, other) in pairs().await {
        assert_eq!(cache.get("a").await.unwrap(), None, "{backend}: nothing yet");
        let binary = [0_u8, 255, 10, 0, 7];
        cache.put("a", &binary, MINUTE).await.unwrap();
        cache.put("b", b"second", MINUTE).await.unwrap();
        assert_eq!(
            other.get("a").await.unwrap().as_deref(),
            Some(&binary[..]),
            "{backend}: bytes kept as they are"
        );
        cache.put("a", b"replaced", MINUTE).await.unwrap();
        assert_eq!(other.get("a").await.unwrap().as_deref(), Some(&b"replaced"[..]), "{backend}");
        other.remove(&["a".into(), "missing".into()]).await.unwrap();
        assert_eq!(cache.get("a").await.unwrap(), None, "{backend}: removed");
        assert_eq!(
            cache.get("b").await.unwrap().as_deref(),
            Some(&b"second"[..]),
            "{backend}: the rest stays"
        );
        other.remove(&[]).await.unwrap();
    }
}

#[tokio::test]
async fn entries_expire_after_their_time_to_live() {
    for (backend, cache, other) in pairs().await {
        cache.put("short", b"1", Duration::from_millis(50)).await.unwrap();
        cache.put("long", b"2", MINUTE).await.unwrap();
        assert!(other.get("short").await.unwrap().is_some(), "{backend}: kept at first");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(other.get("short").await.unwrap(), None, "{backend}: gone after its time");
        assert!(other.get("long").await.unwrap().is_some(), "{backend}: the other stays");
    }
}

#[tokio::test]
async fn only_redis_is_shared_between_processes() {
    assert!(!MemoryCache::new(1).shared());
    let shared = namespace();
    let (one, two) = (redis(&shared).await, redis(&shared).await);
    assert!(one.shared());
    one.put("k", b"v", MINUTE).await.unwrap();
    assert_eq!(two.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    let elsewhere = redis(&namespace()).await;
    assert_eq!(elsewhere.get("k").await.unwrap(), None, "namespaces keep deployments apart");
}

#[tokio::test]
async fn a_full_memory_cache_drops_the_oldest_first() {
    let cache = MemoryCache::new(3);
    for key in ["a", "b", "c"] {
        cache.put(key, key.as_bytes(), MINUTE).await.unwrap();
    }
    // Rewriting "a" makes it the newest.
    cache.put("a", b"a2", MINUTE).await.unwrap();
    cache.put("d", b"d", MINUTE).await.unwrap();
    assert_eq!(cache.get("b").await.unwrap(), None, "the oldest write went");
    for key in ["a", "c", "d"] {
        assert!(cache.get(key).await.unwrap().is_some(), "{key} stays");
    }
    // Many rewrites of one key never grow it past its capacity.
    for i in 0..100_u32 {
        cache.put("hot", &i.to_le_bytes(), MINUTE).await.unwrap();
    }
    let kept = ["a", "c", "d", "hot"];
    let mut present = 0;
    for key in kept {
        present += usize::from(cache.get(key).await.unwrap().is_some());
    }
    assert_eq!(present, 3);
    assert_eq!(cache.get("hot").await.unwrap().as_deref(), Some(&99_u32.to_le_bytes()[..]));
}
