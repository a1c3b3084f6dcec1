//! Writing a file to a side: a verified copy that becomes visible only once it is whole (the
//! provider's atomic write, or a temporary name and a rename), and the group commit of copies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use cloudsync_chunks::{put_content, put_manifest};
use cloudsync_domain::merge::{Side, Version};
use cloudsync_domain::{ProviderKind, ProviderPath, SyncPairId};
use cloudsync_providers::{ByteStream, ProviderError, StorageProvider};
use futures::StreamExt;

use super::delta::{chunking, shows_tag};
use super::{Copied, DELTA_MIN, Executor, StepError, index};

impl Executor {
    /// Copies `from` on the other side to `path` on side `to`: small text files through memory (and
    /// kept in the chunk store), large files as their changed byte ranges where the side takes
    /// ranged writes and still holds the agreed version, everything else streamed whole.
    pub(super) async fn copy(
        &self,
        to: Side,
        from: &ProviderPath,
        path: &ProviderPath,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<Copied, StepError> {
        if self.keeps(path, version.size) {
            let data = self.read_verified(to.other(), from, version).await?;
            let tag = self.write_bytes(to, path, &data, version, expected).await?;
            let stored = match &self.chunks {
                Some(chunks) => put_content(&**chunks, &data).await.ok(),
                None => None,
            };
            return Ok(Copied {
                tag,
                checksum: blake3::hash(&data).to_hex().to_string(),
                stored,
                manifest: None,
                written: version.size,
            });
        }
        let large = version.size >= DELTA_MIN && self.chunks.is_some();
        if large && let Some(mut patched) = self.patch(to, from, path, version, expected).await? {
            patched.stored = self.keep_copied(to, path, version, &patched.checksum).await;
            return Ok(patched);
        }
        if self.defers(to, path, version) {
            self.keep_before_copy(to, path).await?;
        }
        let source = self.full(to.other(), from);
        let mut stream = self.provider(to.other()).read(&source, 0..version.size).await?;
        // Not hashed while listing, over a file that was there: the checksum is the read's own,
        // so a change made while it was read must not pass for the listed file.
        if version.checksum.is_empty()
            && expected.is_some()
            && let Some(listed) = self.listed(to.other(), from)
        {
            stream = then_unchanged(stream, Arc::clone(&self.sides[index(to.other())]), source, listed.tag.clone());
        }
        let chunked = Arc::new(std::sync::Mutex::new(None));
        let stream = if large { chunking(stream, Arc::clone(&chunked)) } else { stream };
        let (tag, checksum) = self.write_stream(to, path, stream, version, expected).await?;
        let manifest = chunked.lock().ok().and_then(|mut m| m.take());
        let manifest = match (&self.chunks, manifest) {
            (Some(chunks), Some(mut manifest)) => {
                manifest.checksum.clone_from(&checksum);
                put_manifest(&**chunks, &manifest).await.ok()
            }
            _ => None,
        };
        let stored = self.keep_copied(to, path, version, &checksum).await;
        Ok(Copied {
            tag,
            checksum,
            stored,
            manifest,
            written: version.size,
        })
    }

    pub(super) async fn write_bytes(
        &self,
        to: Side,
        path: &ProviderPath,
        data: &[u8],
        version: &Version,
        expected: Option<&str>,
    ) -> Result<String, StepError> {
        let bytes = Bytes::copy_from_slice(data);
        let stream: ByteStream = futures::stream::once(async move { Ok(bytes) }).boxed();
        Ok(self.write_stream(to, path, stream, version, expected).await?.0)
    }

    /// Writes `data` to `path` on side `to` so that only a complete copy whose checksum is the
    /// planned one ever becomes visible, and only over what was listed there.
    pub(super) async fn write_stream(
        &self,
        to: Side,
        path: &ProviderPath,
        data: ByteStream,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<(String, String), StepError> {
        let destination = self.full(to, path);
        let temporary = temporary_name(&destination, self.pair_id);
        let flusher = Some(&self.flushers[index(to)]);
        write_checked(self.provider(to), flusher, &destination, &temporary, data, version, expected).await
    }
}

/// Whether `path` still shows `expected` (its tag), or is gone: either way, writing over it loses
/// nothing that was not listed.
pub(super) async fn still_there(
    provider: &dyn StorageProvider,
    path: &ProviderPath,
    expected: Option<&str>,
) -> Result<bool, ProviderError> {
    match provider.stat_fresh(path).await {
        Ok(found) => Ok(Some(found.tag().as_str()) == expected),
        Err(ProviderError::NotFound(_)) => Ok(true),
        Err(err) => Err(err),
    }
}

/// Writes `data` to `destination` so that only a complete copy whose checksum is `version`'s ever
/// becomes visible, and only over what `expected` says is there (its tag; `None`: absent, or
/// anything that appeared meanwhile is left alone); returns the written file's tag and checksum. Object stores
/// publish an upload whole, so they are checked before it starts. Elsewhere the copy lands under
/// `temporary`, is made durable (`flusher`: together with other copies), and replaces the file in
/// one step once checked again, so an edit made while the copy ran is never overwritten.
pub(super) async fn write_checked(
    provider: &dyn StorageProvider,
    flusher: Option<&Flusher>,
    destination: &ProviderPath,
    temporary: &ProviderPath,
    data: ByteStream,
    version: &Version,
    expected: Option<&str>,
) -> Result<(String, String), StepError> {
    let mismatch = Arc::new(AtomicBool::new(false));
    let computed = Arc::new(std::sync::Mutex::new(String::new()));
    let data = verified(data, version.clone(), Arc::clone(&mismatch), Arc::clone(&computed));
    let checksum = || computed.lock().map(|c| c.clone()).unwrap_or_default();
    let changed = || {
        StepError::Changed(format!(
            "{destination}: the copy did not match the planned content (the file changed while it was copied)"
        ))
    };
    let moved_on = || {
        StepError::Changed(format!(
            "{destination} changed since it was listed; the next run takes it into account"
        ))
    };
    if provider.atomic_writes() && provider.kind() != ProviderKind::Local {
        // Over only what was listed (atomically where the store takes conditional writes).
        match provider.write_if(destination, data, expected).await {
            Ok(_) => {}
            Err(_) if mismatch.load(Ordering::SeqCst) => return Err(changed()),
            Err(ProviderError::AlreadyExists(_)) => return Err(moved_on()),
            Err(err) => return Err(err.into()),
        }
        return Ok((provider.stat_fresh(destination).await?.tag(), checksum()));
    }
    let committed = async {
        match provider.write_unsynced(temporary, data).await {
            Ok(_) => {}
            Err(_) if mismatch.load(Ordering::SeqCst) => return Err(changed()),
            Err(err) => return Err(err.into()),
        }
        match flusher {
            Some(flusher) => flusher.flush(temporary.clone()).await?,
            None => provider.flush(std::slice::from_ref(temporary)).await?,
        }
        // In one step: the destination is never missing on the way (a crash there would read as
        // a delete on this side).
        match provider.replace_if(temporary, destination, expected).await {
            Ok(entry) => Ok((entry.tag(), checksum())),
            Err(ProviderError::AlreadyExists(_)) => Err(moved_on()),
            Err(err) => Err(err.into()),
        }
    }
    .await;
    if committed.is_err() {
        let _ = provider.delete(temporary).await;
    }
    committed
}

/// Group commit of one side's unsynced copies: a copy that finds no flush going on flushes
/// everything written so far at once; the others wait for a flush that covers them. On a local
/// folder that is one file-system flush for many files instead of one per file.
pub(super) struct Flusher {
    pub(super) provider: Arc<dyn StorageProvider>,
    pub(super) state: std::sync::Mutex<FlushState>,
    pub(super) done: tokio::sync::Notify,
}

#[derive(Default)]
pub(super) struct FlushState {
    pub(super) queued: Vec<ProviderPath>,
    /// The ticket the next queued file gets.
    pub(super) next: u64,
    /// Every ticket below this one has been flushed (or failed).
    pub(super) flushed: u64,
    pub(super) flushing: bool,
    /// Ticket ranges whose flush failed, with why.
    pub(super) failed: Vec<(std::ops::Range<u64>, String)>,
}

impl Flusher {
    pub(super) fn new(provider: Arc<dyn StorageProvider>) -> Self {
        Self {
            provider,
            state: std::sync::Mutex::new(FlushState::default()),
            done: tokio::sync::Notify::new(),
        }
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, FlushState> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) async fn flush(&self, path: ProviderPath) -> Result<(), ProviderError> {
        let ticket = {
            let mut state = self.state();
            state.queued.push(path);
            state.next += 1;
            state.next - 1
        };
        loop {
            let notified = self.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let batch = {
                let mut state = self.state();
                if state.flushed > ticket {
                    return match state.failed.iter().find(|(range, _)| range.contains(&ticket)) {
                        Some((_, why)) => Err(ProviderError::Other(why.clone())),
                        None => Ok(()),
                    };
                }
                if state.flushing {
                    None
                } else {
                    state.flushing = true;
                    Some((std::mem::take(&mut state.queued), state.flushed..state.next))
                }
            };
            match batch {
                Some((paths, range)) => {
                    let result = self.provider.flush(&paths).await;
                    let mut state = self.state();
                    if let Err(err) = result {
                        state.failed.push((range.clone(), err.to_string()));
                    }
                    state.flushed = range.end;
                    state.flushing = false;
                    drop(state);
                    self.done.notify_waiters();
                }
                None => notified.await,
            }
        }
    }
}

/// `data`, then, once it has ended, a check that the file it was read from (`path` on `provider`)
/// still shows `tag`: a failure instead of the end where it does not.
fn then_unchanged(data: ByteStream, provider: Arc<dyn StorageProvider>, path: ProviderPath, tag: String) -> ByteStream {
    let check = futures::stream::once(async move {
        match shows_tag(&*provider, &path, &tag).await {
            Ok(true) => None,
            Ok(false) => Some(Err(ProviderError::Invalid(format!("{path} changed while it was read")))),
            Err(err) => Some(Err(err)),
        }
    })
    .filter_map(futures::future::ready);
    data.chain(check).boxed()
}

/// The part of a temporary file's name that says which pair wrote it.
pub(super) fn pair_token(pair_id: SyncPairId) -> String {
    blake3::hash(pair_id.to_string().as_bytes()).to_hex().as_str()[..8].to_owned()
}

/// A temporary name beside `path`, the same for a pair and a path, that listings leave out:
/// `.cloudsync-<pair token>-<path token>.tmp`.
pub(super) fn temporary_name(path: &ProviderPath, pair_id: SyncPairId) -> ProviderPath {
    let token = blake3::hash(format!("{pair_id}/{path}").as_bytes()).to_hex();
    let name = format!(".cloudsync-{}-{}.tmp", pair_token(pair_id), &token.as_str()[..16]);
    path.parent().join(&name).unwrap_or_else(|_| path.clone())
}

/// The stream, checked as it goes: after its last piece it fails (and sets `mismatch`) unless the
/// bytes hash to the planned checksum and have the planned length, so a provider's write never
/// completes with content other than what was planned.
pub(super) fn verified(
    data: ByteStream,
    version: Version,
    mismatch: Arc<AtomicBool>,
    computed: Arc<std::sync::Mutex<String>>,
) -> ByteStream {
    let state = (data, blake3::Hasher::new(), 0_u64, false);
    futures::stream::unfold(state, move |(mut data, mut hasher, mut length, ended)| {
        let version = version.clone();
        let mismatch = Arc::clone(&mismatch);
        let computed = Arc::clone(&computed);
        async move {
            if ended {
                return None;
            }
            match data.next().await {
                Some(Ok(piece)) => {
                    hasher.update(&piece);
                    length += piece.len() as u64;
                    Some((Ok(piece), (data, hasher, length, false)))
                }
                Some(Err(err)) => Some((Err(err), (data, hasher, length, true))),
                None => {
                    let checksum = hasher.finalize().to_hex().to_string();
                    // An unhashed file (new on one side) is taken as it reads.
                    if length == version.size && (version.checksum.is_empty() || checksum == version.checksum) {
                        if let Ok(mut slot) = computed.lock() {
                            *slot = checksum;
                        }
                        return None;
                    }
                    mismatch.store(true, Ordering::SeqCst);
                    let error = ProviderError::Invalid("the content read does not match the planned checksum".into());
                    Some((Err(error), (data, hasher, length, true)))
                }
            }
        }
    })
    .boxed()
}
