//! Storage providers behind one interface, [`StorageProvider`]: list a tree as a stream, stat, read a
//! byte range as a stream, write from a stream, delete, move, create folders, and follow the
//! provider's own change feed where it has one (local folders: the operating system's file
//! notifications). The local folder is
//! native (strictly confined to its root, symlinks never followed); every remote kind (S3, WebDAV,
//! SFTP, Azure Blob, Google Drive, Dropbox, OneDrive) goes through Apache OpenDAL with retries
//! (exponential backoff with jitter) and timeouts.

mod error;
mod limits;
mod local;
mod remote;
mod sftp;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::stream::BoxStream;
use serde_json::{Map, Value};

pub use error::ProviderError;
pub use limits::{Limited, Quota, SharedMeta, meta_key};
pub use local::LocalProvider;
pub use remote::RemoteProvider;

/// Whether `name` is one of CloudSync's temporary files (a write in progress: `.<…>.cloudsync-<…>.tmp`
/// or `.cloudsync-<…>.tmp`). Listings of local folders leave them out; the sync engine skips them on
/// every kind.
pub fn is_temporary(name: &str) -> bool {
    name.ends_with(".tmp") && name.starts_with('.') && name.contains(".cloudsync-")
}

/// How old a temporary file on a remote kind must be to count as abandoned: a chunk write or a
/// ranged write takes seconds to minutes, and none of CloudSync's writes lasts a day.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Whether a temporary file last modified `at` is old enough to count as abandoned
/// ([`ABANDONED_AFTER`]).
pub fn stale(at: DateTime<Utc>) -> bool {
    chrono::Duration::from_std(ABANDONED_AFTER).is_ok_and(|age| at < Utc::now() - age)
}

/// Whether process `pid`, which this process could see, has ended (on Linux, no `/proc/<pid>`).
/// This process itself has not; elsewhere nothing is known to have ended.
pub fn process_ended(pid: u32) -> bool {
    pid != std::process::id() && cfg!(target_os = "linux") && !std::path::Path::new("/proc").join(pid.to_string()).exists()
}

/// What a provider knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: ProviderPath,
    pub size: u64,
    pub modified_at: Option<DateTime<Utc>>,
    /// The provider's own version tag (ETag, or size+mtime for local files), for change detection.
    pub etag: Option<String>,
}

impl Entry {
    /// What tells this version of the file from another: the provider's ETag, or size and
    /// modification time.
    pub fn tag(&self) -> String {
        self.etag.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                self.size,
                self.modified_at.and_then(|m| m.timestamp_nanos_opt()).unwrap_or_default()
            )
        })
    }
}

/// A stream of content.
pub type ByteStream = BoxStream<'static, Result<Bytes, ProviderError>>;

/// Something changed on the provider, reported by the provider itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What changed; `None` when the provider cannot say (it lost track: list everything again).
    pub path: Option<ProviderPath>,
}

/// A provider's change feed: changes arrive until it is dropped.
pub struct ChangeFeed {
    changes: tokio::sync::mpsc::UnboundedReceiver<Change>,
    /// Whatever produces the changes (a file watcher), kept alive by the feed.
    _source: Box<dyn Send>,
}

impl ChangeFeed {
    pub fn new(changes: tokio::sync::mpsc::UnboundedReceiver<Change>, source: Box<dyn Send>) -> Self {
        Self { changes, _source: source }
    }

    /// The next change; `None` once the source has stopped.
    pub async fn next(&mut self) -> Option<Change> {
        self.changes.recv().await
    }
}

impl std::fmt::Debug for ChangeFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeFeed")
    }
}

/// One storage provider, reached through its own protocol.
#[async_trait]
pub trait StorageProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Proves the configuration works with one round trip (bad credentials fail here).
    async fn check(&self) -> Result<(), ProviderError>;

    /// Every file below `folder`, recursively, as a stream (folders themselves are not listed).
    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>>;

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError>;

    /// `stat` asked of the provider itself, never of a cache: what a check before or after a copy
    /// must see.
    async fn stat_fresh(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        self.stat(path).await
    }

    /// The bytes of `range` (clamped to the file's end).
    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError>;

    /// Writes the whole stream to `path` (replacing any file there), creating folders as needed,
    /// without holding the content in memory. Returns the bytes written.
    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError>;

    /// Deletes a file; a file that does not exist counts as deleted.
    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError>;

    /// Moves a file, creating the destination's folders. Refuses to overwrite.
    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError>;

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError>;

    /// Moves `from` to `to`, replacing any file at `to` in one step where the protocol allows it
    /// (a POSIX rename, WebDAV `MOVE` with `Overwrite: T`, SFTP's `posix-rename`, an object copy),
    /// so that `to` is never missing on the way. The default deletes `to` first.
    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.delete(to).await?;
        self.rename(from, to).await
    }

    /// Writes `path`, a temporary name of the caller's (see [`is_temporary`]), without making it
    /// durable yet: [`StorageProvider::flush`] does, for many files at once, before they are moved
    /// into place. Kinds whose writes are durable once acknowledged just write.
    async fn write_unsynced(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        self.write(path, data).await
    }

    /// Makes files written with [`StorageProvider::write_unsynced`] durable: local folders flush
    /// the file system once for all of them. Nothing to do elsewhere.
    async fn flush(&self, paths: &[ProviderPath]) -> Result<(), ProviderError> {
        let _ = paths;
        Ok(())
    }

    /// [`StorageProvider::replace`], only while `to` is absent or still shows `expected` (its
    /// [`Entry::tag`]); otherwise [`ProviderError::AlreadyExists`] and nothing changes. Returns
    /// what `to` is then. Local folders check and move in one step.
    async fn replace_if(&self, from: &ProviderPath, to: &ProviderPath, expected: Option<&str>) -> Result<Entry, ProviderError> {
        match self.stat_fresh(to).await {
            Ok(found) if Some(found.tag().as_str()) != expected => {
                return Err(ProviderError::AlreadyExists(format!("{to} changed")));
            }
            Ok(_) | Err(ProviderError::NotFound(_)) => {}
            Err(err) => return Err(err),
        }
        self.replace(from, to).await?;
        self.stat_fresh(to).await
    }

    /// [`StorageProvider::write`], only over what `expected` names (its [`Entry::tag`]; `None`: only
    /// where nothing is); otherwise [`ProviderError::AlreadyExists`] and nothing changes. A file gone
    /// meanwhile also counts as changed. Object stores that take conditional writes (S3's and Azure's
    /// `If-Match` / `If-None-Match`) check and publish in one step; elsewhere the check comes just
    /// before the write.
    async fn write_if(&self, path: &ProviderPath, data: ByteStream, expected: Option<&str>) -> Result<u64, ProviderError> {
        unchanged(self.stat_fresh(path).await, path, expected)?;
        self.write(path, data).await
    }

    /// Whether a write becomes visible only once it is complete, replacing any file there in one step
    /// (local folders write through a synced temporary file and a rename; object stores publish an
    /// upload only when it is finished, and drop an aborted one). Elsewhere (WebDAV, SFTP) a file
    /// being written can be seen half-written, so the sync engine writes to a temporary name first.
    fn atomic_writes(&self) -> bool {
        matches!(
            self.kind(),
            ProviderKind::Local
                | ProviderKind::S3
                | ProviderKind::Azblob
                | ProviderKind::Gdrive
                | ProviderKind::Dropbox
                | ProviderKind::Onedrive
        )
    }

    /// Whether [`StorageProvider::patch`] works here.
    fn patches(&self) -> bool {
        false
    }

    /// Turns the file at `path` into a new version by writing only `ranges` (offset, bytes) over a
    /// copy of it and truncating or extending it to `size`; the new version replaces the old one in
    /// one step, as [`StorageProvider::write`] does, and only if its BLAKE3 is `checksum`
    /// ([`ProviderError::Invalid`] otherwise, with nothing changed). Returns the bytes written.
    /// Local folders do this with a copy made by the kernel (a clone of the file's extents where
    /// the file system shares them), SFTP with a copy made by the server
    /// (`copy-data`); other kinds refuse with
    /// [`ProviderError::Unsupported`].
    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        let _ = (size, ranges, checksum);
        Err(ProviderError::Unsupported(format!("{path}: ranged writes")))
    }

    /// Whether [`StorageProvider::write_in_place`] works here.
    fn writes_in_place(&self) -> bool {
        false
    }

    /// Writes `ranges` (offset, bytes; in order) over the file at `path` where it lies, then cuts
    /// or extends it to `size`, and makes it durable. Returns the bytes written. Not atomic: a
    /// write stopped half-way leaves some ranges written, so a caller keeps what the ranges held
    /// and records its intent first (the sync engine does). Local folders do this; other kinds
    /// refuse with [`ProviderError::Unsupported`].
    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        let _ = (size, ranges);
        Err(ProviderError::Unsupported(format!("{path}: writes in place")))
    }

    /// Removes below `folder` the temporary files of writes that a killed process left behind, and
    /// nothing else: on a local folder a write in progress names its process, and a name whose
    /// process is gone is abandoned; elsewhere the writer cannot be asked, so a temporary file is
    /// abandoned once it is older than [`ABANDONED_AFTER`]. Returns how many were removed.
    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        let _ = folder;
        Ok(0)
    }

    /// The provider's own change feed, where it has one; `None` where changes can only be found by
    /// listing again. None of the remote kinds offers one through OpenDAL.
    ///
    /// # Errors
    /// A feed the provider has but cannot start (no file watcher available, for example).
    fn changes(&self) -> Result<Option<ChangeFeed>, ProviderError> {
        Ok(None)
    }
}

/// Whether what a stat of `path` found is still `expected` (see [`StorageProvider::write_if`]):
/// [`ProviderError::AlreadyExists`] when not.
pub(crate) fn unchanged(found: Result<Entry, ProviderError>, path: &ProviderPath, expected: Option<&str>) -> Result<(), ProviderError> {
    let found = match found {
        Ok(found) => Some(found.tag()),
        Err(ProviderError::NotFound(_)) => None,
        Err(err) => return Err(err),
    };
    if found.as_deref() == expected {
        Ok(())
    } else {
        Err(ProviderError::AlreadyExists(format!("{path} changed")))
    }
}

/// Opens a provider of `kind` from its configuration keys (OpenDAL's own names: for S3 `endpoint`,
/// `bucket`, `region`, `access_key_id`, `secret_access_key`, `root`; for WebDAV `endpoint`,
/// `username`, `password`, `root`; for SFTP `endpoint`, `user`, `key`, `root`; for Azure Blob
/// `endpoint`, `container`, `account_name`, `account_key`, `root`; for `local`, `root`).
///
/// # Errors
/// [`ProviderError::Invalid`] for missing or malformed keys. Nothing is contacted yet; call
/// [`StorageProvider::check`] for that.
///
/// Two more keys set CloudSync's own quota for the provider: `max_requests_per_second` (default 1,000
/// for remote kinds, unlimited for local folders) and `max_concurrent_transfers` (default 8). Every provider is wrapped in [`Limited`] (that quota
/// and an LRU metadata cache).
pub fn open(kind: ProviderKind, config: &Map<String, Value>) -> Result<Box<dyn StorageProvider>, ProviderError> {
    open_cached(kind, config, None)
}

/// [`open`], its metadata kept in the cache that `shared` describes (one that every process shares)
/// rather than in an LRU of its own.
///
/// # Errors
/// As [`open`].
pub fn open_cached(
    kind: ProviderKind,
    config: &Map<String, Value>,
    shared: Option<SharedMeta>,
) -> Result<Box<dyn StorageProvider>, ProviderError> {
    let mut config = config.clone();
    let mut quota = Quota::default_for(kind);
    if let Some(rate) = config.remove("max_requests_per_second") {
        let rate = number(&rate, "max_requests_per_second")?;
        quota.requests_per_second = Some(rate);
        quota.burst = rate.clamp(1.0, 200.0);
    }
    if let Some(transfers) = config.remove("max_concurrent_transfers") {
        quota.concurrent_transfers = number(&transfers, "max_concurrent_transfers")? as usize;
    }
    let inner: Box<dyn StorageProvider> = match kind {
        ProviderKind::Local => {
            if let Some(key) = config.keys().find(|k| k.as_str() != "root") {
                return Err(ProviderError::Invalid(format!("unknown local setting {key:?} (accepted: root)")));
            }
            let root = config
                .get("root")
                .and_then(Value::as_str)
                .ok_or_else(|| ProviderError::Invalid("root (an absolute folder path) is required".into()))?;
            Box::new(LocalProvider::open(root)?)
        }
        remote => Box::new(RemoteProvider::open(remote, &config)?),
    };
    Ok(Box::new(match shared {
        Some(shared) => Limited::shared(inner, quota, shared),
        None => Limited::new(inner, quota, 10_000),
    }))
}

fn number(value: &Value, key: &str) -> Result<f64, ProviderError> {
    let number = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    number
        .filter(|n| n.is_finite() && *n >= 1.0 && *n <= 1_000_000.0)
        .ok_or_else(|| ProviderError::Invalid(format!("{key} must be a number from 1 to 1000000")))
}
