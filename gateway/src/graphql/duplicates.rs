//! `duplicates`: groups of the caller's files that hold the same content, across all of their
//! providers, with what resolving each would free and why its files were grouped. Exact groups
//! (same BLAKE3) come from the read model's `files`; near groups (images, documents) join them with
//! the analyses of the content pipeline.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cloudsync_identity::access::scope;

use super::files::File;
use super::{app, caller_for, offset_after, offset_cursor};
use crate::errors::ApiError;

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
    /// Stable while the group's content is: `exact:<checksum>` for exact groups (opaque).
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

fn group_id(checksum: &str) -> ID {
    ID(URL_SAFE_NO_PAD.encode(format!("exact:{checksum}")))
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
    /// `threshold` (0 to 1, default 0.9) is the least score a group needs; exact groups score 1.
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
        let threshold = threshold.unwrap_or(0.9);
        if !(0.0..=1.0).contains(&threshold) {
            return Err(ApiError::BadInput("threshold must be between 0 and 1".into()).into());
        }
        if !(1..=MAX_FIRST).contains(&first) {
            return Err(ApiError::BadInput(format!("first must be between 1 and {MAX_FIRST}")).into());
        }
        let offset = offset_after("duplicates", "duplicates", after.as_deref())?;
        app.consistent(caller).await;
        let groups = app
            .reads
            .exact_duplicates(caller.user_id, i64::from(first), i64::try_from(offset).unwrap_or(i64::MAX))
            .await
            .map_err(ApiError::from)?;
        Ok(groups
            .into_iter()
            .enumerate()
            .map(|(at, files)| {
                let size = files.iter().map(|f| f.size_bytes).max().unwrap_or(0);
                let providers: std::collections::BTreeSet<_> = files.iter().map(|f| f.provider_id).collect();
                let places = if providers.len() == 1 {
                    "on one provider".to_owned()
                } else {
                    format!("on {} providers", providers.len())
                };
                let checksum = &files[0].checksum;
                DuplicateGroup {
                    id: group_id(checksum),
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
                    cursor: offset_cursor("duplicates", offset + at),
                }
            })
            .collect())
    }
}
