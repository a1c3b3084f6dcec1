//! Listing both folders of a run: what each side holds, and which files must be read and hashed
//! because their listing no longer shows what the pair last agreed on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use cloudsync_domain::ProviderPath;
use cloudsync_domain::merge::{Side, Tree, Version};
use cloudsync_domain::sync_pair::SyncPair;
use cloudsync_providers::{Entry, ProviderError, StorageProvider, is_temporary};
use futures::{StreamExt, TryStreamExt};

use super::CONCURRENCY;
use crate::CommandError;
use crate::core::storage_error;

/// One side's files, relative to its folder, with what the listing showed of each.
#[derive(Default)]
pub(super) struct Listing {
    pub(super) tree: Tree,
    pub(super) tags: HashMap<ProviderPath, String>,
    /// Temporary files found (full paths): this pair's earlier, interrupted runs', or others'.
    pub(super) abandoned: Vec<Entry>,
    /// Files whose content is not known yet (not as last agreed), by path, with their full path.
    pub(super) unhashed: HashMap<ProviderPath, ProviderPath>,
}

/// Which of `listing`'s unhashed files planning needs the checksum of: those the other side also
/// has, those in the base, and those of a size that a rename partner has (a base file gone from
/// this side, a file only the other side has). The rest exist on one side only and are hashed while
/// they are copied. So are large files (`in_place_from` bytes and up) that only this side changed,
/// where the other side holds them as agreed: planning needs no checksum to copy them over, and
/// the write in place reads them anyway (it hashes them as it compares); reading them here too
/// would read each changed large file twice.
pub(super) fn needs_hash(
    listing: &Listing,
    other: &Listing,
    base: &Tree,
    in_place_from: Option<u64>,
) -> Vec<(ProviderPath, ProviderPath, u64)> {
    let mut partners: HashSet<u64> = base
        .iter()
        .filter(|(path, _)| !listing.tree.contains_key(*path))
        .map(|(_, v)| v.size)
        .collect();
    partners.extend(
        other
            .tree
            .iter()
            .filter(|(path, _)| !listing.tree.contains_key(*path) && !base.contains_key(*path))
            .map(|(_, v)| v.size),
    );
    // Changed here only, large, and no rename could pair with it: hashed while written over.
    let deferred = |path: &ProviderPath, size: u64| {
        in_place_from.is_some_and(|from| size >= from)
            && !partners.contains(&size)
            && !other.unhashed.contains_key(path)
            && base
                .get(path)
                .is_some_and(|agreed| other.tree.get(path).is_some_and(|there| there.same_content(agreed)))
    };
    listing
        .unhashed
        .iter()
        .filter_map(|(path, full)| {
            let size = listing.tree.get(path)?.size;
            (other.tree.contains_key(path) || base.contains_key(path) || partners.contains(&size))
                .then(|| (path.clone(), full.clone(), size))
                .filter(|_| !deferred(path, size))
        })
        .collect()
}

/// Hashes `files` (path, full path, size); a file gone since it was listed is dropped from the
/// listing, as if it had not been listed.
pub(super) async fn hash_into(
    provider: &dyn StorageProvider,
    listing: &mut Listing,
    files: Vec<(ProviderPath, ProviderPath, u64)>,
) -> Result<(), CommandError> {
    let hashed: Vec<(ProviderPath, Option<String>)> = futures::stream::iter(files)
        .map(|(path, full, size)| async move {
            match crate::workers::scan::hash(provider, &full, size).await {
                Ok(checksum) => Ok((path, Some(checksum))),
                Err(ProviderError::NotFound(_)) => Ok((path, None)),
                Err(err) => Err(storage_error(err)),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    for (path, checksum) in hashed {
        listing.unhashed.remove(&path);
        match checksum {
            Some(checksum) => {
                if let Some(version) = listing.tree.get_mut(&path) {
                    version.checksum = checksum;
                }
            }
            None => {
                listing.tree.remove(&path);
                listing.tags.remove(&path);
            }
        }
    }
    Ok(())
}

pub(super) fn agreed_tag(pair: &SyncPair, side: Side, path: &ProviderPath) -> Option<String> {
    let agreed = pair.agreed(path)?;
    match side {
        Side::Source => agreed.source_tag.clone(),
        Side::Target => agreed.target_tag.clone(),
    }
}

/// Lists one side. A folder that does not exist yet is empty (the max-delete rail stops a run that
/// would empty the other side because a folder vanished).
pub(super) async fn list_side(
    provider: Arc<dyn StorageProvider>,
    folder: ProviderPath,
    pair: &SyncPair,
    side: Side,
) -> Result<Listing, CommandError> {
    let mut first = true;
    let mut abandoned = Vec::new();
    let mut listing = Listing::default();
    {
        let entries = provider
            .list(&folder)
            .take_while(move |item| {
                let missing = first && matches!(item, Err(ProviderError::NotFound(_)));
                first = false;
                futures::future::ready(!missing)
            })
            .map_err(storage_error)
            .try_filter_map(|entry| {
                let found = match entry.path.relative_to(&folder) {
                    Some(relative) if is_temporary(relative.name()) => {
                        abandoned.push(entry);
                        None
                    }
                    Some(relative) => Some((relative, entry)),
                    None => None,
                };
                futures::future::ready(Ok(found))
            })
            .map_ok(|(relative, entry)| {
                let tag = entry.tag();
                let known = pair
                    .base()
                    .get(&relative)
                    .filter(|v| v.size == entry.size && agreed_tag(pair, side, &relative).as_deref() == Some(tag.as_str()))
                    .map(|v| v.checksum.clone());
                (relative, entry, tag, known)
            });
        let mut entries = std::pin::pin!(entries);
        while let Some((path, entry, tag, known)) = entries.try_next().await? {
            if known.is_none() {
                listing.unhashed.insert(path.clone(), entry.path.clone());
            }
            let version = Version {
                checksum: known.unwrap_or_default(),
                size: entry.size,
                modified_at: entry.modified_at.unwrap_or_default(),
            };
            listing.tags.insert(path.clone(), tag);
            listing.tree.insert(path, version);
        }
    }
    listing.abandoned = abandoned;
    Ok(listing)
}
