//! Chunk manifests: a file's content as the list of its content-defined chunks, each named by its
//! BLAKE3. Two versions of a file share the chunks they have in common, so a manifest also tells
//! which byte ranges of a new version differ from an old one.
//!
//! A manifest with a [`Patch`] holds a content as a change of a newer one: the bytes that a write
//! in place destroyed (its chunks) and where they were. Such a content is rebuilt from the newer
//! one (the file as it is now, or another kept version) by [`Patch`]'s ranges, so keeping it costs
//! what the change destroyed rather than a copy of the file.

use std::collections::HashSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};

/// One chunk of a file: its BLAKE3 (hex) and length.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: String,
    pub len: u32,
}

/// A file's content as chunks, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// BLAKE3 of the whole content (hex); empty when the chunker was told the caller knows it.
    pub checksum: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
    /// Set when the content is a change of a newer content: `chunks` then hold only the bytes of
    /// `patch.ranges`, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<Patch>,
}

/// How a content ([`Manifest::size`] bytes, BLAKE3 [`Manifest::checksum`]) is rebuilt from a newer
/// one: take the newer content's first `size` bytes and put the manifest's bytes at `ranges`. The
/// ranges cover every byte past the newer content's end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// BLAKE3 (hex) of the newer content.
    pub base: String,
    /// Its size.
    pub base_size: u64,
    /// (offset, length) of each run of bytes that differs from the newer content, in order and
    /// apart.
    pub ranges: Vec<(u64, u32)>,
}

impl Patch {
    /// Whether the ranges are in order, apart, inside `size`, and cover everything past the base,
    /// and hold `bytes` bytes in all.
    pub fn is_valid(&self, size: u64, bytes: u64) -> bool {
        let mut end = 0_u64;
        let mut total = 0_u64;
        for &(offset, len) in &self.ranges {
            if offset < end || len == 0 {
                return false;
            }
            // Past the base, the previous range must reach this one.
            if offset > end && offset > self.base_size {
                return false;
            }
            end = offset + u64::from(len);
            total += u64::from(len);
        }
        end <= size && (size <= self.base_size || end == size) && total == bytes
    }
}

impl Manifest {
    /// Each chunk with the byte range it covers.
    pub fn spans(&self) -> impl Iterator<Item = (&ChunkRef, Range<u64>)> {
        self.chunks.iter().scan(0_u64, |offset, chunk| {
            let start = *offset;
            *offset += u64::from(chunk.len);
            Some((chunk, start..*offset))
        })
    }

    /// The chunks of `self` that `other` does not hold (each once).
    pub fn missing_from<'a>(&'a self, other: &Manifest) -> Vec<&'a ChunkRef> {
        let held: HashSet<&str> = other.chunks.iter().map(|c| c.id.as_str()).collect();
        let mut seen = HashSet::new();
        self.chunks
            .iter()
            .filter(|c| !held.contains(c.id.as_str()) && seen.insert(c.id.as_str()))
            .collect()
    }

    /// The byte ranges of `self` that must be written over a file holding `old` to turn it into
    /// `self`: every chunk that `old` does not have at the same offset, adjacent ranges joined.
    /// (A file that shrinks must also be truncated to [`Manifest::size`].)
    pub fn changed_ranges(&self, old: &Manifest) -> Vec<Range<u64>> {
        let before: HashSet<(&str, u64)> = old.spans().map(|(c, span)| (c.id.as_str(), span.start)).collect();
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for (chunk, span) in self.spans() {
            if before.contains(&(chunk.id.as_str(), span.start)) {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.end == span.start => last.end = span.end,
                _ => ranges.push(span),
            }
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(chunks: &[(&str, u32)]) -> Manifest {
        let chunks: Vec<ChunkRef> = chunks
            .iter()
            .map(|(id, len)| ChunkRef {
                id: (*id).into(),
                len: *len,
            })
            .collect();
        Manifest {
            checksum: String::new(),
            size: chunks.iter().map(|c| u64::from(c.len)).sum(),
            chunks,
            patch: None,
        }
    }

    #[test]
    fn changed_ranges_cover_only_what_differs() {
        let old = manifest(&[("a", 10), ("b", 10), ("c", 10), ("d", 10)]);
        // b edited in place (same length), d replaced by a longer chunk.
        let new = manifest(&[("a", 10), ("B", 10), ("c", 10), ("D", 15)]);
        assert_eq!(new.changed_ranges(&old), vec![10..20, 30..45]);
        // An insertion at the front shifts everything: the shifted chunks must be rewritten.
        let shifted = manifest(&[("x", 5), ("a", 10), ("b", 10)]);
        assert_eq!(shifted.changed_ranges(&old), vec![0..25]);
        assert!(old.changed_ranges(&old).is_empty());
        assert_eq!(manifest(&[]).changed_ranges(&old), Vec::<Range<u64>>::new());
    }

    #[test]
    fn a_patch_is_valid_only_when_its_ranges_fit() {
        let patch = |base_size, ranges: &[(u64, u32)]| Patch {
            base: "b".into(),
            base_size,
            ranges: ranges.to_vec(),
        };
        assert!(patch(100, &[(10, 5), (50, 10)]).is_valid(100, 15));
        assert!(!patch(100, &[(10, 5), (50, 10)]).is_valid(100, 14), "byte count");
        assert!(!patch(100, &[(50, 10), (10, 5)]).is_valid(100, 15), "out of order");
        assert!(!patch(100, &[(10, 5), (12, 5)]).is_valid(100, 10), "overlapping");
        assert!(!patch(100, &[(10, 0)]).is_valid(100, 0), "empty range");
        assert!(!patch(100, &[(95, 10)]).is_valid(100, 10), "past the end");
        // Longer than its base: the tail must be covered, without a gap.
        assert!(patch(100, &[(90, 20)]).is_valid(110, 20));
        assert!(patch(100, &[(90, 10), (100, 10)]).is_valid(110, 20));
        assert!(!patch(100, &[(90, 5)]).is_valid(110, 5), "tail not covered");
        assert!(!patch(100, &[(100, 5), (106, 4)]).is_valid(110, 9), "a gap past the base");
        // Shorter: nothing to cover.
        assert!(patch(100, &[]).is_valid(60, 0));
    }

    #[test]
    fn missing_chunks_are_listed_once() {
        let old = manifest(&[("a", 1), ("b", 1)]);
        let new = manifest(&[("a", 1), ("z", 1), ("y", 1), ("z", 1)]);
        let missing: Vec<&str> = new.missing_from(&old).iter().map(|c| c.id.as_str()).collect();
        assert_eq!(missing, vec!["z", "y"]);
    }
}
