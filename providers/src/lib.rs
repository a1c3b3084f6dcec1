//! Storage providers behind one interface, [`StorageProvider`]: list a tree as a stream, stat, read a
//! byte range as a stream, write from a stream, delete, move, create folders. The local folder is
//! native (strictly confined to its root, symlinks never followed); every remote kind (S3, WebDAV,
//! SFTP, Azure Blob, Google Drive, Dropbox, OneDrive) goes through Apache OpenDAL with retries
//! (exponential backoff with jitter) and timeouts.

mod error;
mod local;
mod remote;

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::stream::BoxStream;
use serde_json::{Map, Value};

pub use error::ProviderError;
pub use local::LocalProvider;
pub use remote::RemoteProvider;

/// What a provider knows about one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: ProviderPath,
    pub size: u64,
    pub modified_at: Option<DateTime<Utc>>,
    /// The provider's own version tag (ETag, or size+mtime for local files), for change detection.
    pub etag: Option<String>,
}

/// A stream of content.
pub type ByteStream = BoxStream<'static, Result<Bytes, ProviderError>>;

/// One storage provider, reached through its own protocol.
#[async_trait]
pub trait StorageProvider: Send + Sync {
    fn kind(&self) -> ProviderKind;

    /// Proves the configuration works with one round trip (bad credentials fail here).
    async fn check(&self) -> Result<(), ProviderError>;

    /// Every file below `folder`, recursively, as a stream (folders themselves are not listed).
    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>>;

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError>;

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
}

/// Opens a provider of `kind` from its configuration keys (OpenDAL's own names: for S3 `endpoint`,
/// `bucket`, `region`, `access_key_id`, `secret_access_key`, `root`; for WebDAV `endpoint`,
/// `username`, `password`, `root`; for SFTP `endpoint`, `user`, `key`, `root`; for Azure Blob
/// `endpoint`, `container`, `account_name`, `account_key`, `root`; for `local`, `root`).
///
/// # Errors
/// [`ProviderError::Invalid`] for missing or malformed keys. Nothing is contacted yet; call
/// [`StorageProvider::check`] for that.
pub fn open(kind: ProviderKind, config: &Map<String, Value>) -> Result<Box<dyn StorageProvider>, ProviderError> {
    match kind {
        ProviderKind::Local => {
            let root = config.get("root").and_then(Value::as_str).ok_or_else(|| ProviderError::Invalid("root (an absolute folder path) is required".into()))?;
            Ok(Box::new(LocalProvider::open(root)?))
        }
        remote => Ok(Box::new(RemoteProvider::open(remote, config)?)),
    }
}
