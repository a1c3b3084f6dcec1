//! The local folder: plain file-system calls, confined to the root. Every operation resolves its path
//! component by component and refuses any component that is a symbolic link, so neither `..` (which
//! `ProviderPath` cannot hold) nor a link inside the root can lead outside it. Writes go to a
//! temporary name in the destination folder, are synced, and then renamed into place.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::ops::Range;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudsync_domain::{ProviderKind, ProviderPath};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::{ByteStream, Change, ChangeFeed, Entry, ProviderError, StorageProvider, is_temporary};

/// The size of the pieces a file is read in.
const CHUNK: usize = 1024 * 1024;
/// How many pieces a read runs ahead of its reader, and a write behind its writer: reading,
/// whatever the stream's consumer does with each piece (hashing, cutting into chunks), and writing
/// go on at the same time.
const IN_FLIGHT: usize = 4;

#[derive(Debug, Clone)]
pub struct LocalProvider {
    root: PathBuf,
}

impl LocalProvider {
    /// # Errors
    /// A root that is not an absolute path to an existing folder.
    pub fn open(raw: &str) -> Result<Self, ProviderError> {
        if raw.contains('\0') {
            return Err(ProviderError::Invalid("the root contains a NUL byte".into()));
        }
        if !Path::new(raw).is_absolute() {
            return Err(ProviderError::Invalid(format!("the root {raw:?} must be an absolute path")));
        }
        let root = std::fs::canonicalize(raw).map_err(|err| ProviderError::Invalid(format!("the root {raw:?} cannot be opened: {err}")))?;
        if !root.is_dir() {
            return Err(ProviderError::Invalid(format!("the root {raw:?} is not a folder")));
        }
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host path of `path`, after checking that no existing component is a symbolic link.
    fn resolve(&self, path: &ProviderPath) -> Result<PathBuf, ProviderError> {
        let mut host = self.root.clone();
        for part in path.components() {
            host.push(part);
            match std::fs::symlink_metadata(&host) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ProviderError::PermissionDenied(format!("{path} passes through a symbolic link")));
                }
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(host)
    }

    /// The host path and metadata of a regular file (not a link, not a folder) inside the root.
    fn existing_file(&self, path: &ProviderPath) -> Result<(PathBuf, std::fs::Metadata), ProviderError> {
        let host = self.resolve(path)?;
        let meta = std::fs::symlink_metadata(&host).map_err(io_error(path))?;
        if !meta.is_file() {
            return Err(ProviderError::Invalid(format!("{path} is not a file")));
        }
        Ok((host, meta))
    }

    fn entry(&self, path: ProviderPath, meta: &std::fs::Metadata) -> Entry {
        let modified_at = meta.modified().ok().map(DateTime::<Utc>::from);
        let etag = modified_at.map(|m| format!("{}-{}", meta.len(), m.timestamp_nanos_opt().unwrap_or_default()));
        Entry {
            path,
            size: meta.len(),
            modified_at,
            etag,
        }
    }

    /// Writes the stream to `path`: when `durable`, through a temporary name that replaces the file
    /// once synced; otherwise straight into `path` (the caller's own temporary name), left for
    /// [`StorageProvider::flush`]. A content that arrives in one piece (most files) is written in
    /// one blocking call.
    async fn write_to(&self, path: &ProviderPath, mut data: ByteStream, durable: bool) -> Result<u64, ProviderError> {
        if path.is_root() {
            return Err(ProviderError::Invalid("cannot write to the root itself".into()));
        }
        let first = data.next().await.transpose()?;
        let second = match first {
            Some(_) => data.next().await.transpose()?,
            None => None,
        };
        let last = second.is_none();
        let this = self.clone();
        let target_path = path.clone();
        let (target, temp, file, mut written) = blocking(move || {
            let target = this.resolve(&target_path)?;
            let folder = target.parent().unwrap_or(&this.root).to_path_buf();
            std::fs::create_dir_all(&folder)?;
            // The folder may have been created through a link that appeared meanwhile: check again.
            this.resolve(&target_path)?;
            let temp = if durable { temp_name(&target) } else { target.clone() };
            let mut options = std::fs::OpenOptions::new();
            options.write(true);
            if durable {
                options.create_new(true);
            } else {
                options.create(true).truncate(true);
            }
            let mut file = options.open(&temp)?;
            let written = first.as_ref().map_or(0, |piece| piece.len() as u64);
            let done = (|| -> Result<(), ProviderError> {
                if let Some(piece) = &first {
                    file.write_all(piece)?;
                }
                if last && durable {
                    file.sync_all()?;
                    std::fs::rename(&temp, &target)?;
                }
                Ok(())
            })();
            if let Err(err) = done {
                let _ = std::fs::remove_file(&temp);
                return Err(err);
            }
            Ok((target, temp, file, written))
        })
        .await?;
        if last {
            return Ok(written);
        }
        let result: Result<(), ProviderError> = async {
            // The rest is written by one blocking task as it arrives (a few pieces behind), while
            // this task goes on pulling the stream.
            let (pieces, mut queued) = mpsc::channel::<Bytes>(IN_FLIGHT);
            let writer = tokio::task::spawn_blocking(move || -> Result<std::fs::File, ProviderError> {
                let mut file = file;
                while let Some(piece) = queued.blocking_recv() {
                    file.write_all(&piece)?;
                }
                Ok(file)
            });
            let rest = futures::stream::iter(second.map(Ok)).chain(data);
            let mut rest = std::pin::pin!(rest);
            let mut pulled = Ok(());
            while let Some(chunk) = rest.next().await {
                match chunk {
                    Ok(chunk) => {
                        written += chunk.len() as u64;
                        // Refused only when the writer stopped: its error is the one to report.
                        if pieces.send(chunk).await.is_err() {
                            break;
                        }
                    }
                    Err(err) => {
                        pulled = Err(err);
                        break;
                    }
                }
            }
            drop(pieces);
            let handle = writer
                .await
                .map_err(|err| ProviderError::Other(format!("storage task failed: {err}")))??;
            pulled?;
            let (temp, target) = (temp.clone(), target.clone());
            blocking(move || {
                if durable {
                    handle.sync_all()?;
                    drop(handle);
                    std::fs::rename(&temp, &target)?;
                }
                Ok(())
            })
            .await
        }
        .await;
        if let Err(err) = result {
            let _ = std::fs::remove_file(&temp);
            return Err(err);
        }
        Ok(written)
    }

    /// Moves a file, creating the destination's folders, in one blocking call; over a file already
    /// there only as `over` allows (a POSIX rename replaces it in one step), never over anything
    /// else. Returns what the destination then is.
    async fn move_file(&self, from: &ProviderPath, to: &ProviderPath, over: Over) -> Result<Entry, ProviderError> {
        let this = self.clone();
        let (from, to) = (from.clone(), to.clone());
        blocking(move || {
            let (source, _) = this.existing_file(&from)?;
            let target = this.resolve(&to)?;
            std::fs::create_dir_all(target.parent().unwrap_or(&this.root))?;
            this.resolve(&to)?;
            match (std::fs::symlink_metadata(&target), &over) {
                (Ok(meta), _) if !meta.is_file() && !matches!(over, Over::Never) => {
                    return Err(ProviderError::Invalid(format!("{to} is not a file")));
                }
                (Ok(_), Over::Never) => return Err(ProviderError::AlreadyExists(to.to_string())),
                (Ok(meta), Over::IfStill(expected)) if Some(this.entry(to.clone(), &meta).tag()) != *expected => {
                    return Err(ProviderError::AlreadyExists(format!("{to} changed")));
                }
                _ => {}
            }
            std::fs::rename(&source, &target)?;
            let meta = std::fs::symlink_metadata(&target)?;
            Ok(this.entry(to, &meta))
        })
        .await
    }
}

/// What a move may replace at its destination.
enum Over {
    Never,
    Any,
    /// A file still showing this tag (`None`: only an absent destination).
    IfStill(Option<String>),
}

/// An I/O error about `path`, a missing file named as such.
fn io_error(path: &ProviderPath) -> impl Fn(std::io::Error) -> ProviderError + '_ {
    move |err| match err.kind() {
        std::io::ErrorKind::NotFound => ProviderError::NotFound(path.to_string()),
        _ => err.into(),
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> Result<T, ProviderError> + Send + 'static) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ProviderError::Other(format!("storage task failed: {err}")))?
}

/// A new file at `to` with `from`'s content, open for writing: its extents shared with `from` where
/// the file system can clone them (one `FICLONE`, no data written), else copied by the kernel.
fn clone_or_copy(from: &Path, to: &Path) -> std::io::Result<std::fs::File> {
    let source = std::fs::File::open(from)?;
    let copy = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(to)?;
    if rustix::fs::ioctl_ficlone(&copy, &source).is_ok() {
        copy.set_permissions(source.metadata()?.permissions())?;
        return Ok(copy);
    }
    drop(copy);
    std::fs::copy(from, to)?;
    std::fs::OpenOptions::new().write(true).open(to)
}

/// `.<name>.cloudsync-<pid>-<random>.tmp` beside the target: the writing process's id tells a
/// write in progress from one that a killed process left behind.
fn temp_name(target: &Path) -> PathBuf {
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let suffix: u64 = rand_suffix();
    target.with_file_name(format!(".{name}.cloudsync-{}-{suffix:016x}.tmp", std::process::id()))
}

/// Whether a temporary file was left by a process that is gone: its name carries a process id that
/// is not running (on Linux, no `/proc/<pid>`). Names without one are left alone.
fn abandoned(name: &str) -> bool {
    let Some(rest) = name.rsplit(".cloudsync-").next().and_then(|r| r.strip_suffix(".tmp")) else {
        return false;
    };
    let Some((pid, _)) = rest.split_once('-') else { return false };
    pid.parse::<u32>().is_ok_and(crate::process_ended)
}

fn rand_suffix() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = blake3::hash(format!("{nanos}-{:?}", std::thread::current().id()).as_bytes());
    let mut bytes = [0_u8; 8];
    bytes.copy_from_slice(&mixed.as_bytes()[..8]);
    u64::from_le_bytes(bytes)
}

#[async_trait]
impl StorageProvider for LocalProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Local
    }

    async fn check(&self) -> Result<(), ProviderError> {
        let root = self.root.clone();
        blocking(move || {
            std::fs::read_dir(&root)?;
            Ok(())
        })
        .await
    }

    fn list(&self, folder: &ProviderPath) -> BoxStream<'static, Result<Entry, ProviderError>> {
        let (tx, rx) = mpsc::channel::<Result<Entry, ProviderError>>(256);
        let this = self.clone();
        let folder = folder.clone();
        tokio::task::spawn_blocking(move || {
            let start = match this.resolve(&folder) {
                Ok(start) => start,
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            };
            if !start.is_dir() {
                let _ = tx.blocking_send(Err(ProviderError::NotFound(format!("folder {folder}"))));
                return;
            }
            for item in walkdir::WalkDir::new(&start).follow_links(false).sort_by_file_name() {
                let item = match item {
                    Ok(item) => item,
                    // A folder that cannot be read would look as if its files were gone: the
                    // listing fails instead.
                    Err(err) => {
                        let _ = tx.blocking_send(Err(ProviderError::Other(format!("cannot list everything below {folder}: {err}"))));
                        return;
                    }
                };
                if !item.file_type().is_file() {
                    continue;
                }
                let Some(relative) = item.path().strip_prefix(&this.root).ok().and_then(Path::to_str) else {
                    tracing::warn!(path = %item.path().display(), "Skipped a file whose name is not UTF-8.");
                    continue;
                };
                let Ok(path) = ProviderPath::parse(relative) else { continue };
                if is_temporary(path.name()) {
                    continue;
                }
                let sent = match item.metadata() {
                    Ok(meta) => tx.blocking_send(Ok(this.entry(path, &meta))),
                    Err(err) => tx.blocking_send(Err(ProviderError::Other(err.to_string()))),
                };
                if sent.is_err() {
                    return;
                }
            }
        });
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) }).boxed()
    }

    async fn stat(&self, path: &ProviderPath) -> Result<Entry, ProviderError> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || {
            let (_, meta) = this.existing_file(&path)?;
            Ok(this.entry(path, &meta))
        })
        .await
    }

    async fn read(&self, path: &ProviderPath, range: Range<u64>) -> Result<ByteStream, ProviderError> {
        let this = self.clone();
        let path = path.clone();
        // Opening and the first chunk in one blocking call: most files are read in a single hop.
        let (file, first, start, end) = blocking(move || {
            let host = this.resolve(&path)?;
            let mut file = std::fs::File::open(&host).map_err(io_error(&path))?;
            let len = file.metadata()?.len();
            let (start, end) = (range.start.min(len), range.end.min(len));
            file.seek(SeekFrom::Start(start))?;
            let want = usize::try_from((end - start).min(CHUNK as u64)).unwrap_or(CHUNK);
            let mut first = Vec::with_capacity(want);
            if std::io::Read::take(&mut file, want as u64).read_to_end(&mut first)? != want {
                return Err(ProviderError::Other("the file was cut short while it was read".into()));
            }
            Ok((file, first, start, end))
        })
        .await?;
        let start = start + first.len() as u64;
        let first = (!first.is_empty()).then(|| Ok(Bytes::from(first)));
        if start >= end {
            return Ok(futures::stream::iter(first).boxed());
        }
        // The rest is read by one blocking task, a few pieces ahead of the stream's consumer; it
        // stops when the stream is dropped.
        let (pieces, queued) = mpsc::channel::<Result<Bytes, ProviderError>>(IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let (mut file, mut at) = (file, start);
            while at < end {
                let want = (end - at).min(CHUNK as u64);
                let mut buffer = Vec::with_capacity(usize::try_from(want).unwrap_or(CHUNK));
                let piece = match std::io::Read::take(&mut file, want).read_to_end(&mut buffer) {
                    Ok(read) if read as u64 == want => Ok(Bytes::from(buffer)),
                    Ok(_) => Err(ProviderError::Other("the file was cut short while it was read".into())),
                    Err(err) => Err(err.into()),
                };
                let failed = piece.is_err();
                if pieces.blocking_send(piece).is_err() || failed {
                    return;
                }
                at += want;
            }
        });
        // A reader that stopped early (its task never ran) is an error, not a shorter file.
        let rest = futures::stream::unfold(Some((queued, start)), move |state| async move {
            let (mut queued, at) = state?;
            match queued.recv().await {
                Some(Ok(piece)) => {
                    let at = at + piece.len() as u64;
                    Some((Ok(piece), Some((queued, at))))
                }
                Some(Err(err)) => Some((Err(err), None)),
                None if at < end => Some((Err(ProviderError::Other("the file's reader stopped early".into())), None)),
                None => None,
            }
        });
        Ok(futures::stream::iter(first).chain(rest).boxed())
    }

    async fn write(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        self.write_to(path, data, true).await
    }

    async fn write_unsynced(&self, path: &ProviderPath, data: ByteStream) -> Result<u64, ProviderError> {
        self.write_to(path, data, false).await
    }

    async fn flush(&self, paths: &[ProviderPath]) -> Result<(), ProviderError> {
        let files = paths.iter().map(|p| self.resolve(p)).collect::<Result<Vec<_>, _>>()?;
        blocking(move || {
            if let [file] = files.as_slice() {
                std::fs::File::open(file)?.sync_all()?;
                return Ok(());
            }
            // One flush per file system instead of one per file.
            let mut devices = std::collections::HashSet::new();
            for file in &files {
                let opened = std::fs::File::open(file)?;
                if devices.insert(opened.metadata()?.dev()) {
                    rustix::fs::syncfs(&opened).map_err(std::io::Error::from)?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn replace_if(&self, from: &ProviderPath, to: &ProviderPath, expected: Option<&str>) -> Result<Entry, ProviderError> {
        self.move_file(from, to, Over::IfStill(expected.map(str::to_owned))).await
    }

    async fn delete(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || {
            let host = this.resolve(&path)?;
            match std::fs::symlink_metadata(&host) {
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(err) => return Err(err.into()),
                Ok(meta) if !meta.is_file() => return Err(ProviderError::Invalid(format!("{path} is not a file"))),
                Ok(_) => {}
            }
            match std::fs::remove_file(&host) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err.into()),
                _ => Ok(()),
            }
        })
        .await
    }

    async fn rename(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.move_file(from, to, Over::Never).await.map(drop)
    }

    fn patches(&self) -> bool {
        true
    }

    async fn replace(&self, from: &ProviderPath, to: &ProviderPath) -> Result<(), ProviderError> {
        self.move_file(from, to, Over::Any).await.map(drop)
    }

    async fn patch(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>, checksum: &str) -> Result<u64, ProviderError> {
        let this = self.clone();
        let path = path.clone();
        let checksum = checksum.to_owned();
        blocking(move || {
            let (target, _) = this.existing_file(&path)?;
            let temp = temp_name(&target);
            let patched = (|| -> Result<u64, ProviderError> {
                // The unchanged bytes: the old file's extents shared where the file system can
                // (FICLONE: XFS, Btrfs), else copied by the kernel (copy_file_range); nothing
                // passes through this process but the new ranges.
                let mut file = clone_or_copy(&target, &temp).map_err(io_error(&path))?;
                let mut written = 0;
                for (offset, bytes) in &ranges {
                    file.seek(SeekFrom::Start(*offset))?;
                    file.write_all(bytes)?;
                    written += bytes.len() as u64;
                }
                file.set_len(size)?;
                file.sync_all()?;
                drop(file);
                // Only the planned content replaces the file.
                let mut hasher = blake3::Hasher::new();
                hasher.update_reader(std::fs::File::open(&temp)?)?;
                if hasher.finalize().to_hex().as_str() != checksum {
                    return Err(ProviderError::Invalid(
                        "the patched file does not have the planned content (the old file was not the expected version)".into(),
                    ));
                }
                this.resolve(&path)?;
                std::fs::rename(&temp, &target)?;
                Ok(written)
            })();
            if patched.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            patched
        })
        .await
    }

    fn writes_in_place(&self) -> bool {
        true
    }

    async fn write_in_place(&self, path: &ProviderPath, size: u64, ranges: Vec<(u64, Bytes)>) -> Result<u64, ProviderError> {
        use std::os::unix::fs::FileExt as _;
        let this = self.clone();
        let path = path.clone();
        blocking(move || {
            let (target, _) = this.existing_file(&path)?;
            let file = std::fs::OpenOptions::new().write(true).open(&target).map_err(io_error(&path))?;
            let mut written = 0;
            for (offset, bytes) in &ranges {
                file.write_all_at(bytes, *offset)?;
                written += bytes.len() as u64;
            }
            file.set_len(size)?;
            file.sync_data()?;
            Ok(written)
        })
        .await
    }

    async fn remove_abandoned_writes(&self, folder: &ProviderPath) -> Result<u64, ProviderError> {
        let this = self.clone();
        let folder = folder.clone();
        blocking(move || {
            let start = this.resolve(&folder)?;
            if !start.is_dir() {
                return Ok(0);
            }
            let mut removed = 0;
            for item in walkdir::WalkDir::new(&start).follow_links(false).into_iter().filter_map(Result::ok) {
                let name = item.file_name().to_str().unwrap_or_default();
                if item.file_type().is_file() && is_temporary(name) && abandoned(name) && std::fs::remove_file(item.path()).is_ok() {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn create_folder(&self, path: &ProviderPath) -> Result<(), ProviderError> {
        let this = self.clone();
        let path = path.clone();
        blocking(move || {
            let host = this.resolve(&path)?;
            std::fs::create_dir_all(&host)?;
            this.resolve(&path)?;
            Ok(())
        })
        .await
    }

    /// The operating system's notifications for the folder tree (inotify on Linux), as paths below
    /// the root. A lost notification (a queue overflow) is reported as a change of unknown path.
    fn changes(&self) -> Result<Option<ChangeFeed>, ProviderError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let root = self.root.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            let event = match event {
                Ok(event) => event,
                Err(error) => {
                    tracing::debug!(error = %error, "A file notification was lost.");
                    let _ = tx.send(Change { path: None });
                    return;
                }
            };
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            if event.paths.is_empty() || event.need_rescan() {
                let _ = tx.send(Change { path: None });
            }
            for host in &event.paths {
                let Some(relative) = host.strip_prefix(&root).ok().and_then(Path::to_str) else {
                    continue;
                };
                let Ok(path) = ProviderPath::parse(relative) else { continue };
                if !is_temporary(path.name()) {
                    let _ = tx.send(Change { path: Some(path) });
                }
            }
        };
        let unavailable = |error: notify::Error| ProviderError::Unsupported(format!("cannot watch the folder: {error}"));
        let mut watcher = notify::recommended_watcher(handler).map_err(unavailable)?;
        notify::Watcher::watch(&mut watcher, &self.root, notify::RecursiveMode::Recursive).map_err(unavailable)?;
        Ok(Some(ChangeFeed::new(rx, Box::new(watcher))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_writes_of_processes_that_are_gone_are_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let provider = LocalProvider::open(dir.path().to_str().expect("utf-8")).expect("opens");
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        // Above any process id Linux hands out (its maximum is 2^22).
        let gone = ".a.txt.cloudsync-999999999-00000000000000aa.tmp";
        let mine = format!(".b.txt.cloudsync-{}-00000000000000bb.tmp", std::process::id());
        for name in [gone, mine.as_str(), ".c.cloudsync-00000000000000cc.tmp", "plain.txt"] {
            std::fs::write(dir.path().join("sub").join(name), "x").expect("write");
        }
        let removed = provider.remove_abandoned_writes(&ProviderPath::root()).await.expect("cleaned");
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("sub"))
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        if cfg!(target_os = "linux") {
            assert_eq!(removed, 1);
            assert!(!left.iter().any(|n| n == gone));
        }
        assert!(left.contains(&mine), "a write of this process is in progress: kept");
        assert!(left.iter().any(|n| n == "plain.txt") && left.iter().any(|n| n.starts_with(".c.")));
        // A folder that does not exist has nothing to clean.
        assert_eq!(
            provider
                .remove_abandoned_writes(&ProviderPath::parse("nowhere").expect("path"))
                .await
                .expect("ok"),
            0
        );
    }
}
