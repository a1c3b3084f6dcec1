//! What the content pipeline learns by reading a version of a file.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{FileId, ProviderId, UserId};

/// How a read of a file's content for its text ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractionOutcome {
    /// Text was extracted (perhaps cut at the configured size: see `TextRef::truncated`).
    Extracted,
    /// The file holds no text this extractor reads (an image, an unknown format).
    Unsupported,
    /// The file could not be read within the configured limits, or is broken; `reason` says why.
    Failed,
}

/// Where an extracted text is kept: sealed with the owner's data key in the chunk store, so
/// erasing the account makes it unreadable and garbage collection can let it go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextRef {
    /// The chunk store's id of the sealed text.
    pub reference: String,
    /// The text's length in bytes (UTF-8).
    pub bytes: u64,
    /// Whether the text was cut at the configured limit.
    pub truncated: bool,
}

/// The content pipeline read the version `checksum` of a file and extracted its text (or could
/// not). A rebuild of the search index reads the text this names, never the file again; the file is
/// read again only when its content or the extractor's version changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileContentExtracted {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    /// BLAKE3 of the version read.
    pub checksum: String,
    pub extractor: String,
    pub extractor_version: u32,
    pub outcome: ExtractionOutcome,
    /// Why nothing (or not all) was extracted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextRef>,
    /// ISO 639-1 code of the text's language, where it was detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub at: DateTime<Utc>,
}
