//! What CloudSync adds around every provider: a per-provider quota (a token bucket for requests per
//! second and a cap on concurrent transfers) and a cache of file metadata that the provider's own
//! writes, moves and deletes invalidate. The cache is the instance's own LRU, or ([`SharedMeta`]) a
//! [`Cache`] that every process shares (Redis), where entries also expire. Every request is
//! recorded as metrics (by kind, operation and outcome). Retries with backoff live in the remote
//! adapter (OpenDAL's retry layer), where the failure's kind is known.
//!
//! `stat` may answer from the cache; `stat_fresh`, which every check that decides something uses
//! (the sync engine's, the chunk store's "is it there"), always asks the provider (and refreshes
//! the cache). See decision 011.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudsync_cache::Cache;
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::StreamExt as _;
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

/// A metadata cache that every process opening the same provider shares: entries live in `cache`
/// under `meta:<scope>:<path>` for at most `ttl`.
#[derive(Clone)]
pub struct SharedMeta {
    pub cache: Arc<dyn Cache>,
    /// The same for every process that opens this provider (its id; a chunk store's settings).
    pub scope: String,
    pub ttl: Duration,
}

impl SharedMeta {
    /// The key of `path`'s entry.
    pub fn key(&self, path: &ProviderPath) -> String {
        meta_key(&self.scope, path)
    }
}

/// The key of `path`'s entry in the shared metadata cache of the provider `scope`.
pub fn meta_key(scope: &str, path: &ProviderPath) -> String {
    format!("meta:{scope}:{path}")
}

fn encode(entry: &Entry) -> Vec<u8> {
    serde_json::json!({
        "size": entry.size,
        "modified_at": entry.modified_at.map(|m| m.to_rfc3339()),
        "etag": entry.etag,
    })
    .to_string()
    .into_bytes()
}

fn decode(path: &ProviderPath, kept: &[u8]) -> Option<Entry> {
    let value: serde_json::Value = serde_json::from_slice(kept).ok()?;
    let modified_at = match value.get("modified_at")? {
        serde_json::Value::Null => None,
        at => Some(DateTime::parse_from_rfc3339(at.as_str()?).ok()?.with_timezone(&Utc)),
    };
    let etag = match value.get("etag")? {
        serde_json::Value::Null => None,
        etag => Some(etag.as_str()?.to_owned()),
    };
    Some(Entry {
        path: path.clone(),
        size: value.get("size")?.as_u64()?,
        modified_at,
        etag,
    })
}

/// How a provider answered, as the `outcome` label says it.
fn outcome_of(error: &ProviderError) -> &'static str {
    match error {
        ProviderError::NotFound(_) => "not_found",
        ProviderError::AlreadyExists(_) => "conflict",
        ProviderError::PermissionDenied(_) => "denied",
        ProviderError::Invalid(_) | ProviderError::Unsupported(_) => "invalid",
        ProviderError::Temporary(_) | ProviderError::Other(_) => "unavailable",
    }
}

/// Records one request: its latency and outcome, and whether the kind of provider answers (only an
/// `unavailable` outcome says it does not).
fn observe(kind: ProviderKind, operation: &'static str, started: Instant, outcome: &'static str) {
    let kind = kind.as_str();
    metrics::counter!("cloudsync_provider_requests_total", "kind" => kind, "operation" => operation, "outcome" => outcome).increment(1);
    metrics::histogram!("cloudsync_provider_request_duration_seconds", "kind" => kind, "operation" => operation)
        .record(started.elapsed().as_secs_f64());
    metrics::gauge!("cloudsync_provider_up", "kind" => kind).set(if outcome == "unavailable" { 0.0 } else { 1.0 });
}

/// A listing's one request, recorded when its stream goes.
struct ListMeter {
    kind: ProviderKind,
    started: Instant,
    failed: Option<&'static str>,
}

impl ListMeter {
    fn fail(&mut self, outcome: &'static str) {
        self.failed = Some(outcome);
    }
}

impl Drop for ListMeter {
    fn drop(&mut self) {
        observe(self.kind, "list", self.started, self.failed.unwrap_or("ok"));
    }
}

enum MetaCache {
    Own(Mutex<Lru>),
    Shared(SharedMeta),
}

/// A provider behind its quota and metadata cache.
pub struct Limited {
    inner: Box<dyn StorageProvider>,
    requests: Option<Bucket>,
    transfers: Semaphore,
    cache: MetaCache,
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
            cache: MetaCache::Own(Mutex::new(Lru {
                capacity: cache_capacity.max(1),
                entries: HashMap::new(),
                order: VecDeque::new(),
            })),
            stats: Mutex::new((0, 0)),
        }
    }

    /// `inner` behind `quota`, its metadata kept in the cache that `shared` describes.
    pub fn shared(inner: Box<dyn StorageProvider>, quota: Quota, shared: SharedMeta) -> Self {
        Self {
            cache: MetaCache::Shared(shared),
            ..Self::new(inner, quota, 1)
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

    async fn invalidate(&self, path: &ProviderPath) {
        self.invalidate_all(std::slice::from_ref(path)).await;
    }

    /// Drops the entries of `paths` (in one request to a shared cache).
    async fn invalidate_all(&self, paths: &[ProviderPath]) {
        match &self.cache {
            MetaCache::Own(cache) => {
                if let Ok(mut cache) = cache.lock() {
                    for path in paths {
                        cache.invalidate(path);
                    }
                }
            }
            MetaCache::Shared(shared) => {
                let keys: Vec<String> = paths.iter().map(|path| shared.key(path)).collect();
                if let Err(err) = shared.cache.remove(&keys).await {
                    // Expiry bounds how long another process may see the old entry (and nothing
                    // that decides reads it: see `stat_fresh`).
                    tracing::debug!(error = %err, "A changed file's metadata could not be dropped from the shared cache.");
                }
            }
        }
    }

    async fn cached(&self, path: &ProviderPath) -> Option<Entry> {
        match &self.cache {
            MetaCache::Own(cache) => cache.lock().ok().and_then(|mut cache| cache.get(path)),
            MetaCache::Shared(shared) => match shared.cache.get(&shared.key(path)).await {
                Ok(kept) => kept.and_then(|kept| decode(path, &kept)),
                Err(err) => {
                    tracing::debug!(error = %err, "Shared metadata cache unavailable.");
                    None
                }
            },
        }
    }

    async fn keep(&self, entry: &Entry) {
        match &self.cache {
            MetaCache::Own(cache) => {
                if let Ok(mut cache) = cache.lock() {
                    cache.put(entry.clone());
                }
            }
            MetaCache::Shared(shared) => {
                if let Err(err) = shared.cache.put(&shared.key(&entry.path), &encode(entry), shared.ttl).await {
                    tracing::debug!(error = %err, "Metadata not kept in the shared cache.");
                }
            }
        }
    }

    /// Runs one request to the provider and records it (see [`observe`]).
    async fn observed<T>(
        &self,
        operation: &'static str,
        request: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        let result = request.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(error) => outcome_of(error),
        };
        observe(self.inner.kind(), operation, started, outcome);
        result
    }

    /// Asks the provider (within the quota) and keeps the answer.
    async fn stat_through(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        self.take().await;
        let entry = self.observed("stat", self.inner.stat(path)).await?;
        if let Ok(mut stats) = self.stats.lock() {
            stats.0 += 1;
        }
        self.keep(&entry).await;
        Ok(entry)
    }
}

#[async_trait]
impl StorageProvider for Limited {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    async fn check(&self) -> Result<(), ProviderError> {
        self.take().await;
        self.observed("check", self.inner.check()).await
    }

    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>> {
        // A listing is paged by the adapter; it counts as one request here, measured until the
        // stream ends (or is dropped) and failed if any page failed.
        let mut meter = ListMeter {
            kind: self.inner.kind(),
            started: Instant::now(),
            failed: None,
        };
        self.inner
            .list(folder)
            .map(move |entry| {
                if let Err(error) = &entry {
                    meter.fail(outcome_of(error));
                }
                entry
            })
            .boxed()
    }

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        if let Some(entry) = self.cached(path).await {
            if let Ok(mut stats) = self.stats.lock() {
                stats.1 += 1;
            }
            return Ok(entry);
        }
        self.stat_through(path).await
    }

    async fn stat_fresh(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        match self.stat_through(path).await {
            Err(ProviderError::NotFound(what)) => {
                self.invalidate(path).await;
                Err(ProviderError::NotFound(what))
            }
            found => found,
        }
    }

    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError> {
        let _permit = self.transfer().await?;
        self.observed("read", self.inner.read(path, range)).await
    }

    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path).await;
        let written = self.observed("write", self.inner.write(path, data)).await;
        self.invalidate(path).await;
        written
    }

    async fn write_if(&self, path: &ProviderPath, data: ByteStream, expected: Option<&str>) -> Result<u64, ProviderError> {
        // The check's request, then the write's.
        self.take().await;
        let _permit = self.transfer().await?;
        self.invalidate(path).await;
        let written = self.observed("write_if", self.inner.write_if(path, data, expected)).await;
        self.invalidate(path).await;
        written
    }

    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        let deleted = self.observed("delete", self.inner.delete(path)).await;
        self.invalidate(path).await;
        deleted
    }

    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        let renamed = self.observed("rename", self.inner.rename(from, to)).await;
        self.invalidate_all(&[from.clone(), to.clone()]).await;
        renamed
    }

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        self.observed("create_folder", self.inner.create_folder(path)).await
    }

    fn patches(&self) -> bool {
        self.inner.patches()
    }

    async fn write_unsynced(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path).await;
        let written = self.observed("write_unsynced", self.inner.write_unsynced(path, data)).await;
        self.invalidate(path).await;
        written
    }

    async fn flush(&self, paths: &[ProviderPath]) -> Result<(), ProviderError> {
        self.observed("flush", self.inner.flush(paths)).await
    }

    async fn replace_if(&self, from: &ProviderPath, to: &ProviderPath, expected: Option<&str>) -> Result<Entry, ProviderError> {
        self.take().await;
        self.invalidate_all(&[from.clone(), to.clone()]).await;
        let replaced = self.observed("replace_if", self.inner.replace_if(from, to, expected)).await;
        self.invalidate_all(&[from.clone(), to.clone()]).await;
        replaced
    }

    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.take().await;
        self.invalidate_all(&[from.clone(), to.clone()]).await;
        let replaced = self.observed("replace", self.inner.replace(from, to)).await;
        self.invalidate_all(&[from.clone(), to.clone()]).await;
        replaced
    }

    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path).await;
        let written = self.observed("patch", self.inner.patch(path, size, ranges, checksum)).await;
        self.invalidate(path).await;
        written
    }

    fn writes_in_place(&self) -> bool {
        self.inner.writes_in_place()
    }

    /// Under a request quota each range is a request of its own (the new size is set with the
    /// first: a write in place is not atomic either way, and the caller keeps what it destroys).
    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        let _permit = self.transfer().await?;
        self.invalidate(path).await;
        let written = if self.requests.is_some() && ranges.len() > 1 {
            let mut written = Ok(0);
            for (i, range) in ranges.into_iter().enumerate() {
                if i > 0 {
                    self.take().await;
                }
                match self
                    .observed("write_in_place", self.inner.write_in_place(path, size, vec![range]))
                    .await
                {
                    Ok(more) => written = written.map(|n| n + more),
                    Err(err) => {
                        written = Err(err);
                        break;
                    }
                }
            }
            written
        } else {
            self.observed("write_in_place", self.inner.write_in_place(path, size, ranges)).await
        };
        self.invalidate(path).await;
        written
    }

    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        self.observed("remove_abandoned_writes", self.inner.remove_abandoned_writes(folder))
            .await
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

    #[tokio::test]
    async fn instances_sharing_a_cache_see_each_others_entries_and_invalidations() {
        use futures::StreamExt as _;
        let dir = std::env::temp_dir().join(format!("cloudsync-shared-meta-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let shared = SharedMeta {
            cache: Arc::new(cloudsync_cache::MemoryCache::new(16)),
            scope: "p1".into(),
            ttl: Duration::from_secs(60),
        };
        let open = || {
            let local = crate::LocalProvider::open(dir.to_str().expect("utf-8")).expect("root");
            Limited::shared(Box::new(local), Quota::default_for(ProviderKind::Local), shared.clone())
        };
        let (one, two) = (open(), open());
        let path = ProviderPath::parse("a.txt").expect("path");
        let write = |text: &'static str| futures::stream::iter([Ok(bytes::Bytes::from(text))]).boxed();
        one.write(&path, write("one")).await.expect("write");
        let first = one.stat(&path).await.expect("stat");
        assert_eq!(two.stat(&path).await.expect("stat"), first, "kept whole, tag included");
        assert_eq!(two.cache_stats(), (0, 1), "the second instance asked the cache, not the provider");
        // A change the cache was not told about is what `stat_fresh` is for.
        std::fs::write(dir.join("a.txt"), "changed").expect("write");
        assert_eq!(two.stat(&path).await.expect("stat").size, 3, "stat may answer from the cache");
        assert_eq!(two.stat_fresh(&path).await.expect("stat").size, 7, "stat_fresh never does");
        assert_eq!(one.stat(&path).await.expect("stat").size, 7, "and refreshes it for everyone");
        two.write(&path, write("three")).await.expect("write");
        assert_eq!(
            one.stat(&path).await.expect("stat").size,
            5,
            "a write by one instance drops the entry for all"
        );
        std::fs::remove_file(dir.join("a.txt")).expect("remove");
        assert!(matches!(one.stat_fresh(&path).await, Err(ProviderError::NotFound(_))));
        assert!(
            matches!(two.stat(&path).await, Err(ProviderError::NotFound(_))),
            "a file found gone is no longer kept"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
