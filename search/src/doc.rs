//! What the index keeps of one file, and the derived values both backends facet on.

use chrono::{DateTime, Datelike, Utc};
use cloudsync_domain::{FileId, ProviderId, UserId};
use serde::{Deserialize, Serialize};

/// The text of a file's content as the pipeline extracted it, for the version with `checksum`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub checksum: String,
    pub text: String,
    /// ISO 639-1 code of the detected language, if any was detected.
    pub language: Option<String>,
}

/// One file as the index holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchDoc {
    pub file_id: FileId,
    pub owner_id: UserId,
    pub provider_id: ProviderId,
    /// Absolute within its provider, `/`-separated.
    pub path: String,
    pub size: u64,
    pub modified_at: DateTime<Utc>,
    pub mime_type: String,
    /// BLAKE3 of the version listed (empty when the listing did not read it).
    pub checksum: String,
    pub content: Option<Content>,
    /// What the content pipeline saw in a picture, for the version with its `checksum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub picture: Option<Picture>,
}

/// What the image reader and the image classifier made of a version of a picture.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Picture {
    pub checksum: String,
    /// The classifier's labels, the likeliest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// EXIF `DateTimeOriginal`, the camera's local time (`YYYY-MM-DDTHH:MM:SS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken_at: Option<String>,
}

impl SearchDoc {
    /// The last part of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The folders above the file (`/a/b` for `/a/b/c.txt`; empty at the root).
    pub fn folder(&self) -> &str {
        match self.path.rfind('/') {
            Some(at) => &self.path[..at],
            None => "",
        }
    }

    /// Lower-case extension without its dot (empty when there is none).
    pub fn extension(&self) -> String {
        extension_of(self.name())
    }

    pub fn kind(&self) -> &'static str {
        kind_of(&self.mime_type, &self.extension())
    }

    pub fn year(&self) -> String {
        self.modified_at.year().to_string()
    }

    pub fn language(&self) -> &str {
        self.content.as_ref().and_then(|c| c.language.as_deref()).unwrap_or("")
    }

    /// What was seen in the picture, if it is of the version the index lists.
    pub fn picture(&self) -> Option<&Picture> {
        self.picture.as_ref().filter(|p| p.checksum == self.checksum)
    }

    /// The picture's labels (empty for other files).
    pub fn labels(&self) -> &[String] {
        self.picture().map_or(&[], |p| p.labels.as_slice())
    }

    /// When the picture was taken, its EXIF time read as UTC, in Unix seconds.
    pub fn taken(&self) -> Option<i64> {
        let at = self.picture()?.taken_at.as_deref()?;
        chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S")
            .ok()
            .map(|t| t.and_utc().timestamp())
    }

    /// The extracted text, if it belongs to the version the index lists.
    pub fn text(&self) -> Option<&str> {
        self.content
            .as_ref()
            .filter(|c| c.checksum == self.checksum)
            .map(|c| c.text.as_str())
    }
}

/// The lower-case extension of a file name, without its dot (empty when there is none; a leading
/// dot starts a hidden name, not an extension).
pub fn extension_of(name: &str) -> String {
    match name.rfind('.') {
        Some(at) if at > 0 && at + 1 < name.len() => name[at + 1..].to_lowercase(),
        _ => String::new(),
    }
}

/// What sort of file it is, for the `kinds` facet: `document`, `spreadsheet`, `presentation`,
/// `image`, `video`, `audio`, `archive`, `code`, `text` or `other`.
pub fn kind_of(mime: &str, ext: &str) -> &'static str {
    match ext {
        "pdf" | "doc" | "docx" | "odt" | "rtf" | "epub" | "pages" => return "document",
        "xls" | "xlsx" | "ods" | "csv" | "tsv" | "numbers" => return "spreadsheet",
        "ppt" | "pptx" | "odp" | "key" => return "presentation",
        "zip" | "tar" | "gz" | "tgz" | "bz2" | "xz" | "zst" | "7z" | "rar" => return "archive",
        "rs" | "py" | "js" | "ts" | "tsx" | "jsx" | "go" | "java" | "c" | "h" | "cc" | "cpp" | "hpp" | "cs" | "rb" | "php" | "swift"
        | "kt" | "scala" | "sh" | "bash" | "sql" | "toml" | "yaml" | "yml" | "json" | "xml" | "css" | "scss" | "lua" | "pl" | "hs"
        | "ex" | "exs" | "erl" | "clj" | "dart" | "r" | "m" | "vue" | "svelte" => return "code",
        "txt" | "md" | "markdown" | "rst" | "org" | "tex" | "log" | "html" | "htm" => return "text",
        _ => {}
    }
    match mime.split('/').next().unwrap_or("") {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        "text" => "text",
        _ => "other",
    }
}

/// The `sizeBuckets` facet's value of a size.
pub fn size_bucket(size: u64) -> &'static str {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    match size {
        s if s < 10 * KIB => "0-10KiB",
        s if s < MIB => "10KiB-1MiB",
        s if s < 100 * MIB => "1MiB-100MiB",
        s if s < 1024 * MIB => "100MiB-1GiB",
        _ => "1GiB+",
    }
}

/// The folders above a path and the path itself, without leading `/` (paths are relative to their
/// provider's root): `a`, `a/b`, `a/b/c.txt`.
pub(crate) fn ancestors(path: &str) -> Vec<String> {
    let path = path.trim_matches('/');
    let mut out: Vec<String> = path.match_indices('/').map(|(at, _)| path[..at].to_owned()).collect();
    out.push(path.to_owned());
    out
}

/// A `pathPrefix`/`path:` filter as the folder it names (`/Taxes/` and `Taxes` alike).
pub(crate) fn folder_filter(prefix: &str) -> String {
    prefix.trim_matches('/').to_owned()
}

/// Largest first, ties by value; empty values (no language) left out.
pub(crate) fn ranked(counts: std::collections::HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = counts.into_iter().filter(|(v, _)| !v.is_empty()).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(path: &str) -> SearchDoc {
        SearchDoc {
            file_id: FileId::from_uuid(uuid::Uuid::new_v4()),
            owner_id: UserId::from_uuid(uuid::Uuid::new_v4()),
            provider_id: ProviderId::from_uuid(uuid::Uuid::new_v4()),
            path: path.into(),
            size: 1,
            modified_at: Utc::now(),
            mime_type: "application/octet-stream".into(),
            checksum: String::new(),
            content: None,
            picture: None,
        }
    }

    #[test]
    fn names_folders_and_extensions_come_from_the_path() {
        let d = doc("/Tax/2024/Invoice-March.PDF");
        assert_eq!(
            (d.name(), d.folder(), d.extension().as_str(), d.kind()),
            ("Invoice-March.PDF", "/Tax/2024", "pdf", "document")
        );
        assert_eq!(doc("/.bashrc").extension(), "");
        assert_eq!(doc("/notes").folder(), "");
        assert_eq!(
            (size_bucket(0), size_bucket(2 << 20), size_bucket(5 << 30)),
            ("0-10KiB", "1MiB-100MiB", "1GiB+")
        );
    }
}
