//! The sync engine's decisions, as pure functions. For every path of a sync pair it compares what
//! the base holds (the state both sides agreed on at the pair's last successful run), what the source
//! and the target hold now, and decides what to do, with the reason.
//!
//! Two-way rules (DESIGN §6):
//! - only one side changed → propagate it, deletes and renames included;
//! - both changed the same way → nothing;
//! - delete against modify → keep the modified file (a rename counts as a change worth keeping);
//! - both modified → text files are merged line by line against the base ([`merge_lines`], run by the
//!   executor, which has the contents); overlapping edits and binary files are conflicts, settled by
//!   the pair's [`ConflictPolicy`] ([`resolve`]).
//!
//! Renames are recognised by content: a base path gone from one side while a new path on that side
//! holds the same content. Copy and mirror are one-way: the target is made to hold what the source
//! holds, mirror also deleting what the source does not have.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::values::ProviderPath;

/// The largest text file that is merged line by line; larger ones are conflicts.
pub const TEXT_MERGE_LIMIT: u64 = 8 * 1024 * 1024;

/// One file's content on a side, or in the base.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// BLAKE3, hex. Empty in a listing for a file that exists on one side only and has no possible
    /// rename partner: nothing in planning compares it, and it is hashed while it is copied.
    pub checksum: String,
    pub size: u64,
    pub modified_at: DateTime<Utc>,
}

impl Version {
    pub fn same_content(&self, other: &Version) -> bool {
        self.checksum == other.checksum && self.size == other.size
    }
}

fn same(a: Option<&Version>, b: Option<&Version>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same_content(b),
        _ => false,
    }
}

/// A folder's files, by path relative to the folder.
pub type Tree = BTreeMap<ProviderPath, Version>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Source,
    Target,
}

impl Side {
    pub fn other(self) -> Self {
        match self {
            Self::Source => Self::Target,
            Self::Target => Self::Source,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Target => "target",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SyncMode {
    /// One-way: the target receives the source's new and changed files; nothing is deleted.
    Copy,
    /// One-way: the target is made identical to the source, deletes included.
    Mirror,
    /// Both ways, by three-way merge against the last agreed state.
    TwoWay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConflictPolicy {
    /// Both versions survive: the loser (the older change; the target's on a tie) is renamed
    /// `name.conflict-<yyyymmdd-hhmmss>-<side>.ext` on both sides.
    KeepBoth,
    NewestWins,
    SourceWins,
    TargetWins,
    /// Left as it is until the user resolves it.
    Manual,
}

impl SyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Copy => "COPY",
            Self::Mirror => "MIRROR",
            Self::TwoWay => "TWO_WAY",
        }
    }
}

impl ConflictPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepBoth => "KEEP_BOTH",
            Self::NewestWins => "NEWEST_WINS",
            Self::SourceWins => "SOURCE_WINS",
            Self::TargetWins => "TARGET_WINS",
            Self::Manual => "MANUAL",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictKind {
    /// Both sides changed the file's content differently (and no line merge was clean).
    BothModified,
    /// Both sides created the path with different content.
    BothCreated,
    /// Both sides renamed the file, to different names.
    BothRenamed,
}

/// One change for the executor to make. Versions are what the executor must find before it acts
/// (a side that changed since the listing makes the step fail rather than overwrite the change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Action {
    /// Write the file found at `from` on the other side to `path` on side `to`, replacing what is there.
    Copy {
        to: Side,
        from: ProviderPath,
        path: ProviderPath,
        version: Version,
    },
    Delete {
        side: Side,
        path: ProviderPath,
        version: Version,
    },
    Rename {
        side: Side,
        from: ProviderPath,
        to: ProviderPath,
    },
    /// Both sides changed a text file: merge it line by line against `base` (none when both created
    /// it) and write a clean merge to both sides; otherwise settle it with [`resolve`].
    MergeText {
        path: ProviderPath,
        base: Option<Version>,
        source: Version,
        target: Version,
    },
    /// A conflict left for the user (`MANUAL`): nothing changes until it is resolved.
    Unresolved {
        path: ProviderPath,
        kind: ConflictKind,
        source: Option<Version>,
        target: Option<Version>,
    },
}

/// Why a decision was taken; recorded with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// Only this side changed the path: the change is propagated.
    Changed { side: Side },
    /// Only this side renamed the file: the rename is propagated.
    Renamed { side: Side },
    /// This side renamed the file and the other changed its content: both sides get the new content
    /// under the new name.
    RenamedAndModified { side: Side },
    /// One side deleted the file, this side changed it: the changed file is kept.
    KeptChanged { side: Side },
    /// Both sides changed a text file: merged line by line.
    BothChanged,
    /// A conflict, settled by the policy.
    Conflict { kind: ConflictKind, policy: ConflictPolicy },
    /// One-way mode: the target follows the source.
    FollowSource { mode: SyncMode },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The path the decision is about (for renames, the base path).
    pub path: ProviderPath,
    pub reason: Reason,
    pub actions: Vec<Action>,
}

/// Decides what a run of a pair must do. `now` names conflict copies.
pub fn plan(mode: SyncMode, policy: ConflictPolicy, base: &Tree, source: &Tree, target: &Tree, now: DateTime<Utc>) -> Vec<Decision> {
    match mode {
        SyncMode::Copy | SyncMode::Mirror => one_way(mode, source, target),
        SyncMode::TwoWay => two_way(policy, base, source, target, now),
    }
}

fn one_way(mode: SyncMode, source: &Tree, target: &Tree) -> Vec<Decision> {
    let reason = Reason::FollowSource { mode };
    let mut decisions: Vec<Decision> = source
        .iter()
        .filter(|(path, version)| !same(target.get(*path), Some(version)))
        .map(|(path, version)| Decision {
            path: path.clone(),
            reason,
            actions: vec![copy(Side::Target, path, version)],
        })
        .collect();
    if mode == SyncMode::Mirror {
        decisions.extend(
            target
                .iter()
                .filter(|(path, _)| !source.contains_key(*path))
                .map(|(path, version)| Decision {
                    path: path.clone(),
                    reason,
                    actions: vec![delete(Side::Target, path, version)],
                }),
        );
        pair_renames(&mut decisions, target);
        decisions.retain(|d| !d.actions.is_empty());
    }
    decisions
}

fn copy(to: Side, path: &ProviderPath, version: &Version) -> Action {
    Action::Copy {
        to,
        from: path.clone(),
        path: path.clone(),
        version: version.clone(),
    }
}

fn delete(side: Side, path: &ProviderPath, version: &Version) -> Action {
    Action::Delete {
        side,
        path: path.clone(),
        version: version.clone(),
    }
}

/// Turns a delete and a copy of the same content onto the same side into a rename there, so that
/// nothing is transferred (one-way modes, where renames are not detected beforehand). Only copies
/// to a free path on the target qualify; a paired delete is left with no action.
fn pair_renames(decisions: &mut [Decision], target: &Tree) {
    let mut deleted: HashMap<(Side, String, u64), Vec<usize>> = HashMap::new();
    for (i, d) in decisions.iter().enumerate() {
        // A file not hashed yet (new on one side only; see `Version::checksum`) pairs with nothing.
        if let [Action::Delete { side, version, .. }] = d.actions.as_slice()
            && !version.checksum.is_empty()
        {
            deleted.entry((*side, version.checksum.clone(), version.size)).or_default().push(i);
        }
    }
    let mut renamed = Vec::new();
    for i in 0..decisions.len() {
        if let [Action::Copy { to, path, version, .. }] = decisions[i].actions.as_slice()
            && !target.contains_key(path)
            && let Some(j) = deleted.get_mut(&(*to, version.checksum.clone(), version.size)).and_then(Vec::pop)
        {
            let Action::Delete { path: from, .. } = &decisions[j].actions[0] else {
                continue;
            };
            let rename = Action::Rename {
                side: *to,
                from: from.clone(),
                to: path.clone(),
            };
            decisions[i].actions = vec![rename];
            renamed.push(j);
        }
    }
    for j in renamed {
        decisions[j].actions.clear();
    }
}

/// Files a side renamed since the base: base path → new path, matched by content (each new path
/// matches at most one base path).
fn renames(base: &Tree, side: &Tree) -> BTreeMap<ProviderPath, ProviderPath> {
    let mut created: HashMap<(&str, u64), Vec<&ProviderPath>> = HashMap::new();
    for (path, version) in side.iter().rev() {
        if !base.contains_key(path) && !version.checksum.is_empty() {
            created.entry((&version.checksum, version.size)).or_default().push(path);
        }
    }
    base.iter()
        .filter(|(path, _)| !side.contains_key(*path))
        .filter_map(|(path, version)| {
            let to = created.get_mut(&(version.checksum.as_str(), version.size))?.pop()?;
            Some((path.clone(), to.clone()))
        })
        .collect()
}

fn two_way(policy: ConflictPolicy, base: &Tree, source: &Tree, target: &Tree, now: DateTime<Utc>) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let mut settled: BTreeSet<ProviderPath> = BTreeSet::new();
    let by_source = renames(base, source);
    let by_target = renames(base, target);
    let trees = |side: Side| match side {
        Side::Source => source,
        Side::Target => target,
    };
    for (side, moves, other_moves) in [(Side::Source, &by_source, &by_target), (Side::Target, &by_target, &by_source)] {
        let (mine, theirs) = (trees(side), trees(side.other()));
        for (from, to) in moves {
            if settled.contains(from) || settled.contains(to) {
                continue;
            }
            let moved = &mine[to];
            match other_moves.get(from) {
                // Both renamed it the same way: nothing to do.
                Some(their_to) if their_to == to => {}
                // Both renamed it, differently.
                Some(their_to) => {
                    if settled.contains(their_to) || mine.contains_key(their_to) || theirs.contains_key(to) {
                        continue;
                    }
                    let (source_to, target_to) = match side {
                        Side::Source => (to, their_to),
                        Side::Target => (their_to, to),
                    };
                    decisions.push(Decision {
                        path: from.clone(),
                        reason: Reason::Conflict {
                            kind: ConflictKind::BothRenamed,
                            policy,
                        },
                        actions: resolve_renames(policy, from, source_to, target_to, moved),
                    });
                    settled.insert(their_to.clone());
                }
                None => {
                    // The other side must not hold the new name already: then it is a per-path matter.
                    if theirs.contains_key(to) {
                        continue;
                    }
                    let rename = Action::Rename {
                        side: side.other(),
                        from: from.clone(),
                        to: to.clone(),
                    };
                    let (reason, actions) = match theirs.get(from) {
                        Some(kept) if kept.same_content(moved) => (Reason::Renamed { side }, vec![rename]),
                        // The changed content goes under the new name first, then the other side
                        // renames: interrupted in between, both names hold the change and nothing
                        // is lost.
                        Some(changed) => (
                            Reason::RenamedAndModified { side },
                            vec![
                                Action::Copy {
                                    to: side,
                                    from: from.clone(),
                                    path: to.clone(),
                                    version: changed.clone(),
                                },
                                rename,
                            ],
                        ),
                        None => (
                            Reason::KeptChanged { side },
                            vec![Action::Copy {
                                to: side.other(),
                                from: to.clone(),
                                path: to.clone(),
                                version: moved.clone(),
                            }],
                        ),
                    };
                    decisions.push(Decision {
                        path: from.clone(),
                        reason,
                        actions,
                    });
                }
            }
            settled.insert(from.clone());
            settled.insert(to.clone());
        }
    }

    let paths: BTreeSet<&ProviderPath> = base.keys().chain(source.keys()).chain(target.keys()).collect();
    for path in paths {
        if settled.contains(path) {
            continue;
        }
        if let Some(decision) = merge_path(policy, path, base.get(path), source.get(path), target.get(path), now) {
            decisions.push(decision);
        }
    }
    decisions
}

/// The three-way merge of one path.
fn merge_path(
    policy: ConflictPolicy,
    path: &ProviderPath,
    base: Option<&Version>,
    source: Option<&Version>,
    target: Option<&Version>,
    now: DateTime<Utc>,
) -> Option<Decision> {
    if same(source, target) {
        return None;
    }
    let propagate = |from: Side, version: Option<&Version>, there: Option<&Version>| {
        let action = match (version, there) {
            (Some(version), _) => copy(from.other(), path, version),
            (None, Some(there)) => delete(from.other(), path, there),
            (None, None) => return None,
        };
        Some(Decision {
            path: path.clone(),
            reason: Reason::Changed { side: from },
            actions: vec![action],
        })
    };
    if same(base, source) {
        return propagate(Side::Target, target, source);
    }
    if same(base, target) {
        return propagate(Side::Source, source, target);
    }
    // Both changed, differently.
    match (source, target) {
        (Some(kept), None) | (None, Some(kept)) => {
            let side = if source.is_some() { Side::Source } else { Side::Target };
            Some(Decision {
                path: path.clone(),
                reason: Reason::KeptChanged { side },
                actions: vec![copy(side.other(), path, kept)],
            })
        }
        (Some(s), Some(t)) => {
            let kind = if base.is_some() {
                ConflictKind::BothModified
            } else {
                ConflictKind::BothCreated
            };
            if is_text(path) && s.size <= TEXT_MERGE_LIMIT && t.size <= TEXT_MERGE_LIMIT {
                Some(Decision {
                    path: path.clone(),
                    reason: Reason::BothChanged,
                    actions: vec![Action::MergeText {
                        path: path.clone(),
                        base: base.cloned(),
                        source: s.clone(),
                        target: t.clone(),
                    }],
                })
            } else {
                Some(Decision {
                    path: path.clone(),
                    reason: Reason::Conflict { kind, policy },
                    actions: resolve(policy, kind, path, s, t, now),
                })
            }
        }
        (None, None) => None,
    }
}

/// How a policy settles two different versions of one path.
pub fn resolve(
    policy: ConflictPolicy,
    kind: ConflictKind,
    path: &ProviderPath,
    source: &Version,
    target: &Version,
    now: DateTime<Utc>,
) -> Vec<Action> {
    let newer = if target.modified_at > source.modified_at {
        Side::Target
    } else {
        Side::Source
    };
    let winner = match policy {
        ConflictPolicy::Manual => {
            return vec![Action::Unresolved {
                path: path.clone(),
                kind,
                source: Some(source.clone()),
                target: Some(target.clone()),
            }];
        }
        ConflictPolicy::SourceWins => Side::Source,
        ConflictPolicy::TargetWins => Side::Target,
        ConflictPolicy::NewestWins | ConflictPolicy::KeepBoth => newer,
    };
    let (won, lost) = match winner {
        Side::Source => (source, target),
        Side::Target => (target, source),
    };
    let mut actions = Vec::new();
    if policy == ConflictPolicy::KeepBoth {
        let loser = winner.other();
        let copy_name = conflict_name(path, now, loser);
        actions.push(Action::Rename {
            side: loser,
            from: path.clone(),
            to: copy_name.clone(),
        });
        actions.push(Action::Copy {
            to: winner,
            from: copy_name.clone(),
            path: copy_name,
            version: lost.clone(),
        });
    }
    actions.push(copy(winner.other(), path, won));
    actions
}

/// A file renamed differently on the two sides (`from` → `source_to` on the source, → `target_to` on the target).
fn resolve_renames(
    policy: ConflictPolicy,
    from: &ProviderPath,
    source_to: &ProviderPath,
    target_to: &ProviderPath,
    version: &Version,
) -> Vec<Action> {
    let take = |side: Side| {
        let (winner_to, loser_to) = match side {
            Side::Source => (source_to, target_to),
            Side::Target => (target_to, source_to),
        };
        vec![Action::Rename {
            side: side.other(),
            from: loser_to.clone(),
            to: winner_to.clone(),
        }]
    };
    match policy {
        ConflictPolicy::Manual => vec![Action::Unresolved {
            path: from.clone(),
            kind: ConflictKind::BothRenamed,
            source: Some(version.clone()),
            target: Some(version.clone()),
        }],
        // The same content under both names, on both sides.
        ConflictPolicy::KeepBoth => vec![
            Action::Copy {
                to: Side::Target,
                from: source_to.clone(),
                path: source_to.clone(),
                version: version.clone(),
            },
            Action::Copy {
                to: Side::Source,
                from: target_to.clone(),
                path: target_to.clone(),
                version: version.clone(),
            },
        ],
        ConflictPolicy::TargetWins => take(Side::Target),
        ConflictPolicy::SourceWins | ConflictPolicy::NewestWins => take(Side::Source),
    }
}

/// `name.conflict-<yyyymmdd-hhmmss>-<side>.ext` beside `path`.
pub fn conflict_name(path: &ProviderPath, at: DateTime<Utc>, side: Side) -> ProviderPath {
    let name = path.name();
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
        _ => (name, ""),
    };
    let stamp = at.format("%Y%m%d-%H%M%S");
    let renamed = format!("{stem}.conflict-{stamp}-{}{ext}", side.name());
    // The new name is the old one with ASCII letters, digits and dashes added: always valid. The
    // fallback keeps the function total.
    path.parent().join(&renamed).unwrap_or_else(|_| path.clone())
}

/// How many files a plan deletes on `side` (renames and overwrites keep a file).
pub fn deletes(decisions: &[Decision], side: Side) -> usize {
    decisions
        .iter()
        .flat_map(|d| &d.actions)
        .filter(|a| matches!(a, Action::Delete { side: s, .. } if *s == side))
        .count()
}

/// The safety rail (like rclone's `--max-delete`): the first side of which a plan would delete more
/// than `max_percent` of the files it holds, with the count. Such a run stops and waits for approval.
pub fn exceeds_delete_limit(decisions: &[Decision], source: &Tree, target: &Tree, max_percent: u8) -> Option<(Side, usize)> {
    [(Side::Source, source), (Side::Target, target)]
        .into_iter()
        .find_map(|(side, tree)| {
            let count = deletes(decisions, side);
            (count > 0 && count * 100 > tree.len() * usize::from(max_percent)).then_some((side, count))
        })
}

/// Whether a path names a text file that can be merged line by line.
pub fn is_text(path: &ProviderPath) -> bool {
    let mime = crate::values::guess_mime(path.as_str());
    mime.starts_with("text/")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/toml"
                | "application/x-sh"
                | "application/yaml"
        )
}

/// A line-by-line three-way merge: the merged text, or `None` when the two sides edited the same
/// lines differently.
pub fn merge_lines(base: &str, source: &str, target: &str) -> Option<String> {
    diffy::merge(base, source, target).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn p(raw: &str) -> ProviderPath {
        ProviderPath::parse(raw).expect("valid path")
    }

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, second).single().expect("valid time")
    }

    /// In these tests a file's checksum is its content.
    fn v(content: &str, modified: DateTime<Utc>) -> Version {
        Version {
            checksum: content.to_owned(),
            size: content.len() as u64,
            modified_at: modified,
        }
    }

    fn tree(files: &[(&str, &str)], modified: DateTime<Utc>) -> Tree {
        files.iter().map(|(path, content)| (p(path), v(content, modified))).collect()
    }

    fn contents(tree: &Tree) -> BTreeMap<String, String> {
        tree.iter()
            .map(|(path, v)| (path.as_str().to_owned(), v.checksum.clone()))
            .collect()
    }

    struct World {
        source: Tree,
        target: Tree,
        unresolved: usize,
    }

    impl World {
        fn side(&mut self, side: Side) -> &mut Tree {
            match side {
                Side::Source => &mut self.source,
                Side::Target => &mut self.target,
            }
        }

        /// Carries out actions the way the executor does, checking each step's expectations.
        fn apply(&mut self, actions: &[Action], policy: ConflictPolicy, now: DateTime<Utc>) {
            for action in actions {
                match action {
                    Action::Copy { to, from, path, version } => {
                        let found = self
                            .side(to.other())
                            .get(from)
                            .cloned()
                            .unwrap_or_else(|| panic!("{from} missing on the {:?}", to.other()));
                        assert!(found.same_content(version), "{from} changed under the copy");
                        self.side(*to).insert(path.clone(), found);
                    }
                    Action::Delete { side, path, version } => {
                        let removed = self
                            .side(*side)
                            .remove(path)
                            .unwrap_or_else(|| panic!("{path} missing on the {side:?}"));
                        assert!(removed.same_content(version), "{path} changed under the delete");
                    }
                    Action::Rename { side, from, to } => {
                        let moved = self
                            .side(*side)
                            .remove(from)
                            .unwrap_or_else(|| panic!("{from} missing on the {side:?}"));
                        assert!(self.side(*side).insert(to.clone(), moved).is_none(), "{to} already on the {side:?}");
                    }
                    Action::MergeText {
                        path,
                        base,
                        source,
                        target,
                    } => {
                        let base = base.as_ref().map_or("", |b| b.checksum.as_str());
                        match merge_lines(base, &source.checksum, &target.checksum) {
                            Some(merged) => {
                                let merged = v(&merged, now);
                                self.source.insert(path.clone(), merged.clone());
                                self.target.insert(path.clone(), merged);
                            }
                            None => {
                                let kind = if base.is_empty() {
                                    ConflictKind::BothCreated
                                } else {
                                    ConflictKind::BothModified
                                };
                                self.apply(&resolve(policy, kind, path, source, target, now), policy, now);
                            }
                        }
                    }
                    Action::Unresolved { .. } => self.unresolved += 1,
                }
            }
        }
    }

    fn run(mode: SyncMode, policy: ConflictPolicy, base: &Tree, source: Tree, target: Tree, now: DateTime<Utc>) -> (World, Vec<Decision>) {
        let decisions = plan(mode, policy, base, &source, &target, now);
        let mut world = World {
            source,
            target,
            unresolved: 0,
        };
        for decision in &decisions {
            world.apply(&decision.actions, policy, now);
        }
        (world, decisions)
    }

    #[derive(Clone, Copy, Debug)]
    enum Change {
        Unchanged,
        Modified,
        Deleted,
        Created,
        Renamed,
    }

    const BASE: &str = "one\ntwo\nthree\n";

    /// What a side does to the base `{a.txt}`: the source edits line 1, the target line 3; each
    /// creates `c.txt` or renames `a.txt` to `a-<side>.txt`.
    fn side_after(change: Change, side: Side) -> Vec<(String, String)> {
        let name = side.name();
        match change {
            Change::Unchanged => vec![("a.txt".into(), BASE.into())],
            Change::Modified => {
                let edited = match side {
                    Side::Source => "ONE\ntwo\nthree\n",
                    Side::Target => "one\ntwo\nTHREE\n",
                };
                vec![("a.txt".into(), edited.into())]
            }
            Change::Deleted => vec![],
            Change::Created => vec![("a.txt".into(), BASE.into()), ("c.txt".into(), format!("created by {name}\n"))],
            Change::Renamed => vec![(format!("a-{name}.txt"), BASE.into())],
        }
    }

    /// A change on each side and the files both sides hold afterwards.
    type Case = (Change, Change, Vec<(&'static str, &'static str)>);

    #[test]
    fn two_way_merge_of_every_pair_of_changes() {
        use Change::*;
        let (s_mod, t_mod, merged) = ("ONE\ntwo\nthree\n", "one\ntwo\nTHREE\n", "ONE\ntwo\nTHREE\n");
        let copy_name = "c.conflict-20261125-120030-source.txt";
        #[rustfmt::skip]
        let table: Vec<Case> = vec![
            (Unchanged, Unchanged, vec![("a.txt", BASE)]),
            (Unchanged, Modified, vec![("a.txt", t_mod)]),
            (Unchanged, Deleted, vec![]),
            (Unchanged, Created, vec![("a.txt", BASE), ("c.txt", "created by target\n")]),
            (Unchanged, Renamed, vec![("a-target.txt", BASE)]),
            (Modified, Unchanged, vec![("a.txt", s_mod)]),
            (Modified, Modified, vec![("a.txt", merged)]),
            (Modified, Deleted, vec![("a.txt", s_mod)]),
            (Modified, Created, vec![("a.txt", s_mod), ("c.txt", "created by target\n")]),
            (Modified, Renamed, vec![("a-target.txt", s_mod)]),
            (Deleted, Unchanged, vec![]),
            (Deleted, Modified, vec![("a.txt", t_mod)]),
            (Deleted, Deleted, vec![]),
            (Deleted, Created, vec![("c.txt", "created by target\n")]),
            (Deleted, Renamed, vec![("a-target.txt", BASE)]),
            (Created, Unchanged, vec![("a.txt", BASE), ("c.txt", "created by source\n")]),
            (Created, Modified, vec![("a.txt", t_mod), ("c.txt", "created by source\n")]),
            (Created, Deleted, vec![("c.txt", "created by source\n")]),
            (Created, Created, vec![("a.txt", BASE), ("c.txt", "created by target\n"), (copy_name, "created by source\n")]),
            (Created, Renamed, vec![("a-target.txt", BASE), ("c.txt", "created by source\n")]),
            (Renamed, Unchanged, vec![("a-source.txt", BASE)]),
            (Renamed, Modified, vec![("a-source.txt", t_mod)]),
            (Renamed, Deleted, vec![("a-source.txt", BASE)]),
            (Renamed, Created, vec![("a-source.txt", BASE), ("c.txt", "created by target\n")]),
            (Renamed, Renamed, vec![("a-source.txt", BASE), ("a-target.txt", BASE)]),
        ];
        assert_eq!(table.len(), 25);
        let base = tree(&[("a.txt", BASE)], at(0));
        let now = at(30);
        for (source_change, target_change, expected) in table {
            let build = |change, side, when| {
                let files = side_after(change, side);
                files.iter().map(|(path, content)| (p(path), v(content, when))).collect::<Tree>()
            };
            // Files a side kept as they were keep the base's modification time.
            let keep_base_time = |mut t: Tree| {
                for (path, version) in t.iter_mut() {
                    if base.get(path).is_some_and(|b| b.same_content(version)) || version.checksum == BASE {
                        version.modified_at = at(0);
                    }
                }
                t
            };
            let source = keep_base_time(build(source_change, Side::Source, at(10)));
            let target = keep_base_time(build(target_change, Side::Target, at(20)));
            let (world, decisions) = run(SyncMode::TwoWay, ConflictPolicy::KeepBoth, &base, source, target, now);
            let case = format!("{source_change:?} × {target_change:?}: {decisions:#?}");
            let expected: BTreeMap<String, String> = expected.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
            assert_eq!(contents(&world.source), expected, "source after {case}");
            assert_eq!(contents(&world.target), expected, "target after {case}");
            assert_eq!(world.unresolved, 0, "{case}");
            // Transfers are minimal: an unchanged pair does nothing, a propagated rename moves no bytes.
            if matches!((source_change, target_change), (Unchanged, Unchanged) | (Deleted, Deleted)) {
                assert!(decisions.is_empty(), "{case}");
            }
            if matches!((source_change, target_change), (Renamed, Unchanged) | (Unchanged, Renamed)) {
                assert!(
                    matches!(decisions.as_slice(), [Decision { actions, .. }] if matches!(actions.as_slice(), [Action::Rename { .. }])),
                    "{case}"
                );
            }
        }
    }

    #[test]
    fn every_decision_carries_its_reason() {
        let base = tree(&[("a.txt", BASE), ("b.bin", "b"), ("d.bin", "d")], at(0));
        let mut source = base.clone();
        source.insert(p("a.txt"), v("ONE\ntwo\nthree\n", at(5)));
        source.remove(&p("d.bin"));
        let mut target = base.clone();
        target.remove(&p("b.bin"));
        target.insert(p("a.txt"), v("one\ntwo\nTHREE\n", at(6)));
        target.insert(p("d.bin"), v("d2", at(6)));
        let decisions = plan(SyncMode::TwoWay, ConflictPolicy::Manual, &base, &source, &target, at(9));
        let reasons: Vec<(&str, Reason)> = decisions.iter().map(|d| (d.path.as_str(), d.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                ("a.txt", Reason::BothChanged),
                ("b.bin", Reason::Changed { side: Side::Target }),
                ("d.bin", Reason::KeptChanged { side: Side::Target }),
            ]
        );
    }

    #[test]
    fn binary_conflicts_follow_the_policy() {
        let base = tree(&[("photo.jpg", "base")], at(0));
        let source = tree(&[("photo.jpg", "from source")], at(10));
        let target = tree(&[("photo.jpg", "from target")], at(20));
        let now = at(30);
        let cases = [
            (
                ConflictPolicy::SourceWins,
                vec![("photo.jpg", "from source")],
                vec![("photo.jpg", "from source")],
            ),
            (
                ConflictPolicy::TargetWins,
                vec![("photo.jpg", "from target")],
                vec![("photo.jpg", "from target")],
            ),
            (
                ConflictPolicy::NewestWins,
                vec![("photo.jpg", "from target")],
                vec![("photo.jpg", "from target")],
            ),
            (
                ConflictPolicy::KeepBoth,
                vec![
                    ("photo.conflict-20261125-120030-source.jpg", "from source"),
                    ("photo.jpg", "from target"),
                ],
                vec![
                    ("photo.conflict-20261125-120030-source.jpg", "from source"),
                    ("photo.jpg", "from target"),
                ],
            ),
            (
                ConflictPolicy::Manual,
                vec![("photo.jpg", "from source")],
                vec![("photo.jpg", "from target")],
            ),
        ];
        for (policy, want_source, want_target) in cases {
            let (world, decisions) = run(SyncMode::TwoWay, policy, &base, source.clone(), target.clone(), now);
            let want = |files: &[(&str, &str)]| {
                files
                    .iter()
                    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
                    .collect::<BTreeMap<_, _>>()
            };
            assert_eq!(contents(&world.source), want(&want_source), "{policy:?}");
            assert_eq!(contents(&world.target), want(&want_target), "{policy:?}");
            assert_eq!(world.unresolved, usize::from(policy == ConflictPolicy::Manual), "{policy:?}");
            assert_eq!(
                decisions[0].reason,
                Reason::Conflict {
                    kind: ConflictKind::BothModified,
                    policy
                }
            );
        }
    }

    #[test]
    fn overlapping_text_edits_are_a_conflict() {
        let base = tree(&[("notes.md", "one\ntwo\n")], at(0));
        let source = tree(&[("notes.md", "one\nsource\n")], at(10));
        let target = tree(&[("notes.md", "one\ntarget\n")], at(20));
        let (world, _) = run(SyncMode::TwoWay, ConflictPolicy::KeepBoth, &base, source, target, at(30));
        let want: BTreeMap<String, String> = [
            ("notes.conflict-20261125-120030-source.md".to_owned(), "one\nsource\n".to_owned()),
            ("notes.md".to_owned(), "one\ntarget\n".to_owned()),
        ]
        .into();
        assert_eq!(contents(&world.source), want);
        assert_eq!(contents(&world.target), want);
        assert_eq!(merge_lines("a\nb\nc\n", "A\nb\nc\n", "a\nb\nC\n").as_deref(), Some("A\nb\nC\n"));
        assert_eq!(merge_lines("a\n", "b\n", "c\n"), None);
    }

    #[test]
    fn one_way_modes() {
        let source = tree(&[("keep.bin", "k"), ("new.bin", "n"), ("moved-here.bin", "m")], at(1));
        let target = tree(&[("keep.bin", "old"), ("extra.bin", "x"), ("moved-from.bin", "m")], at(2));
        let (copied, _) = run(
            SyncMode::Copy,
            ConflictPolicy::Manual,
            &Tree::new(),
            source.clone(),
            target.clone(),
            at(3),
        );
        let want: BTreeMap<String, String> = [
            ("extra", "x"),
            ("keep", "k"),
            ("moved-from", "m"),
            ("moved-here", "m"),
            ("new", "n"),
        ]
        .iter()
        .map(|(a, b)| (format!("{a}.bin"), (*b).to_owned()))
        .collect();
        assert_eq!(contents(&copied.target), want);
        assert_eq!(copied.source, source);
        let (mirrored, decisions) = run(
            SyncMode::Mirror,
            ConflictPolicy::Manual,
            &Tree::new(),
            source.clone(),
            target,
            at(3),
        );
        assert_eq!(contents(&mirrored.target), contents(&source));
        // The file that exists on the target under another name is renamed, not transferred.
        assert!(decisions.iter().any(|d| d.actions
            == vec![Action::Rename {
                side: Side::Target,
                from: p("moved-from.bin"),
                to: p("moved-here.bin"),
            }]));
    }

    #[test]
    fn the_delete_rail_counts_each_side() {
        let files: Vec<(String, String)> = (0..10).map(|i| (format!("f{i}.bin"), format!("c{i}"))).collect();
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let base = tree(&files, at(0));
        let mut source = base.clone();
        for i in 0..3 {
            source.remove(&p(&format!("f{i}.bin")));
        }
        let decisions = plan(SyncMode::TwoWay, ConflictPolicy::Manual, &base, &source, &base, at(1));
        assert_eq!(deletes(&decisions, Side::Target), 3);
        assert_eq!(deletes(&decisions, Side::Source), 0);
        // Three of the target's ten files: over a 20% limit, within 30%.
        assert_eq!(exceeds_delete_limit(&decisions, &source, &base, 20), Some((Side::Target, 3)));
        assert_eq!(exceeds_delete_limit(&decisions, &source, &base, 30), None);
        assert_eq!(exceeds_delete_limit(&[], &source, &base, 0), None);
    }

    #[test]
    fn conflict_names_keep_the_extension_and_folder() {
        let now = at(7);
        assert_eq!(
            conflict_name(&p("docs/report.final.pdf"), now, Side::Target).as_str(),
            "docs/report.final.conflict-20261125-120007-target.pdf"
        );
        assert_eq!(
            conflict_name(&p(".bashrc"), now, Side::Source).as_str(),
            ".bashrc.conflict-20261125-120007-source"
        );
        assert_eq!(
            conflict_name(&p("Makefile"), now, Side::Source).as_str(),
            "Makefile.conflict-20261125-120007-source"
        );
    }

    /// What one side does to its copy of the base.
    #[derive(Clone, Debug)]
    enum Edit {
        Modify(usize),
        Delete(usize),
        Create(usize, u8),
        Rename(usize, usize),
    }

    const PATHS: [&str; 6] = ["a.bin", "b.bin", "d/c.bin", "d/e.bin", "f/g/h.bin", "z.bin"];

    fn edited(base: &Tree, edits: &[Edit], side: &str, when: DateTime<Utc>) -> Tree {
        let mut tree = base.clone();
        for (n, edit) in edits.iter().enumerate() {
            match edit {
                Edit::Modify(i) => {
                    if let Some(version) = tree.get_mut(&p(PATHS[*i])) {
                        *version = v(&format!("{side} edit {n}"), when);
                    }
                }
                Edit::Delete(i) => {
                    tree.remove(&p(PATHS[*i]));
                }
                Edit::Create(i, content) => {
                    tree.entry(p(PATHS[*i])).or_insert_with(|| v(&format!("content {content}"), when));
                }
                Edit::Rename(from, to) => {
                    let (from, to) = (p(PATHS[*from]), p(PATHS[*to]));
                    if !tree.contains_key(&to)
                        && let Some(version) = tree.remove(&from)
                    {
                        tree.insert(to, version);
                    }
                }
            }
        }
        tree
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0..PATHS.len()).prop_map(Edit::Modify),
            (0..PATHS.len()).prop_map(Edit::Delete),
            (0..PATHS.len(), 0..4_u8).prop_map(|(i, c)| Edit::Create(i, c)),
            (0..PATHS.len(), 0..PATHS.len()).prop_map(|(a, b)| Edit::Rename(a, b)),
        ]
    }

    proptest! {
        /// After a two-way run that keeps both sides of every conflict, both sides hold the same
        /// files, and no content is lost but what a side's own change replaced or deleted.
        #[test]
        fn two_way_runs_converge_and_lose_nothing(
            base_files in proptest::collection::btree_map(0..PATHS.len(), 0..4_u8, 0..PATHS.len()),
            source_edits in proptest::collection::vec(edit(), 0..5),
            target_edits in proptest::collection::vec(edit(), 0..5),
            source_newer in any::<bool>(),
        ) {
            let base: Tree = base_files.iter().map(|(i, c)| (p(PATHS[*i]), v(&format!("content {c}"), at(0)))).collect();
            let (s_time, t_time) = if source_newer { (at(20), at(10)) } else { (at(10), at(20)) };
            let source = edited(&base, &source_edits, "source", s_time);
            let target = edited(&base, &target_edits, "target", t_time);
            let (world, _) = run(SyncMode::TwoWay, ConflictPolicy::KeepBoth, &base, source.clone(), target.clone(), at(30));
            prop_assert_eq!(contents(&world.source), contents(&world.target));
            let result: HashMap<String, ()> = world.source.values().map(|v| (v.checksum.clone(), ())).collect();
            for (mine, theirs) in [(&source, &target), (&target, &source)] {
                for (path, version) in mine {
                    // Where this content was in the base: here, or (moved) at a base path this side no longer has.
                    let origin = if base.get(path).is_some_and(|b| b.same_content(version)) {
                        Some(path)
                    } else {
                        base.iter().find(|(q, b)| !mine.contains_key(*q) && b.same_content(version)).map(|(q, _)| q)
                    };
                    // Content a side kept (in place or moved) may give way to the other side's change of it.
                    let superseded = origin.is_some_and(|q| !same(base.get(q), theirs.get(q)));
                    if !superseded {
                        prop_assert!(result.contains_key(&version.checksum), "{} ({}) lost", path, version.checksum);
                    }
                }
            }
        }

        /// Mirror makes the target exactly the source, whatever both hold.
        #[test]
        fn mirror_makes_the_target_the_source(
            source_files in proptest::collection::btree_map(0..PATHS.len(), 0..4_u8, 0..PATHS.len()),
            target_files in proptest::collection::btree_map(0..PATHS.len(), 0..4_u8, 0..PATHS.len()),
        ) {
            let build = |files: &BTreeMap<usize, u8>| files.iter().map(|(i, c)| (p(PATHS[*i]), v(&format!("content {c}"), at(0)))).collect::<Tree>();
            let (source, target) = (build(&source_files), build(&target_files));
            let (world, _) = run(SyncMode::Mirror, ConflictPolicy::Manual, &Tree::new(), source.clone(), target, at(1));
            prop_assert_eq!(contents(&world.target), contents(&source));
            prop_assert_eq!(world.source, source);
        }
    }
}
