//! Carrying out one decision: each action checks that what it replaces or deletes is still what was
//! listed, so a change made during the run is never overwritten.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::Utc;
use cloudsync_chunks::{get_content, put_content};
use cloudsync_domain::ProviderPath;
use cloudsync_domain::events::{BaseChange, Resolution};
use cloudsync_domain::merge::{self, Action, ConflictKind, Decision, Side, Version};
use cloudsync_providers::{StorageProvider, stale};

use super::write::{pair_token, still_there};
use super::{Executor, Outcome, Present, Step, StepError, action_paths, index};

impl Executor {
    pub(super) fn provider(&self, side: Side) -> &dyn StorageProvider {
        &*self.sides[index(side)]
    }

    pub(super) fn full(&self, side: Side, path: &ProviderPath) -> ProviderPath {
        path.under(&self.folders[index(side)])
    }

    pub(super) fn listed(&self, side: Side, path: &ProviderPath) -> Option<Present> {
        let listing = &self.listings[index(side)];
        listing.tree.get(path).map(|version| Present {
            version: version.clone(),
            tag: listing.tags.get(path).cloned().unwrap_or_default(),
            // The agreed content is kept; so is this one if it is still that content.
            stored: self
                .pair
                .agreed(path)
                .and_then(|a| a.stored.clone())
                .filter(|_| self.pair.base().get(path).is_some_and(|b| b.same_content(version))),
            manifest: self
                .pair
                .agreed(path)
                .and_then(|a| a.manifest.clone())
                .filter(|_| self.pair.base().get(path).is_some_and(|b| b.same_content(version))),
        })
    }

    /// Paths whose two sides hold the same content already but whose base says otherwise (or whose
    /// listings look different from the last agreement): the base catches up. Small text files are
    /// kept in the chunk store for later line merges.
    pub(super) async fn already_agreed(&self, decisions: &[Decision]) -> Vec<BaseChange> {
        let pair = &self.pair;
        let [source, target] = &self.listings;
        // What a decision is about is the decision's to settle (a conflict left open keeps its base).
        let decided: HashSet<&ProviderPath> = decisions
            .iter()
            .flat_map(|d| std::iter::once(&d.path).chain(d.actions.iter().flat_map(action_paths)))
            .collect();
        let mut changes = Vec::new();
        for (path, version) in &source.tree {
            let Some(other) = target.tree.get(path) else { continue };
            if decided.contains(path) {
                continue;
            }
            if !version.same_content(other) {
                continue;
            }
            let (source_tag, target_tag) = (source.tags.get(path).cloned(), target.tags.get(path).cloned());
            let agreed = pair.agreed(path);
            let mut stored = agreed.and_then(|a| a.stored.clone());
            let base_same = pair.base().get(path).is_some_and(|b| b.same_content(version));
            if !base_same {
                stored = None;
            }
            if stored.is_none() && self.keeps_base(path, version.size) {
                stored = self.keep(Side::Source, path, version).await;
            }
            let unchanged =
                base_same && agreed.is_some_and(|a| a.source_tag == source_tag && a.target_tag == target_tag && a.stored == stored);
            if !unchanged {
                changes.push(BaseChange {
                    path: path.clone(),
                    version: Some(version.clone()),
                    source_tag,
                    target_tag,
                    stored,
                    manifest: agreed.and_then(|a| a.manifest.clone()).filter(|_| base_same),
                });
            }
        }
        // Gone from both sides: gone from the base.
        for path in pair.base().keys() {
            if !source.tree.contains_key(path) && !target.tree.contains_key(path) && !decided.contains(path) {
                changes.push(BaseChange {
                    path: path.clone(),
                    version: None,
                    source_tag: None,
                    target_tag: None,
                    stored: None,
                    manifest: None,
                });
            }
        }
        changes
    }

    /// Deletes the temporary files that the listings found of this pair's interrupted runs (only
    /// one run of a pair goes on at a time, so they are nobody's write in progress), and others
    /// older than a day ([`stale`]: a killed process's ranged write on a remote kind). Younger
    /// ones of others (another pair's, a local write's) are left alone.
    pub(super) async fn remove_abandoned(&self) {
        let ours = format!(".cloudsync-{}-", pair_token(self.pair_id));
        for side in [Side::Source, Side::Target] {
            let abandoned = self.listings[index(side)]
                .abandoned
                .iter()
                .filter(|entry| entry.path.name().starts_with(&ours) || entry.modified_at.is_some_and(stale));
            for path in abandoned.map(|entry| &entry.path) {
                if let Err(error) = self.provider(side).delete(path).await {
                    tracing::warn!(path = %path, error = %error, "Could not remove an interrupted run's temporary file.");
                }
            }
        }
    }

    pub(super) async fn carry_out(&self, decision: &Decision) -> Outcome {
        let mut state: HashMap<(Side, ProviderPath), Option<Present>> = HashMap::new();
        let mut touched: BTreeSet<ProviderPath> = BTreeSet::new();
        touched.insert(decision.path.clone());
        let (mut bytes, mut written) = (0, 0);
        let mut late = Vec::new();
        let mut actions: Vec<Action> = decision.actions.clone();
        actions.reverse();
        while let Some(action) = actions.pop() {
            if let Action::Unresolved { path, kind, .. } = &action
                && !decision.actions.contains(&action)
            {
                late.push(Decision {
                    path: path.clone(),
                    reason: merge::Reason::Conflict {
                        kind: *kind,
                        policy: self.policy,
                    },
                    actions: vec![action.clone()],
                });
            }
            let result = self.act(&action, &mut state, &mut touched).await;
            match result {
                Ok(Step::Done(moved, wrote)) => (bytes, written) = (bytes + moved, written + wrote),
                // A text merge that was not clean: settle it by the policy instead.
                Ok(Step::Instead(more)) => actions.extend(more.into_iter().rev()),
                Err(err) => {
                    return Outcome {
                        changes: Vec::new(),
                        bytes,
                        written,
                        late,
                        error: Some(err.to_string()),
                    };
                }
            }
        }
        let mut changes = Vec::new();
        for path in touched {
            match (self.current(&state, Side::Source, &path), self.current(&state, Side::Target, &path)) {
                (None, None) => changes.push(BaseChange {
                    path,
                    version: None,
                    source_tag: None,
                    target_tag: None,
                    stored: None,
                    manifest: None,
                }),
                (Some(s), Some(t)) if s.version.same_content(&t.version) => {
                    changes.push(BaseChange {
                        path,
                        version: Some(s.version),
                        source_tag: Some(s.tag),
                        target_tag: Some(t.tag),
                        stored: s.stored.or(t.stored),
                        manifest: s.manifest.or(t.manifest),
                    });
                }
                _ => {}
            }
        }
        Outcome {
            changes,
            bytes,
            written,
            late,
            error: None,
        }
    }

    pub(super) fn current(
        &self,
        state: &HashMap<(Side, ProviderPath), Option<Present>>,
        side: Side,
        path: &ProviderPath,
    ) -> Option<Present> {
        match state.get(&(side, path.clone())) {
            Some(present) => present.clone(),
            None => self.listed(side, path),
        }
    }

    pub(super) async fn act(
        &self,
        action: &Action,
        state: &mut HashMap<(Side, ProviderPath), Option<Present>>,
        touched: &mut BTreeSet<ProviderPath>,
    ) -> Result<Step, StepError> {
        match action {
            Action::Copy { to, from, path, version } => {
                touched.insert(path.clone());
                let expected = self.current(state, *to, path).map(|p| p.tag);
                let copied = self.copy(*to, from, path, version, expected.as_deref()).await?;
                let version = Version {
                    checksum: copied.checksum,
                    ..version.clone()
                };
                // A file the listing did not hash is known now, on the side it came from too.
                if let Some(source) = self.current(state, to.other(), from)
                    && source.version.checksum.is_empty()
                {
                    state.insert(
                        (to.other(), from.clone()),
                        Some(Present {
                            version: version.clone(),
                            ..source
                        }),
                    );
                }
                state.insert(
                    (*to, path.clone()),
                    Some(Present {
                        version: version.clone(),
                        tag: copied.tag,
                        stored: copied.stored,
                        manifest: copied.manifest,
                    }),
                );
                // The source side of the copy is as listed.
                Ok(Step::Done(version.size, copied.written))
            }
            Action::Delete { side, path, version } => {
                touched.insert(path.clone());
                let expected = self.current(state, *side, path).map(|p| p.tag);
                self.delete(*side, path, version, expected.as_deref()).await?;
                state.insert((*side, path.clone()), None);
                Ok(Step::Done(0, 0))
            }
            Action::Rename { side, from, to } => {
                touched.insert(from.clone());
                touched.insert(to.clone());
                let moved = self
                    .current(state, *side, from)
                    .ok_or_else(|| StepError::Changed(format!("{from} is no longer on the {}", side.name())))?;
                let provider = self.provider(*side);
                let (full_from, full_to) = (self.full(*side, from), self.full(*side, to));
                self.check_unchanged(*side, from, Some(&moved.tag)).await?;
                provider.rename(&full_from, &full_to).await?;
                let tag = (provider.stat_fresh(&full_to).await?).tag();
                state.insert((*side, from.clone()), None);
                state.insert(
                    (*side, to.clone()),
                    Some(Present {
                        version: moved.version,
                        tag,
                        stored: moved.stored,
                        manifest: moved.manifest,
                    }),
                );
                Ok(Step::Done(0, 0))
            }
            Action::MergeText {
                path,
                base,
                source,
                target,
            } => {
                touched.insert(path.clone());
                match self.merge_text(path, base.as_ref(), source, target).await? {
                    Some(merged) => {
                        let version = Version {
                            checksum: blake3::hash(&merged).to_hex().to_string(),
                            size: merged.len() as u64,
                            modified_at: Utc::now(),
                        };
                        let stored = match &self.chunks {
                            Some(chunks) => Some(put_content(&**chunks, &merged).await?),
                            None => None,
                        };
                        self.write_both(path, &merged, &version, stored, state).await
                    }
                    None => {
                        let kind = if base.is_some() {
                            ConflictKind::BothModified
                        } else {
                            ConflictKind::BothCreated
                        };
                        Ok(Step::Instead(merge::resolve(self.policy, kind, path, source, target, Utc::now())))
                    }
                }
            }
            Action::Unresolved {
                path,
                kind,
                source,
                target,
            } => {
                touched.insert(path.clone());
                match (self.pair.resolution(path, source.as_ref(), target.as_ref()), source, target) {
                    // Left for the owner: nothing changes until they choose.
                    (None, _, _) => Ok(Step::Done(0, 0)),
                    (Some(Resolution::Merged { content, version }), _, _) => {
                        let chunks = self
                            .chunks
                            .as_ref()
                            .ok_or_else(|| StepError::Changed("no chunk store holds the merged content".into()))?;
                        let merged = get_content(&**chunks, content).await?;
                        let version = Version {
                            modified_at: Utc::now(),
                            ..version.clone()
                        };
                        self.write_both(path, &merged, &version, Some(content.clone()), state).await
                    }
                    (Some(choice), Some(source), Some(target)) => {
                        let policy = match choice {
                            Resolution::Source => merge::ConflictPolicy::SourceWins,
                            Resolution::Target => merge::ConflictPolicy::TargetWins,
                            Resolution::Both | Resolution::Merged { .. } => merge::ConflictPolicy::KeepBoth,
                        };
                        Ok(Step::Instead(merge::resolve(policy, *kind, path, source, target, Utc::now())))
                    }
                    (Some(_), _, _) => Ok(Step::Done(0, 0)),
                }
            }
        }
    }

    /// Writes the same content to `path` on both sides (a merge), each over what was listed there.
    pub(super) async fn write_both(
        &self,
        path: &ProviderPath,
        data: &[u8],
        version: &Version,
        stored: Option<String>,
        state: &mut HashMap<(Side, ProviderPath), Option<Present>>,
    ) -> Result<Step, StepError> {
        let mut moved = 0;
        for side in [Side::Source, Side::Target] {
            let expected = self.current(state, side, path).map(|p| p.tag);
            let tag = self.write_bytes(side, path, data, version, expected.as_deref()).await?;
            moved += version.size;
            state.insert(
                (side, path.clone()),
                Some(Present {
                    version: version.clone(),
                    tag,
                    stored: stored.clone(),
                    manifest: None,
                }),
            );
        }
        Ok(Step::Done(moved, moved))
    }

    /// The clean line merge of both sides' edits, or `None` when it is not clean (or the base's
    /// content is not kept).
    pub(super) async fn merge_text(
        &self,
        path: &ProviderPath,
        base: Option<&Version>,
        source: &Version,
        target: &Version,
    ) -> Result<Option<Vec<u8>>, StepError> {
        let Some(chunks) = &self.chunks else { return Ok(None) };
        let base_text = match base {
            None => String::new(),
            Some(base) => {
                let Some(id) = self.pair.agreed(path).and_then(|a| a.stored.clone()) else {
                    return Ok(None);
                };
                let Ok(data) = get_content(&**chunks, &id).await else {
                    return Ok(None);
                };
                if blake3::hash(&data).to_hex().as_str() != base.checksum {
                    return Ok(None);
                }
                match String::from_utf8(data) {
                    Ok(text) => text,
                    Err(_) => return Ok(None),
                }
            }
        };
        let source_data = self.read_verified(Side::Source, path, source).await?;
        let target_data = self.read_verified(Side::Target, path, target).await?;
        let (Ok(source_text), Ok(target_text)) = (String::from_utf8(source_data), String::from_utf8(target_data)) else {
            return Ok(None);
        };
        Ok(merge::merge_lines(&base_text, &source_text, &target_text).map(String::into_bytes))
    }

    /// Fails when `path` on `side` is no longer what was listed (`None`: absent).
    pub(super) async fn check_unchanged(&self, side: Side, path: &ProviderPath, expected: Option<&str>) -> Result<(), StepError> {
        if still_there(self.provider(side), &self.full(side, path), expected).await? {
            return Ok(());
        }
        Err(StepError::Changed(format!(
            "{path} changed on the {} since it was listed; the next run takes it into account",
            side.name()
        )))
    }

    pub(super) async fn delete(&self, side: Side, path: &ProviderPath, version: &Version, expected: Option<&str>) -> Result<(), StepError> {
        let _ = version;
        self.check_unchanged(side, path, expected).await?;
        self.provider(side).delete(&self.full(side, path)).await?;
        Ok(())
    }
}
