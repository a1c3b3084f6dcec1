//! Ranged writes: a changed large file written as the byte ranges that differ from the version
//! the side holds (by their chunk manifests).

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use cloudsync_chunks::{ChunkRef, ChunkStore, Chunker, Manifest, get_manifest, put_manifest};
use cloudsync_domain::ProviderPath;
use cloudsync_domain::merge::{Side, Version};
use cloudsync_providers::{ByteStream, ProviderError};
use futures::StreamExt;

use super::{Copied, Executor, MAX_PATCH, StepError};

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
        let tag = (provider.stat(&destination).await?).tag();
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
