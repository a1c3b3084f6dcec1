//! BLAKE3 of a stream from the hashes of its aligned pieces ([`PIECE`] bytes each, a subtree of
//! BLAKE3's tree), so that a piece known to equal one hashed already at the same offset costs
//! nothing: comparing a file with its older version, every unchanged piece of the old one is the
//! new one's. The result is the file's plain `blake3::hash`.

use blake3::hazmat::{ChainingValue, HasherExt as _, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// The bytes of a piece: 64 chunks of BLAKE3, a whole subtree wherever it starts at a multiple of
/// its size.
pub const PIECE: usize = 64 * blake3::CHUNK_LEN;

/// The BLAKE3 of pieces given in order: each but the last exactly [`PIECE`] bytes.
#[derive(Default)]
pub struct PieceHasher {
    /// Chaining values of whole subtrees not merged yet (as `blake3::Hasher` keeps them).
    stack: Vec<ChainingValue>,
    /// The pieces given so far.
    pieces: u64,
    /// The last piece's chaining value, and its root hash in case it is the only piece.
    last: Option<(ChainingValue, blake3::Hash)>,
    /// The last piece was shorter than [`PIECE`]: nothing may follow it.
    short: bool,
}

/// What one piece hashes to where it lies: its chaining value, and its root hash had the input been
/// this piece alone (used only when it is).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PieceHash(ChainingValue, blake3::Hash);

impl PieceHasher {
    /// Hashes `piece`, the next piece, and adds it.
    ///
    /// # Panics
    /// When a piece follows one shorter than [`PIECE`], or is longer than it, or is empty.
    pub fn update(&mut self, piece: &[u8]) -> PieceHash {
        let hash = self.hash_next(piece);
        self.add(hash, piece.len());
        hash
    }

    /// What `piece`, given as the next piece, hashes to (without adding it).
    ///
    /// # Panics
    /// When `piece` is empty.
    #[must_use]
    pub fn hash_next(&self, piece: &[u8]) -> PieceHash {
        let offset = self.pieces * PIECE as u64;
        let cv = blake3::Hasher::new().set_input_offset(offset).update(piece).finalize_non_root();
        // Only a first piece can be the whole input.
        let root = if self.pieces == 0 {
            blake3::hash(piece)
        } else {
            blake3::Hash::from_bytes([0; 32])
        };
        PieceHash(cv, root)
    }

    /// Adds the next piece, `len` bytes long, by its hash (of the same bytes at the same offset,
    /// from [`PieceHasher::hash_next`] or another hasher's [`PieceHasher::update`]).
    ///
    /// # Panics
    /// When a piece follows one shorter than [`PIECE`], or is longer than it.
    pub fn add(&mut self, hash: PieceHash, len: usize) {
        assert!(!self.short && len <= PIECE, "pieces after a short one, or longer than PIECE");
        if let Some((cv, _)) = self.last.take() {
            // More input follows the previous piece, so it is not the root's right edge: keep it,
            // and merge the subtrees complete before this piece, as BLAKE3's own hasher does (as
            // many stay as the count of pieces before this one has bits set).
            self.stack.push(cv);
            while self.stack.len() > self.pieces.count_ones() as usize {
                let right = self.stack.pop().unwrap_or_default();
                let left = self.stack.pop().unwrap_or_default();
                self.stack.push(merge_subtrees_non_root(&left, &right, Mode::Hash));
            }
        }
        self.last = Some((hash.0, hash.1));
        self.pieces += 1;
        self.short = len < PIECE;
    }

    /// The BLAKE3 of everything given (of nothing, when nothing was).
    #[must_use]
    pub fn finalize(mut self) -> blake3::Hash {
        let Some((mut right, root)) = self.last.take() else {
            return blake3::hash(&[]);
        };
        if self.stack.is_empty() {
            return root;
        }
        while self.stack.len() > 1 {
            let left = self.stack.pop().unwrap_or_default();
            right = merge_subtrees_non_root(&left, &right, Mode::Hash);
        }
        merge_subtrees_root(&self.stack[0], &right, Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
            .collect()
    }

    #[test]
    fn pieces_hash_as_the_whole_input() {
        let lengths = (0..=40).flat_map(|pieces| [0, 1, 1024, 1025, PIECE - 1].map(|tail| pieces * PIECE + tail));
        for len in lengths {
            let input = bytes(len, 7);
            let mut hasher = PieceHasher::default();
            for piece in input.chunks(PIECE) {
                hasher.update(piece);
            }
            assert_eq!(hasher.finalize(), blake3::hash(&input), "{len} bytes");
        }
    }

    #[test]
    fn an_equal_piece_at_the_same_offset_is_taken_from_the_other_hasher() {
        let new = bytes(6 * PIECE + 100, 1);
        let mut old = new.clone();
        old[2 * PIECE + 5] ^= 1;
        old.truncate(5 * PIECE + 3);
        let (mut new_hasher, mut old_hasher) = (PieceHasher::default(), PieceHasher::default());
        let mut taken = 0;
        for (at, piece) in new.chunks(PIECE).enumerate() {
            let hash = new_hasher.update(piece);
            match old.chunks(PIECE).nth(at) {
                Some(before) if before == piece => {
                    old_hasher.add(hash, before.len());
                    taken += 1;
                }
                Some(before) => {
                    old_hasher.update(before);
                }
                None => {}
            }
        }
        assert_eq!(taken, 4, "every piece but the changed one and the cut one");
        assert_eq!(new_hasher.finalize(), blake3::hash(&new));
        assert_eq!(old_hasher.finalize(), blake3::hash(&old));
    }
}
