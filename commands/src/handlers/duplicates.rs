//! Resolving a group of duplicate files: one file stays and the others are deleted (their content
//! kept whole in the chunk store first, restorable until `deleted_keep_days` have passed) or moved
//! into a folder; and restoring a file so deleted. Every file is checked against the content it had
//! when the group was formed before anything changes.

use std::sync::Arc;

use chrono::Utc;
use cloudsync_domain::events::{DomainEvent, FileDiscovered, KeptContent};
use cloudsync_domain::file::{File, FileCommand};
use cloudsync_domain::merge::Version;
use cloudsync_domain::{Aggregate, FileId, ProviderId, ProviderPath, SyncJobId, UserId};
use cloudsync_providers::StorageProvider;
use uuid::Uuid;

use crate::core::{Context, storage_error};
use crate::workers::sync::{keep_whole, write_back};
use crate::{CommandError, Commands, Moved};

/// Why a file deleted by [`Commands::resolve_duplicates`] was deleted, as its kept content says.
pub const DUPLICATE: &str = "DUPLICATE";

/// Hex digits of each file's checksum a group names at least (its first 128 bits).
const MIN_CHECKSUM: usize = 32;

/// Files one resolution acts on at most.
const MAX_GROUP: usize = 1000;

/// What to do with a group of duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Keep the file modified last; delete the others.
    KeepNewest,
    /// Keep the file modified first; delete the others.
    KeepOldest,
    /// Keep the largest file (the oldest of equals); delete the others.
    KeepLargest,
    /// Keep this file; delete the others.
    KeepOne(FileId),
    /// Move every file but `keep` (the oldest when `None`) into `folder` on its own provider.
    MoveOthers { keep: Option<FileId>, folder: ProviderPath },
    /// Delete every file but `keep` (the oldest when `None`).
    DeleteOthers { keep: Option<FileId> },
}

/// What a resolution did.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub kept: Option<FileId>,
    pub deleted: Vec<FileId>,
    pub moved: Vec<Moved>,
    /// The log's position after the last event appended.
    pub position: i64,
}

/// One file of a group, loaded and checked.
struct Member {
    id: FileId,
    file: File,
    version: i64,
    facts: FileDiscovered,
    path: ProviderPath,
}

impl Commands {
    /// Resolves a group of `user`'s duplicates, given as each file with the checksum it had when
    /// the group was formed (or its first 32 hex digits at least). Deleted files' contents are kept in the chunk store first (all of
    /// them before the first deletion), so each can be restored with
    /// [`Commands::restore_deleted_file`].
    ///
    /// # Errors
    /// [`CommandError::Conflict`] when a file changed, moved away or was deleted since the group
    /// was formed (nothing changes); [`CommandError::NotFound`] for files that are not `user`'s;
    /// [`CommandError::Invalid`] for a group of fewer than two files or a `keep` outside it.
    pub async fn resolve_duplicates(
        &self,
        user: UserId,
        group: &[(FileId, String)],
        resolution: Resolution,
    ) -> Result<Resolved, CommandError> {
        if group.len() < 2 || group.len() > MAX_GROUP {
            return Err(CommandError::Invalid(format!(
                "a group of duplicates has from 2 to {MAX_GROUP} files"
            )));
        }
        let mut members = Vec::with_capacity(group.len());
        for (id, checksum) in group {
            if members.iter().any(|m: &Member| m.id == *id) {
                return Err(CommandError::Invalid("a file appears twice in the group".into()));
            }
            let (file, version) = self.load::<File>(&id.stream()).await?;
            if file.owner() != Some(user) {
                return Err(CommandError::NotFound("file"));
            }
            let Some((facts, path)) = file.live_for(user) else {
                return Err(CommandError::Conflict(
                    "a file of the group was deleted since the group was formed; list duplicates again".into(),
                ));
            };
            if checksum.len() < MIN_CHECKSUM || !facts.checksum.starts_with(checksum.as_str()) {
                return Err(CommandError::Conflict(format!(
                    "{path} changed since the group was formed; list duplicates again"
                )));
            }
            let (facts, path) = (facts.clone(), path.clone());
            members.push(Member {
                id: *id,
                file,
                version,
                facts,
                path,
            });
        }
        let keep = keeper(&members, &resolution)?;
        let others: Vec<Member> = members.into_iter().filter(|m| m.id != keep).collect();
        if let Resolution::MoveOthers { folder, .. } = resolution {
            let ids: Vec<FileId> = others.iter().map(|m| m.id).collect();
            let (moved, position) = self.move_files(user, &ids, &folder).await?;
            return Ok(Resolved {
                kept: Some(keep),
                moved,
                position,
                ..Resolved::default()
            });
        }
        let chunks = self
            .chunks_for(user)
            .await?
            .ok_or_else(|| CommandError::Invalid("no chunk store is configured to keep deleted files in".into()))?;
        let mut plans: Vec<(Member, Arc<dyn StorageProvider>, KeptContent)> = Vec::with_capacity(others.len());
        let lease = self.lease_now(format!("duplicates-{}", Uuid::now_v7())).await?;
        let result = async {
            for member in others {
                let provider = self.provider(user, member.facts.provider_id).await?;
                let (manifest_id, manifest) = keep_whole(&*chunks, &*provider, &member.path, member.facts.size_bytes).await?;
                if manifest.checksum != member.facts.checksum || manifest.size != member.facts.size_bytes {
                    return Err(CommandError::Conflict(format!(
                        "{} changed since it was last scanned; rescan its provider and list duplicates again",
                        member.path
                    )));
                }
                let kept = KeptContent {
                    manifest: manifest_id,
                    checksum: manifest.checksum,
                    size_bytes: manifest.size,
                    modified_at: member.facts.modified_at,
                    reason: DUPLICATE.to_owned(),
                };
                plans.push((member, provider, kept));
            }
            let ctx = Context::new(Some(user));
            let mut resolved = Resolved {
                kept: Some(keep),
                position: self.store.head().await?,
                ..Resolved::default()
            };
            for (member, provider, kept) in plans {
                let events = member.file.handle(FileCommand::Delete {
                    by: user,
                    at: Utc::now(),
                    kept: Some(kept),
                })?;
                provider.delete(&member.path).await.map_err(storage_error)?;
                resolved.position = self.append(member.id.stream(), member.version, &events, &ctx).await?;
                resolved.deleted.push(member.id);
            }
            Ok(resolved)
        }
        .await;
        lease.release().await;
        result
    }

    /// Writes a file deleted by [`Commands::resolve_duplicates`] back where it was, from the content
    /// kept, and scans its provider so that it is indexed again. Returns where it went and the scan
    /// (none when the provider cannot be scanned now; its next scan finds the file).
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for files that are not `user`'s, not deleted so, restored already
    /// or past their retention, or whose provider is gone; [`CommandError::Conflict`] when something
    /// is at the path now.
    pub async fn restore_deleted_file(
        &self,
        user: UserId,
        file_id: FileId,
    ) -> Result<(ProviderId, ProviderPath, Option<SyncJobId>, i64), CommandError> {
        let (file, version) = self.load::<File>(&file_id.stream()).await?;
        let events = file.handle(FileCommand::RestoreKept { by: user, at: Utc::now() })?;
        let (Some((kept, _)), [DomainEvent::DeletedFileRestored(restored)]) = (file.kept(), events.as_slice()) else {
            return Err(CommandError::NotFound("deleted file"));
        };
        let owner = file.owner().ok_or(CommandError::NotFound("deleted file"))?;
        let chunks = self.chunks_for(owner).await?.ok_or(CommandError::NotFound("deleted file"))?;
        let provider = self.provider(user, restored.provider_id).await?;
        let content = Version {
            checksum: kept.checksum.clone(),
            size: kept.size_bytes,
            modified_at: kept.modified_at,
        };
        let lease = self.lease_now(format!("restore-{}", Uuid::now_v7())).await?;
        let written = write_back(chunks, &*provider, &restored.path, &kept.manifest, &content, file_id.as_uuid()).await;
        let recorded = match written {
            Ok(()) => self.append(file_id.stream(), version, &events, &Context::new(Some(user))).await,
            Err(err) => Err(err),
        };
        lease.release().await;
        let position = recorded?;
        match self.request_scan(user, restored.provider_id).await {
            Ok((job, position)) => Ok((restored.provider_id, restored.path.clone(), Some(job), position)),
            Err(err) => {
                tracing::warn!(file = %file_id, error = %err, "A restored file's provider could not be scanned now.");
                Ok((restored.provider_id, restored.path.clone(), None, position))
            }
        }
    }
}

/// The file of the group that stays.
fn keeper(members: &[Member], resolution: &Resolution) -> Result<FileId, CommandError> {
    let oldest = |a: &&Member, b: &&Member| a.facts.modified_at.cmp(&b.facts.modified_at).then_with(|| a.path.cmp(&b.path));
    let named = |keep: FileId| {
        members
            .iter()
            .any(|m| m.id == keep)
            .then_some(keep)
            .ok_or_else(|| CommandError::Invalid("keep must name one of the group's files".into()))
    };
    let first = |m: Option<&Member>| m.map(|m| m.id).ok_or_else(|| CommandError::Invalid("the group is empty".into()));
    match resolution {
        Resolution::KeepNewest => first(members.iter().max_by(oldest)),
        Resolution::KeepOldest | Resolution::DeleteOthers { keep: None } | Resolution::MoveOthers { keep: None, .. } => {
            first(members.iter().min_by(oldest))
        }
        Resolution::KeepLargest => first(
            members
                .iter()
                .min_by(|a, b| b.facts.size_bytes.cmp(&a.facts.size_bytes).then_with(|| oldest(a, b))),
        ),
        Resolution::KeepOne(keep) | Resolution::DeleteOthers { keep: Some(keep) } | Resolution::MoveOthers { keep: Some(keep), .. } => {
            named(*keep)
        }
    }
}
