//! Caches that every process may share: a value kept under a key for a while, or until whoever
//! knows that what it was computed from changed removes it. In-process (`MemoryCache`, the
//! embedded default) or in Redis (`RedisCache`, with `CLOUDSYNC_REDIS_URL`, shared by every replica
//! and worker), behind one trait with one contract suite (`tests/it`).
//!
//! A cache never decides anything: callers treat an error as a miss (reads) or as nothing kept
//! (writes), so a Redis that goes away slows CloudSync down and changes no answer.

mod memory;
mod redis_cache;

use std::time::Duration;

use async_trait::async_trait;

pub use memory::MemoryCache;
pub use redis_cache::RedisCache;

#[derive(Debug, thiserror::Error)]
#[error("cache: {0}")]
pub struct CacheError(pub String);

#[async_trait]
pub trait Cache: Send + Sync {
    /// The value kept under `key`, unless it expired or was removed.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError>;

    /// Keeps `value` under `key` for `ttl` (at least a millisecond), replacing what was there.
    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError>;

    /// Removes what is kept under each of `keys` (missing keys are fine).
    async fn remove(&self, keys: &[String]) -> Result<(), CacheError>;

    /// Whether other processes see what this one keeps (Redis) or not (in-process).
    fn shared(&self) -> bool;
}
