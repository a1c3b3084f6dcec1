//! The cache every process shares: Redis keys under a namespace, each with its time to live
//! (`SET … PX`), so Redis itself forgets what nobody removed. A Redis that does not answer within
//! [`TIMEOUT`] is left alone for [`PAUSE`] (every call fails at once meanwhile), so an outage costs
//! callers a quarter of a second now and then, not on every call.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::{Cache, CacheError};

/// How long one call waits for Redis.
pub const TIMEOUT: Duration = Duration::from_millis(250);
/// How long the cache is skipped after a call failed.
pub const PAUSE: Duration = Duration::from_secs(5);

pub struct RedisCache {
    connection: ConnectionManager,
    namespace: String,
    /// Until when calls fail at once (after a failure).
    resting: Mutex<Option<Instant>>,
}

impl RedisCache {
    /// On an open connection; every key goes under `namespace` followed by `cache:`.
    pub fn new(connection: ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            namespace: format!("{namespace}cache:"),
            resting: Mutex::new(None),
        }
    }

    /// Connects to the Redis at `url` (`redis://host:port/db`).
    ///
    /// # Errors
    /// A malformed URL or a Redis that cannot be reached.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(|err| CacheError(err.to_string()))?;
        let connection = client.get_connection_manager().await.map_err(|err| CacheError(err.to_string()))?;
        Ok(Self::new(connection, namespace))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, CacheError> {
        let resting = *self.resting.lock().unwrap_or_else(PoisonError::into_inner);
        if resting.is_some_and(|until| Instant::now() < until) {
            return Err(CacheError("Redis did not answer a moment ago; the cache is skipped for now".into()));
        }
        let failed = match tokio::time::timeout(TIMEOUT, command.query_async::<T>(&mut self.connection.clone())).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(err)) => CacheError(err.to_string()),
            Err(_) => CacheError(format!("Redis did not answer within {} ms", TIMEOUT.as_millis())),
        };
        *self.resting.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + PAUSE);
        Err(failed)
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        self.run(redis::cmd("GET").arg(self.key(key))).await
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.run(redis::cmd("SET").arg(self.key(key)).arg(value).arg("PX").arg(ms)).await
    }

    async fn remove(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
        self.run(redis::cmd("DEL").arg(keys)).await
    }

    fn shared(&self) -> bool {
        true
    }
}
