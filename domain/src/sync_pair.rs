//! The `SyncPair` aggregate: two folders, on any two providers, kept in agreement. Its history holds
//! the pair's settings and, for every run, each decision with its reason and the state both sides
//! agreed on afterwards; folding those gives the merge base of the next run.

use chrono::{DateTime, Utc};

use crate::aggregate::{Aggregate, DomainError};
use std::collections::{BTreeMap, BTreeSet};

pub use crate::events::SyncEndpoint;
use crate::events::{
    BaseChange, DomainEvent, FilePatchSettled, FilePatchStarted, FileVersionKept, FileVersionRestored, FileVersionsPruned, PatchOutcome,
    Resolution, SyncBaseAdvanced, SyncConflictResolved, SyncDecisionRecorded, SyncPairCreated, SyncRunRequested, VersionReason,
};
use crate::ids::{SyncJobId, UserId};
use crate::merge::{Action, ConflictKind, Decision, Side, Tree, Version};
use crate::values::ProviderPath;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The most versions a pair may keep of each file.
pub const MAX_KEEP_VERSIONS: u32 = 1000;
/// The longest a pair may keep versions: a hundred years.
pub const MAX_KEEP_DAYS: u32 = 36_500;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPair {
    created: Option<SyncPairCreated>,
    base: Tree,
    /// What the sides' listings showed of each agreed file, and where its content is kept.
    agreed: BTreeMap<ProviderPath, Agreed>,
    decisions: u64,
    last_run: Option<SyncJobId>,
    /// Conflicts left for the owner, by path: (kind, source version, target version).
    conflicts: BTreeMap<ProviderPath, Conflict>,
    /// The owner's choices, by path, until a run carries them out.
    resolutions: BTreeMap<ProviderPath, SyncConflictResolved>,
    /// Earlier versions of the sides' files, kept in the chunk store, by id.
    versions: BTreeMap<Uuid, FileVersionKept>,
    /// Writes in place begun and not yet settled, by id.
    patches: BTreeMap<Uuid, FilePatchStarted>,
}

/// A conflict left for the owner (`MANUAL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub source: Option<Version>,
    pub target: Option<Version>,
}

/// Bookkeeping about one agreed file beside its version (see [`BaseChange`]).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agreed {
    pub source_tag: Option<String>,
    pub target_tag: Option<String>,
    pub stored: Option<String>,
    pub manifest: Option<String>,
}

pub enum SyncPairCommand {
    /// Create the pair (its `max_delete_percent`: a run that would delete more than this share of a
    /// side's files stops for approval).
    Create(SyncPairCreated),
    /// A decision of a run, with its reason, recorded before it is carried out.
    RecordDecision {
        job_id: SyncJobId,
        decision: Decision,
        at: DateTime<Utc>,
    },
    /// The owner settles the conflict left at `path`.
    ResolveConflict {
        by: UserId,
        path: ProviderPath,
        resolution: Resolution,
        at: DateTime<Utc>,
    },
    /// A run of the pair, carried out by job `job_id`.
    RequestRun { job_id: SyncJobId, at: DateTime<Utc> },
    /// After a run, the paths whose agreed state changed (`None`: agreed to be absent).
    AdvanceBase {
        job_id: SyncJobId,
        changes: Vec<BaseChange>,
        at: DateTime<Utc>,
    },
    /// Contents about to be overwritten or deleted, stored in the chunk store: kept as earlier
    /// versions (unless the pair keeps none, or the same content is the file's newest version).
    KeepVersions(Vec<FileVersionKept>),
    /// Lets go of the versions outside the pair's retention at `at`.
    PruneVersions { at: DateTime<Utc> },
    /// A write in place is about to begin; what it destroys is already kept (see
    /// [`FilePatchStarted`]).
    StartPatch(FilePatchStarted),
    /// A write in place ended with `outcome`: where it was written and the pair keeps versions,
    /// the old content becomes a version (its undo, a change of the new content).
    SettlePatch {
        patch_id: Uuid,
        outcome: PatchOutcome,
        at: DateTime<Utc>,
    },
    /// The owner brought version `version_id` back over the file at `path` on `side`.
    RecordRestore {
        by: UserId,
        version_id: Uuid,
        side: Side,
        path: ProviderPath,
        at: DateTime<Utc>,
    },
}

impl SyncPair {
    /// What a snapshot of a pair is (see [`SyncPair::snapshot`]): the encoding, its format number
    /// (raise it on any change the fingerprint cannot see), and a fingerprint of the source that
    /// defines the state, how events are decoded and upcast (their values and ids included) and
    /// what [`Aggregate::apply`] makes of each, so that any change there passes over the snapshots
    /// taken before it.
    pub fn snapshot_schema() -> &'static str {
        const FORMAT: u32 = 1;
        static SCHEMA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        SCHEMA.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::hash::DefaultHasher::new();
            [
                include_str!("sync_pair.rs"),
                include_str!("events/mod.rs"),
                include_str!("events/sync.rs"),
                include_str!("merge.rs"),
                include_str!("values.rs"),
                include_str!("ids.rs"),
            ]
            .hash(&mut hasher);
            format!("sync-pair/json/{FORMAT}/{:016x}", hasher.finish())
        })
    }

    /// The pair as JSON, for a snapshot of its stream.
    ///
    /// # Errors
    /// None expected: every key of the state is text.
    pub fn snapshot(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// The pair a [`SyncPair::snapshot`] of [`SyncPair::snapshot_schema`] holds; `None` for any
    /// other.
    pub fn from_snapshot(schema: &str, data: &[u8]) -> Option<Self> {
        (schema == Self::snapshot_schema())
            .then(|| serde_json::from_slice(data).ok())
            .flatten()
    }

    /// The account the pair belongs to.
    pub fn owner(&self) -> Option<UserId> {
        self.created.as_ref().map(|c| c.owner_id)
    }

    pub fn settings(&self) -> Option<&SyncPairCreated> {
        self.created.as_ref()
    }

    /// The pair, if it exists and belongs to `user`.
    pub fn live_for(&self, user: UserId) -> Option<&SyncPairCreated> {
        self.created.as_ref().filter(|c| c.owner_id == user)
    }

    /// The state both sides agreed on at the end of the last run: the merge base.
    pub fn base(&self) -> &Tree {
        &self.base
    }

    /// What the listings showed of an agreed file, and where its content is kept.
    pub fn agreed(&self, path: &ProviderPath) -> Option<&Agreed> {
        self.agreed.get(path)
    }

    /// Conflicts left for the owner, by path.
    pub fn conflicts(&self) -> &BTreeMap<ProviderPath, Conflict> {
        &self.conflicts
    }

    /// The owner's choice for `path`, if it was made about exactly these versions.
    pub fn resolution(&self, path: &ProviderPath, source: Option<&Version>, target: Option<&Version>) -> Option<&Resolution> {
        self.resolutions
            .get(path)
            .filter(|r| r.source.as_ref() == source && r.target.as_ref() == target)
            .map(|r| &r.resolution)
    }

    /// The job of the pair's latest run.
    pub fn last_run(&self) -> Option<SyncJobId> {
        self.last_run
    }

    /// How many decisions the pair's runs have recorded.
    pub fn decisions_recorded(&self) -> u64 {
        self.decisions
    }

    /// The earlier versions kept, oldest first within each file.
    pub fn versions(&self) -> impl Iterator<Item = &FileVersionKept> {
        self.versions.values()
    }

    pub fn kept_version(&self, id: Uuid) -> Option<&FileVersionKept> {
        self.versions.get(&id)
    }

    /// The writes in place that began and have not been settled (a killed run's), oldest first.
    pub fn pending_patches(&self) -> impl Iterator<Item = &FilePatchStarted> {
        self.patches.values()
    }

    /// The events that settle the write in place `started` with `outcome` (see
    /// [`SyncPairCommand::SettlePatch`]), for a run that holds the pair as it was when the write
    /// began.
    pub fn settled(&self, started: &FilePatchStarted, outcome: PatchOutcome, at: DateTime<Utc>) -> Vec<DomainEvent> {
        let mut events = vec![DomainEvent::FilePatchSettled(FilePatchSettled {
            pair_id: started.pair_id,
            owner_id: started.owner_id,
            patch_id: started.patch_id,
            outcome,
            at,
        })];
        // The same content kept again (a retried run) is one version.
        // (Only against a version kept whole: one kept as a change depends on its newer content.)
        let again = self
            .latest_version(started.side, &started.path)
            .is_some_and(|v| v.base.is_none() && v.version.checksum == started.old.checksum);
        if outcome == PatchOutcome::Written && started.keep && !again {
            events.push(DomainEvent::FileVersionKept(FileVersionKept {
                pair_id: started.pair_id,
                owner_id: started.owner_id,
                version_id: started.patch_id,
                side: started.side,
                provider_id: started.provider_id,
                path: started.path.clone(),
                provider_path: started.provider_path.clone(),
                version: started.old.clone(),
                content: started.undo.clone(),
                reason: VersionReason::Replaced,
                job_id: Some(started.job_id),
                at,
                base: Some(started.new.checksum.clone()),
            }));
        }
        events
    }

    /// The newest version kept of `path` on `side`.
    pub fn latest_version(&self, side: Side, path: &ProviderPath) -> Option<&FileVersionKept> {
        self.versions
            .values()
            .filter(|v| v.side == side && &v.path == path)
            .max_by_key(|v| (v.at, v.version_id))
    }

    /// The versions outside the retention at `now`: beyond the newest `keep_versions` of a file, or
    /// older than `keep_days` (when set).
    pub fn expired_versions(&self, now: DateTime<Utc>) -> Vec<Uuid> {
        let Some(settings) = &self.created else { return Vec::new() };
        let mut by_file: BTreeMap<(Side, &ProviderPath), Vec<&FileVersionKept>> = BTreeMap::new();
        for version in self.versions.values() {
            by_file.entry((version.side, &version.path)).or_default().push(version);
        }
        let oldest = (settings.keep_days > 0).then(|| now - chrono::Duration::days(i64::from(settings.keep_days)));
        let mut expired = Vec::new();
        for mut versions in by_file.into_values() {
            versions.sort_by_key(|v| std::cmp::Reverse((v.at, v.version_id)));
            for (rank, version) in versions.into_iter().enumerate() {
                let too_many = rank >= settings.keep_versions as usize;
                let too_old = oldest.is_some_and(|oldest| version.at < oldest);
                if too_many || too_old {
                    expired.push(version.version_id);
                }
            }
        }
        // A version kept as a change of a newer one goes with the last version it is rebuilt from
        // (unless the file itself still agrees on that content).
        loop {
            let gone: BTreeSet<Uuid> = expired.iter().copied().collect();
            let held = |path: &ProviderPath, checksum: &str, pruned: bool| {
                self.versions
                    .values()
                    .any(|v| gone.contains(&v.version_id) == pruned && &v.path == path && v.version.checksum == checksum)
            };
            let orphans: Vec<Uuid> = self
                .versions
                .values()
                .filter(|v| !gone.contains(&v.version_id))
                .filter(|v| {
                    v.base.as_deref().is_some_and(|base| {
                        held(&v.path, base, true)
                            && !held(&v.path, base, false)
                            && self.base.get(&v.path).is_none_or(|agreed| agreed.checksum != base)
                    })
                })
                .map(|v| v.version_id)
                .collect();
            if orphans.is_empty() {
                break;
            }
            expired.extend(orphans);
        }
        expired.sort_unstable();
        expired
    }

    /// Every chunk-store id the pair's history still needs: the agreed contents and manifests, the
    /// owner's merges not yet carried out, and the kept versions.
    pub fn stored_references(&self) -> BTreeSet<&str> {
        let agreed = self.agreed.values().flat_map(|a| a.stored.iter().chain(a.manifest.iter()));
        let merged = self.resolutions.values().filter_map(|r| match &r.resolution {
            Resolution::Merged { content, .. } => Some(content),
            _ => None,
        });
        let versions = self.versions.values().map(|v| &v.content);
        let undo = self.patches.values().map(|p| &p.undo);
        agreed.chain(merged).chain(versions).chain(undo).map(String::as_str).collect()
    }

    fn existing(&self) -> Result<&SyncPairCreated, DomainError> {
        self.created.as_ref().ok_or(DomainError::NotFound("sync pair"))
    }
}

impl Aggregate for SyncPair {
    type Command = SyncPairCommand;
    type Event = DomainEvent;

    fn handle(&self, command: SyncPairCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            SyncPairCommand::Create(created) => {
                if self.created.is_some() {
                    return Err(DomainError::AlreadyExists("sync pair"));
                }
                if created.source.overlaps(&created.target) {
                    return Err(DomainError::Invalid(
                        "the source and target folders overlap: one is inside the other on the same provider".into(),
                    ));
                }
                if created.max_delete_percent > 100 {
                    return Err(DomainError::Invalid("maxDeletePercent must be between 0 and 100".into()));
                }
                if created.keep_versions > MAX_KEEP_VERSIONS || created.keep_days > MAX_KEEP_DAYS {
                    return Err(DomainError::Invalid(format!(
                        "keepVersions must be at most {MAX_KEEP_VERSIONS} and keepDays at most {MAX_KEEP_DAYS}"
                    )));
                }
                Ok(vec![DomainEvent::SyncPairCreated(created)])
            }
            SyncPairCommand::RecordDecision { job_id, decision, at } => {
                let pair = self.existing()?;
                Ok(vec![DomainEvent::SyncDecisionRecorded(SyncDecisionRecorded {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    job_id,
                    decision,
                    at,
                })])
            }
            SyncPairCommand::ResolveConflict { by, path, resolution, at } => {
                let pair = self
                    .created
                    .as_ref()
                    .filter(|c| c.owner_id == by)
                    .ok_or(DomainError::NotFound("sync pair"))?;
                let conflict = self.conflicts.get(&path).ok_or(DomainError::NotFound("conflict"))?;
                if conflict.kind == ConflictKind::BothRenamed {
                    return Err(DomainError::Invalid(
                        "both sides renamed this file differently: rename one of the copies to the other's name".into(),
                    ));
                }
                if let Resolution::Merged { version, .. } = &resolution
                    && (version.checksum.len() != 64 || version.checksum.bytes().any(|b| !b.is_ascii_hexdigit()))
                {
                    return Err(DomainError::Invalid("the merged content's checksum is malformed".into()));
                }
                Ok(vec![DomainEvent::SyncConflictResolved(SyncConflictResolved {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    path,
                    resolution,
                    source: conflict.source.clone(),
                    target: conflict.target.clone(),
                    at,
                })])
            }
            SyncPairCommand::RequestRun { job_id, at } => {
                let pair = self.existing()?;
                Ok(vec![DomainEvent::SyncRunRequested(SyncRunRequested {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    job_id,
                    at,
                })])
            }
            SyncPairCommand::AdvanceBase { job_id, changes, at } => {
                let pair = self.existing()?;
                // Only real changes: re-agreeing on what the base already says records nothing.
                let changes: Vec<BaseChange> = changes
                    .into_iter()
                    .filter(|c| {
                        let agreed = self.agreed.get(&c.path).cloned().unwrap_or_default();
                        self.base.get(&c.path) != c.version.as_ref()
                            || (c.version.is_some()
                                && (agreed.source_tag != c.source_tag
                                    || agreed.target_tag != c.target_tag
                                    || agreed.stored != c.stored
                                    || agreed.manifest != c.manifest))
                    })
                    .collect();
                if changes.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![DomainEvent::SyncBaseAdvanced(SyncBaseAdvanced {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    job_id,
                    changes,
                    at,
                })])
            }
            SyncPairCommand::KeepVersions(versions) => {
                let pair = self.existing()?;
                if pair.keep_versions == 0 {
                    return Ok(Vec::new());
                }
                let mut newest: BTreeMap<(Side, ProviderPath), String> = BTreeMap::new();
                let mut events = Vec::new();
                for version in versions {
                    if version.pair_id != pair.pair_id || version.owner_id != pair.owner_id {
                        return Err(DomainError::Invalid("a version of another pair".into()));
                    }
                    let key = (version.side, version.path.clone());
                    let latest = newest.get(&key).cloned().or_else(|| {
                        self.latest_version(version.side, &version.path)
                            .filter(|v| v.base.is_none())
                            .map(|v| v.version.checksum.clone())
                    });
                    // The same content kept again (a retried run) is one version.
                    if latest.as_deref() == Some(version.version.checksum.as_str()) {
                        continue;
                    }
                    newest.insert(key, version.version.checksum.clone());
                    events.push(DomainEvent::FileVersionKept(version));
                }
                Ok(events)
            }
            SyncPairCommand::PruneVersions { at } => {
                let pair = self.existing()?;
                let version_ids = self.expired_versions(at);
                if version_ids.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(vec![DomainEvent::FileVersionsPruned(FileVersionsPruned {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    version_ids,
                    at,
                })])
            }
            SyncPairCommand::StartPatch(started) => {
                let pair = self.existing()?;
                if started.pair_id != pair.pair_id || started.owner_id != pair.owner_id {
                    return Err(DomainError::Invalid("a write of another pair".into()));
                }
                if self.patches.contains_key(&started.patch_id) {
                    return Err(DomainError::AlreadyExists("write in place"));
                }
                Ok(vec![DomainEvent::FilePatchStarted(started)])
            }
            SyncPairCommand::SettlePatch { patch_id, outcome, at } => {
                self.existing()?;
                let started = self.patches.get(&patch_id).ok_or(DomainError::NotFound("write in place"))?;
                Ok(self.settled(started, outcome, at))
            }
            SyncPairCommand::RecordRestore {
                by,
                version_id,
                side,
                path,
                at,
            } => {
                let pair = self.live_for(by).ok_or(DomainError::NotFound("sync pair"))?;
                if !self.versions.contains_key(&version_id) {
                    return Err(DomainError::NotFound("file version"));
                }
                Ok(vec![DomainEvent::FileVersionRestored(FileVersionRestored {
                    pair_id: pair.pair_id,
                    owner_id: pair.owner_id,
                    version_id,
                    side,
                    path,
                    at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::SyncPairCreated(e) => self.created = Some(e.clone()),
            DomainEvent::SyncDecisionRecorded(e) => {
                self.decisions += 1;
                let open = e.decision.actions.iter().find_map(|a| match a {
                    Action::Unresolved { kind, source, target, .. } => Some(Conflict {
                        kind: *kind,
                        source: source.clone(),
                        target: target.clone(),
                    }),
                    _ => None,
                });
                // A conflict stays open until both sides agree on the path again (the base advances).
                if let Some(conflict) = open {
                    self.conflicts.insert(e.decision.path.clone(), conflict);
                }
            }
            DomainEvent::SyncConflictResolved(e) => {
                self.resolutions.insert(e.path.clone(), e.clone());
            }
            DomainEvent::SyncRunRequested(e) => self.last_run = Some(e.job_id),
            DomainEvent::FileVersionKept(e) => {
                self.versions.insert(e.version_id, e.clone());
            }
            DomainEvent::FileVersionsPruned(e) => {
                for id in &e.version_ids {
                    self.versions.remove(id);
                }
            }
            DomainEvent::FilePatchStarted(e) => {
                self.patches.insert(e.patch_id, e.clone());
            }
            DomainEvent::FilePatchSettled(e) => {
                self.patches.remove(&e.patch_id);
            }
            DomainEvent::SyncBaseAdvanced(e) => {
                for change in &e.changes {
                    self.conflicts.remove(&change.path);
                    self.resolutions.remove(&change.path);
                    match &change.version {
                        Some(version) => {
                            self.base.insert(change.path.clone(), version.clone());
                            self.agreed.insert(
                                change.path.clone(),
                                Agreed {
                                    source_tag: change.source_tag.clone(),
                                    target_tag: change.target_tag.clone(),
                                    stored: change.stored.clone(),
                                    manifest: change.manifest.clone(),
                                },
                            );
                        }
                        None => {
                            self.base.remove(&change.path);
                            self.agreed.remove(&change.path);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::ids::{ProviderId, SyncPairId};
    use crate::merge::{Action, ConflictPolicy, Reason, Side, SyncMode, Version};
    use crate::testing::{Story, given};

    fn p(raw: &str) -> ProviderPath {
        ProviderPath::parse(raw).expect("valid path")
    }

    fn endpoint(provider: u128, path: &str) -> SyncEndpoint {
        SyncEndpoint {
            provider_id: ProviderId::from_uuid(Uuid::from_u128(provider)),
            path: p(path),
        }
    }

    fn create(source: SyncEndpoint, target: SyncEndpoint, max_delete_percent: u8) -> SyncPairCommand {
        SyncPairCommand::Create(SyncPairCreated {
            pair_id: SyncPairId::from_uuid(Uuid::from_u128(7)),
            owner_id: UserId::from_uuid(Uuid::from_u128(1)),
            source,
            target,
            mode: SyncMode::TwoWay,
            policy: ConflictPolicy::KeepBoth,
            max_delete_percent,
            schedule: None,
            realtime: false,
            keep_versions: 2,
            keep_days: 30,
            at: Utc::now(),
        })
    }

    fn version(content: &str) -> Version {
        Version {
            checksum: content.into(),
            size: content.len() as u64,
            modified_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn overlapping_folders_and_bad_limits_are_refused() {
        let empty = || given::<SyncPair>([]);
        for (source, target) in [
            (endpoint(1, "docs"), endpoint(1, "docs")),
            (endpoint(1, "docs"), endpoint(1, "docs/sub")),
            (endpoint(1, ""), endpoint(1, "anything")),
        ] {
            assert!(matches!(
                empty().when(create(source, target, 50)).decided(),
                Err(DomainError::Invalid(_))
            ));
        }
        assert!(matches!(
            empty().when(create(endpoint(1, "a"), endpoint(2, "a"), 101)).decided(),
            Err(DomainError::Invalid(_))
        ));
        // The same folder on two providers, and sibling folders on one, are fine.
        assert_eq!(empty().when(create(endpoint(1, "docs"), endpoint(2, "docs"), 50)).events().len(), 1);
        assert_eq!(
            empty()
                .when(create(endpoint(1, "docs"), endpoint(1, "docs-backup"), 50))
                .events()
                .len(),
            1
        );
    }

    #[test]
    fn the_base_is_the_fold_of_what_runs_agreed_on() {
        let mut pair = Story::<SyncPair>::default();
        let job = SyncJobId::from_uuid(Uuid::from_u128(9));
        assert!(matches!(
            pair.when(SyncPairCommand::AdvanceBase {
                job_id: job,
                changes: vec![],
                at: Utc::now()
            }),
            Err(DomainError::NotFound(_))
        ));
        pair.when(create(endpoint(1, "a"), endpoint(2, "b"), 50)).expect("created");
        let advance = |pair: &mut Story<SyncPair>, changes: Vec<BaseChange>| {
            pair.when(SyncPairCommand::AdvanceBase {
                job_id: job,
                changes,
                at: Utc::now(),
            })
            .expect("advanced")
            .len()
        };
        let change = |path: &str, content: Option<&str>| BaseChange {
            path: p(path),
            version: content.map(version),
            source_tag: content.map(|c| format!("tag-{c}")),
            target_tag: None,
            stored: None,
            manifest: None,
        };
        assert_eq!(advance(&mut pair, vec![change("x.txt", Some("1")), change("y.txt", Some("2"))]), 1);
        assert_eq!(
            advance(&mut pair, vec![change("x.txt", Some("1"))]),
            0,
            "nothing new: nothing recorded"
        );
        let mut retagged = change("x.txt", Some("1"));
        retagged.target_tag = Some("seen again".into());
        assert_eq!(advance(&mut pair, vec![retagged]), 1, "a new listing tag is recorded");
        assert_eq!(
            pair.state().agreed(&p("x.txt")).and_then(|a| a.target_tag.as_deref()),
            Some("seen again")
        );
        assert_eq!(advance(&mut pair, vec![change("x.txt", None), change("y.txt", Some("3"))]), 1);
        assert_eq!(pair.state().agreed(&p("x.txt")), None);
        let base: Vec<(&str, &str)> = pair.state().base().iter().map(|(p, v)| (p.as_str(), v.checksum.as_str())).collect();
        assert_eq!(base, vec![("y.txt", "3")]);

        let decision = Decision {
            path: p("y.txt"),
            reason: Reason::Changed { side: Side::Source },
            actions: vec![Action::Copy {
                to: Side::Target,
                from: p("y.txt"),
                path: p("y.txt"),
                version: version("3"),
            }],
        };
        let recorded = pair
            .when(SyncPairCommand::RecordDecision {
                job_id: job,
                decision: decision.clone(),
                at: Utc::now(),
            })
            .expect("recorded");
        assert_eq!(pair.state().decisions_recorded(), 1);
        // Events survive their encoding: the history replays to the same base.
        let history: Vec<DomainEvent> = recorded
            .iter()
            .map(|e| {
                let encoded = e.encode();
                DomainEvent::decode(&encoded.event_type, encoded.schema_version, &encoded.payload).expect("decodes")
            })
            .collect();
        assert!(matches!(&history[0], DomainEvent::SyncDecisionRecorded(e) if e.decision == decision));
        assert!(pair.state().live_for(UserId::from_uuid(Uuid::from_u128(1))).is_some());
        assert!(pair.state().live_for(UserId::from_uuid(Uuid::from_u128(2))).is_none());
    }

    #[test]
    fn versions_are_kept_once_and_pruned_by_count_and_age() {
        let mut pair = Story::<SyncPair>::default();
        pair.when(create(endpoint(1, "a"), endpoint(2, "b"), 50)).expect("created");
        let settings = pair.state().settings().cloned().expect("settings");
        let now = Utc::now();
        let kept = |content: &str, days_ago: i64, n: u128| FileVersionKept {
            pair_id: settings.pair_id,
            owner_id: settings.owner_id,
            version_id: Uuid::from_u128(n),
            side: Side::Target,
            provider_id: settings.target.provider_id,
            path: p("x.txt"),
            provider_path: p("b/x.txt"),
            version: version(content),
            content: format!("manifest-of-{content}"),
            reason: crate::events::VersionReason::Replaced,
            job_id: None,
            at: now - chrono::Duration::days(days_ago),
            base: None,
        };
        let keep = |pair: &mut Story<SyncPair>, versions: Vec<FileVersionKept>| {
            pair.when(SyncPairCommand::KeepVersions(versions)).expect("kept").len()
        };
        assert_eq!(
            keep(&mut pair, vec![kept("1", 40, 1), kept("1", 40, 2)]),
            1,
            "the same content twice is one version"
        );
        assert_eq!(keep(&mut pair, vec![kept("1", 39, 3)]), 0, "already the newest version");
        assert_eq!(keep(&mut pair, vec![kept("2", 5, 4), kept("3", 1, 5)]), 2);
        assert_eq!(
            pair.state().latest_version(Side::Target, &p("x.txt")).map(|v| v.version_id),
            Some(Uuid::from_u128(5))
        );
        assert!(pair.state().stored_references().contains("manifest-of-1"));
        // Keep 2: the oldest goes (it is also past 30 days).
        assert_eq!(pair.state().expired_versions(now), vec![Uuid::from_u128(1)]);
        pair.when(SyncPairCommand::PruneVersions { at: now }).expect("pruned");
        assert!(pair.state().kept_version(Uuid::from_u128(1)).is_none());
        assert!(!pair.state().stored_references().contains("manifest-of-1"));
        assert!(pair.when(SyncPairCommand::PruneVersions { at: now }).expect("nothing").is_empty());
        // Ten days on, both are still within 30 days; forty days on, neither is.
        assert!(pair.state().expired_versions(now + chrono::Duration::days(10)).is_empty());
        assert_eq!(pair.state().expired_versions(now + chrono::Duration::days(40)).len(), 2);
        // A restore names a kept version of the owner's pair.
        let restore = |by: u128, version: u128| SyncPairCommand::RecordRestore {
            by: UserId::from_uuid(Uuid::from_u128(by)),
            version_id: Uuid::from_u128(version),
            side: Side::Target,
            path: p("x.txt"),
            at: now,
        };
        assert_eq!(pair.when(restore(1, 5)).expect("restored").len(), 1);
        assert!(matches!(pair.when(restore(2, 5)), Err(DomainError::NotFound(_))));
        assert!(matches!(pair.when(restore(1, 1)), Err(DomainError::NotFound(_))));
    }

    #[test]
    fn writes_in_place_stay_pending_until_settled_and_keep_what_they_destroyed() {
        let mut pair = Story::<SyncPair>::default();
        pair.when(create(endpoint(1, "a"), endpoint(2, "b"), 50)).expect("created");
        let settings = pair.state().settings().cloned().expect("settings");
        let now = Utc::now();
        let started = |n: u128, old: &str, new: &str, side: Side| FilePatchStarted {
            pair_id: settings.pair_id,
            owner_id: settings.owner_id,
            patch_id: Uuid::from_u128(n),
            job_id: SyncJobId::from_uuid(Uuid::from_u128(99)),
            side,
            provider_id: settings.target.provider_id,
            path: p("big.bin"),
            provider_path: p("b/big.bin"),
            old: version(old),
            new: version(new),
            undo: format!("undo-{n}"),
            keep: true,
            at: now,
        };
        let settle = |n: u128, outcome: PatchOutcome| SyncPairCommand::SettlePatch {
            patch_id: Uuid::from_u128(n),
            outcome,
            at: now,
        };
        pair.when(SyncPairCommand::StartPatch(started(1, "1", "2", Side::Target)))
            .expect("started");
        assert!(matches!(
            pair.when(SyncPairCommand::StartPatch(started(1, "1", "2", Side::Target))),
            Err(DomainError::AlreadyExists(_))
        ));
        assert_eq!(pair.state().pending_patches().count(), 1);
        assert!(
            pair.state().stored_references().contains("undo-1"),
            "the undo is the pair's while pending"
        );
        let events = pair.when(settle(1, PatchOutcome::Written)).expect("settled");
        assert_eq!(events.len(), 2, "settled, and the old content kept: {events:?}");
        let kept = pair.state().kept_version(Uuid::from_u128(1)).expect("a version").clone();
        assert_eq!((kept.version.checksum.as_str(), kept.base.as_deref()), ("1", Some("2")));
        assert_eq!(pair.state().pending_patches().count(), 0);
        assert!(matches!(pair.when(settle(1, PatchOutcome::Written)), Err(DomainError::NotFound(_))));
        // The same content kept whole later is a version of its own: a version kept as a change
        // depends on newer content, so it does not stand for the content by itself.
        let whole = FileVersionKept {
            version_id: Uuid::from_u128(50),
            content: "whole-1".into(),
            base: None,
            ..kept.clone()
        };
        assert_eq!(pair.when(SyncPairCommand::KeepVersions(vec![whole])).expect("kept").len(), 1);
        // Undone: nothing is kept, and the undo is no longer the pair's.
        pair.when(SyncPairCommand::StartPatch(started(2, "2", "3", Side::Target)))
            .expect("started");
        assert_eq!(pair.when(settle(2, PatchOutcome::Undone)).expect("settled").len(), 1);
        assert!(!pair.state().stored_references().contains("undo-2"));
        // A version rebuilt from another goes when that one is let go: "1" is rebuilt from "2",
        // kept on the source side, which keeps two versions and has two newer ones.
        for (n, old, new) in [(3, "2", "5"), (4, "5", "6"), (5, "6", "7")] {
            pair.when(SyncPairCommand::StartPatch(started(n, old, new, Side::Source)))
                .expect("started");
            pair.when(settle(n, PatchOutcome::Written)).expect("settled");
        }
        let later = now + chrono::Duration::seconds(1);
        assert_eq!(
            pair.state().expired_versions(later),
            vec![Uuid::from_u128(1), Uuid::from_u128(3)],
            "the oldest of the source side, and the target's version that needs it"
        );
    }

    #[test]
    fn a_snapshot_holds_the_pair_as_its_history_folds_it() {
        let mut pair = Story::<SyncPair>::default();
        pair.when(create(endpoint(1, "a"), endpoint(2, "b"), 50)).expect("created");
        let settings = pair.state().settings().cloned().expect("settings");
        let (job, now) = (SyncJobId::from_uuid(Uuid::from_u128(9)), Utc::now());
        let change = |path: &str, content: &str| BaseChange {
            path: p(path),
            version: Some(version(content)),
            source_tag: Some(format!("etag \"{content}\"")),
            target_tag: None,
            stored: Some(format!("stored-{content}")),
            manifest: Some(format!("manifest-{content}")),
        };
        pair.when(SyncPairCommand::AdvanceBase {
            job_id: job,
            changes: vec![change("x.txt", "1"), change("dir/ünïcode y.txt", "2")],
            at: now,
        })
        .expect("advanced");
        let conflict = Decision {
            path: p("x.txt"),
            reason: Reason::Changed { side: Side::Source },
            actions: vec![Action::Unresolved {
                path: p("x.txt"),
                kind: crate::merge::ConflictKind::BothModified,
                source: Some(version("3")),
                target: None,
            }],
        };
        pair.when(SyncPairCommand::RecordDecision {
            job_id: job,
            decision: conflict,
            at: now,
        })
        .expect("recorded");
        pair.when(SyncPairCommand::StartPatch(FilePatchStarted {
            pair_id: settings.pair_id,
            owner_id: settings.owner_id,
            patch_id: Uuid::from_u128(1),
            job_id: job,
            side: Side::Target,
            provider_id: settings.target.provider_id,
            path: p("dir/ünïcode y.txt"),
            provider_path: p("b/dir/ünïcode y.txt"),
            old: version("2"),
            new: version("4"),
            undo: "undo-1".into(),
            keep: true,
            at: now,
        }))
        .expect("started");
        pair.when(SyncPairCommand::ResolveConflict {
            by: settings.owner_id,
            path: p("x.txt"),
            resolution: crate::events::Resolution::Source,
            at: now,
        })
        .expect("resolved");
        pair.when(SyncPairCommand::KeepVersions(vec![FileVersionKept {
            pair_id: settings.pair_id,
            owner_id: settings.owner_id,
            version_id: Uuid::from_u128(2),
            side: Side::Target,
            provider_id: settings.target.provider_id,
            path: p("x.txt"),
            provider_path: p("b/x.txt"),
            version: version("0"),
            content: "manifest-of-0".into(),
            reason: crate::events::VersionReason::Replaced,
            job_id: Some(job),
            at: now,
            base: Some("1".into()),
        }]))
        .expect("kept");
        let state = pair.state();
        assert_eq!(state.conflicts().len(), 1, "the snapshot has a conflict to hold");
        assert!(state.kept_version(Uuid::from_u128(2)).is_some(), "and a version");
        assert_eq!(state.resolutions.len(), 1, "and the owner's choice");
        let data = state.snapshot().expect("encoded");
        assert_eq!(SyncPair::from_snapshot(SyncPair::snapshot_schema(), &data).as_ref(), Some(state));
        assert_eq!(
            SyncPair::from_snapshot("sync-pair/json/0", &data),
            None,
            "another schema is passed over"
        );
        assert_eq!(SyncPair::from_snapshot(SyncPair::snapshot_schema(), &data[1..]), None);
        assert_eq!(state.owner(), Some(settings.owner_id));
    }
}
