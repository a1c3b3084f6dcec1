//! A real provider with faults put in on purpose: its writes counted, the data of a write cut off
//! after some bytes (as a dropped connection would), or a file changed behind the run's back just
//! before the run writes it.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use cloudsync_domain::{ProviderKind, ProviderPath};
use cloudsync_providers::{ByteStream, ChangeFeed, Entry, ProviderError, StorageProvider};
use futures::StreamExt;
use futures::stream::BoxStream;

/// What goes wrong, shared by the test and every provider it wraps.
#[derive(Default)]
pub struct Faults {
    root: Mutex<Option<PathBuf>>,
    /// Writes end with an error once they have passed this many bytes (0: never).
    break_after: AtomicU64,
    /// A file name, and what to write into that file just before the run first writes it.
    edit: Mutex<Option<(String, Vec<u8>)>>,
    writes: AtomicUsize,
}

impl Faults {
    /// The folder of the provider these faults concern (edits go there).
    pub fn set_root(&self, root: &Path) {
        *self.root.lock().expect("lock") = Some(root.to_owned());
    }

    pub fn break_streams_after(&self, bytes: u64) {
        self.break_after.store(bytes, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.break_after.store(0, Ordering::SeqCst);
        *self.edit.lock().expect("lock") = None;
    }

    pub fn edit_before_write(&self, path: &str, content: &[u8]) {
        *self.edit.lock().expect("lock") = Some((path.to_owned(), content.to_vec()));
    }

    /// Writes begun so far (whole files, ranged writes, temporary files).
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }

    fn data(&self, data: ByteStream) -> ByteStream {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let limit = self.break_after.load(Ordering::SeqCst);
        if limit == 0 {
            return data;
        }
        let mut passed = 0_u64;
        data.map(move |chunk| {
            let chunk = chunk?;
            passed += chunk.len() as u64;
            if passed > limit {
                return Err(ProviderError::Temporary(format!("the connection dropped after {limit} bytes")));
            }
            Ok(chunk)
        })
        .boxed()
    }

    /// Makes the planned edit when `path` is the file it concerns (once).
    fn before_writing(&self, path: &ProviderPath) {
        let mut edit = self.edit.lock().expect("lock");
        if edit.as_ref().is_some_and(|(name, _)| name == path.as_str())
            && let Some((name, content)) = edit.take()
        {
            let root = self.root.lock().expect("lock").clone().expect("the faulty provider's root");
            std::fs::write(root.join(name), content).expect("edit behind the run's back");
        }
    }
}

/// `inner`, with `faults`.
pub struct Faulty {
    inner: Arc<dyn StorageProvider>,
    faults: Arc<Faults>,
}

impl Faulty {
    pub fn new(inner: Arc<dyn StorageProvider>, faults: Arc<Faults>) -> Self {
        Self { inner, faults }
    }
}

#[async_trait]
impl StorageProvider for Faulty {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    async fn check(&self) -> Result<(), ProviderError> {
        self.inner.check().await
    }

    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>> {
        self.inner.list(folder)
    }

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        self.inner.stat(path).await
    }

    async fn stat_fresh(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        self.inner.stat_fresh(path).await
    }

    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError> {
        self.inner.read(path, range).await
    }

    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        self.faults.before_writing(path);
        self.inner.write(path, self.faults.data(data)).await
    }

    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.inner.delete(path).await
    }

    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.inner.rename(from, to).await
    }

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        self.inner.create_folder(path).await
    }

    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.faults.before_writing(to);
        self.inner.replace(from, to).await
    }

    async fn write_unsynced(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        self.faults.before_writing(path);
        self.inner.write_unsynced(path, self.faults.data(data)).await
    }

    async fn flush(&self, paths: &[ProviderPath]) -> Result<(), ProviderError> {
        self.inner.flush(paths).await
    }

    async fn replace_if(&self, from: &ProviderPath, to: &ProviderPath, expected: Option<&str>) -> Result<Entry, ProviderError> {
        self.faults.before_writing(to);
        self.inner.replace_if(from, to, expected).await
    }

    async fn write_if(&self, path: &ProviderPath, data: ByteStream, expected: Option<&str>) -> Result<u64, ProviderError> {
        self.faults.before_writing(path);
        self.inner.write_if(path, self.faults.data(data), expected).await
    }

    fn atomic_writes(&self) -> bool {
        self.inner.atomic_writes()
    }

    fn patches(&self) -> bool {
        self.inner.patches()
    }

    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        self.faults.before_writing(path);
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.patch(path, size, ranges, checksum).await
    }

    fn writes_in_place(&self) -> bool {
        self.inner.writes_in_place()
    }

    /// A broken write in place writes the ranges that fit before the break (and the new size),
    /// then fails: the file is left half-written.
    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        self.faults.before_writing(path);
        self.faults.writes.fetch_add(1, Ordering::SeqCst);
        let limit = self.faults.break_after.load(Ordering::SeqCst);
        if limit == 0 {
            return self.inner.write_in_place(path, size, ranges).await;
        }
        let mut passed = 0_u64;
        let sent: Vec<(u64, Bytes)> = ranges
            .into_iter()
            .take_while(|(_, bytes)| {
                passed += bytes.len() as u64;
                passed <= limit
            })
            .collect();
        self.inner.write_in_place(path, size, sent).await?;
        Err(ProviderError::Temporary(format!("the connection dropped after {limit} bytes")))
    }

    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        self.inner.remove_abandoned_writes(folder).await
    }

    fn changes(&self) -> Result<Option<ChangeFeed>, ProviderError> {
        self.inner.changes()
    }
}
