//! Earlier versions: what a run keeps of a file before it replaces or deletes it, and restoring a
//! kept version.
//!
//! A version is stored once per content (its chunks and manifest in the chunk store). Restoring
//! writes the kept version back through the same checked temporary-name write a run uses, after
//! keeping what is there now as a version of its own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use cloudsync_chunks::{ChunkStore, Layer, Manifest, get_manifest, overlay, put_content, put_stream};
use cloudsync_domain::events::{FileVersionKept, Resolution, VersionReason};
use cloudsync_domain::merge::{self, Action, Decision, Side, SyncMode, Version};
use cloudsync_domain::sync_pair::{SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, ProviderPath, SyncJobId, SyncPairId, UserId};
use cloudsync_providers::{ByteStream, Entry, ProviderError, StorageProvider};
use futures::{StreamExt, TryStreamExt};
use uuid::Uuid;

use super::delta::{hash_of, stored_stream};
use super::recorder::Recorder;
use super::write::{temporary_name, write_checked};
use super::{BATCH, CONCURRENCY, DELTA_MIN, Executor, KEEP_TEXT, Present, StepError, index};
use crate::core::{Context, storage_error};
use crate::{CommandError, Commands};

impl Commands {
    /// Brings an earlier version of a file of one of `user`'s pairs back: it is written over the
    /// file (whose current content is kept as a version first), on the side it was kept from in a
    /// two-way pair and on the source of a one-way pair, and a run then carries it to the other
    /// side. Returns the side and path written, the run (unless one is in progress) and the last
    /// position.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown versions and someone else's;
    /// [`CommandError::Conflict`] while a run of the pair is in progress, when the file changed
    /// while it was restored, or when the version was kept as a change of newer content that is
    /// no longer kept nor on either side; storage errors (nothing is replaced unless the whole
    /// version was read back and checked).
    pub async fn restore_file_version(
        &self,
        user: UserId,
        pair_id: SyncPairId,
        version_id: Uuid,
    ) -> Result<(Side, ProviderPath, Option<SyncJobId>, i64), CommandError> {
        const UNKNOWN: CommandError = CommandError::NotFound("file version");
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        let settings = pair.live_for(user).cloned().ok_or(UNKNOWN)?;
        let kept = pair.kept_version(version_id).cloned().ok_or(UNKNOWN)?;
        if pair.pending_patches().any(|p| p.path == kept.path) {
            return Err(CommandError::Conflict(
                "a write of this file was interrupted; the pair's next run settles it first, then restore".into(),
            ));
        }
        let chunks = self.chunks_for(user).await?.ok_or(UNKNOWN)?;
        if let Some(last) = self.run_in_progress(&pair).await? {
            return Err(CommandError::Conflict(format!(
                "a run of this pair is in progress (operation {last}); restore once it has ended"
            )));
        }
        let side = if settings.mode == SyncMode::TwoWay {
            kept.side
        } else {
            Side::Source
        };
        let endpoint = match side {
            Side::Source => &settings.source,
            Side::Target => &settings.target,
        };
        let provider = self.provider(user, endpoint.provider_id).await?;
        let destination = kept.path.under(&endpoint.path);
        let other = match side {
            Side::Source => &settings.target,
            Side::Target => &settings.source,
        };
        let other_provider = self.provider(user, other.provider_id).await?;
        let other_path = kept.path.under(&other.path);
        let lease = self.lease_now(format!("restore-{}", Uuid::now_v7())).await?;
        let restored = async {
            let manifest = get_manifest(&*chunks, &kept.content).await?;
            if manifest.checksum != kept.version.checksum {
                return Err(StepError::Changed("the kept version's manifest does not match it".into()));
            }
            // Read before anything is written: it may be rebuilt over the file as it is now.
            let sides = [(&*provider, &destination), (&*other_provider, &other_path)];
            let data = kept_stream(&chunks, &pair, &kept, manifest, sides).await?;
            // What is there now becomes a version of its own.
            let mut replaced = Vec::new();
            let current = match provider.stat_fresh(&destination).await {
                Ok(entry) => Some(entry),
                Err(ProviderError::NotFound(_)) => None,
                Err(err) => return Err(err.into()),
            };
            if let Some(entry) = &current {
                let (content, now) = store_whole(&*chunks, &*provider, &destination, entry.size).await?;
                replaced.push(FileVersionKept {
                    pair_id,
                    owner_id: user,
                    version_id: Uuid::now_v7(),
                    side,
                    provider_id: endpoint.provider_id,
                    path: kept.path.clone(),
                    provider_path: destination.clone(),
                    version: Version {
                        checksum: now.checksum,
                        size: now.size,
                        modified_at: entry.modified_at.unwrap_or_else(Utc::now),
                    },
                    content,
                    reason: VersionReason::Restored,
                    job_id: None,
                    at: Utc::now(),
                    base: None,
                });
            }
            let expected = current.as_ref().map(Entry::tag);
            let temporary = temporary_name(&destination, pair_id);
            write_checked(&*provider, None, &destination, &temporary, data, &kept.version, expected.as_deref()).await?;
            Ok(replaced)
        }
        .await;
        let recorded = async {
            let replaced = restored.map_err(|err| match err {
                // The file changed meanwhile, or the version cannot be rebuilt: the owner's to
                // know, and nothing was written.
                StepError::Changed(why) => CommandError::Conflict(why),
                other => CommandError::Storage(other.to_string()),
            })?;
            let (mut pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
            let mut events = pair.handle(SyncPairCommand::KeepVersions(replaced))?;
            events.iter().for_each(|e| pair.apply(e));
            events.extend(pair.handle(SyncPairCommand::RecordRestore {
                by: user,
                version_id,
                side,
                path: kept.path.clone(),
                at: Utc::now(),
            })?);
            self.append(pair_id.stream(), version, &events, &Context::new(Some(user))).await
        }
        .await;
        lease.release().await;
        let recorded = recorded?;
        match self.request_sync(user, pair_id).await {
            Ok((job_id, position)) => Ok((side, destination, Some(job_id), position)),
            Err(CommandError::Conflict(_)) => Ok((side, destination, None, recorded)),
            Err(err) => Err(err),
        }
    }
}

/// The content of the kept version `kept` (whose manifest is `manifest`) as a stream: from the
/// chunk store, or, for a version kept as the bytes a write in place destroyed, rebuilt over the
/// newer content it was kept against: the file as it is now on one of `sides` (provider, path;
/// found by its BLAKE3), or another kept version of the path (whole, or rebuilt in turn). Every
/// way is tried, each version once.
async fn kept_stream(
    chunks: &Arc<dyn ChunkStore>,
    pair: &SyncPair,
    kept: &FileVersionKept,
    manifest: Manifest,
    sides: [(&dyn StorageProvider, &ProviderPath); 2],
) -> Result<ByteStream, StepError> {
    let mut held = Vec::new();
    if manifest.patch.is_some() {
        for (provider, path) in sides {
            if let Some((checksum, size)) = hash_of(provider, path).await? {
                held.push(Held {
                    provider,
                    path,
                    checksum,
                    size,
                });
            }
        }
    }
    let mut tried = HashSet::from([kept.version_id]);
    content_of(chunks, pair, &kept.path, manifest, &held, &mut tried)
        .await?
        .ok_or_else(|| {
            StepError::Changed(
                "this version was kept as the bytes a later change overwrote, and the newer content it was kept against is no \
                 longer kept nor on either side (changed outside CloudSync on both): it cannot be rebuilt"
                    .into(),
            )
        })
}

/// A file on a side as it is now.
struct Held<'a> {
    provider: &'a dyn StorageProvider,
    path: &'a ProviderPath,
    checksum: String,
    size: u64,
}

/// The content `manifest` describes, as a stream, or `None` when a patch's newer content is
/// nowhere (see [`kept_stream`]).
fn content_of<'a>(
    chunks: &'a Arc<dyn ChunkStore>,
    pair: &'a SyncPair,
    path: &'a ProviderPath,
    manifest: Manifest,
    held: &'a [Held<'a>],
    tried: &'a mut HashSet<Uuid>,
) -> futures::future::BoxFuture<'a, Result<Option<ByteStream>, StepError>> {
    Box::pin(async move {
        let Some(patch) = manifest.patch.clone() else {
            return Ok(Some(stored_stream(Arc::clone(chunks), manifest)));
        };
        let layer = Layer::load(&**chunks, &manifest).await?;
        if let Some(side) = held.iter().find(|h| h.checksum == patch.base && h.size == patch.base_size) {
            let base = side.provider.read(side.path, 0..side.size).await?;
            return Ok(Some(overlay(base, vec![layer])));
        }
        // Kept versions of that content, whole ones first.
        let mut candidates: Vec<&FileVersionKept> = pair
            .versions()
            .filter(|v| &v.path == path && v.version.checksum == patch.base && !tried.contains(&v.version_id))
            .collect();
        candidates.sort_by_key(|v| v.base.is_some());
        for newer in candidates {
            if !tried.insert(newer.version_id) {
                continue;
            }
            // A version that cannot be read (a missing chunk) is not this way; the next may be.
            let Ok(newer) = get_manifest(&**chunks, &newer.content).await else {
                continue;
            };
            match content_of(chunks, pair, path, newer, held, tried).await {
                Ok(Some(base)) => return Ok(Some(overlay(base, vec![layer]))),
                Ok(None) | Err(StepError::Chunks(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(None)
    })
}

/// Content at risk, and its id in the chunk store once kept.
pub(super) type AtRisk = (Side, ProviderPath, Present, VersionReason);

pub(super) async fn keep_one<'a>(executor: &'a Executor, item: &'a AtRisk) -> (&'a AtRisk, Result<(String, String), StepError>) {
    (item, executor.keep_version(item.0, &item.1, &item.2).await)
}

impl Executor {
    /// Whether a file is a small text file, copied through memory and kept.
    pub(super) fn keeps(&self, path: &ProviderPath, size: u64) -> bool {
        size <= KEEP_TEXT && self.keeps_base(path, size)
    }

    /// Whether a file is a text file the merge takes, whose agreed content is kept.
    pub(super) fn keeps_base(&self, path: &ProviderPath, size: u64) -> bool {
        self.chunks.is_some() && size <= merge::TEXT_MERGE_LIMIT && merge::is_text(path)
    }

    /// Reads a text file and keeps it in the chunk store (through memory when small, streamed
    /// otherwise); `None` when it cannot, or it is no longer `version` (the next merge of the file
    /// then falls back to the conflict policy).
    pub(super) async fn keep(&self, side: Side, path: &ProviderPath, version: &Version) -> Option<String> {
        let chunks = self.chunks.as_ref()?;
        if version.size <= KEEP_TEXT {
            let data = self.read_verified(side, path, version).await.ok()?;
            return put_content(&**chunks, &data).await.ok();
        }
        let stream = self.provider(side).read(&self.full(side, path), 0..version.size).await.ok()?;
        let (id, manifest) = put_stream(&**chunks, stream).await.ok()?;
        let unhashed = version.checksum.is_empty();
        (manifest.size == version.size && (unhashed || manifest.checksum == version.checksum)).then_some(id)
    }

    /// The whole content of a (small) file, checked against the version it should have.
    pub(super) async fn read_verified(&self, side: Side, path: &ProviderPath, version: &Version) -> Result<Vec<u8>, StepError> {
        let stream = self.provider(side).read(&self.full(side, path), 0..version.size).await?;
        let data: Vec<u8> = stream
            .try_fold(Vec::new(), |mut data, piece| {
                data.extend_from_slice(&piece);
                futures::future::ready(Ok(data))
            })
            .await?;
        let unhashed = version.checksum.is_empty();
        if data.len() as u64 != version.size || (!unhashed && blake3::hash(&data).to_hex().as_str() != version.checksum) {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} since it was listed",
                side.name()
            )));
        }
        Ok(data)
    }

    /// What carrying out `decisions` would overwrite or delete: each side's listed content that an
    /// action replaces with other content, deletes, or merges over.
    pub(super) fn at_risk(&self, decisions: &[Decision]) -> Vec<AtRisk> {
        let mut seen = HashSet::new();
        let mut risky = Vec::new();
        let mut add = |side: Side, path: &ProviderPath, reason: VersionReason, instead: Option<&Version>| {
            if let Some(present) = self.listed(side, path)
                && !instead.is_some_and(|v| v.same_content(&present.version))
                && seen.insert((side, path.clone()))
            {
                risky.push((side, path.clone(), present, reason));
            }
        };
        for action in decisions.iter().flat_map(|d| &d.actions) {
            match action {
                // A write in place keeps what it destroys itself.
                Action::Copy { to, path, version, .. } if self.defers(*to, path, version) => {}
                Action::Copy { to, path, version, .. } => add(*to, path, VersionReason::Replaced, Some(version)),
                Action::Delete { side, path, .. } => add(*side, path, VersionReason::Deleted, None),
                Action::MergeText { path, .. } => {
                    add(Side::Source, path, VersionReason::Replaced, None);
                    add(Side::Target, path, VersionReason::Replaced, None);
                }
                Action::Unresolved { path, source, target, .. } => {
                    let sides = match self.pair.resolution(path, source.as_ref(), target.as_ref()) {
                        Some(Resolution::Source) => vec![Side::Target],
                        Some(Resolution::Target) => vec![Side::Source],
                        Some(Resolution::Merged { .. }) => vec![Side::Source, Side::Target],
                        Some(Resolution::Both) | None => Vec::new(),
                    };
                    for side in sides {
                        add(side, path, VersionReason::Replaced, None);
                    }
                }
                Action::Rename { .. } => {}
            }
        }
        risky
    }

    /// Keeps (and records) the contents that `decisions` would overwrite or delete; returns the
    /// paths whose content could not be kept, with why: their decisions are not carried out.
    pub(super) async fn keep_versions(
        &self,
        decisions: &[Decision],
        run: &mut Recorder<'_>,
    ) -> Result<HashMap<ProviderPath, String>, CommandError> {
        let mut blocked = HashMap::new();
        if !self.versions || self.chunks.is_none() {
            return Ok(blocked);
        }
        let risky = self.at_risk(decisions);
        let mut queue = risky.iter();
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut batch = Vec::new();
        loop {
            while in_flight.len() < CONCURRENCY {
                match queue.next() {
                    Some(item) => in_flight.push(keep_one(self, item)),
                    None => break,
                }
            }
            let Some(((side, path, present, reason), content)) = in_flight.next().await else {
                break;
            };
            match content {
                Ok((content, checksum)) => batch.push(FileVersionKept {
                    pair_id: self.pair_id,
                    owner_id: self.owner,
                    version_id: Uuid::now_v7(),
                    side: *side,
                    provider_id: self.providers[index(*side)],
                    path: path.clone(),
                    provider_path: self.full(*side, path),
                    version: Version {
                        checksum,
                        ..present.version.clone()
                    },
                    content,
                    reason: *reason,
                    job_id: Some(self.job_id),
                    at: Utc::now(),
                    base: None,
                }),
                Err(err) => {
                    blocked.insert(
                        path.clone(),
                        format!("the {}'s version could not be kept, so it was not replaced: {err}", side.name()),
                    );
                }
            }
            if batch.len() >= BATCH {
                run.keep(std::mem::take(&mut batch)).await?;
            }
        }
        run.keep(batch).await?;
        Ok(blocked)
    }

    /// Stores the content `present` in the chunk store, whole, and returns its manifest's id; what
    /// the store holds already (a kept text, a manifest whose chunks are all stored) is not read
    /// again.
    pub(super) async fn keep_version(&self, side: Side, path: &ProviderPath, present: &Present) -> Result<(String, String), StepError> {
        let Some(chunks) = &self.chunks else {
            return Err(StepError::Changed("no chunk store".into()));
        };
        if let Some(stored) = &present.stored {
            return Ok((stored.clone(), present.version.checksum.clone()));
        }
        if let Some(id) = &present.manifest
            && let Ok(manifest) = get_manifest(&**chunks, id).await
            && manifest.checksum == present.version.checksum
        {
            let mut whole = true;
            for chunk in &manifest.chunks {
                if !chunks.has(&chunk.id).await? {
                    whole = false;
                    break;
                }
            }
            if whole {
                return Ok((id.clone(), manifest.checksum));
            }
        }
        let version = &present.version;
        let (id, manifest) = store_whole(&**chunks, self.provider(side), &self.full(side, path), version.size).await?;
        // An unhashed file (new on one side) is kept as it reads.
        if manifest.size != version.size || (!version.checksum.is_empty() && manifest.checksum != version.checksum) {
            return Err(StepError::Changed(format!(
                "{path} changed on the {} since it was listed",
                side.name()
            )));
        }
        Ok((id, manifest.checksum))
    }

    /// Whether the version that copying `version` to `path` on side `to` replaces is kept by the
    /// copy rather than before it: where the side writes in place and holds the agreed version of
    /// a large file, the write keeps only what it destroys (or, if it copies the file whole after
    /// all, keeps the old content whole first: [`Executor::keep_before_copy`]).
    pub(super) fn defers(&self, to: Side, path: &ProviderPath, version: &Version) -> bool {
        self.versions
            && self.chunks.is_some()
            && version.size >= DELTA_MIN
            && !self.keeps(path, version.size)
            && self.provider(to).writes_in_place()
            && self
                .listed(to, path)
                .is_some_and(|present| self.holds_agreed(to, path, Some(&present.tag)).is_some())
    }

    /// Keeps (and records) the content a copy is about to replace whole, when [`Executor::defers`]
    /// left that to the copy.
    pub(super) async fn keep_before_copy(&self, to: Side, path: &ProviderPath) -> Result<(), StepError> {
        let Some(present) = self.listed(to, path) else { return Ok(()) };
        let (content, checksum) = self.keep_version(to, path, &present).await?;
        let kept = FileVersionKept {
            pair_id: self.pair_id,
            owner_id: self.owner,
            version_id: Uuid::now_v7(),
            side: to,
            provider_id: self.providers[index(to)],
            path: path.clone(),
            provider_path: self.full(to, path),
            version: Version {
                checksum,
                ..present.version.clone()
            },
            content,
            reason: VersionReason::Replaced,
            job_id: Some(self.job_id),
            at: Utc::now(),
            base: None,
        };
        let events = self
            .pair
            .handle(SyncPairCommand::KeepVersions(vec![kept]))
            .map_err(|err| StepError::Log(err.to_string()))?;
        self.record(&events).await
    }

    /// Keeps a text file too large to copy through memory, as just written to `path` on side `to`
    /// with `checksum`, when the merge takes it.
    pub(super) async fn keep_copied(&self, to: Side, path: &ProviderPath, version: &Version, checksum: &str) -> Option<String> {
        if !self.keeps_base(path, version.size) {
            return None;
        }
        let written = Version {
            checksum: checksum.to_owned(),
            ..version.clone()
        };
        self.keep(to, path, &written).await
    }
}

/// Reads `path` (`size` bytes) from `provider` into the chunk store, whole; returns its
/// manifest's id and the manifest (with the content's checksum).
pub(super) async fn store_whole(
    chunks: &dyn ChunkStore,
    provider: &dyn StorageProvider,
    path: &ProviderPath,
    size: u64,
) -> Result<(String, Manifest), StepError> {
    let stream = provider.read(path, 0..size).await?;
    Ok(put_stream(chunks, stream).await?)
}

/// Keeps the whole content of `path` (`size` bytes) in the chunk store for something other than a
/// pair (a file deleted as a duplicate): the manifest's id and the manifest.
pub(crate) async fn keep_whole(
    chunks: &dyn ChunkStore,
    provider: &dyn StorageProvider,
    path: &ProviderPath,
    size: u64,
) -> Result<(String, Manifest), CommandError> {
    store_whole(chunks, provider, path, size)
        .await
        .map_err(|err| CommandError::Storage(err.to_string()))
}

/// Writes the content kept under `manifest_id` back to `path` where nothing is now (through a
/// temporary name beside it where the provider's writes are not atomic), checked against
/// `version` as it goes: nothing is left at `path` unless the whole content was written and
/// matched. `token` names the temporary file.
pub(crate) async fn write_back(
    chunks: Arc<dyn ChunkStore>,
    provider: &dyn StorageProvider,
    path: &ProviderPath,
    manifest_id: &str,
    version: &Version,
    token: Uuid,
) -> Result<(), CommandError> {
    let failed = |err: StepError| match err {
        StepError::Changed(why) => CommandError::Conflict(why),
        other => CommandError::Storage(other.to_string()),
    };
    let manifest = get_manifest(&*chunks, manifest_id)
        .await
        .map_err(|err| CommandError::Storage(format!("the kept content cannot be read: {err}")))?;
    if manifest.checksum != version.checksum {
        return Err(CommandError::Storage("the kept content's manifest does not match it".into()));
    }
    match provider.stat_fresh(path).await {
        Ok(_) => return Err(CommandError::Conflict(format!("{path} is taken; move what is there away first"))),
        Err(ProviderError::NotFound(_)) => {}
        Err(err) => return Err(storage_error(err)),
    }
    // Temporary names are made per pair; a restore outside any pair takes the file's id instead.
    let temporary = temporary_name(path, SyncPairId::from_uuid(token));
    let data = stored_stream(chunks, manifest);
    write_checked(provider, None, path, &temporary, data, version, None)
        .await
        .map(drop)
        .map_err(failed)
}
