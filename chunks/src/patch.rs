//! Contents kept as a change of a newer one (a manifest with a [`Patch`]): planning a write in
//! place so that it writes only the bytes that differ and keeps what they held ([`Differ`]),
//! storing that ([`put_patch`]), and rebuilding the older content from the newer one
//! ([`overlay`]).

use bytes::{Bytes, BytesMut};
pub use cloudsync_domain::manifest::Patch;
use cloudsync_providers::ByteStream;
use futures::StreamExt as _;

use crate::{ChunkRef, ChunkStore, Chunker, Manifest, StoreError, put_manifest};

/// Runs of differing bytes closer than this are written (and kept) as one: a write system call
/// and a range cost more than a few equal bytes.
const GAP: usize = 64;

/// How much of a content past its base's end [`overlay`] hands out at once.
const PIECE: u64 = 1024 * 1024;

/// A write in place, planned: what to write over the old file (then cut or extend it to the new
/// size), and what that destroys.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct InPlace {
    /// (offset, new bytes), in order.
    pub writes: Vec<(u64, Vec<u8>)>,
    /// The old content as a change of the new one; its `base` is left for the caller to fill in.
    pub undo: Patch,
    /// The old bytes at `undo.ranges`, in order.
    pub undo_bytes: Vec<u8>,
}

impl InPlace {
    /// Bytes written.
    pub fn written(&self) -> u64 {
        self.writes.iter().map(|(_, bytes)| bytes.len() as u64).sum()
    }
}

/// More differing bytes than a write in place holds in memory.
#[derive(Debug)]
pub struct TooMuch;

/// Plans a write in place from the old and the new content read side by side: only runs of bytes
/// that differ are written (runs closer than 64 bytes joined), and the undo holds exactly what they
/// and a cut tail held. Holds the differing bytes (new and old) in memory, at most `limit`.
#[derive(Debug)]
pub struct Differ {
    plan: InPlace,
    new_size: u64,
    limit: u64,
    held: u64,
}

impl Differ {
    pub fn new(new_size: u64, limit: u64) -> Self {
        Self {
            plan: InPlace {
                undo: Patch {
                    base: String::new(),
                    base_size: new_size,
                    ranges: Vec::new(),
                },
                ..InPlace::default()
            },
            new_size,
            limit,
            held: 0,
        }
    }

    /// The bytes from `offset` on, in both contents (`new` and `old` of one length).
    ///
    /// # Errors
    /// More differing bytes than the limit.
    pub fn compare(&mut self, offset: u64, new: &[u8], old: &[u8]) -> Result<(), TooMuch> {
        let len = new.len().min(old.len());
        let (new, old) = (&new[..len], &old[..len]);
        let mut i = 0;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        while i < len {
            // Equal blocks are skipped whole (one memcmp); a block that differs is read byte by byte.
            let block = (i + 4096).min(len);
            if new[i..block] == old[i..block] {
                i = block;
                continue;
            }
            while i < block {
                if new[i] == old[i] {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < len && new[i] != old[i] {
                    i += 1;
                }
                match runs.last_mut() {
                    Some((_, end)) if start - *end < GAP => *end = i,
                    _ => runs.push((start, i)),
                }
            }
        }
        for (start, end) in runs {
            self.take((end - start) as u64 * 2)?;
            let at = offset + start as u64;
            self.write(at, &new[start..end]);
            push_range(&mut self.plan.undo, at, end - start);
            self.plan.undo_bytes.extend_from_slice(&old[start..end]);
        }
        Ok(())
    }

    /// New bytes from `offset` on, past the old content's end.
    ///
    /// # Errors
    /// More than the limit.
    pub fn beyond(&mut self, offset: u64, new: &[u8]) -> Result<(), TooMuch> {
        self.take(new.len() as u64)?;
        self.write(offset, new);
        Ok(())
    }

    /// Old bytes from `offset` on, past the new content's end (a file that shrinks).
    ///
    /// # Errors
    /// More than the limit.
    pub fn cut(&mut self, offset: u64, old: &[u8]) -> Result<(), TooMuch> {
        self.take(old.len() as u64)?;
        for (i, piece) in old.chunks(u32::MAX as usize).enumerate() {
            push_range(
                &mut self.plan.undo,
                offset.max(self.new_size) + (i * u32::MAX as usize) as u64,
                piece.len(),
            );
            self.plan.undo_bytes.extend_from_slice(piece);
        }
        Ok(())
    }

    /// The plan.
    pub fn finish(self) -> InPlace {
        self.plan
    }

    fn take(&mut self, bytes: u64) -> Result<(), TooMuch> {
        self.held += bytes;
        if self.held > self.limit { Err(TooMuch) } else { Ok(()) }
    }

    fn write(&mut self, at: u64, bytes: &[u8]) {
        match self.plan.writes.last_mut() {
            Some((last, run)) if *last + run.len() as u64 == at => run.extend_from_slice(bytes),
            _ => self.plan.writes.push((at, bytes.to_vec())),
        }
    }
}

fn push_range(patch: &mut Patch, offset: u64, len: usize) {
    let len = u32::try_from(len).unwrap_or(u32::MAX);
    match patch.ranges.last_mut() {
        Some((at, run)) if *at + u64::from(*run) == offset && run.checked_add(len).is_some() => *run += len,
        _ => patch.ranges.push((offset, len)),
    }
}

/// Stores a content of `size` bytes with BLAKE3 `checksum` as a change of a newer one: `bytes`
/// (the content's bytes at `patch.ranges`, in order) as chunks, then the manifest, all durable
/// (names included) when it returns. Returns the manifest's id.
///
/// # Errors
/// A patch whose ranges do not fit ([`StoreError::Damaged`]), or the store's.
pub async fn put_patch(store: &dyn ChunkStore, checksum: &str, size: u64, patch: Patch, bytes: &[u8]) -> Result<String, StoreError> {
    if !patch.is_valid(size, bytes.len() as u64) {
        return Err(StoreError::Damaged(format!("a patch of {checksum} whose ranges do not fit")));
    }
    let mut chunks: Vec<(String, &[u8])> = Vec::new();
    let mut offset = 0_usize;
    let mut note = |reference: &ChunkRef, piece: &[u8]| -> Result<(), StoreError> {
        chunks.push((reference.id.clone(), &bytes[offset..offset + piece.len()]));
        offset += piece.len();
        Ok(())
    };
    let mut chunker = Chunker::without_checksum();
    chunker.push(bytes, &mut note)?;
    let mut manifest = chunker.finish(&mut note)?;
    store.put_many(&chunks).await?;
    manifest.checksum = checksum.to_owned();
    manifest.size = size;
    manifest.patch = Some(patch);
    let id = put_manifest(store, &manifest).await?;
    let mut names: Vec<String> = manifest.chunks.into_iter().map(|c| c.id).collect();
    names.push(id.clone());
    store.make_durable(&names).await?;
    Ok(id)
}

/// One older content over its newer one: its size, its patch and the patch's bytes.
#[derive(Debug, Clone)]
pub struct Layer {
    pub size: u64,
    pub patch: Patch,
    pub bytes: Bytes,
    /// Where each range's bytes start in `bytes`.
    starts: Vec<usize>,
}

impl Layer {
    /// Reads a patch manifest's bytes from the store.
    ///
    /// # Errors
    /// Not a patch manifest, a missing chunk, or bytes that do not fit its ranges.
    pub async fn load(store: &dyn ChunkStore, manifest: &Manifest) -> Result<Self, StoreError> {
        let Some(patch) = manifest.patch.clone() else {
            return Err(StoreError::Damaged(format!("{} is kept whole, not as a change", manifest.checksum)));
        };
        let mut bytes = BytesMut::new();
        for chunk in &manifest.chunks {
            bytes.extend_from_slice(&store.get(&chunk.id).await?);
        }
        Self::new(manifest.size, patch, bytes.freeze())
    }

    /// A layer from its parts.
    ///
    /// # Errors
    /// Bytes that do not fit the ranges.
    pub fn new(size: u64, patch: Patch, bytes: Bytes) -> Result<Self, StoreError> {
        if !patch.is_valid(size, bytes.len() as u64) {
            return Err(StoreError::Damaged(format!("a patch of {} whose ranges do not fit", patch.base)));
        }
        let starts = patch
            .ranges
            .iter()
            .scan(0_usize, |at, (_, len)| {
                let start = *at;
                *at += *len as usize;
                Some(start)
            })
            .collect();
        Ok(Self {
            size,
            patch,
            bytes,
            starts,
        })
    }

    /// Puts this layer's bytes that fall inside `out` (which holds the content from `offset` on).
    fn paint(&self, offset: u64, out: &mut [u8]) {
        let end = offset + out.len() as u64;
        let first = self.patch.ranges.partition_point(|(at, len)| at + u64::from(*len) <= offset);
        for (i, (at, len)) in self.patch.ranges.iter().enumerate().skip(first) {
            if *at >= end {
                break;
            }
            let from = (*at).max(offset);
            let to = (at + u64::from(*len)).min(end);
            let source = self.starts[i] + (from - at) as usize;
            out[(from - offset) as usize..(to - offset) as usize].copy_from_slice(&self.bytes[source..source + (to - from) as usize]);
        }
    }
}

/// The content that `layers` make of `base` (the newer content, as a stream): `layers[0]` is a
/// change of `base`, each later one a change of the one before it, and the result is the last
/// one's content, every byte from the last layer that holds it, else from `base`. The caller
/// checks the result's BLAKE3 (a base that is not the content the layers were made over gives
/// something else).
pub fn overlay(base: ByteStream, layers: Vec<Layer>) -> ByteStream {
    let Some(size) = layers.last().map(|l| l.size) else {
        return base;
    };
    let state = (Some(base), 0_u64, layers);
    futures::stream::unfold(state, move |(mut base, offset, layers)| async move {
        if offset >= size {
            return None;
        }
        let mut piece = match base.as_mut() {
            Some(stream) => match stream.next().await {
                Some(Ok(piece)) => BytesMut::from(&piece[..piece.len().min(usize::try_from(size - offset).unwrap_or(usize::MAX))]),
                Some(Err(err)) => return Some((Err(err), (None, size, layers))),
                None => {
                    base = None;
                    BytesMut::new()
                }
            },
            None => BytesMut::new(),
        };
        if base.is_none() {
            // Past the base's end: only the layers hold the rest.
            piece.resize(usize::try_from((size - offset).min(PIECE)).unwrap_or(0), 0);
        }
        for layer in &layers {
            layer.paint(offset, &mut piece);
        }
        let next = offset + piece.len() as u64;
        Some((Ok(piece.freeze()), (base, next, layers)))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt as _;

    use super::*;

    /// Deterministic bytes from a seed.
    fn bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..len)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (state >> 56) as u8
            })
            .collect()
    }

    /// `old` changed by `edits` (offset, len) and cut or extended to `new_size`.
    fn changed(old: &[u8], edits: &[(usize, usize)], new_size: usize, seed: u64) -> Vec<u8> {
        let mut new = old.to_vec();
        new.resize(new_size, 7);
        for (i, (at, len)) in edits.iter().enumerate() {
            new[*at..at + len].copy_from_slice(&bytes(*len, seed + i as u64));
        }
        new
    }

    fn apply(old: &[u8], plan: &InPlace, new_size: usize) -> Vec<u8> {
        let mut file = old.to_vec();
        for (at, bytes) in &plan.writes {
            let at = *at as usize;
            if file.len() < at + bytes.len() {
                file.resize(at + bytes.len(), 0);
            }
            file[at..at + bytes.len()].copy_from_slice(bytes);
        }
        file.resize(new_size, 0);
        file
    }

    /// The plan, from the two contents read side by side in pieces of different sizes.
    fn plan(old: &[u8], new: &[u8]) -> InPlace {
        let mut differ = Differ::new(new.len() as u64, u64::MAX);
        let common = old.len().min(new.len());
        let mut at = 0;
        for (i, size) in [1000, 333, 4096].iter().cycle().enumerate() {
            if at >= common {
                break;
            }
            let end = (at + size + i % 7).min(common);
            differ.compare(at as u64, &new[at..end], &old[at..end]).expect("within the limit");
            at = end;
        }
        if new.len() > common {
            differ.beyond(common as u64, &new[common..]).expect("within the limit");
        }
        if old.len() > common {
            differ.cut(common as u64, &old[common..]).expect("within the limit");
        }
        differ.finish()
    }

    async fn rebuild(newest: &[u8], layers: Vec<Layer>) -> Vec<u8> {
        let base: ByteStream =
            futures::stream::iter(newest.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect::<Vec<_>>()).boxed();
        let pieces: Vec<Bytes> = overlay(base, layers).try_collect().await.expect("rebuilt");
        pieces.concat()
    }

    #[tokio::test]
    async fn a_write_in_place_writes_what_differs_and_its_undo_rebuilds_the_old_content() {
        let v1 = bytes(50_000, 1);
        // Two edits of 40 bytes: only the edits are written.
        let v2 = changed(&v1, &[(1_000, 40), (30_000, 40)], v1.len(), 10);
        let p2 = plan(&v1, &v2);
        assert_eq!(apply(&v1, &p2, v2.len()), v2);
        assert!(p2.written() <= 80, "{} bytes written", p2.written());
        assert_eq!(p2.undo_bytes.len() as u64, p2.written(), "the undo holds what was overwritten");
        // Then the file grows, and then it shrinks.
        let v3 = changed(&v2, &[(20_000, 10)], 60_000, 20);
        let p3 = plan(&v2, &v3);
        assert_eq!(apply(&v2, &p3, v3.len()), v3);
        let v4 = changed(&v3, &[(5, 3), (10, 3)], 45_000, 30);
        let p4 = plan(&v3, &v4);
        assert_eq!(apply(&v3, &p4, v4.len()), v4);
        assert_eq!(p4.writes.len(), 1, "edits closer than the gap are one write");
        let layer = |p: &InPlace, size: usize| {
            let mut patch = p.undo.clone();
            patch.base = "newer".into();
            Layer::new(size as u64, patch, Bytes::from(p.undo_bytes.clone())).expect("a valid patch")
        };
        let (l4, l3, l2) = (layer(&p4, v3.len()), layer(&p3, v2.len()), layer(&p2, v1.len()));
        assert_eq!(rebuild(&v4, vec![l4.clone()]).await, v3);
        assert_eq!(rebuild(&v4, vec![l4.clone(), l3.clone()]).await, v2);
        assert_eq!(rebuild(&v4, vec![l4, l3, l2]).await, v1);
        // Nothing changed: nothing written, nothing kept.
        let same = plan(&v1, &v1);
        assert_eq!((same.written(), same.undo_bytes.len()), (0, 0));
        // Past the limit, the plan is refused.
        let mut differ = Differ::new(v2.len() as u64, 100);
        assert!(differ.compare(0, &v2, &v1).is_err(), "160 bytes held, 100 allowed");
    }
}
