//! `duplicates`: groups of the caller's files that hold the same content, across all of their
//! providers, with what resolving each would free and why its files were grouped. Exact groups
//! (same BLAKE3) come from the read model's `files`; near-image groups from the pictures'
//! perceptual hashes there (`files.metadata`); near-document groups from the vector index (the
//! mean of each document's passage vectors, compared with its nearest neighbours').
//!
//! A group's id carries its files and the content each had (file id and the first 128 bits of its
//! BLAKE3), so `resolveDuplicate` acts on exactly the files that were shown and refuses when any of
//! them changed since; the commands check each against the log and the caller.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use cloudsync_commands::Resolution;
use cloudsync_domain::FileId;
use cloudsync_domain::near::{self, Picture, near_pictures};
use cloudsync_identity::access::scope;
use cloudsync_projections::{DeletedFileRow, FileRow};
use uuid::Uuid;

use super::files::File;
use super::sync::SyncOperation;
use super::{app, caller_for, offset_after, offset_cursor, parse_id, parse_path};
use crate::errors::{ApiError, ApiResult};

/// The least score of a group when the caller names none.
const DEFAULT_THRESHOLD: f64 = 0.98;

/// Groups one page of `duplicates` holds at most.
const MAX_FIRST: i32 = 200;

/// How the files of a group were found to be the same.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum DuplicateMethod {
    /// The same bytes (BLAKE3).
    Exact,
    /// Images whose perceptual hashes are close.
    NearImage,
    /// Documents whose texts are close.
    NearDocument,
}

#[derive(SimpleObject)]
pub struct DuplicateGroup {
    /// Stable while the group's content is (opaque).
    id: ID,
    method: DuplicateMethod,
    /// How alike the files are, from 0 to 1 (1 for exact groups).
    score: f64,
    /// Oldest first.
    files: Vec<File>,
    /// What keeping one file of the group and removing the others would free.
    reclaimable_bytes: i64,
    /// Why these files were grouped, in plain words.
    explanation: String,
    /// Where `duplicates(…, after:)` continues after this group.
    cursor: String,
}

/// What a group's id starts with, before its encoded members.
const GROUP_PREFIX: &str = "dup1_";
/// Bytes of each file's BLAKE3 a group's id carries.
const CHECKSUM_BYTES: usize = 16;

/// The id of a group of `files` found by `method`: the method, then each file (by id) with the
/// start of its checksum.
fn group_id<'a>(method: DuplicateMethod, files: impl IntoIterator<Item = &'a FileRow>) -> ID {
    members_id(method, files.into_iter().map(|f| (f.id, f.checksum.as_str())).collect())
}

fn members_id(method: DuplicateMethod, mut members: Vec<(Uuid, &str)>) -> ID {
    members.sort_unstable();
    let mut bytes = vec![method as u8];
    for (id, checksum) in members {
        bytes.extend_from_slice(id.as_bytes());
        let mut start = [0_u8; CHECKSUM_BYTES];
        for (i, byte) in start.iter_mut().enumerate() {
            *byte = checksum
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        bytes.extend_from_slice(&start);
    }
    ID(format!("{GROUP_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// A group's files, each with the start of the checksum it had (lower-case hex), from its id.
fn group_members(id: &ID) -> ApiResult<Vec<(FileId, String)>> {
    let malformed = || ApiError::BadInput("groupId is not a group of duplicates' id".into());
    let encoded = id.0.strip_prefix(GROUP_PREFIX).ok_or_else(malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    let member = 16 + CHECKSUM_BYTES;
    let Some((&method, rest)) = bytes.split_first() else {
        return Err(malformed());
    };
    if method > DuplicateMethod::NearDocument as u8 || rest.is_empty() || rest.len() % member != 0 {
        return Err(malformed());
    }
    Ok(rest
        .chunks(member)
        .map(|m| {
            let (id, checksum) = m.split_at(16);
            let id = Uuid::from_slice(id).unwrap_or_default();
            let hex: String = checksum.iter().map(|b| format!("{b:02x}")).collect();
            (FileId::from_uuid(id), hex)
        })
        .collect())
}

fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[derive(Default)]
pub struct DuplicatesQuery;

#[Object]
impl DuplicatesQuery {
    /// The caller's files grouped by duplicate content, the groups that free the most space first.
    /// `threshold` (0 to 1, default 0.98) is the least score a group needs; exact groups score 1,
    /// near-image groups 1 less the share of their perceptual hashes' 256 bits that differ (0.98:
    /// at most 5 bits, where copies of a photograph land and other pictures do not; see
    /// `BENCHMARKS.md`).
    /// `first` groups after the group whose `cursor` is `after`.
    async fn duplicates(
        &self,
        ctx: &Context<'_>,
        threshold: Option<f64>,
        #[graphql(default = 50)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<DuplicateGroup>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        let threshold = threshold.unwrap_or(DEFAULT_THRESHOLD);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(ApiError::BadInput("threshold must be between 0 and 1".into()).into());
        }
        if !(1..=MAX_FIRST).contains(&first) {
            return Err(ApiError::BadInput(format!("first must be between 1 and {MAX_FIRST}")).into());
        }
        let offset = offset_after("duplicates", "duplicates", after.as_deref())?;
        app.consistent(caller).await;
        let exact = app
            .reads
            .exact_duplicates(caller.user_id, i64::MAX, 0)
            .await
            .map_err(ApiError::from)?;
        let mut groups: Vec<DuplicateGroup> = exact.into_iter().map(exact_group).collect();
        let pictures = app.reads.pictures(caller.user_id).await.map_err(ApiError::from)?;
        groups.extend(near_image_groups(pictures, threshold));
        groups.extend(near_document_groups(app, caller.user_id, threshold).await?);
        groups.sort_by(|a, b| b.reclaimable_bytes.cmp(&a.reclaimable_bytes).then_with(|| a.id.0.cmp(&b.id.0)));
        Ok(groups
            .into_iter()
            .enumerate()
            .skip(offset)
            .take(usize::try_from(first).unwrap_or(50))
            .map(|(at, mut group)| {
                group.cursor = offset_cursor("duplicates", at);
                group
            })
            .collect())
    }
}

fn exact_group(files: Vec<FileRow>) -> DuplicateGroup {
    let size = files.iter().map(|f| f.size_bytes).max().unwrap_or(0);
    let providers: std::collections::BTreeSet<_> = files.iter().map(|f| f.provider_id).collect();
    let places = if providers.len() == 1 {
        "on one provider".to_owned()
    } else {
        format!("on {} providers", providers.len())
    };
    let checksum = files[0].checksum.clone();
    DuplicateGroup {
        id: group_id(DuplicateMethod::Exact, &files),
        method: DuplicateMethod::Exact,
        score: 1.0,
        reclaimable_bytes: size * (files.len() as i64 - 1),
        explanation: format!(
            "{} files {places} hold the same {} (BLAKE3 {}…); keeping one frees {}",
            files.len(),
            bytes(size),
            &checksum[..checksum.len().min(12)],
            bytes(size * (files.len() as i64 - 1))
        ),
        files: files.into_iter().map(File::from).collect(),
        cursor: String::new(),
    }
}

/// Documents compared for near-duplicate groups at most (each asks the vector index once).
const MAX_DOCUMENTS: usize = 5_000;
/// Neighbours each document asks the vector index for.
const NEIGHBOURS: usize = 5;

/// Groups of documents whose texts mean nearly the same (the cosine of their passages' mean
/// vectors at least `threshold`): edited copies, one text in two formats. Files with the same bytes
/// are left to the exact groups.
async fn near_document_groups(
    app: &crate::app::App,
    owner: cloudsync_domain::UserId,
    threshold: f64,
) -> Result<Vec<DuplicateGroup>, ApiError> {
    let index = app.vectors.index();
    let internal = |err: cloudsync_search::SearchError| ApiError::internal(&err);
    let mut documents: Vec<(cloudsync_domain::FileId, Vec<f32>)> = Vec::new();
    for file in index.files_with_vectors(owner, MAX_DOCUMENTS).await.map_err(internal)? {
        let vectors = index.vectors(owner, file).await.map_err(internal)?;
        // A name alone is not a document.
        if vectors.len() > 1
            && let Some(centroid) = cloudsync_search::meaning::centroid(&vectors)
        {
            documents.push((file, centroid));
        }
    }
    let at: std::collections::HashMap<cloudsync_domain::FileId, usize> =
        documents.iter().enumerate().map(|(i, (file, _))| (*file, i)).collect();
    let mut pairs = Vec::new();
    for (i, (file, centroid)) in documents.iter().enumerate() {
        for near in index.nearest(owner, centroid, NEIGHBOURS, Some(*file)).await.map_err(internal)? {
            let Some(&j) = at.get(&near.file_id) else { continue };
            let likeness = cloudsync_ml::cosine(centroid, &documents[j].1);
            if j > i && f64::from(likeness) >= threshold {
                pairs.push((i, j, likeness));
            }
        }
    }
    let mut groups = Vec::new();
    for (members, likeness) in near::join(documents.len(), pairs) {
        let mut files = Vec::new();
        for m in members {
            if let Some(row) = app.reads.file(owner, documents[m].0.as_uuid()).await.map_err(ApiError::from)? {
                files.push(row);
            }
        }
        let mut checksums: Vec<&str> = files.iter().map(|f| f.checksum.as_str()).collect();
        checksums.sort_unstable();
        checksums.dedup();
        if checksums.len() < 2 {
            continue;
        }
        let id = group_id(DuplicateMethod::NearDocument, &files);
        files.sort_by(|a, b| a.modified_at.cmp(&b.modified_at).then_with(|| a.path.cmp(&b.path)));
        let sizes: Vec<i64> = files.iter().map(|f| f.size_bytes).collect();
        let freed = sizes.iter().sum::<i64>() - sizes.iter().copied().max().unwrap_or(0);
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        groups.push(DuplicateGroup {
            id,
            method: DuplicateMethod::NearDocument,
            score: f64::from(likeness),
            reclaimable_bytes: freed,
            explanation: format!(
                "{} documents ({}) say nearly the same: the meanings of their texts are {:.3} alike (cosine of \
                 all-MiniLM-L6-v2 embeddings, 1 is the same), so they are edited copies or one text in several \
                 formats; keeping the largest frees {}",
                files.len(),
                names.join(", "),
                likeness,
                bytes(freed)
            ),
            files: files.into_iter().map(File::from).collect(),
            cursor: String::new(),
        });
    }
    Ok(groups)
}

/// Groups of pictures that are copies of one another (resized, recompressed, re-encoded) at
/// `threshold` or more alike: a score of 1 is the same hash, 0 every bit different.
fn near_image_groups(pictures: Vec<FileRow>, threshold: f64) -> Vec<DuplicateGroup> {
    let entries: Vec<Picture> = pictures
        .iter()
        .enumerate()
        .filter_map(|(index, row)| {
            let image = row.metadata.get("image")?;
            Some(Picture {
                index,
                checksum: row.checksum.clone(),
                phash: image["phash"].as_str()?.to_owned(),
                taken_at: image["takenAt"].as_str().map(str::to_owned),
            })
        })
        .collect();
    let bits = entries.first().map_or(0, |p| p.phash.len() * 4);
    // The most bits two copies may differ in at this threshold.
    // At most an eighth of the bits: beyond that every picture is near every other (and the pairs
    // alone would fill memory), and nothing found there is a copy.
    let reach = (((1.0 - threshold) * bits as f64).floor() as u32).min(u32::try_from(bits / 8).unwrap_or(u32::MAX));
    near_pictures(&entries, reach)
        .into_iter()
        .map(|group| {
            let mut files: Vec<&FileRow> = group.members.iter().map(|i| &pictures[*i]).collect();
            files.sort_by(|a, b| a.modified_at.cmp(&b.modified_at).then_with(|| a.path.cmp(&b.path)));
            let sizes: Vec<i64> = files.iter().map(|f| f.size_bytes).collect();
            let largest = sizes.iter().copied().max().unwrap_or(0);
            let freed = sizes.iter().sum::<i64>() - largest;
            let dimensions: std::collections::BTreeSet<String> = files
                .iter()
                .filter_map(|f| {
                    let image = f.metadata.get("image")?;
                    Some(format!("{}×{}", image["width"].as_i64()?, image["height"].as_i64()?))
                })
                .collect();
            let score = 1.0 - f64::from(group.distance) / f64::from(group.bits.max(1));
            DuplicateGroup {
                id: group_id(DuplicateMethod::NearImage, files.iter().copied()),
                method: DuplicateMethod::NearImage,
                score,
                reclaimable_bytes: freed,
                explanation: format!(
                    "{} pictures look the same: each one's perceptual hash is within {} of {} bits of another's, and no \
                     two record different moments of taking; sizes {} ({}), so they are copies resized or re-encoded; \
                     keeping the largest frees {}",
                    files.len(),
                    group.distance,
                    group.bits,
                    dimensions.into_iter().collect::<Vec<_>>().join(", "),
                    sizes.iter().map(|s| bytes(*s)).collect::<Vec<_>>().join(", "),
                    bytes(freed)
                ),
                files: files.into_iter().cloned().map(File::from).collect(),
                cursor: String::new(),
            }
        })
        .collect()
}

/// What `resolveDuplicate` does with a group.
#[derive(Enum, Copy, Clone, Debug, Eq, PartialEq)]
pub enum DuplicateAction {
    /// Keep the file modified last; delete the others.
    KeepNewest,
    /// Keep the file modified first; delete the others.
    KeepOldest,
    /// Keep the largest file (the oldest of equals); delete the others.
    KeepLargest,
    /// Keep the file `keep` names; delete the others.
    KeepOne,
    /// Move every file but `keep` (the oldest when not given) into `folder`, on its own provider.
    MoveOthers,
    /// Delete every file but `keep` (the oldest when not given).
    DeleteOthers,
}

/// A file deleted by `resolveDuplicate` whose content is kept: `restoreDeletedFile` writes it back.
#[derive(SimpleObject)]
pub struct DeletedFile {
    /// The file's id as it was (`restoreDeletedFile` takes it).
    id: ID,
    provider_id: ID,
    /// Where it was, on its provider.
    path: String,
    name: String,
    /// BLAKE3 of the content, lower-case hex.
    checksum: String,
    size_bytes: i64,
    modified_at: DateTime<Utc>,
    /// Why it was deleted: `DUPLICATE`.
    reason: String,
    deleted_at: DateTime<Utc>,
    /// After this the garbage collector lets the content go.
    restorable_until: DateTime<Utc>,
    /// Where `deletedFiles(…, after:)` continues after this file.
    cursor: String,
}

impl DeletedFile {
    fn new(row: DeletedFileRow, keep_days: u32, cursor: String) -> Self {
        Self {
            id: ID(row.file_id.to_string()),
            provider_id: ID(row.provider_id.to_string()),
            name: row.path.rsplit('/').next().unwrap_or_default().to_owned(),
            path: row.path,
            checksum: row.checksum,
            size_bytes: row.size_bytes,
            modified_at: row.modified_at,
            reason: row.reason,
            restorable_until: row.deleted_at + chrono::Duration::days(i64::from(keep_days)),
            deleted_at: row.deleted_at,
            cursor,
        }
    }
}

/// Where `restoreDeletedFile` wrote a file back.
#[derive(SimpleObject)]
pub struct RestoredFile {
    provider_id: ID,
    path: String,
    /// The scan started to index the file again (null when none could start now: the provider's
    /// next scan finds it).
    operation: Option<SyncOperation>,
}

#[derive(Default)]
pub struct DeletedFilesQuery;

#[Object]
impl DeletedFilesQuery {
    /// The caller's files deleted by `resolveDuplicate` that can still be restored, the latest
    /// deleted first.
    async fn deleted_files(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 50)] first: i32,
        after: Option<String>,
    ) -> async_graphql::Result<Vec<DeletedFile>> {
        let caller = caller_for(ctx, scope::FILES_READ)?;
        let app = app(ctx);
        if !(1..=MAX_FIRST).contains(&first) {
            return Err(ApiError::BadInput(format!("first must be between 1 and {MAX_FIRST}")).into());
        }
        let offset = offset_after("deleted", "deletedFiles", after.as_deref())?;
        app.consistent(caller).await;
        let rows = app
            .reads
            .deleted_files(caller.user_id, i64::from(first), i64::try_from(offset).unwrap_or(i64::MAX))
            .await
            .map_err(ApiError::from)?;
        let keep_days = app.commands.deleted_keep_days();
        Ok(rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| DeletedFile::new(row, keep_days, offset_cursor("deleted", offset + i)))
            .collect())
    }
}

#[derive(Default)]
pub struct DuplicatesMutation;

#[Object]
impl DuplicatesMutation {
    /// Resolves a group that `duplicates` listed: one file stays and the others are deleted from
    /// their providers (each kept first as a restorable copy in the chunk store: `deletedFiles`,
    /// `restoreDeletedFile`) or, with `MOVE_OTHERS`, moved into `folder`. Refused (`CONFLICT`), with
    /// nothing changed, when any file of the group changed or went since the group was listed.
    async fn resolve_duplicate(
        &self,
        ctx: &Context<'_>,
        group_id: ID,
        action: DuplicateAction,
        keep: Option<ID>,
        folder: Option<String>,
    ) -> async_graphql::Result<bool> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let members = group_members(&group_id)?;
        let keep = keep.map(|k| parse_id(&k, "keep").map(FileId::from_uuid)).transpose()?;
        let resolution = resolution(action, keep, folder.as_deref())?;
        let resolved = app
            .commands
            .resolve_duplicates(caller.user_id, &members, resolution)
            .await
            .map_err(ApiError::from)?;
        app.wrote(caller, resolved.position);
        Ok(true)
    }

    /// Writes a file that `resolveDuplicate` deleted back where it was, from its kept content, and
    /// scans its provider so it is indexed again. `CONFLICT` when something is at its path now.
    async fn restore_deleted_file(&self, ctx: &Context<'_>, file_id: ID) -> async_graphql::Result<RestoredFile> {
        let caller = caller_for(ctx, scope::FILES_WRITE)?;
        let app = app(ctx);
        let id = FileId::from_uuid(parse_id(&file_id, "fileId")?);
        let (provider, path, scan, position) = app
            .commands
            .restore_deleted_file(caller.user_id, id)
            .await
            .map_err(ApiError::from)?;
        let operation = match scan {
            Some(job) => Some(super::sync::SyncOperation::started(app, caller, job, position).await?),
            None => {
                app.wrote(caller, position);
                None
            }
        };
        Ok(RestoredFile {
            provider_id: ID(provider.to_string()),
            path: path.as_str().to_owned(),
            operation,
        })
    }
}

/// The command's resolution for `action`, with what it needs.
fn resolution(action: DuplicateAction, keep: Option<FileId>, folder: Option<&str>) -> ApiResult<Resolution> {
    if folder.is_some() && action != DuplicateAction::MoveOthers {
        return Err(ApiError::BadInput("folder is only for MOVE_OTHERS".into()));
    }
    let unwanted_keep = || ApiError::BadInput("keep is only for KEEP_ONE, MOVE_OTHERS and DELETE_OTHERS".into());
    Ok(match action {
        DuplicateAction::KeepNewest | DuplicateAction::KeepOldest | DuplicateAction::KeepLargest if keep.is_some() => {
            return Err(unwanted_keep());
        }
        DuplicateAction::KeepNewest => Resolution::KeepNewest,
        DuplicateAction::KeepOldest => Resolution::KeepOldest,
        DuplicateAction::KeepLargest => Resolution::KeepLargest,
        DuplicateAction::KeepOne => Resolution::KeepOne(keep.ok_or_else(|| ApiError::BadInput("KEEP_ONE needs keep".into()))?),
        DuplicateAction::MoveOthers => Resolution::MoveOthers {
            keep,
            folder: parse_path(folder.ok_or_else(|| ApiError::BadInput("MOVE_OTHERS needs folder".into()))?)?,
        },
        DuplicateAction::DeleteOthers => Resolution::DeleteOthers { keep },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_id_carries_its_files_and_their_contents_in_any_order() {
        let (ca, cb) = ("ab".repeat(32), "0f".repeat(32));
        let a = (Uuid::from_u128(1), ca.as_str());
        let b = (Uuid::from_u128(2), cb.as_str());
        let id = members_id(DuplicateMethod::NearImage, vec![b, a]);
        assert_eq!(id, members_id(DuplicateMethod::NearImage, vec![a, b]));
        assert_ne!(id, members_id(DuplicateMethod::Exact, vec![a, b]));
        let members = group_members(&id).expect("a group id");
        assert_eq!(
            members,
            vec![(FileId::from_uuid(a.0), "ab".repeat(16)), (FileId::from_uuid(b.0), "0f".repeat(16))]
        );
        for bad in ["", "dup1_", "dup1_AAAA", "exact:abc", &format!("{}A", id.0)] {
            assert!(group_members(&ID(bad.to_owned())).is_err(), "{bad:?}");
        }
    }
}
