//! Validated value types. Parse, don't validate: once one of these exists, it is valid.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

/// Why a raw value was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    #[error("malformed id {0:?}")]
    MalformedId(String),
    #[error("invalid email address: {0}")]
    InvalidEmail(&'static str),
    #[error("invalid path: {0}")]
    InvalidPath(&'static str),
    #[error("invalid schedule {0:?}: {1}")]
    InvalidSchedule(String, String),
    #[error("unknown provider kind {0:?} (known: local, s3, webdav, sftp, azblob, gdrive, dropbox, onedrive)")]
    UnknownProviderKind(String),
}

/// A syntactically valid email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// # Errors
    /// [`ValueError::InvalidEmail`] when the text is not a plausible address.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err(ValueError::InvalidEmail("it is empty"));
        }
        if email.len() > 254 {
            return Err(ValueError::InvalidEmail("it is longer than 254 characters"));
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ValueError::InvalidEmail("it contains whitespace or control characters"));
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err(ValueError::InvalidEmail("it has no '@'"));
        };
        if local.is_empty() || domain.contains('@') {
            return Err(ValueError::InvalidEmail("it needs exactly one '@' after a non-empty local part"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
            return Err(ValueError::InvalidEmail("its domain is not a dotted host name"));
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A path inside a provider, relative to the provider's root, normalised to `a/b/c`.
///
/// The empty path is the root itself. A leading `/` means "from the provider's root", never the host's
/// root, so no value of this type can name anything outside the root: `..`, NUL, control characters,
/// backslashes and drive prefixes are refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProviderPath(String);

impl ProviderPath {
    pub const MAX_LEN: usize = 4096;
    pub const MAX_COMPONENT_LEN: usize = 255;

    /// # Errors
    /// [`ValueError::InvalidPath`] when the path could escape the root or is not representable.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.len() > Self::MAX_LEN {
            return Err(ValueError::InvalidPath("it is longer than 4096 bytes"));
        }
        if raw.contains('\0') {
            return Err(ValueError::InvalidPath("it contains a NUL byte"));
        }
        if raw.chars().any(char::is_control) {
            return Err(ValueError::InvalidPath("it contains control characters"));
        }
        if raw.contains('\\') {
            return Err(ValueError::InvalidPath("it contains a backslash; use '/' as the separator"));
        }
        let bytes = raw.as_bytes();
        if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
            return Err(ValueError::InvalidPath("it starts with a drive letter"));
        }
        let mut parts = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(ValueError::InvalidPath("it contains a '..' component")),
                _ if part.len() > Self::MAX_COMPONENT_LEN => {
                    return Err(ValueError::InvalidPath("a component is longer than 255 bytes"));
                }
                _ => parts.push(part),
            }
        }
        Ok(Self(parts.join("/")))
    }

    /// The provider's root.
    pub fn root() -> Self {
        Self(String::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last component; empty for the root.
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or_default()
    }

    /// The containing folder; the root's parent is the root.
    pub fn parent(&self) -> Self {
        match self.0.rsplit_once('/') {
            Some((parent, _)) => Self(parent.to_owned()),
            None => Self::root(),
        }
    }

    /// `self/name` where `name` is one valid component.
    ///
    /// # Errors
    /// When `name` is not a single valid component.
    pub fn join(&self, name: &str) -> Result<Self, ValueError> {
        let child = Self::parse(name)?;
        if child.is_root() || child.0.contains('/') {
            return Err(ValueError::InvalidPath("a file name must be one non-empty component"));
        }
        Ok(if self.is_root() {
            child
        } else {
            Self(format!("{}/{}", self.0, child.0))
        })
    }

    /// Whether `self` is `folder` or lies below it.
    pub fn is_within(&self, folder: &ProviderPath) -> bool {
        folder.is_root() || self.0 == folder.0 || self.0.starts_with(&format!("{}/", folder.0))
    }

    /// `folder/self`: this relative path placed below `folder`.
    pub fn under(&self, folder: &ProviderPath) -> Self {
        match (folder.is_root(), self.is_root()) {
            (true, _) => self.clone(),
            (false, true) => folder.clone(),
            (false, false) => Self(format!("{}/{}", folder.0, self.0)),
        }
    }

    /// This path relative to `folder`, when it lies below it (`None` for the folder itself and for
    /// paths outside it).
    pub fn relative_to(&self, folder: &ProviderPath) -> Option<Self> {
        if folder.is_root() {
            return (!self.is_root()).then(|| self.clone());
        }
        self.0
            .strip_prefix(&folder.0)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| Self(rest.to_owned()))
    }

    /// The components, for joining onto a host path.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|part| !part.is_empty())
    }
}

impl fmt::Display for ProviderPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ProviderPath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A cron expression (5 fields, or 6 with seconds first) for when to rescan a provider.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ScanSchedule(String);

impl ScanSchedule {
    /// # Errors
    /// [`ValueError::InvalidSchedule`] when the expression does not parse.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let raw = raw.trim();
        if raw.len() > 200 {
            return Err(ValueError::InvalidSchedule(
                raw.chars().take(64).collect(),
                "longer than 200 characters".into(),
            ));
        }
        raw.parse::<croner::Cron>()
            .map_err(|err| ValueError::InvalidSchedule(raw.to_owned(), err.to_string()))?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first time after `after` that the schedule names.
    pub fn next_after(&self, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        self.0.parse::<croner::Cron>().ok()?.find_next_occurrence(&after, false).ok()
    }
}

impl<'de> Deserialize<'de> for ScanSchedule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// The kinds of storage a provider connection can reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    S3,
    Webdav,
    Sftp,
    Azblob,
    Gdrive,
    Dropbox,
    Onedrive,
}

impl ProviderKind {
    /// # Errors
    /// [`ValueError::UnknownProviderKind`] for a kind CloudSync cannot connect yet.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "s3" => Ok(Self::S3),
            "webdav" => Ok(Self::Webdav),
            "sftp" => Ok(Self::Sftp),
            "azblob" => Ok(Self::Azblob),
            "gdrive" => Ok(Self::Gdrive),
            "dropbox" => Ok(Self::Dropbox),
            "onedrive" => Ok(Self::Onedrive),
            _ => Err(ValueError::UnknownProviderKind(raw.chars().take(64).collect())),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::S3 => "s3",
            Self::Webdav => "webdav",
            Self::Sftp => "sftp",
            Self::Azblob => "azblob",
            Self::Gdrive => "gdrive",
            Self::Dropbox => "dropbox",
            Self::Onedrive => "onedrive",
        }
    }
}

/// The MIME type CloudSync records for a file name.
pub fn guess_mime(path: &str) -> String {
    mime_guess::from_path(path).first_or_octet_stream().essence_str().to_owned()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.ORG ").map(|e| e.to_string()),
            Ok("ada@example.org".into())
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "a b@example.org",
            "a@b@example.org",
            "ada@.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn paths_are_normalised() {
        let p = ProviderPath::parse("/Photos//2024/./beach.jpg").expect("valid");
        assert_eq!(p.as_str(), "Photos/2024/beach.jpg");
        assert_eq!(p.name(), "beach.jpg");
        let folder = ProviderPath::parse("photos").expect("valid");
        let inner = ProviderPath::parse("2026/beach.jpg").expect("valid");
        assert_eq!(inner.under(&folder).as_str(), "photos/2026/beach.jpg");
        assert_eq!(inner.under(&ProviderPath::root()), inner);
        assert_eq!(inner.under(&folder).relative_to(&folder), Some(inner.clone()));
        assert_eq!(folder.relative_to(&folder), None);
        assert_eq!(ProviderPath::parse("photosynth/a").expect("valid").relative_to(&folder), None);
        assert_eq!(inner.relative_to(&ProviderPath::root()), Some(inner));
        assert_eq!(p.parent().as_str(), "Photos/2024");
        assert!(ProviderPath::parse("/").expect("root").is_root());
        assert_eq!(ProviderPath::parse("/etc/passwd").expect("valid").as_str(), "etc/passwd");
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in ["../x", "a/../../b", "..", "a/\0b", "C:\\Windows", "c:/x", "a\\b", "a/\nb"] {
            assert!(ProviderPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(ProviderPath::parse(&"a/".repeat(3000)).is_err());
        assert!(ProviderPath::root().join("a/b").is_err());
        assert!(ProviderPath::root().join("..").is_err());
    }

    #[test]
    fn within_respects_component_boundaries() {
        let folder = ProviderPath::parse("docs").expect("valid");
        assert!(ProviderPath::parse("docs/a.txt").expect("valid").is_within(&folder));
        assert!(!ProviderPath::parse("docs2/a.txt").expect("valid").is_within(&folder));
        assert!(folder.is_within(&ProviderPath::root()));
    }

    proptest! {
        #[test]
        fn parsed_paths_never_escape(raw in "[a-z./\\\\\\x00]{0,40}") {
            if let Ok(path) = ProviderPath::parse(&raw) {
                prop_assert!(path.components().all(|c| c != ".." && c != "." && !c.is_empty()));
                prop_assert!(!path.as_str().starts_with('/'));
                prop_assert!(!path.as_str().contains('\0') && !path.as_str().contains('\\'));
                // Parsing is idempotent.
                prop_assert_eq!(ProviderPath::parse(path.as_str()).ok(), Some(path.clone()));
            }
        }
    }

    #[test]
    fn schedules_are_cron_expressions() {
        let every_five = ScanSchedule::parse("*/5 * * * *").expect("five fields");
        let at = chrono::DateTime::parse_from_rfc3339("2026-01-01T10:02:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        assert_eq!(
            every_five.next_after(at).map(|t| t.to_rfc3339()),
            Some("2026-01-01T10:05:00+00:00".into())
        );
        assert!(ScanSchedule::parse("*/10 * * * * *").is_ok(), "six fields with seconds");
        assert!(ScanSchedule::parse("every tuesday").is_err());
        assert!(ScanSchedule::parse("61 * * * *").is_err());
    }
}
