//! What happens to provider connections and to the files indexed on them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{FileId, ProviderId, SyncJobId, UserId};
use crate::values::{ProviderPath, ScanSchedule};

use super::SealedSecret;

/// An OAuth provider's tokens were renewed with its refresh token: the new tokens replace the old.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderCredentialsRenewed {
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub secrets: SealedSecret,
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// When the provider is rescanned on its own: on a cron schedule, and/or as soon as its files change
/// (real time, where the provider can report changes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderScheduleSet {
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub schedule: Option<ScanSchedule>,
    pub realtime: bool,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderDisconnected {
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub disconnected_at: DateTime<Utc>,
}

/// Schema version 2. Version 1 carried `size` and `mtime` (Unix seconds) and no MIME type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDiscovered {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub size_bytes: u64,
    pub modified_at: DateTime<Utc>,
    pub mime_type: String,
    /// BLAKE3 of the content, lower-case hex.
    pub checksum: String,
    /// The scan job that found it, if any.
    pub job_id: Option<SyncJobId>,
    /// The provider's own version tag (ETag, or size and mtime), for change detection on rescans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

/// A rescan found the file's content or metadata changed in place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChanged {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub size_bytes: u64,
    pub modified_at: DateTime<Utc>,
    pub checksum: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub job_id: Option<SyncJobId>,
}

/// A rescan no longer found the file on its provider (removed outside CloudSync).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRemoved {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub job_id: Option<SyncJobId>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMoved {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub from: ProviderPath,
    pub to: ProviderPath,
    pub moved_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub deleted_at: DateTime<Utc>,
    /// The content as it was, kept in the chunk store so the file can be restored (by
    /// `resolveDuplicate`); absent when nothing was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<KeptContent>,
}

/// A deleted file's content, kept whole in the chunk store until its retention ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptContent {
    /// The chunk store's manifest of the content.
    pub manifest: String,
    /// BLAKE3 of the content, lower-case hex.
    pub checksum: String,
    pub size_bytes: u64,
    pub modified_at: DateTime<Utc>,
    /// Why it was deleted, in a word: `DUPLICATE`.
    pub reason: String,
}

/// A deleted file's kept content was written back to its provider (which a scan then finds as a
/// file again); the kept copy is let go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeletedFileRestored {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    /// Where the content was written.
    pub path: ProviderPath,
    pub restored_at: DateTime<Utc>,
}

/// A deleted file's kept content fell out of its retention and is let go: the file can no longer
/// be restored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptContentReleased {
    pub file_id: FileId,
    pub owner_id: UserId,
    pub released_at: DateTime<Utc>,
}
