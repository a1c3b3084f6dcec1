//! Content-defined chunking (FastCDC) with BLAKE3 chunk ids, and the content-addressed chunk store
//! (in a folder or on any connected provider; each account's chunks compressed and sealed under
//! its own key) that holds file versions for delta transfer and restores.

mod patch;
mod pieces;
mod sealed;
mod store;

use std::io::Read;

pub use cloudsync_domain::manifest::{ChunkRef, Manifest};
use cloudsync_providers::ByteStream;
use fastcdc::v2020::FastCDC;
use futures::StreamExt as _;

pub use patch::{Differ, InPlace, Layer, Patch, TooMuch, overlay, put_patch};
pub use pieces::{PIECE, PieceHash, PieceHasher};
pub use sealed::AccountStore;
pub use store::{ChunkStore, Form, ProviderStore, StoreError, Stored};

/// Chunk sizes: small enough that a few scattered edits in a large file touch little of it, large
/// enough that a 200 MiB file has a few thousand chunks.
pub const MIN_CHUNK: u32 = 16 * 1024;
pub const AVG_CHUNK: u32 = 64 * 1024;
pub const MAX_CHUNK: u32 = 256 * 1024;

/// Cuts a stream of bytes into content-defined chunks, however the bytes arrive, and hashes each
/// chunk and the whole content with BLAKE3 as it goes.
pub struct Chunker {
    buffer: Vec<u8>,
    /// Where the bytes not yet cut start in `buffer`.
    start: usize,
    /// The whole content's BLAKE3, unless the caller has it already.
    whole: Option<blake3::Hasher>,
    manifest: Manifest,
}

impl Default for Chunker {
    fn default() -> Self {
        Self::new()
    }
}

impl Chunker {
    pub fn new() -> Self {
        Self {
            buffer: Vec::with_capacity(2 * MAX_CHUNK as usize),
            start: 0,
            whole: Some(blake3::Hasher::new()),
            manifest: Manifest::default(),
        }
    }

    /// A chunker that names the chunks but does not hash the whole content (the caller knows its
    /// checksum already, from the scan): every byte is hashed once instead of twice. The manifest's
    /// `checksum` is left empty.
    pub fn without_checksum() -> Self {
        Self {
            whole: None,
            ..Self::new()
        }
    }

    /// Takes more bytes; calls `chunk` with every chunk they complete (its reference and bytes).
    /// Chunks are cut straight from `data`; only the bytes around the boundaries of `data` are
    /// copied into the chunker's buffer.
    pub fn push<E>(&mut self, mut data: &[u8], mut chunk: impl FnMut(&ChunkRef, &[u8]) -> Result<(), E>) -> Result<(), E> {
        if let Some(whole) = &mut self.whole {
            whole.update(data);
        }
        let max = MAX_CHUNK as usize;
        // Bytes left from earlier pushes (always fewer than `max`): complete a window from `data`
        // and cut it, until what is left after a cut came from `data` alone.
        while self.start < self.buffer.len() {
            let pending = self.buffer.len() - self.start;
            let take = (max - pending).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            if pending + take < max {
                // A cut is final only when a whole maximum-size window lies ahead.
                return Ok(());
            }
            let window = &self.buffer[self.start..];
            let end = record(&mut self.manifest, &window[..cut_point(window)], &mut chunk)?;
            self.start += end;
            let left = self.buffer.len() - self.start;
            if left <= take {
                // Everything after the cut is still in `data`: go on from there, without copying.
                self.buffer.clear();
                self.start = 0;
                data = &data[take - left..];
            } else {
                data = &data[take..];
            }
        }
        self.buffer.clear();
        self.start = 0;
        while data.len() >= max {
            let end = record(&mut self.manifest, &data[..cut_point(data)], &mut chunk)?;
            data = &data[end..];
        }
        self.buffer.extend_from_slice(data);
        Ok(())
    }

    /// Cuts what is left and returns the content's manifest.
    pub fn finish<E>(mut self, mut chunk: impl FnMut(&ChunkRef, &[u8]) -> Result<(), E>) -> Result<Manifest, E> {
        while self.start < self.buffer.len() {
            let window = &self.buffer[self.start..];
            self.start += record(&mut self.manifest, &window[..cut_point(window)], &mut chunk)?;
        }
        if let Some(whole) = self.whole {
            self.manifest.checksum = whole.finalize().to_hex().to_string();
        }
        Ok(self.manifest)
    }
}

/// The length of the chunk that starts `window`: a content-defined cut, or all of a window shorter
/// than the maximum chunk (which only happens at the end of the content).
fn cut_point(window: &[u8]) -> usize {
    let (_, end) = FastCDC::new(window, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).cut(0, window.len());
    end.clamp(1, window.len().max(1))
}

/// Names a chunk, hands it to `chunk` and adds it to the manifest; returns its length.
fn record<E>(manifest: &mut Manifest, bytes: &[u8], chunk: &mut impl FnMut(&ChunkRef, &[u8]) -> Result<(), E>) -> Result<usize, E> {
    let reference = ChunkRef {
        id: blake3::hash(bytes).to_hex().to_string(),
        len: u32::try_from(bytes.len()).unwrap_or(MAX_CHUNK),
    };
    chunk(&reference, bytes)?;
    manifest.size += bytes.len() as u64;
    manifest.chunks.push(reference);
    Ok(bytes.len())
}

/// The manifest of everything `reader` yields, calling `chunk` with each chunk; `chunker` is
/// [`Chunker::new`] or [`Chunker::without_checksum`].
///
/// # Errors
/// A read error, or the error `chunk` returns.
pub fn chunk_reader(
    mut chunker: Chunker,
    mut reader: impl Read,
    mut chunk: impl FnMut(&ChunkRef, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<Manifest> {
    let mut buffer = vec![0; 1024 * 1024];
    loop {
        let read = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        chunker.push(&buffer[..read], &mut chunk)?;
    }
    chunker.finish(chunk)
}

/// Stores a whole content (each new chunk once, then its manifest as a chunk of its own) and returns
/// the manifest's id, which names the content in the store.
///
/// # Errors
/// The store's.
pub async fn put_content(store: &dyn ChunkStore, data: &[u8]) -> Result<String, StoreError> {
    let mut chunks: Vec<(String, &[u8])> = Vec::new();
    let mut offset = 0_usize;
    let mut chunker = Chunker::without_checksum();
    let mut note = |reference: &ChunkRef, bytes: &[u8]| -> Result<(), StoreError> {
        chunks.push((reference.id.clone(), &data[offset..offset + bytes.len()]));
        offset += bytes.len();
        Ok(())
    };
    chunker.push(data, &mut note)?;
    let mut manifest = chunker.finish(&mut note)?;
    manifest.checksum = blake3::hash(data).to_hex().to_string();
    store.put_many(&chunks).await?;
    put_manifest(store, &manifest).await
}

/// Stores a content that arrives as a stream (each new chunk once, 8 MiB of chunks at a time so a
/// store makes them durable together, then its manifest); returns the manifest's id and the
/// manifest, with the content's checksum.
///
/// # Errors
/// The stream's or the store's.
pub async fn put_stream(store: &dyn ChunkStore, mut data: ByteStream) -> Result<(String, Manifest), StoreError> {
    /// Chunks are stored together, this many bytes at a time.
    const BATCH: usize = 8 * 1024 * 1024;
    let mut chunker = Chunker::new();
    let mut ready: Vec<(String, Vec<u8>)> = Vec::new();
    let mut held = 0;
    while let Some(piece) = data.next().await {
        chunker.push(&piece?, |chunk, bytes| {
            held += bytes.len();
            ready.push((chunk.id.clone(), bytes.to_vec()));
            Ok::<(), StoreError>(())
        })?;
        if held >= BATCH {
            put_ready(store, &mut ready).await?;
            held = 0;
        }
    }
    let manifest = chunker.finish(|chunk, bytes| {
        ready.push((chunk.id.clone(), bytes.to_vec()));
        Ok::<(), StoreError>(())
    })?;
    put_ready(store, &mut ready).await?;
    Ok((put_manifest(store, &manifest).await?, manifest))
}

/// Stores the chunks cut so far, together, and empties the list.
async fn put_ready(store: &dyn ChunkStore, ready: &mut Vec<(String, Vec<u8>)>) -> Result<(), StoreError> {
    let batch: Vec<(String, &[u8])> = ready.iter().map(|(id, bytes)| (id.clone(), bytes.as_slice())).collect();
    store.put_many(&batch).await?;
    ready.clear();
    Ok(())
}

/// Stores a manifest as a chunk of its own (its chunks need not be stored: a manifest alone tells
/// which byte ranges a later version changes); returns its id.
///
/// # Errors
/// The store's.
pub async fn put_manifest(store: &dyn ChunkStore, manifest: &Manifest) -> Result<String, StoreError> {
    let encoded = serde_json::to_vec(manifest).map_err(|err| StoreError::Io(err.into()))?;
    let id = blake3::hash(&encoded).to_hex().to_string();
    store.put(&id, &encoded).await?;
    Ok(id)
}

/// A manifest stored by [`put_manifest`].
///
/// # Errors
/// A missing or damaged manifest.
pub async fn get_manifest(store: &dyn ChunkStore, id: &str) -> Result<Manifest, StoreError> {
    let encoded = store.get(id).await?;
    serde_json::from_slice(&encoded).map_err(|_| StoreError::Damaged(id.to_owned()))
}

/// A content stored by [`put_content`], checked chunk by chunk and as a whole.
///
/// # Errors
/// A missing or damaged chunk or manifest.
pub async fn get_content(store: &dyn ChunkStore, manifest_id: &str) -> Result<Vec<u8>, StoreError> {
    let manifest = get_manifest(store, manifest_id).await?;
    let mut data = Vec::with_capacity(usize::try_from(manifest.size).unwrap_or(0));
    for chunk in &manifest.chunks {
        data.extend_from_slice(&store.get(&chunk.id).await?);
    }
    if blake3::hash(&data).to_hex().as_str() != manifest.checksum {
        return Err(StoreError::Damaged(manifest_id.to_owned()));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic incompressible bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut counter = 0_u64;
        while out.len() < len {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&seed.to_le_bytes());
            hasher.update(&counter.to_le_bytes());
            out.extend_from_slice(hasher.finalize().as_bytes());
            counter += 1;
        }
        out.truncate(len);
        out
    }

    fn manifest_in_pieces(data: &[u8], piece: usize) -> (Manifest, Vec<u8>) {
        let mut chunker = Chunker::new();
        let mut rebuilt = Vec::new();
        for part in data.chunks(piece) {
            chunker
                .push::<()>(part, |_, bytes| {
                    rebuilt.extend_from_slice(bytes);
                    Ok(())
                })
                .expect("push");
        }
        let manifest = chunker
            .finish::<()>(|_, bytes| {
                rebuilt.extend_from_slice(bytes);
                Ok(())
            })
            .expect("finish");
        (manifest, rebuilt)
    }

    #[test]
    fn chunks_do_not_depend_on_how_the_bytes_arrive() {
        let data = noise(3 * 1024 * 1024 + 12_345, 1);
        let (whole, rebuilt) = manifest_in_pieces(&data, data.len());
        assert_eq!(rebuilt, data);
        assert_eq!(whole.size, data.len() as u64);
        assert_eq!(whole.checksum, blake3::hash(&data).to_hex().to_string());
        for piece in [1, 1000, 65_536, 300_001] {
            let (pieces, rebuilt) = manifest_in_pieces(&data, piece);
            assert_eq!(pieces, whole, "pieces of {piece} bytes");
            assert_eq!(rebuilt, data);
        }
        for (chunk, span) in whole.spans() {
            let bytes = &data[usize::try_from(span.start).unwrap_or(0)..usize::try_from(span.end).unwrap_or(0)];
            assert_eq!(chunk.id, blake3::hash(bytes).to_hex().to_string());
            assert!(chunk.len <= MAX_CHUNK);
        }
        let sizes: Vec<u32> = whole.chunks.iter().map(|c| c.len).collect();
        let average = data.len() / sizes.len();
        assert!(
            (AVG_CHUNK as usize / 2..AVG_CHUNK as usize * 2).contains(&average),
            "average chunk {average} bytes"
        );
        assert!(sizes[..sizes.len() - 1].iter().all(|len| *len >= MIN_CHUNK));
    }

    #[test]
    fn an_edit_changes_only_nearby_chunks() {
        let data = noise(4 * 1024 * 1024, 2);
        let (before, _) = manifest_in_pieces(&data, 1 << 20);
        // Overwrite 1,000 bytes in the middle, and insert 10 bytes near the start.
        let mut edited = data.clone();
        edited[2_000_000..2_001_000].copy_from_slice(&noise(1000, 3));
        edited.splice(100_000..100_000, [7_u8; 10]);
        let (after, _) = manifest_in_pieces(&edited, 1 << 20);
        let new_bytes: u64 = after.missing_from(&before).iter().map(|c| u64::from(c.len)).sum();
        assert!(new_bytes <= 4 * u64::from(MAX_CHUNK), "{new_bytes} new bytes for two small edits");
        assert!(!after.missing_from(&before).is_empty());
        let empty = manifest_in_pieces(&[], 10).0;
        assert_eq!((empty.size, empty.chunks.len()), (0, 0));
        assert_eq!(empty.checksum, blake3::hash(b"").to_hex().to_string());
    }

    #[test]
    fn chunk_reader_matches_the_chunker() {
        let data = noise(1_500_000, 4);
        let mut count = 0;
        let manifest = chunk_reader(Chunker::new(), data.as_slice(), |_, _| {
            count += 1;
            Ok(())
        })
        .expect("chunked");
        assert_eq!(manifest, manifest_in_pieces(&data, 4096).0);
        assert_eq!(count, manifest.chunks.len());
        let unchecked = chunk_reader(Chunker::without_checksum(), data.as_slice(), |_, _| Ok(())).expect("chunked");
        assert_eq!(unchecked.chunks, manifest.chunks);
        assert!(unchecked.checksum.is_empty());
    }
}
