//! The chunk store: chunks written once, each checked against its content id whenever it is read,
//! so a damaged store is noticed rather than restored from. [`ProviderStore`] keeps the files;
//! accounts store through [`crate::AccountStore`], which seals each chunk under the account's key.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use cloudsync_cache::Cache;
use cloudsync_domain::{ProviderKind, ProviderPath};
use cloudsync_providers::{ProviderError, SharedMeta, StorageProvider};
use futures::{StreamExt, TryStreamExt};

/// Numbers the temporary names of chunk writes in this process.
static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// zstd's default level: fast, and most of what a higher level would save.
const ZSTD_LEVEL: i32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("chunk {0} is not in the store")]
    Missing(String),
    #[error("chunk {0} is damaged: its content does not match its name")]
    Damaged(String),
    #[error("chunk {0} cannot be opened with its account's key: damaged, or sealed under another key")]
    Unopenable(String),
    #[error("{0:?} is not a chunk id (64 lowercase hex digits)")]
    InvalidId(String),
    #[error("chunk store: {0}")]
    Io(#[from] std::io::Error),
    #[error("chunk store: {0}")]
    Provider(#[from] ProviderError),
}

/// Where chunks are kept, by their content id (the BLAKE3 of their bytes).
#[async_trait]
pub trait ChunkStore: Send + Sync {
    /// Stores a chunk unless it is there already; returns whether it was new. `data` must hash to `id`.
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError>;
    async fn has(&self, id: &str) -> Result<bool, StoreError>;
    /// The chunk's bytes, checked against its id.
    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError>;
    async fn delete(&self, id: &str) -> Result<(), StoreError>;

    /// Makes the names of these stored chunks durable (a power cut keeps them, not only their
    /// bytes), for what must be there before something else is overwritten. Stores whose writes
    /// are durable when they return do nothing.
    async fn make_durable(&self, ids: &[String]) -> Result<(), StoreError> {
        let _ = ids;
        Ok(())
    }

    /// Stores many chunks (id, bytes) at once; returns how many were new. A store may make them
    /// durable together rather than one by one.
    async fn put_many(&self, chunks: &[(String, &[u8])]) -> Result<usize, StoreError> {
        let mut added = 0;
        for (id, data) in chunks {
            added += usize::from(self.put(id, data).await?);
        }
        Ok(added)
    }
}

pub(crate) fn check_id(id: &str) -> Result<(), StoreError> {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(StoreError::InvalidId(id.chars().take(80).collect()))
    }
}

/// Refuses bytes that do not hash to the id they are stored under.
pub(crate) fn check_content(id: &str, data: &[u8]) -> Result<(), StoreError> {
    if blake3::hash(data).to_hex().as_str() == id {
        Ok(())
    } else {
        Err(StoreError::Damaged(id.to_owned()))
    }
}

pub(crate) fn compress(data: &[u8]) -> Result<Vec<u8>, StoreError> {
    Ok(zstd::bulk::compress(data, ZSTD_LEVEL)?)
}

/// The bytes of a compressed chunk, checked against `id`.
pub(crate) fn decompress(id: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    let data = zstd::stream::decode_all(stored).map_err(|_| StoreError::Damaged(id.to_owned()))?;
    check_content(id, &data)?;
    Ok(data)
}

/// How a file of the store keeps its chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Form {
    /// Named by the chunk's BLAKE3 and only compressed (`<id>.zst`): what the store held before
    /// chunks were sealed. Still read; no longer written for accounts.
    Plain,
    /// Named by its account's keyed hash of the chunk's id, compressed then encrypted
    /// (`<name>.sealed`, see [`crate::AccountStore`]).
    Sealed,
}

impl Form {
    fn suffix(self) -> &'static str {
        match self {
            Self::Plain => ".zst",
            Self::Sealed => ".sealed",
        }
    }
}

/// Makes a chunk file's bytes from its name and the chunk's bytes.
pub(crate) type Encode<'a> = dyn Fn(&str, &[u8]) -> Result<Vec<u8>, StoreError> + Sync + 'a;

/// A file of the store: its name (64 hex digits) and form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Stored {
    pub name: String,
    pub form: Form,
}

/// Chunk files on a provider, under a folder of it: `<folder>/<first two hex digits>/<name><suffix>`
/// (see [`Form`]). The provider writes each file through a temporary name (or an atomic upload),
/// so a chunk file is either whole or absent. As a [`ChunkStore`] itself it keeps plain chunks;
/// an account's chunks go through [`crate::AccountStore`].
#[derive(Clone)]
pub struct ProviderStore {
    provider: Arc<dyn StorageProvider>,
    folder: ProviderPath,
}

impl ProviderStore {
    /// Chunks on a connected provider (an S3 bucket, say), under `folder`.
    pub fn new(provider: Arc<dyn StorageProvider>, folder: ProviderPath) -> Self {
        Self { provider, folder }
    }

    /// Chunks in a local folder (the data dir's by default), created if missing, through the local
    /// provider.
    ///
    /// # Errors
    /// The folder cannot be created, or its path is not UTF-8.
    pub fn in_folder(root: &Path) -> Result<Self, StoreError> {
        Self::in_folder_cached(root, None)
    }

    /// [`ProviderStore::in_folder`], the metadata of its files kept in `shared` (a cache every
    /// process shares, and for how long) rather than in an LRU of this process's own.
    ///
    /// # Errors
    /// As [`ProviderStore::in_folder`].
    pub fn in_folder_cached(root: &Path, shared: Option<(Arc<dyn Cache>, Duration)>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root)?;
        // A local provider's root is absolute; a data dir given relatively (`./data`) is made so.
        let root = std::fs::canonicalize(root)?;
        let root = root
            .to_str()
            .ok_or_else(|| StoreError::Io(std::io::Error::other("the chunk folder's path is not UTF-8")))?;
        let mut settings = serde_json::Map::new();
        settings.insert("root".into(), root.into());
        let provider = cloudsync_providers::open_cached(ProviderKind::Local, &settings, shared_meta(shared, "local", &settings))?;
        Ok(Self::new(Arc::from(provider), ProviderPath::root()))
    }

    /// Chunks on the provider that `settings` describe: its `kind` (`s3`, `webdav`, `sftp`,
    /// `local`, …), an optional `folder` (default `cloudsync-chunks`), and the provider's own
    /// settings as `connectProvider` takes them.
    ///
    /// # Errors
    /// A missing or unknown kind, a bad folder, or settings the provider refuses.
    pub fn from_settings(settings: &serde_json::Map<String, serde_json::Value>) -> Result<Self, StoreError> {
        Self::from_settings_cached(settings, None)
    }

    /// [`ProviderStore::from_settings`], the metadata of its files kept in `shared` (see
    /// [`ProviderStore::in_folder_cached`]).
    ///
    /// # Errors
    /// As [`ProviderStore::from_settings`].
    pub fn from_settings_cached(
        settings: &serde_json::Map<String, serde_json::Value>,
        shared: Option<(Arc<dyn Cache>, Duration)>,
    ) -> Result<Self, StoreError> {
        let mut settings = settings.clone();
        let invalid = |why: String| StoreError::Provider(ProviderError::Invalid(why));
        let kind = match settings.remove("kind") {
            Some(serde_json::Value::String(kind)) => ProviderKind::parse(&kind).map_err(|err| invalid(format!("kind: {err}")))?,
            _ => return Err(invalid("a kind is required (s3, webdav, sftp, local, …)".into())),
        };
        let folder = match settings.remove("folder") {
            None => ProviderPath::parse("cloudsync-chunks"),
            Some(serde_json::Value::String(folder)) => ProviderPath::parse(&folder),
            Some(_) => return Err(invalid("folder must be a string".into())),
        }
        .map_err(|err| invalid(format!("folder: {err}")))?;
        let provider = cloudsync_providers::open_cached(kind, &settings, shared_meta(shared, kind.as_str(), &settings))?;
        Ok(Self::new(Arc::from(provider), folder))
    }

    fn path(&self, name: &str, form: Form) -> Result<ProviderPath, StoreError> {
        check_id(name)?;
        self.folder
            .join(&name[..2])
            .and_then(|f| f.join(&format!("{name}{}", form.suffix())))
            .map_err(|err| StoreError::InvalidId(err.to_string()))
    }

    /// Whether the file `name` of `form` is there, asked of the provider itself: a cached "there"
    /// after the collector removed it would leave a new version without its chunk.
    pub(crate) async fn exists(&self, name: &str, form: Form) -> Result<bool, StoreError> {
        match self.provider.stat_fresh(&self.path(name, form)?).await {
            Ok(_) => Ok(true),
            Err(ProviderError::NotFound(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// The stored bytes of the file `name` of `form`; `None` when it is not there. Its size may
    /// come from the metadata cache (a file's name is its content's, so its size never changes);
    /// one that turns out gone is asked of the provider again.
    pub(crate) async fn read(&self, name: &str, form: Form) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name, form)?;
        let entry = match self.provider.stat(&path).await {
            Ok(entry) => entry,
            Err(ProviderError::NotFound(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        match self.provider.read(&path, 0..entry.size).await {
            Ok(stream) => Ok(Some(stream.try_collect::<Vec<Bytes>>().await?.concat())),
            Err(ProviderError::NotFound(_)) => match self.provider.stat_fresh(&path).await {
                // Removed since it was cached (`stat_fresh` dropped the entry).
                Err(ProviderError::NotFound(_)) => Ok(None),
                Err(err) => Err(err.into()),
                Ok(entry) => {
                    let stored: Vec<Bytes> = self.provider.read(&path, 0..entry.size).await?.try_collect().await?;
                    Ok(Some(stored.concat()))
                }
            },
            Err(err) => Err(err.into()),
        }
    }

    /// Writes the files of `items` (name, chunk bytes) that are not there yet, each as `encode`
    /// makes it from the name and the bytes; returns how many were written. Where writes are not
    /// atomic on their own (local folders, WebDAV, SFTP), they go to temporary names, are made
    /// durable with one flush, then moved to their names.
    pub(crate) async fn write_new(&self, form: Form, items: &[(String, &[u8])], encode: &Encode<'_>) -> Result<usize, StoreError> {
        if self.provider.atomic_writes() && self.provider.kind() != ProviderKind::Local {
            let mut added = 0;
            for (name, data) in items {
                if self.exists(name, form).await? {
                    continue;
                }
                let encoded = Bytes::from(encode(name, data)?);
                self.provider
                    .write(&self.path(name, form)?, futures::stream::once(async move { Ok(encoded) }).boxed())
                    .await?;
                added += 1;
            }
            return Ok(added);
        }
        let mut pending: Vec<(ProviderPath, ProviderPath)> = Vec::new();
        let written = async {
            for (name, data) in items {
                if self.exists(name, form).await? || pending.iter().any(|(_, path)| path.name().starts_with(name.as_str())) {
                    continue;
                }
                let path = self.path(name, form)?;
                // Unique per write: two runs may store the same chunk at once.
                let unique = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let temporary = path
                    .parent()
                    .join(&format!(".{}.cloudsync-{}-{unique}.tmp", path.name(), std::process::id()))
                    .map_err(|err| StoreError::InvalidId(err.to_string()))?;
                let encoded = Bytes::from(encode(name, data)?);
                self.provider
                    .write_unsynced(&temporary, futures::stream::once(async move { Ok(encoded) }).boxed())
                    .await?;
                pending.push((temporary, path));
            }
            let temporaries: Vec<ProviderPath> = pending.iter().map(|(t, _)| t.clone()).collect();
            self.provider.flush(&temporaries).await?;
            for (temporary, path) in &pending {
                match self.provider.replace_if(temporary, path, None).await {
                    Ok(_) => {}
                    // Stored meanwhile by someone else: the same chunk, by its name.
                    Err(ProviderError::AlreadyExists(_)) => self.provider.delete(temporary).await?,
                    Err(err) => return Err(err.into()),
                }
            }
            Ok::<usize, StoreError>(pending.len())
        }
        .await;
        if written.is_err() {
            for (temporary, _) in &pending {
                let _ = self.provider.delete(temporary).await;
            }
        }
        written
    }

    /// Deletes a file of the store (gone already is fine).
    ///
    /// # Errors
    /// The provider's.
    pub async fn remove(&self, stored: &Stored) -> Result<(), StoreError> {
        match self.provider.delete(&self.path(&stored.name, stored.form)?).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Syncs the folders that name these files (their bytes were synced before they were renamed
    /// into place).
    pub(crate) async fn sync_names(&self, names: &[String], form: Form) -> Result<(), StoreError> {
        let mut folders: Vec<ProviderPath> = Vec::new();
        for name in names {
            let folder = self.path(name, form)?.parent();
            if !folders.contains(&folder) {
                folders.push(folder);
            }
        }
        for folder in folders {
            self.provider.flush(std::slice::from_ref(&folder)).await?;
        }
        Ok(())
    }

    /// Deletes what interrupted chunk writes of processes that are gone left behind (where the
    /// provider can tell: local folders); returns how many.
    ///
    /// # Errors
    /// The provider's.
    pub async fn remove_temporaries(&self) -> Result<usize, StoreError> {
        let removed = self.provider.remove_abandoned_writes(&self.folder).await?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    /// Every file of the store, plain and sealed, in order.
    ///
    /// # Errors
    /// The provider's.
    pub async fn list(&self) -> Result<Vec<Stored>, StoreError> {
        let mut stored: Vec<Stored> = self
            .provider
            .list(&self.folder)
            .try_filter_map(|entry| async move {
                let name = entry.path.name();
                Ok([Form::Plain, Form::Sealed].into_iter().find_map(|form| {
                    name.strip_suffix(form.suffix())
                        .filter(|name| check_id(name).is_ok())
                        .map(|name| Stored {
                            name: name.to_owned(),
                            form,
                        })
                }))
            })
            .try_collect()
            .await?;
        stored.sort_unstable();
        Ok(stored)
    }
}

/// Plain chunks: named by their id, compressed, not sealed.
#[async_trait]
impl ChunkStore for ProviderStore {
    async fn put(&self, id: &str, data: &[u8]) -> Result<bool, StoreError> {
        Ok(self.put_many(&[(id.to_owned(), data)]).await? == 1)
    }

    async fn has(&self, id: &str) -> Result<bool, StoreError> {
        self.exists(id, Form::Plain).await
    }

    async fn get(&self, id: &str) -> Result<Vec<u8>, StoreError> {
        match self.read(id, Form::Plain).await? {
            Some(stored) => decompress(id, &stored),
            None => Err(StoreError::Missing(id.to_owned())),
        }
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        check_id(id)?;
        self.remove(&Stored {
            name: id.to_owned(),
            form: Form::Plain,
        })
        .await
    }

    async fn put_many(&self, chunks: &[(String, &[u8])]) -> Result<usize, StoreError> {
        self.write_new(Form::Plain, chunks, &|id, data| {
            check_content(id, data)?;
            compress(data)
        })
        .await
    }

    async fn make_durable(&self, ids: &[String]) -> Result<(), StoreError> {
        self.sync_names(ids, Form::Plain).await
    }
}

/// The shared metadata of the chunk store on the provider `kind` with `settings`: the same scope in
/// every process that opens the same store, a digest of where it is (its settings without
/// credentials and CloudSync's own quota, which may differ between processes; nothing of the
/// settings leaves this process).
fn shared_meta(
    shared: Option<(Arc<dyn Cache>, Duration)>,
    kind: &str,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Option<SharedMeta> {
    shared.map(|(cache, ttl)| {
        let secret = |key: &str| ["key", "secret", "password", "token", "max_"].iter().any(|s| key.contains(s));
        let place: serde_json::Map<_, _> = settings
            .iter()
            .filter(|(k, _)| !secret(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let described = format!("{kind}\n{}", serde_json::Value::Object(place));
        SharedMeta {
            cache,
            scope: format!("chunks-{}", &blake3::hash(described.as_bytes()).to_hex()[..32]),
            ttl,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_folder_given_relatively_is_a_store_too() {
        // The default data dir is `data`, relative to where the server starts.
        let dir = tempfile::tempdir().expect("a temporary folder");
        let cwd = std::env::current_dir().expect("the current folder");
        let up = "../".repeat(cwd.components().count().saturating_sub(1));
        let relative = Path::new(&up).join(dir.path().strip_prefix("/").expect("absolute")).join("chunks");
        assert!(relative.is_relative());
        let store = ProviderStore::in_folder(&relative).expect("a store in a relative folder");
        contract(&store).await;
    }

    #[tokio::test]
    async fn stores_sharing_a_metadata_cache_never_trust_it_for_what_is_gone() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let cache: Arc<dyn Cache> = Arc::new(cloudsync_cache::MemoryCache::new(100));
        let open = || ProviderStore::in_folder_cached(dir.path(), Some((Arc::clone(&cache), Duration::from_secs(60)))).expect("store");
        let (one, two) = (open(), open());
        contract(&one).await;
        let data = b"a chunk that both processes see".repeat(10);
        let id = blake3::hash(&data).to_hex().to_string();
        assert!(one.put(&id, &data).await.expect("put"));
        assert_eq!(two.get(&id).await.expect("read, its size now cached"), data);
        // Removed behind the cache's back (a collector that could not reach Redis, say): the stale
        // entry makes neither a "there" nor a failed read.
        std::fs::remove_file(dir.path().join(&id[..2]).join(format!("{id}.zst"))).expect("remove");
        assert!(!two.has(&id).await.expect("has"), "existence is asked of the folder");
        assert!(matches!(two.get(&id).await, Err(StoreError::Missing(_))), "a read finds it gone");
        assert!(two.put(&id, &data).await.expect("put"), "and a new version writes it again");
        assert_eq!(one.get(&id).await.expect("get"), data);
        // A removal through either store drops the entry for both.
        two.delete(&id).await.expect("delete");
        assert!(!one.has(&id).await.expect("has"));
        assert!(matches!(one.get(&id).await, Err(StoreError::Missing(_))));
    }

    fn plain(ids: &[&String]) -> Vec<Stored> {
        let mut stored: Vec<Stored> = ids
            .iter()
            .map(|id| Stored {
                name: (*id).clone(),
                form: Form::Plain,
            })
            .collect();
        stored.sort_unstable();
        stored
    }

    async fn contract(store: &ProviderStore) {
        let data = b"hello chunk store, hello chunk store, hello chunk store".repeat(100);
        let id = blake3::hash(&data).to_hex().to_string();
        assert!(!store.has(&id).await.expect("has"));
        assert!(matches!(store.get(&id).await, Err(StoreError::Missing(_))));
        assert!(store.put(&id, &data).await.expect("put"));
        assert!(!store.put(&id, &data).await.expect("second put"), "a chunk is stored once");
        assert!(store.has(&id).await.expect("has"));
        assert_eq!(store.get(&id).await.expect("get"), data);
        assert_eq!(store.list().await.expect("list"), plain(&[&id]));
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
        // Many at once: each stored once, read back checked, no temporary file left.
        let many: Vec<Vec<u8>> = (0..5_u8).map(|i| vec![i; 1000 + usize::from(i)]).collect();
        let mut batch: Vec<(String, &[u8])> = many.iter().map(|d| (blake3::hash(d).to_hex().to_string(), d.as_slice())).collect();
        batch.push(batch[0].clone());
        assert_eq!(store.put_many(&batch).await.expect("put many"), 5);
        assert_eq!(store.put_many(&batch).await.expect("again"), 0);
        for (id, data) in &batch {
            assert_eq!(store.get(id).await.expect("get"), *data);
        }
        assert_eq!(store.list().await.expect("list").len(), 5);
        let bad = [(blake3::hash(b"x").to_hex().to_string(), b"y".as_slice())];
        assert!(matches!(store.put_many(&bad).await, Err(StoreError::Damaged(_))));
        for (id, _) in &batch {
            store.delete(id).await.expect("delete");
        }
    }

    #[tokio::test]
    async fn a_folder_store_keeps_chunks_compressed_and_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ProviderStore::in_folder(&dir.path().join("chunks")).expect("store");
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
    async fn whole_contents_are_stored_once_per_chunk_and_come_back_checked() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ProviderStore::in_folder(dir.path()).expect("store");
        let mut text = String::new();
        for line in 0..40_000 {
            text.push_str(&format!("line {line} of a long text\n"));
        }
        let id = crate::put_content(&store, text.as_bytes()).await.expect("stored");
        assert_eq!(crate::get_content(&store, &id).await.expect("read back"), text.as_bytes());
        let held = store.list().await.expect("list").len();
        // One more line at the end: the same manifest chunks but the last, one new manifest.
        let longer = format!("{text}one more line\n");
        let second = crate::put_content(&store, longer.as_bytes()).await.expect("stored");
        assert_ne!(second, id);
        assert!(
            store.list().await.expect("list").len() <= held + 2,
            "only the changed chunk and a manifest are added"
        );
        assert_eq!(crate::get_content(&store, &second).await.expect("read back"), longer.as_bytes());
        assert_eq!(
            crate::get_content(&store, "").await.err().map(|e| e.to_string()),
            Some(StoreError::InvalidId(String::new()).to_string())
        );
        let empty = crate::put_content(&store, b"").await.expect("stored");
        assert!(crate::get_content(&store, &empty).await.expect("read back").is_empty());
    }

    #[tokio::test]
    async fn a_streamed_content_is_stored_in_batches_and_comes_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = ProviderStore::in_folder(dir.path()).expect("store");
        let data: Vec<u8> = (0..20_u32 * 1024 * 1024 / 4)
            .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
            .collect();
        let pieces: Vec<Result<Bytes, ProviderError>> = data.chunks(300_000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let (id, manifest) = crate::put_stream(&store, futures::stream::iter(pieces).boxed())
            .await
            .expect("stored");
        assert_eq!(manifest.checksum, blake3::hash(&data).to_hex().to_string());
        assert_eq!(manifest.size, data.len() as u64);
        assert_eq!(crate::get_content(&store, &id).await.expect("read back"), data);
        // A failing stream stores no manifest.
        let broken = futures::stream::iter([Ok(Bytes::from_static(b"part")), Err(ProviderError::Other("gone".into()))]).boxed();
        assert!(crate::put_stream(&store, broken).await.is_err());
    }

    #[tokio::test]
    async fn a_store_on_a_connected_provider_passes_the_same_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = serde_json::Map::new();
        settings.insert("root".into(), dir.path().to_string_lossy().into_owned().into());
        let provider = cloudsync_providers::open(cloudsync_domain::ProviderKind::Local, &settings).expect("local provider");
        let store = ProviderStore::new(Arc::from(provider), ProviderPath::parse(".cloudsync/chunks").expect("path"));
        contract(&store).await;
    }
}
