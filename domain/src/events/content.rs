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

/// How a model's run over a version of a file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisOutcome {
    Analyzed,
    /// The model could not run on the file (broken or hostile input, a limit); `reason` says why.
    Failed,
}

/// Where a file's vectors are kept: sealed with the owner's data key in the chunk store, like its
/// extracted text (a vector of a text says much of the text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorsRef {
    /// The chunk store's id of the sealed vectors.
    pub reference: String,
    /// How many vectors (the name's first, then one per passage of the text).
    pub count: u32,
    pub dims: u32,
}

/// What the image reader learnt of a picture. The position where it was taken is personal data and
/// is kept sealed with the owner's key; the rest is of the picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageFacts {
    pub width: u32,
    pub height: u32,
    /// Perceptual hash (DCT of the 32×32 grey picture, 16×16 = 256 bits), lower-case hex: close
    /// pictures have hashes a few bits apart.
    pub phash: String,
    /// EXIF `DateTimeOriginal` as the camera's local time, `YYYY-MM-DDTHH:MM:SS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
    /// EXIF `Make` and `Model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    /// EXIF GPS latitude and longitude (degrees, as JSON `[lat, lon]`), sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gps: Option<crate::events::SealedSecret>,
}

/// A model ran over the version `checksum` of a file (and, for models that read the name, over the
/// name as it was at `name_revision`). A rebuild takes the results from here, never from the model;
/// the model runs again only when the file's content (or name) or the model's version changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAnalyzed {
    pub file_id: FileId,
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    /// BLAKE3 of the version analysed.
    pub checksum: String,
    pub model: String,
    pub model_version: u32,
    /// How many times the file had been renamed when its name was read (see `File::name_revision`).
    #[serde(default)]
    pub name_revision: u32,
    pub outcome: AnalysisOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Text embeddings: the name's vector, then one per passage of the extracted text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vectors: Option<VectorsRef>,
    /// The image reader's facts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageFacts>,
    /// An image classifier's likeliest classes, the likeliest first (sealed with the paths, when
    /// paths are sealed: they tell what a picture shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<ImageLabel>>,
    pub at: DateTime<Utc>,
}

impl FileAnalyzed {
    /// A successful run of `model` at `version` over the version of a file with `checksum`, as yet
    /// without its results.
    pub fn of(
        facts: &crate::events::FileDiscovered,
        checksum: &str,
        model: &str,
        version: u32,
        name_revision: u32,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            file_id: facts.file_id,
            provider_id: facts.provider_id,
            owner_id: facts.owner_id,
            checksum: checksum.to_owned(),
            model: model.to_owned(),
            model_version: version,
            name_revision,
            outcome: AnalysisOutcome::Analyzed,
            reason: None,
            vectors: None,
            image: None,
            labels: None,
            at,
        }
    }
}

/// A class an image classifier saw in a picture, with its probability (0 to 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageLabel {
    pub label: String,
    pub score: f32,
}
