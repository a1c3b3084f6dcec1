//! Near-duplicate pictures: which of a person's pictures are copies of one another (resized,
//! recompressed, re-encoded) by their perceptual hashes, found through a BK-tree (a metric tree
//! over Hamming distance, so each picture asks only the part of the collection within reach).
//!
//! Similar is not duplicate: two shots of one scene taken moments apart (a burst) have close hashes
//! too. Two pictures whose cameras recorded different moments (EXIF `DateTimeOriginal`) are never
//! grouped, however alike; copies keep the moment, or lose EXIF altogether when re-encoded. Pictures
//! with the same bytes are one node here: exact duplicates are grouped by their checksum already.
//!
//! [`join`] groups anything by pairs found alike elsewhere (documents whose meanings are close).

use std::collections::HashMap;

/// One picture as the grouping sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picture {
    /// The caller's index of the picture (a file).
    pub index: usize,
    /// BLAKE3 of its bytes: pictures with equal checksums are one node.
    pub checksum: String,
    /// The perceptual hash's bits, as hex.
    pub phash: String,
    /// EXIF `DateTimeOriginal`, if the camera recorded it.
    pub taken_at: Option<String>,
}

/// A group of pictures that are copies of one another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearGroup {
    /// The caller's indexes, in the order given.
    pub members: Vec<usize>,
    /// The largest Hamming distance by which a picture joined the group (to its nearest member).
    pub distance: u32,
    /// The hashes' length in bits.
    pub bits: u32,
}

fn bits_of(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

fn distance(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// A BK-tree: each child hangs off its parent at its distance from it, so a search within `radius`
/// of a query visits only children at distances within `radius` of the query's distance.
struct BkTree<'a> {
    nodes: Vec<(&'a [u8], usize, HashMap<u32, usize>)>,
}

impl<'a> BkTree<'a> {
    fn insert(&mut self, hash: &'a [u8], value: usize) {
        if self.nodes.is_empty() {
            self.nodes.push((hash, value, HashMap::new()));
            return;
        }
        let mut at = 0;
        loop {
            let d = distance(self.nodes[at].0, hash);
            match self.nodes[at].2.get(&d) {
                Some(&child) => at = child,
                None => {
                    let new = self.nodes.len();
                    self.nodes.push((hash, value, HashMap::new()));
                    self.nodes[at].2.insert(d, new);
                    return;
                }
            }
        }
    }

    /// Every value within `radius` of `hash`, with its distance.
    fn within(&self, hash: &[u8], radius: u32) -> Vec<(usize, u32)> {
        let mut found = Vec::new();
        if self.nodes.is_empty() {
            return found;
        }
        let mut stack = vec![0];
        while let Some(at) = stack.pop() {
            let (node, value, children) = &self.nodes[at];
            let d = distance(node, hash);
            if d <= radius {
                found.push((*value, d));
            }
            for (edge, child) in children {
                if edge.abs_diff(d) <= radius {
                    stack.push(*child);
                }
            }
        }
        found
    }
}

fn root(parents: &mut [usize], mut at: usize) -> usize {
    while parents[at] != at {
        parents[at] = parents[parents[at]];
        at = parents[at];
    }
    at
}

/// Groups of at least two distinct contents, each joined to the group by a hash at most
/// `max_distance` bits from one of its pictures, and no two recording different moments; largest
/// first. Pictures whose hash is not
/// hex, or of another length than the first's, are left out.
#[must_use]
pub fn near_pictures(pictures: &[Picture], max_distance: u32) -> Vec<NearGroup> {
    // One node per distinct content.
    let mut nodes: Vec<(Vec<u8>, Option<&str>, Vec<usize>)> = Vec::new();
    let mut by_checksum: HashMap<&str, usize> = HashMap::new();
    let mut length = None;
    for picture in pictures {
        let Some(bits) = bits_of(&picture.phash) else { continue };
        if *length.get_or_insert(bits.len()) != bits.len() {
            continue;
        }
        match by_checksum.get(picture.checksum.as_str()) {
            Some(&node) => nodes[node].2.push(picture.index),
            None => {
                by_checksum.insert(&picture.checksum, nodes.len());
                nodes.push((bits, picture.taken_at.as_deref(), vec![picture.index]));
            }
        }
    }
    let mut tree = BkTree { nodes: Vec::new() };
    for (at, (bits, _, _)) in nodes.iter().enumerate() {
        tree.insert(bits, at);
    }
    // Closest pairs first (as Kruskal's algorithm joins), so a copy without EXIF joins the picture
    // it was made from before a burst neighbour of that picture can reach it.
    let mut pairs: Vec<(u32, usize, usize)> = Vec::new();
    for (at, (bits, _, _)) in nodes.iter().enumerate() {
        for (other, d) in tree.within(bits, max_distance) {
            if other > at {
                pairs.push((d, at, other));
            }
        }
    }
    pairs.sort_unstable();
    let mut parents: Vec<usize> = (0..nodes.len()).collect();
    let mut widest: Vec<u32> = vec![0; nodes.len()];
    // The moment a group's pictures record (none, or the one they all share).
    let mut moments: Vec<Option<&str>> = nodes.iter().map(|n| n.1).collect();
    for (d, at, other) in pairs {
        let (ra, rb) = (root(&mut parents, at), root(&mut parents, other));
        if ra == rb {
            continue;
        }
        // Two recorded moments that differ: two shots, not two copies, however alike.
        let moment = match (moments[ra], moments[rb]) {
            (Some(a), Some(b)) if a != b => continue,
            (a, b) => a.or(b),
        };
        parents[rb] = ra;
        moments[ra] = moment;
        widest[ra] = widest[ra].max(widest[rb]).max(d);
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for at in 0..nodes.len() {
        let r = root(&mut parents, at);
        groups.entry(r).or_default().push(at);
    }
    let bits = u32::try_from(length.unwrap_or(0) * 8).unwrap_or(u32::MAX);
    let mut out: Vec<NearGroup> = groups
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(r, members)| {
            let mut indexes: Vec<usize> = members.iter().flat_map(|m| nodes[*m].2.iter().copied()).collect();
            indexes.sort_unstable();
            NearGroup {
                members: indexes,
                distance: widest[r],
                bits,
            }
        })
        .collect();
    out.sort_by(|a, b| b.members.len().cmp(&a.members.len()).then(a.members.cmp(&b.members)));
    out
}

/// Groups joined by pairs `(a, b, likeness)` of items `0..n`, the most alike pairs first; each
/// group with the least likeness of the pairs that joined it, largest groups first.
#[must_use]
pub fn join(n: usize, mut pairs: Vec<(usize, usize, f32)>) -> Vec<(Vec<usize>, f32)> {
    pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let mut parents: Vec<usize> = (0..n).collect();
    let mut least = vec![1f32; n];
    for (a, b, likeness) in pairs.into_iter().filter(|(a, b, _)| *a < n && *b < n) {
        let (ra, rb) = (root(&mut parents, a), root(&mut parents, b));
        if ra != rb {
            parents[rb] = ra;
            least[ra] = least[ra].min(least[rb]).min(likeness);
        }
    }
    let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
    for at in 0..n {
        let r = root(&mut parents, at);
        groups.entry(r).or_default().push(at);
    }
    let mut out: Vec<(Vec<usize>, f32)> = groups
        .into_iter()
        .filter(|(_, members)| members.len() > 1)
        .map(|(r, members)| (members, least[r]))
        .collect();
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(index: usize, checksum: &str, phash: &str, taken_at: Option<&str>) -> Picture {
        Picture {
            index,
            checksum: checksum.into(),
            phash: phash.into(),
            taken_at: taken_at.map(str::to_owned),
        }
    }

    #[test]
    fn copies_group_and_strangers_do_not() {
        let pictures = [
            picture(0, "a", "ffff0000", None),
            picture(1, "b", "ffff0001", None),      // 1 bit from 0: a copy
            picture(2, "c", "0000ffff", None),      // far from both
            picture(3, "a", "ffff0000", None),      // the same bytes as 0
            picture(4, "d", "ffff0003", Some("x")), // 2 bits from 0, 1 from 1
        ];
        let groups = near_pictures(&pictures, 2);
        assert_eq!(
            groups,
            [NearGroup {
                members: vec![0, 1, 3, 4],
                distance: 1,
                bits: 32
            }]
        );
        assert!(near_pictures(&pictures, 0).is_empty(), "equal bytes alone are not a near group");
    }

    #[test]
    fn shots_taken_at_different_moments_are_never_grouped() {
        let burst = [
            picture(0, "a", "ffff0000", Some("2024-05-01T10:00:00")),
            picture(1, "b", "ffff0001", Some("2024-05-01T10:00:01")),
        ];
        assert!(near_pictures(&burst, 8).is_empty());
        let copy = [
            picture(0, "a", "ffff0000", Some("2024-05-01T10:00:00")),
            picture(1, "b", "ffff0001", Some("2024-05-01T10:00:00")),
            picture(2, "c", "ffff0001", None),
        ];
        assert_eq!(near_pictures(&copy, 8)[0].members, [0, 1, 2]);
    }

    #[test]
    fn pairs_join_into_groups_scored_by_their_weakest_link() {
        let groups = join(5, vec![(0, 1, 0.99), (1, 2, 0.985), (3, 4, 0.995), (0, 2, 0.999)]);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0, [0, 1, 2]);
        assert!((groups[0].1 - 0.99).abs() < 1e-6, "0-2 and 0-1 joined it: {groups:?}");
        assert_eq!(groups[1], (vec![3, 4], 0.995));
        assert!(join(3, vec![(0, 7, 1.0)]).is_empty(), "pairs outside the items are ignored");
    }

    #[test]
    fn a_copy_without_exif_does_not_bridge_a_burst() {
        let pictures = [
            picture(0, "a", "ffff0000", Some("2024-05-01T10:00:00")),
            picture(1, "b", "ffff0001", None),                        // a copy of 0
            picture(2, "c", "ffff0007", Some("2024-05-01T10:00:01")), // the next shot
        ];
        assert_eq!(near_pictures(&pictures, 4)[0].members, [0, 1]);
    }

    #[test]
    fn the_tree_finds_what_a_scan_finds() {
        // Every pair of 200 pseudo-random 64-bit hashes, checked against a plain scan.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let hashes: Vec<String> = (0..200)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                format!("{seed:016x}")
            })
            .collect();
        let pictures: Vec<Picture> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| picture(i, &i.to_string(), h, None))
            .collect();
        let bits: Vec<Vec<u8>> = hashes.iter().filter_map(|h| bits_of(h)).collect();
        let mut tree = BkTree { nodes: Vec::new() };
        for (i, b) in bits.iter().enumerate() {
            tree.insert(b, i);
        }
        for (i, b) in bits.iter().enumerate() {
            let mut found: Vec<usize> = tree.within(b, 24).into_iter().map(|(v, _)| v).collect();
            found.sort_unstable();
            let scanned: Vec<usize> = (0..bits.len()).filter(|j| distance(b, &bits[*j]) <= 24).collect();
            assert_eq!(found, scanned, "{i}");
        }
        let grouped: usize = near_pictures(&pictures, 24).iter().map(|g| g.members.len()).sum();
        let close = (0..bits.len())
            .filter(|i| (0..bits.len()).any(|j| j != *i && distance(&bits[*i], &bits[j]) <= 24))
            .count();
        assert_eq!(grouped, close, "a picture is grouped exactly when another is within reach");
    }
}
