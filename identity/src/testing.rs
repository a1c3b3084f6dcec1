//! For tests of this crate and of the crates above it (feature `testing`): the Redis that
//! `scripts/services` starts, and namespaces of a test's own on it.

#![allow(clippy::expect_used, clippy::panic)]

use uuid::Uuid;

/// The test Redis: `CLOUDSYNC_TEST_REDIS_URL`, else the local one.
pub fn redis_url() -> String {
    std::env::var("CLOUDSYNC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis and a namespace of this test's own (a missing Redis fails the
/// test).
pub async fn test_redis() -> (redis::aio::ConnectionManager, String) {
    let connection = crate::sessions::redis_connection(&redis_url())
        .await
        .unwrap_or_else(|err| panic!("Redis at {} is required for this test (run scripts/services): {err}", redis_url()));
    (connection, format!("cs_test_{}:", Uuid::new_v4().simple()))
}

/// Removes what a test left under its namespace.
pub async fn clear_namespace(namespace: &str) {
    let client = redis::Client::open(redis_url()).expect("redis URL");
    let mut connection = client.get_multiplexed_async_connection().await.expect("Redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}*"))
        .query_async(&mut connection)
        .await
        .expect("keys");
    if !keys.is_empty() {
        redis::cmd("DEL").arg(keys).query_async::<()>(&mut connection).await.expect("del");
    }
}
