//! The chunk store: chunks named by their BLAKE3, zstd-compressed, written once. A chunk is checked
//! against its name whenever it is read, so a damaged store is noticed rather than restored from.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use cloudsync_domain::ProviderPath;
use cloudsync_providers::{ProviderError, StorageProvider};
use futures::{StreamExt, TryStreamExt};

/// zstd's default level: fast, and most of what a higher level would save.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    Missing(String),
    #[error("chunk {0} is damaged: its content does not match its name")]
    Damaged(String),
    #[error("{0:?} is not a chunk id (64 lowercase hex digits)")]
    InvalidId(String),
    #[error("chunk store: {0}")]
    Io(#[from] std::io::Error),
    #[error("chunk store: {0}")]
    Provider(#[from] ProviderError),
}

/// Where chunks are kept.
#[async_trait]
pub trait ChunkStore: Send + Sync {
    /// Stores a chunk unless it is there already; returns whether it was new. `data` must hash to `id`.
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError>;
    async fn has(&self, id: &str) -> Result<bool, StoreError>;
    /// The chunk's bytes, checked against its id.
    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError>;
    async fn delete(&self, id: &str) -> Result<(), StoreError>;
    /// Every stored chunk's id.
    async fn list(&self) -> Result<Vec<String>, StoreError>;
}

fn check_id(id: &str) -> Result<(), StoreError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(80).collect()))
    }
}

fn compress(id: &str, data: &[u8]) -> Result<Vec<u8>, StoreError> {
    if blake3::hash(data).to_hex().as_str() != id {
        return Err(StoreError::Damaged(id.to_owned()));
    }
    Ok(zstd::bulk::compress(data, ZSTD_LEVEL)?)
}

fn decompress(id: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    let data = zstd::stream::decode_all(stored).map_err(|_| StoreError::Damaged(id.to_owned()))?;
    if blake3::hash(&data).to_hex().as_str() != id {
        return Err(StoreError::Damaged(id.to_owned()));
    }
    Ok(data)
}

/// Chunks in a local folder (the data dir by default): `<root>/<first two hex digits>/<id>.zst`.
#[derive(Clone)]
pub struct FolderStore {
    root: PathBuf,
}

impl FolderStore {
    /// # Errors
    /// The folder cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        Ok(Self { root })
    }

    fn path(&self, id: &str) -> Result<PathBuf, StoreError> {
        check_id(id)?;
        Ok(self.root.join(&id[..2]).join(format!("{id}.zst")))
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, StoreError> + Send + 'static) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| StoreError::Io(std::io::Error::other(err)))?
}

/// Writes `bytes` to `path` through a temporary file that is synced and then renamed into place,
/// so a chunk file is either whole or absent.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let folder = path
        .parent()
        .ok_or_else(|| StoreError::Io(std::io::Error::other("chunk path without folder")))?;
    std::fs::create_dir_all(folder)?;
    let temporary = folder.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        std::fs::remove_file(&temporary).ok();
    }
    Ok(result?)
}

#[async_trait]
impl ChunkStore for FolderStore {
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(id)?;
        if tokio::fs::try_exists(&path).await? {
            return Ok(false);
        }
        let compressed = compress(id, data)?;
        blocking(move || write_atomically(&path, &compressed)).await?;
        Ok(true)
    }

    async fn has(&self, id: &str) -> Result<bool, StoreError> {
        Ok(tokio::fs::try_exists(self.path(id)?).await?)
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let stored = match tokio::fs::read(self.path(id)?).await {
            Ok(stored) => stored,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::Missing(id.to_owned())),
            Err(err) => return Err(err.into()),
        };
        decompress(id, &stored)
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path(id)?).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let root = self.root.clone();
        blocking(move || {
            let mut ids = Vec::new();
            for folder in std::fs::read_dir(&root)? {
                let folder = folder?;
                if !folder.file_type()?.is_dir() {
                    continue;
                }
                for file in std::fs::read_dir(folder.path())? {
                    let name = file?.file_name();
                    if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".zst"))
                        && check_id(id).is_ok()
                    {
                        ids.push(id.to_owned());
                    }
                }
            }
            ids.sort_unstable();
            Ok(ids)
        })
        .await
    }
}

/// Chunks on a connected provider (an S3 bucket, say), under a folder of it.
#[derive(Clone)]
pub struct ProviderStore {
    provider: Arc<dyn StorageProvider>,
    folder: ProviderPath,
}

impl ProviderStore {
    pub fn new(provider: Arc<dyn StorageProvider>, folder: ProviderPath) -> Self {
        Self { provider, folder }
    }

    fn path(&self, id: &str) -> Result<ProviderPath, StoreError> {
        check_id(id)?;
        self.folder
            .join(&id[..2])
            .and_then(|f| f.join(&format!("{id}.zst")))
            .map_err(|err| StoreError::InvalidId(err.to_string()))
    }
}

#[async_trait]
impl ChunkStore for ProviderStore {
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError> {
        if self.has(id).await? {
            return Ok(false);
        }
        let compressed = Bytes::from(compress(id, data)?);
        // Providers write through a temporary name (or an atomic upload): no partial chunk is visible.
        self.provider
            .write(&self.path(id)?, futures::stream::once(async move { Ok(compressed) }).boxed())
            .await?;
        Ok(true)
    }

    async fn has(&self, id: &str) -> Result<bool, StoreError> {
        match self.provider.stat(&self.path(id)?).await {
            Ok(_) => Ok(true),
            Err(ProviderError::NotFound(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(id)?;
        let entry = match self.provider.stat(&path).await {
            Ok(entry) => entry,
            Err(ProviderError::NotFound(_)) => return Err(StoreError::Missing(id.to_owned())),
            Err(err) => return Err(err.into()),
        };
        let stored: Vec<Bytes> = self.provider.read(&path, 0..entry.size).await?.try_collect().await?;
        decompress(id, &stored.concat())
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        match self.provider.delete(&self.path(id)?).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn list(&self) -> Result<Vec<String>, StoreError> {
        let mut ids: Vec<String> = self
            .provider
            .list(&self.folder)
            .try_filter_map(|entry| async move {
                Ok(entry
                    .path
                    .name()
                    .strip_suffix(".zst")
                    .filter(|id| check_id(id).is_ok())
                    .map(str::to_owned))
            })
            .try_collect()
            .await?;
        ids.sort_unstable();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn contract(store: &dyn ChunkStore) {
        let data = b"hello chunk store, hello chunk store, hello chunk store".repeat(100);
        let id = blake3::hash(&data).to_hex().to_string();
        assert!(!store.has(&id).await.expect("has"));
        assert!(matches!(store.get(&id).await, Err(StoreError::Missing(_))));
        assert!(store.put(&id, &data).await.expect("put"));
        assert!(!store.put(&id, &data).await.expect("second put"), "a chunk is stored once");
        assert!(store.has(&id).await.expect("has"));
        assert_eq!(store.get(&id).await.expect("get"), data);
        assert_eq!(store.list().await.expect("list"), vec![id.clone()]);
        // Bytes that do not hash to the id are refused, and so are malformed ids.
        let other = blake3::hash(b"other").to_hex().to_string();
        assert!(matches!(store.put(&other, &data).await, Err(StoreError::Damaged(_))));
        assert!(!store.has(&other).await.expect("has"));
        for bad in ["", "../../etc/passwd", &id[..63], &id.to_uppercase()] {
            assert!(matches!(store.put(bad, &data).await, Err(StoreError::InvalidId(_))), "{bad}");
        }
        store.delete(&id).await.expect("delete");
        store.delete(&id).await.expect("deleting twice is fine");
        assert!(store.list().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn folder_store_keeps_chunks_compressed_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FolderStore::open(dir.path().join("chunks")).expect("store");
        contract(&store).await;

        let data = vec![b'a'; 100_000];
        let id = blake3::hash(&data).to_hex().to_string();
        store.put(&id, &data).await.expect("put");
        let file = dir.path().join("chunks").join(&id[..2]).join(format!("{id}.zst"));
        let stored = std::fs::read(&file).expect("stored file");
        assert!(stored.len() < 1000, "100,000 repeated bytes stored in {} bytes", stored.len());
        // A damaged chunk file is reported, not returned.
        let mut damaged = zstd::bulk::compress(b"something else", 3).expect("compress");
        std::fs::write(&file, &damaged).expect("damage");
        assert!(matches!(store.get(&id).await, Err(StoreError::Damaged(_))));
        damaged.truncate(3);
        std::fs::write(&file, &damaged).expect("damage");
        assert!(matches!(store.get(&id).await, Err(StoreError::Damaged(_))));
    }

    #[tokio::test]
    async fn provider_store_passes_the_same_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = serde_json::Map::new();
        settings.insert("root".into(), dir.path().to_string_lossy().into_owned().into());
        let provider = cloudsync_providers::open(cloudsync_domain::ProviderKind::Local, &settings).expect("local provider");
        let store = ProviderStore::new(Arc::from(provider), ProviderPath::parse(".cloudsync/chunks").expect("path"));
        contract(&store).await;
    }
}
