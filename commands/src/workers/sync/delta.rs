//! Ranged writes: a changed large file written as the byte ranges that differ from the version
//! the side holds (by their chunk manifests).
//!
//! Where a side writes in place (local folders, SFTP), the new and the old file are read side by
//! side and only the bytes that differ are written, over the file where it lies, and never before what they held is in the chunk store and the intent is in
//! the log ([`FilePatchStarted`], with the undo: the old content as a patch of the new one). The
//! write then settles ([`FilePatchSettled`]); a run that was stopped half-way is settled by the
//! next run of the pair before it lists anything ([`settle_pending`]): a file that holds the new
//! content is done, one that holds neither gets the old bytes back. So after a crash at any point
//! the file hashes to the old or the new content. The undo is also the replaced version, when the
//! pair keeps versions: keeping it costs what the write destroyed. Elsewhere the old file is
//! copied (by the server or the kernel), patched and renamed over it.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use cloudsync_chunks::{
    ChunkRef, ChunkStore, Chunker, Differ, Layer, Manifest, PIECE, PieceHasher, get_manifest, overlay, put_manifest, put_patch,
};
use cloudsync_domain::events::{FilePatchStarted, PatchOutcome};
use cloudsync_domain::merge::{Side, Version};
use cloudsync_domain::sync_pair::{SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, DomainEvent, ProviderPath};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use cloudsync_providers::{ByteStream, ProviderError, StorageProvider};
use futures::StreamExt;
use uuid::Uuid;

use super::{Copied, Executor, MAX_PATCH, StepError, index};
use crate::core::{Context, encode};
use crate::workers::scan::hash_stream;
use crate::{CommandError, Commands};

impl Executor {
    /// Writes only the byte ranges of `version` that differ from what side `to` holds at `path`,
    /// when that side takes ranged writes and still holds the agreed version, whose manifest is
    /// kept. `None` when this does not apply, or when so much changed that a whole copy is better.
    pub(super) async fn patch(
        &self,
        to: Side,
        from: &ProviderPath,
        path: &ProviderPath,
        version: &Version,
        expected: Option<&str>,
    ) -> Result<Option<Copied>, StepError> {
        let (Some(chunks), Some(agreed)) = (&self.chunks, self.pair.agreed(path)) else {
            return Ok(None);
        };
        if self.provider(to).writes_in_place()
            && let Some(old) = self.holds_agreed(to, path, expected)
        {
            return self.write_in_place(to, from, path, old, version, expected).await;
        }
        // The chunk-wise patch below checks what it read against the planned checksum.
        if version.checksum.is_empty() {
            return Ok(None);
        }
        let agreed_tag = match to {
            Side::Source => agreed.source_tag.as_deref(),
            Side::Target => agreed.target_tag.as_deref(),
        };
        if !self.provider(to).patches() || expected.is_none() || expected != agreed_tag {
            return Ok(None);
        }
        let Some(old) = agreed.manifest.as_deref() else { return Ok(None) };
        let Ok(old) = get_manifest(&**chunks, old).await else {
            return Ok(None);
        };
        let before: HashSet<(&str, u64)> = old.spans().map(|(c, span)| (c.id.as_str(), span.start)).collect();
        let limit = (version.size / 4).min(MAX_PATCH);
        let mut stream = self
            .provider(to.other())
            .read(&self.full(to.other(), from), 0..version.size)
            .await?;
        let mut hasher = blake3::Hasher::new();
        let mut chunker = Chunker::without_checksum();
        let mut ranges: Vec<(u64, Vec<u8>)> = Vec::new();
        // The new chunks (id, offset, length), stored after the write when versions are kept, so
        // that keeping this version later needs no read.
        let mut fresh: Vec<(String, u64, usize)> = Vec::new();
        let (mut offset, mut changed) = (0_u64, 0_u64);
        let mut note = |chunk: &ChunkRef, bytes: &[u8]| -> Result<(), TooMuch> {
            let start = offset;
            offset += bytes.len() as u64;
            if before.contains(&(chunk.id.as_str(), start)) {
                return Ok(());
            }
            fresh.push((chunk.id.clone(), start, bytes.len()));
            changed += bytes.len() as u64;
            if changed > limit {
                return Err(TooMuch);
            }
            match ranges.last_mut() {
                Some((at, range)) if *at + range.len() as u64 == start => range.extend_from_slice(bytes),
                _ => ranges.push((start, bytes.to_vec())),
            }
            Ok(())
        };
        while let Some(piece) = stream.next().await {
            let piece = piece?;
            hasher.update(&piece);
            if chunker.push(&piece, &mut note).is_err() {
                return Ok(None);
            }
        }
        let Ok(mut manifest) = chunker.finish(&mut note) else {
            return Ok(None);
        };
        if manifest.size != version.size || hasher.finalize().to_hex().as_str() != version.checksum {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} while it was read",
                to.other().name()
            )));
        }
        manifest.checksum.clone_from(&version.checksum);
        self.check_unchanged(to, path, expected).await?;
        let destination = self.full(to, path);
        let provider = self.provider(to);
        let ranges: Vec<(u64, Bytes)> = ranges.into_iter().map(|(at, bytes)| (at, Bytes::from(bytes))).collect();
        let kept = ranges.clone();
        let written = match provider.patch(&destination, version.size, ranges, &version.checksum).await {
            Ok(written) => written,
            // The destination was not the agreed version after all (changed without its size or
            // modification time showing it): nothing was replaced; the next run sees it.
            Err(ProviderError::Invalid(why)) => return Err(StepError::Changed(format!("{path}: {why}"))),
            // The side cannot after all (an SFTP server without copy-data): copied whole instead.
            Err(ProviderError::Unsupported(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let tag = (provider.stat_fresh(&destination).await?).tag();
        if self.versions {
            let mut batch: Vec<(String, &[u8])> = Vec::new();
            for (id, start, len) in fresh {
                let Some((at, bytes)) = kept.iter().rev().find(|(at, _)| *at <= start) else {
                    continue;
                };
                let from = usize::try_from(start - at).unwrap_or(usize::MAX);
                if let Some(chunk) = bytes.get(from..from.saturating_add(len)) {
                    batch.push((id, chunk));
                }
            }
            chunks.put_many(&batch).await?;
        }
        Ok(Some(Copied {
            tag,
            checksum: version.checksum.clone(),
            stored: None,
            manifest: put_manifest(&**chunks, &manifest).await.ok(),
            written,
        }))
    }
}

impl Executor {
    /// Writes the new version (`from` on the other side) over the file `path` on side `to`, which
    /// holds `old`, where it lies: the two are read side by side, only the bytes that differ are
    /// written, after keeping what they hold and recording the intent (see the module's doc).
    /// `None` when more differs than a write in place holds in memory ([`MAX_PATCH`]).
    async fn write_in_place(
        &self,
        to: Side,
        from: &ProviderPath,
        path: &ProviderPath,
        old: &Version,
        new: &Version,
        expected: Option<&str>,
    ) -> Result<Option<Copied>, StepError> {
        let Some(chunks) = &self.chunks else {
            return Ok(None);
        };
        let provider = self.provider(to);
        let destination = self.full(to, path);
        let source = self.provider(to.other()).read(&self.full(to.other(), from), 0..new.size).await?;
        let target = provider.read(&destination, 0..old.size).await?;
        let mut differ = Differ::new(new.size, MAX_PATCH);
        // Both files are hashed in aligned pieces: an old piece equal to the new one at its offset
        // (nearly all of them) takes the new one's hash instead of being hashed again.
        let (mut new_hash, mut old_hash) = (PieceHasher::default(), PieceHasher::default());
        let (mut new_pieces, mut old_pieces) = (Pieces::new(source), Pieces::new(target));
        let (mut new_at, mut old_at) = (0_u64, 0_u64);
        loop {
            let planned = match (new_pieces.next().await?, old_pieces.next().await?) {
                (None, None) => break,
                (Some(new_piece), Some(old_piece)) => {
                    let hash = new_hash.update(&new_piece);
                    if new_piece == old_piece {
                        // Nothing to write here, and the old piece's hash is the new one's.
                        old_hash.add(hash, old_piece.len());
                        new_at += new_piece.len() as u64;
                        old_at += old_piece.len() as u64;
                        continue;
                    }
                    old_hash.update(&old_piece);
                    // Only the last piece of either file is short: past the shorter, new bytes
                    // or old bytes the write cuts off.
                    let n = new_piece.len().min(old_piece.len());
                    let at = new_at + n as u64;
                    let planned = differ.compare(new_at, &new_piece[..n], &old_piece[..n]).and_then(|()| {
                        match (new_piece.len() > n, old_piece.len() > n) {
                            (true, _) => differ.beyond(at, &new_piece[n..]),
                            (_, true) => differ.cut(at, &old_piece[n..]),
                            _ => Ok(()),
                        }
                    });
                    new_at += new_piece.len() as u64;
                    old_at += old_piece.len() as u64;
                    planned
                }
                // Past the old end: new bytes.
                (Some(new_piece), None) => {
                    new_hash.update(&new_piece);
                    let planned = differ.beyond(new_at, &new_piece);
                    new_at += new_piece.len() as u64;
                    planned
                }
                // Past the new end: old bytes the write cuts off.
                (None, Some(old_piece)) => {
                    old_hash.update(&old_piece);
                    let planned = differ.cut(old_at, &old_piece);
                    old_at += old_piece.len() as u64;
                    planned
                }
            };
            if planned.is_err() {
                return Ok(None);
            }
        }
        let read = new_hash.finalize().to_hex().to_string();
        let changed = || StepError::Changed(format!("{path} changed on the {} while it was read", to.other().name()));
        if new_at != new.size || (!new.checksum.is_empty() && read != new.checksum) {
            return Err(changed());
        }
        // A file the listing left to this read (see `listing::needs_hash`) is what was read if it
        // still shows the tag it was listed with.
        if new.checksum.is_empty() {
            let listed = self.listed(to.other(), from).map(|p| p.tag).unwrap_or_default();
            if !shows_tag(self.provider(to.other()), &self.full(to.other(), from), &listed).await? {
                return Err(changed());
            }
        }
        let new = &Version {
            checksum: read,
            ..new.clone()
        };
        if old_at != old.size || old_hash.finalize().to_hex().as_str() != old.checksum {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} since it was listed (it is no longer the agreed version); the next run takes it into account",
                to.name()
            )));
        }
        // Nothing was added to the file since it was listed (its first bytes would still hash).
        self.check_unchanged(to, path, expected).await?;
        if new.same_content(old) {
            // Touched, not changed (its modification time moved): nothing to write or keep.
            return Ok(Some(Copied {
                tag: expected.map_or_else(String::new, str::to_owned),
                checksum: new.checksum.clone(),
                stored: None,
                manifest: self.pair.agreed(path).and_then(|agreed| agreed.manifest.clone()),
                written: 0,
            }));
        }
        let mut plan = differ.finish();
        plan.undo.base.clone_from(&new.checksum);
        let undo = put_patch(&**chunks, &old.checksum, old.size, plan.undo.clone(), &plan.undo_bytes).await?;
        let started = FilePatchStarted {
            pair_id: self.pair_id,
            owner_id: self.owner,
            patch_id: Uuid::now_v7(),
            job_id: self.job_id,
            side: to,
            provider_id: self.providers[index(to)],
            path: path.clone(),
            provider_path: destination.clone(),
            old: old.clone(),
            new: new.clone(),
            undo,
            keep: self.versions,
            at: Utc::now(),
        };
        let events = self
            .pair
            .handle(SyncPairCommand::StartPatch(started.clone()))
            .map_err(|err| StepError::Log(err.to_string()))?;
        self.record(&events).await?;
        let writes: Vec<(u64, Bytes)> = plan.writes.into_iter().map(|(at, bytes)| (at, Bytes::from(bytes))).collect();
        let written = match provider.write_in_place(&destination, new.size, writes).await {
            Ok(written) => written,
            Err(err) => {
                // The old bytes go back now; where they cannot, the next run puts them back.
                let layer = Layer::new(old.size, plan.undo, Bytes::from(plan.undo_bytes))?;
                if undo_if_ours(provider, &destination, &layer, old).await.unwrap_or(false) {
                    let _ = self.record(&self.pair.settled(&started, PatchOutcome::Undone, Utc::now())).await;
                }
                return Err(err.into());
            }
        };
        self.record(&self.pair.settled(&started, PatchOutcome::Written, Utc::now())).await?;
        let tag = (provider.stat_fresh(&destination).await?).tag();
        Ok(Some(Copied {
            tag,
            checksum: new.checksum.clone(),
            stored: None,
            // Chunk manifests serve sides that patch by chunks; this side compares bytes.
            manifest: None,
            written,
        }))
    }

    /// The agreed version of `path`, when side `to` holds it as listed (with tag `expected`): by
    /// the listing's checksum, so also after a write in place was undone, which leaves the content
    /// and not the tag as it was.
    pub(super) fn holds_agreed(&self, to: Side, path: &ProviderPath, expected: Option<&str>) -> Option<&Version> {
        let present = self.listed(to, path)?;
        let agreed = self.pair.base().get(path)?;
        (expected == Some(present.tag.as_str()) && !agreed.checksum.is_empty() && agreed.same_content(&present.version)).then_some(agreed)
    }

    /// Appends events of the pair's (it is the pair's one run; its recorder appends with any
    /// version too), unless the run's chunk-store lease has lapsed.
    pub(super) async fn record(&self, events: &[DomainEvent]) -> Result<(), StepError> {
        if self.lease.as_ref().is_some_and(|lease| !lease.valid()) {
            return Err(StepError::Log(
                "the run could not renew its chunk-store lease in time; the next run starts over".into(),
            ));
        }
        append_pair(&self.commands, &self.ctx, &self.pair, events)
            .await
            .map_err(|err| StepError::Log(err.to_string()))?;
        self.recorded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(events);
        Ok(())
    }
}

async fn append_pair(commands: &Commands, ctx: &Context, pair: &SyncPair, events: &[DomainEvent]) -> Result<(), CommandError> {
    let Some(settings) = pair.settings() else {
        return Err(CommandError::NotFound("sync pair"));
    };
    commands
        .store()
        .append(vec![StreamAppend {
            stream: settings.pair_id.stream(),
            expected: ExpectedVersion::Any,
            events: events.iter().map(|e| encode(e, ctx)).collect(),
        }])
        .await?;
    Ok(())
}

/// A stream cut into aligned pieces of [`PIECE`] bytes (the last may be shorter), for
/// [`PieceHasher`]: a piece that lies within one of the stream's own is not copied, and one that
/// spans several is assembled copying each byte once.
struct Pieces {
    stream: ByteStream,
    /// What the stream gave and no piece has taken yet.
    held: Bytes,
    /// The start of a piece that spans what the stream gave.
    partial: bytes::BytesMut,
    done: bool,
}

impl Pieces {
    fn new(stream: ByteStream) -> Self {
        Self {
            stream,
            held: Bytes::new(),
            partial: bytes::BytesMut::new(),
            done: false,
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, ProviderError> {
        loop {
            if self.partial.is_empty() && self.held.len() >= PIECE {
                return Ok(Some(self.held.split_to(PIECE)));
            }
            if !self.held.is_empty() {
                // Less than a piece held, or a piece begun: it takes what it lacks.
                if self.partial.is_empty() {
                    self.partial.reserve(PIECE);
                }
                let take = (PIECE - self.partial.len()).min(self.held.len());
                self.partial.extend_from_slice(&self.held.split_to(take));
                if self.partial.len() == PIECE {
                    return Ok(Some(self.partial.split().freeze()));
                }
            }
            if self.done {
                return Ok((!self.partial.is_empty()).then(|| self.partial.split().freeze()));
            }
            match self.stream.next().await {
                Some(next) => self.held = next?,
                None => self.done = true,
            }
        }
    }
}

/// Whether `path` is there and still shows `tag` (what a file read without a planned checksum
/// must show after the read, for the read to be the listed file).
pub(super) async fn shows_tag(provider: &dyn StorageProvider, path: &ProviderPath, tag: &str) -> Result<bool, ProviderError> {
    match provider.stat_fresh(path).await {
        Ok(entry) => Ok(entry.tag() == tag),
        Err(ProviderError::NotFound(_)) => Ok(false),
        Err(err) => Err(err),
    }
}

/// The BLAKE3 and size of the file `path`; `None` when it is gone.
pub(super) async fn hash_of(provider: &dyn StorageProvider, path: &ProviderPath) -> Result<Option<(String, u64)>, ProviderError> {
    let size = match provider.stat_fresh(path).await {
        Ok(entry) => entry.size,
        Err(ProviderError::NotFound(_)) => return Ok(None),
        Err(err) => return Err(err),
    };
    Ok(Some(hash_stream(provider.read(path, 0..size).await?).await?))
}

/// Writes an undo's bytes back over the file and cuts it to the old size.
async fn undo_in_place(provider: &dyn StorageProvider, path: &ProviderPath, undo: &Layer) -> Result<u64, ProviderError> {
    let mut ranges = Vec::with_capacity(undo.patch.ranges.len());
    let mut at = 0_usize;
    for (offset, len) in &undo.patch.ranges {
        let len = *len as usize;
        ranges.push((*offset, undo.bytes.slice(at..at + len)));
        at += len;
    }
    provider.write_in_place(path, undo.size, ranges).await
}

/// Puts the old bytes back over the file `path` if that makes it `old` again: the file must have
/// the old or the new size and read as the old content with the undo applied, so a file someone
/// else changed meanwhile (an editor that saved it, a restore) is left alone. (An edit inside the
/// very ranges the undo covers cannot be told from the interrupted write, and is undone with it.)
/// True when the file holds `old` afterwards.
async fn undo_if_ours(provider: &dyn StorageProvider, path: &ProviderPath, undo: &Layer, old: &Version) -> Result<bool, ProviderError> {
    let size = match provider.stat_fresh(path).await {
        Ok(entry) => entry.size,
        Err(ProviderError::NotFound(_)) => return Ok(false),
        Err(err) => return Err(err),
    };
    // A half-done write leaves a size between the old and the new one (writes past the old end
    // grow the file before it is set to the new size); anything else was appended or cut by
    // someone else, which the undo would not see.
    let (low, high) = (old.size.min(undo.patch.base_size), old.size.max(undo.patch.base_size));
    if size < low || size > high {
        return Ok(false);
    }
    let (undone, read) = hash_stream(overlay(provider.read(path, 0..size).await?, vec![undo.clone()])).await?;
    if read != old.size || undone != old.checksum {
        return Ok(false);
    }
    undo_in_place(provider, path, undo).await?;
    Ok(hash_of(provider, path)
        .await?
        .is_some_and(|(checksum, size)| checksum == old.checksum && size == old.size))
}

/// Settles the writes in place of `pair` that a stopped run left pending, before a new run lists
/// anything: a file that holds the new content is done (its old content kept as a version, where
/// the pair keeps them); one that holds neither gets the old bytes back from the undo, if that
/// makes it the old content; one that would not (changed by someone else meanwhile) is left as it
/// is, for the run to see as a change.
/// Returns how many were settled.
///
/// # Errors
/// A side or the chunk store could not be read or written, or the log could not be appended to:
/// the write stays pending, for the next run.
pub(super) async fn settle_pending(
    commands: &Commands,
    ctx: &Context,
    pair: &SyncPair,
    sides: [&dyn StorageProvider; 2],
) -> Result<usize, CommandError> {
    let pending: Vec<FilePatchStarted> = pair.pending_patches().cloned().collect();
    let storage = |err: ProviderError| CommandError::Storage(err.to_string());
    for started in &pending {
        let provider = sides[index(started.side)];
        let path = &started.provider_path;
        let is = |found: &Option<(String, u64)>, version: &Version| {
            found
                .as_ref()
                .is_some_and(|(checksum, size)| *checksum == version.checksum && *size == version.size)
        };
        let found = hash_of(provider, path).await.map_err(storage)?;
        let outcome = if is(&found, &started.new) {
            PatchOutcome::Written
        } else if is(&found, &started.old) {
            PatchOutcome::Undone
        } else if found.is_none() {
            PatchOutcome::Abandoned
        } else {
            let owner = pair.settings().map(|s| s.owner_id).ok_or(CommandError::NotFound("sync pair"))?;
            let chunks = commands.chunks_for(owner).await?.ok_or(CommandError::NotFound("chunk store"))?;
            let manifest = get_manifest(&*chunks, &started.undo)
                .await
                .map_err(|err| CommandError::Storage(err.to_string()))?;
            let layer = Layer::load(&*chunks, &manifest)
                .await
                .map_err(|err| CommandError::Storage(err.to_string()))?;
            if undo_if_ours(provider, path, &layer, &started.old).await.map_err(storage)? {
                PatchOutcome::Undone
            } else {
                PatchOutcome::Abandoned
            }
        };
        tracing::info!(pair = %started.pair_id, patch = %started.patch_id, outcome = ?outcome, "Settled an interrupted write in place.");
        append_pair(commands, ctx, pair, &pair.settled(started, outcome, Utc::now())).await?;
    }
    Ok(pending.len())
}

/// A content kept in the chunk store, chunk by chunk.
pub(super) fn stored_stream(chunks: Arc<dyn ChunkStore>, manifest: Manifest) -> ByteStream {
    futures::stream::iter(manifest.chunks)
        .then(move |chunk| {
            let chunks = Arc::clone(&chunks);
            async move {
                chunks
                    .get(&chunk.id)
                    .await
                    .map(Bytes::from)
                    .map_err(|err| ProviderError::Invalid(format!("the kept version cannot be read: {err}")))
            }
        })
        .boxed()
}

/// More changed bytes than a ranged write is worth.
pub(super) struct TooMuch;

/// The stream, passed on unchanged, cut into chunks as it goes; once it has ended, `manifest`
/// holds its manifest (without the whole-content checksum, which the copy verifies itself).
pub(super) fn chunking(data: ByteStream, manifest: Arc<std::sync::Mutex<Option<Manifest>>>) -> ByteStream {
    let state = (data, Some(Chunker::without_checksum()));
    futures::stream::unfold(state, move |(mut data, mut chunker)| {
        let manifest = Arc::clone(&manifest);
        async move {
            match data.next().await {
                Some(Ok(piece)) => {
                    if let Some(chunker) = chunker.as_mut() {
                        let _ = chunker.push(&piece, |_, _| Ok::<(), std::convert::Infallible>(()));
                    }
                    Some((Ok(piece), (data, chunker)))
                }
                Some(Err(err)) => Some((Err(err), (data, None))),
                None => {
                    if let (Some(chunker), Ok(mut slot)) = (chunker.take(), manifest.lock()) {
                        *slot = chunker.finish(|_, _| Ok::<(), std::convert::Infallible>(())).ok();
                    }
                    None
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    /// `len` bytes given in frames of `frame` bytes, cut into pieces.
    async fn pieces_of(len: usize, frame: usize) -> (Vec<u8>, Vec<Bytes>) {
        let input: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let frames: Vec<Result<Bytes, ProviderError>> = input.chunks(frame).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut pieces = Pieces::new(futures::stream::iter(frames).boxed());
        let mut out = Vec::new();
        while let Some(piece) = pieces.next().await.expect("no error") {
            out.push(piece);
        }
        (input, out)
    }

    #[tokio::test]
    async fn a_stream_is_cut_into_whole_pieces_whatever_its_frames() {
        for (len, frame) in [
            (0, 1024),
            (1, 1024),
            (PIECE, PIECE),
            (3 * PIECE + 17, 3000),
            (5 * PIECE, 1024 * 1024),
            (2 * PIECE + 5, PIECE + 1),
            (4 * PIECE - 1, 7 * 1024),
        ] {
            let (input, pieces) = pieces_of(len, frame).await;
            assert_eq!(pieces.concat(), input, "{len} bytes in frames of {frame}");
            let (last, whole) = pieces.split_last().map_or((0, &[][..]), |(last, whole)| (last.len(), whole));
            assert!(whole.iter().all(|p| p.len() == PIECE), "{len} bytes in frames of {frame}");
            assert!((1..=PIECE).contains(&last) || len == 0, "{len} bytes in frames of {frame}");
        }
    }
}
