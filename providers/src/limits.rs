//! What CloudSync adds around every provider: a per-provider quota (a token bucket for requests per
//! second and a cap on concurrent transfers) and an LRU cache of file metadata that the provider's own
//! writes, moves and deletes invalidate. Retries with backoff live in the remote adapter (OpenDAL's
//! retry layer), where the failure's kind is known.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::stream::BoxStream;
use tokio::sync::Semaphore;

use crate::{ByteStream, Entry, ProviderError, StorageProvider};

/// A provider's quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Requests a second (`None`: no limit), with up to `burst` saved up.
    pub requests_per_second: Option<f64>,
    pub burst: f64,
    pub concurrent_transfers: usize,
}

impl Quota {
    /// The default for a kind: remote services get 1,000 requests a second (well under what S3 allows
    /// per prefix, and enough to stop a runaway loop); local folders are not rate-limited.
    pub fn default_for(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Local => Self {
                requests_per_second: None,
                burst: 1.0,
                concurrent_transfers: 32,
            },
            _ => Self {
                requests_per_second: Some(1000.0),
                burst: 200.0,
                concurrent_transfers: 8,
            },
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct Bucket {
    rate: f64,
    burst: f64,
    state: tokio::sync::Mutex<(f64, Instant)>,
}

impl Bucket {
    fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            state: tokio::sync::Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until a token is available and takes it.
    async fn take(&self) {
        let mut state = self.state.lock().await;
        loop {
            let now = Instant::now();
            let (tokens, last) = *state;
            let tokens = (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
            if tokens >= 1.0 {
                *state = (tokens - 1.0, now);
                return;
            }
            *state = (tokens, now);
            let wait = Duration::from_secs_f64((1.0 - tokens) / self.rate);
            // Holding the lock while waiting keeps callers in order.
            tokio::time::sleep(wait).await;
        }
    }
}

/// A small least-recently-used map.
struct Lru {
    capacity: usize,
    entries: HashMap<ProviderPath, Entry>,
    order: VecDeque<ProviderPath>,
}

impl Lru {
    fn get(&mut self, path: &ProviderPath) -> Option<Entry> {
        let entry = self.entries.get(path)?.clone();
        if let Some(at) = self.order.iter().position(|p| p == path) {
            self.order.remove(at);
        }
        self.order.push_back(path.clone());
        Some(entry)
    }

    fn put(&mut self, entry: Entry) {
        self.invalidate(&entry.path);
        if self.entries.len() >= self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.entries.remove(&oldest);
        }
        self.order.push_back(entry.path.clone());
        self.entries.insert(entry.path.clone(), entry);
    }

    fn invalidate(&mut self, path: &ProviderPath) {
        if self.entries.remove(path).is_some()
            && let Some(at) = self.order.iter().position(|p| p == path)
        {
            self.order.remove(at);
        }
    }
}

/// A provider behind its quota and metadata cache.
pub struct Limited {
    inner: Box<dyn StorageProvider>,
    requests: Option<Bucket>,
    transfers: Semaphore,
    cache: Mutex<Lru>,
    /// Counters for tests and metrics: (stat calls that reached the provider, cache hits).
    stats: Mutex<(u64, u64)>,
}

impl Limited {
    pub fn new(inner: Box<dyn StorageProvider>, quota: Quota, cache_capacity: usize) -> Self {
        Self {
            inner,
            requests: quota
                .requests_per_second
                .map(|rate| Bucket::new(rate.max(0.1), quota.burst.max(1.0))),
            transfers: Semaphore::new(quota.concurrent_transfers.max(1)),
            cache: Mutex::new(Lru {
                capacity: cache_capacity.max(1),
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            stats: Mutex::new((0, 0)),
        }
    }

    /// (stat calls that reached the provider, stat calls answered from the cache).
    pub fn cache_stats(&self) -> (u64, u64) {
        self.stats.lock().map_or((0, 0), |s| *s)
    }

    /// Waits for the quota to allow one more request and for a transfer slot, which the returned
    /// permit holds.
    async fn transfer(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ProviderError> {
        self.take().await;
        self.transfers
            .acquire()
            .await
            .map_err(|_| ProviderError::Other("the provider is closing".into()))
    }

    /// Waits for the quota to allow one more request.
    async fn take(&self) {
        if let Some(bucket) = &self.requests {
            bucket.take().await;
        }
    }

    fn invalidate(&self, path: &ProviderPath) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.invalidate(path);
        }
    }
}

#[async_trait]
impl StorageProvider for Limited {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    async fn check(&self) -> Result<(), ProviderError> {
        self.take().await;
        self.inner.check().await
    }

    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>> {
        // A listing is paged by the adapter; it counts as one request here.
        self.inner.list(folder)
    }

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        let cached = self.cache.lock().ok().and_then(|mut cache| cache.get(path));
        if let Some(entry) = cached {
            if let Ok(mut stats) = self.stats.lock() {
                stats.1 += 1;
            }
            return Ok(entry);
        }
        self.take().await;
        let entry = self.inner.stat(path).await?;
        if let Ok(mut stats) = self.stats.lock() {
            stats.0 += 1;
        }
        if let Ok(mut cache) = self.cache.lock() {
            cache.put(entry.clone());
        }
        Ok(entry)
    }

    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError> {
        let _permit = self.transfer().await?;
        self.inner.read(path, range).await
    }

    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path);
        let written = self.inner.write(path, data).await;
        self.invalidate(path);
        written
    }

    async fn write_if(&self, path: &ProviderPath, data: ByteStream, expected: Option<&str>) -> Result<u64, ProviderError> {
        // The check's request, then the write's.
        self.take().await;
        let _permit = self.transfer().await?;
        self.invalidate(path);
        let written = self.inner.write_if(path, data, expected).await;
        self.invalidate(path);
        written
    }

    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        let deleted = self.inner.delete(path).await;
        self.invalidate(path);
        deleted
    }

    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        let renamed = self.inner.rename(from, to).await;
        self.invalidate(from);
        self.invalidate(to);
        renamed
    }

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        self.inner.create_folder(path).await
    }

    fn patches(&self) -> bool {
        self.inner.patches()
    }

    async fn write_unsynced(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path);
        let written = self.inner.write_unsynced(path, data).await;
        self.invalidate(path);
        written
    }

    async fn flush(&self, paths: &[ProviderPath]) -> Result<(), ProviderError> {
        self.inner.flush(paths).await
    }

    async fn replace_if(&self, from: &ProviderPath, to: &ProviderPath, expected: Option<&str>) -> Result<Entry, ProviderError> {
        self.take().await;
        self.invalidate(from);
        self.invalidate(to);
        let replaced = self.inner.replace_if(from, to, expected).await;
        self.invalidate(from);
        self.invalidate(to);
        replaced
    }

    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        self.invalidate(from);
        self.invalidate(to);
        let replaced = self.inner.replace(from, to).await;
        self.invalidate(from);
        self.invalidate(to);
        replaced
    }

    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path);
        let written = self.inner.patch(path, size, ranges, checksum).await;
        self.invalidate(path);
        written
    }

    fn writes_in_place(&self) -> bool {
        self.inner.writes_in_place()
    }

    /// Under a request quota each range is a request of its own (the new size is set with the
    /// first: a write in place is not atomic either way, and the caller keeps what it destroys).
    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path);
        let written = if self.requests.is_some() && ranges.len() > 1 {
            let mut written = Ok(0);
            for (i, range) in ranges.into_iter().enumerate() {
                if i > 0 {
                    self.take().await;
                }
                match self.inner.write_in_place(path, size, vec![range]).await {
                    Ok(more) => written = written.map(|n| n + more),
                    Err(err) => {
                        written = Err(err);
                        break;
                    }
                }
            }
            written
        } else {
            self.inner.write_in_place(path, size, ranges).await
        };
        self.invalidate(path);
        written
    }

    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        self.inner.remove_abandoned_writes(folder).await
    }

    fn changes(&self) -> Result<Option<crate::ChangeFeed>, ProviderError> {
        self.inner.changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_spends_its_burst_then_paces_requests() {
        let bucket = Bucket::new(100.0, 5.0);
        let start = Instant::now();
        for _ in 0..15 {
            bucket.take().await;
        }
        // 5 from the burst, then 10 at 100/s: about 100 ms.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
    }

    #[test]
    fn the_cache_evicts_the_least_recently_used() {
        let entry = |p: &str| Entry {
            path: ProviderPath::parse(p).expect("path"),
            size: 1,
            modified_at: None,
            etag: None,
        };
        let path = |p: &str| ProviderPath::parse(p).expect("path");
        let mut lru = Lru {
            capacity: 2,
            entries: HashMap::new(),
            order: VecDeque::new(),
        };
        lru.put(entry("a"));
        lru.put(entry("b"));
        assert!(lru.get(&path("a")).is_some());
        lru.put(entry("c"));
        assert!(lru.get(&path("b")).is_none(), "b was the least recently used");
        assert!(lru.get(&path("a")).is_some() && lru.get(&path("c")).is_some());
        lru.invalidate(&path("a"));
        assert!(lru.get(&path("a")).is_none());
    }

    #[tokio::test]
    async fn stats_are_cached_until_the_providers_own_write_invalidates_them() {
        use futures::StreamExt as _;
        let dir = std::env::temp_dir().join(format!("cloudsync-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let local = crate::LocalProvider::open(dir.to_str().expect("utf-8")).expect("root");
        let limited = Limited::new(Box::new(local), Quota::default_for(ProviderKind::Local), 16);
        let path = ProviderPath::parse("a.txt").expect("path");
        let write = |text: &'static str| futures::stream::iter([Ok(bytes::Bytes::from(text))]).boxed();
        limited.write(&path, write("one")).await.expect("write");
        assert_eq!(limited.stat(&path).await.expect("stat").size, 3);
        assert_eq!(limited.stat(&path).await.expect("stat").size, 3);
        assert_eq!(limited.cache_stats(), (1, 1), "the second stat came from the cache");
        limited.write(&path, write("three")).await.expect("write");
        assert_eq!(
            limited.stat(&path).await.expect("stat").size,
            5,
            "the write invalidated the cached entry"
        );
        limited.delete(&path).await.expect("delete");
        assert!(matches!(limited.stat(&path).await, Err(ProviderError::NotFound(_))));
        std::fs::remove_dir_all(dir).ok();
    }
}
