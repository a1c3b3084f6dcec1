//! The cache every process shares: Redis keys under a namespace, each with its time to live
//! (`SET … PX`), so Redis itself forgets what nobody removed.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;

use crate::{Cache, CacheError};

pub struct RedisCache {
    connection: ConnectionManager,
    namespace: String,
}

impl RedisCache {
    /// On an open connection; every key goes under `namespace` followed by `cache:`.
    pub fn new(connection: ConnectionManager, namespace: &str) -> Self {
        Self {
            connection,
            namespace: format!("{namespace}cache:"),
        }
    }

    /// Connects to the Redis at `url` (`redis://host:port/db`).
    ///
    /// # Errors
    /// A malformed URL or a Redis that cannot be reached.
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, CacheError> {
        let client = redis::Client::open(url).map_err(failed)?;
        Ok(Self::new(client.get_connection_manager().await.map_err(failed)?, namespace))
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.namespace)
    }
}

fn failed(err: redis::RedisError) -> CacheError {
    CacheError(err.to_string())
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.connection.clone())
            .await
            .map_err(failed)
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(ms)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(failed)
    }

    async fn remove(&self, keys: &[String]) -> Result<(), CacheError> {
        if keys.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut self.connection.clone())
            .await
            .map_err(failed)
    }

    fn shared(&self) -> bool {
        true
    }
}
