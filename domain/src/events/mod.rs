//! Every fact CloudSync records, with a stable type name and a schema version, and the upcasters that
//! bring old versions up to date when they are read.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::ids::UserId;

mod content;
mod provider;
mod sync;
mod user;

pub use crate::values::guess_mime;
pub use content::*;
pub use provider::*;
pub use sync::*;
pub use user::*;

/// Personal data inside an event: sealed with its owner's data key, so that destroying the key
/// (erasing the account) leaves the event in the log and the data unreadable; or in the clear, as
/// events written before sealing were. `T` is what it holds in the clear (sealed: its JSON, or for
/// text the text itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Sealable<T> {
    Sealed { sealed: SealedSecret },
    Clear(T),
}

/// Personal text (an address, a name).
pub type Personal = Sealable<String>;

impl From<&str> for Personal {
    fn from(text: &str) -> Self {
        Self::Clear(text.to_owned())
    }
}

impl From<Value> for Sealable<Value> {
    fn from(value: Value) -> Self {
        Self::Clear(value)
    }
}

impl Sealable<Value> {
    /// How a read model's JSON column keeps it: the clear value, or `{"sealed": …}` for the reader
    /// to open (read back with `serde_json::from_value`).
    pub fn to_json(&self) -> Value {
        match self {
            Self::Clear(value) => value.clone(),
            Self::Sealed { sealed } => serde_json::json!({ "sealed": sealed }),
        }
    }
}

impl Personal {
    /// How a read model keeps it: the clear text, or `sealed:<JSON>` for the reader to open.
    pub fn to_column(&self) -> String {
        match self {
            Self::Clear(text) => text.clone(),
            Self::Sealed { sealed } => format!("sealed:{}", serde_json::to_string(sealed).unwrap_or_default()),
        }
    }

    /// The inverse of [`Personal::to_column`].
    pub fn from_column(column: &str) -> Self {
        match column.strip_prefix("sealed:").and_then(|json| serde_json::from_str(json).ok()) {
            Some(sealed) => Self::Sealed { sealed },
            None => Self::Clear(column.to_owned()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: UserId,
    /// The address, sealed with the user's data key.
    pub email: Personal,
    pub password_hash: String,
    pub registered_at: DateTime<Utc>,
}

/// Ciphertext that only the owner's data key opens (AES-256-GCM, base64 nonce and ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub nonce: String,
    pub ciphertext: String,
}

/// Every event, internally tagged by its stable type name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEvent {
    UserRegistered(UserRegistered),
    EmailClaimed(EmailClaimed),
    UserPasswordChanged(UserPasswordChanged),
    PasswordResetRequested(PasswordResetRequested),
    TotpEnrollmentBegun(TotpEnrollmentBegun),
    TotpEnabled(TotpEnabled),
    TotpDisabled(TotpDisabled),
    MfaCodeUsed(MfaCodeUsed),
    SmsFactorEnabled(SmsFactorEnabled),
    SmsFactorDisabled(SmsFactorDisabled),
    UserRoleGranted(UserRoleGranted),
    UserRoleRevoked(UserRoleRevoked),
    ApiTokenCreated(ApiTokenCreated),
    ApiTokenRevoked(ApiTokenRevoked),
    UserPlanSet(UserPlanSet),
    IpAllowlistSet(IpAllowlistSet),
    ExternalIdentityLinked(ExternalIdentityLinked),
    UserDeleted(UserDeleted),
    EmailReleased(EmailReleased),
    PasskeyRegistered(PasskeyRegistered),
    PasskeyUpdated(PasskeyUpdated),
    PasskeyRemoved(PasskeyRemoved),
    ProviderConnected(ProviderConnected),
    ProviderDisconnected(ProviderDisconnected),
    ProviderScheduleSet(ProviderScheduleSet),
    ProviderCredentialsRenewed(ProviderCredentialsRenewed),
    FileDiscovered(FileDiscovered),
    FileMoved(FileMoved),
    FileDeleted(FileDeleted),
    DeletedFileRestored(DeletedFileRestored),
    KeptContentReleased(KeptContentReleased),
    FileChanged(FileChanged),
    FileRemoved(FileRemoved),
    SyncJobCreated(SyncJobCreated),
    SyncJobPhaseEntered(SyncJobPhaseEntered),
    SyncJobProgressed(SyncJobProgressed),
    SyncJobPaused(SyncJobFinished),
    SyncJobResumed(SyncJobFinished),
    SyncJobCompleted(SyncJobFinished),
    SyncJobFailed(SyncJobFinished),
    SyncJobCancelled(SyncJobFinished),
    SyncPairCreated(SyncPairCreated),
    SyncDecisionRecorded(SyncDecisionRecorded),
    SyncBaseAdvanced(SyncBaseAdvanced),
    SyncRunRequested(SyncRunRequested),
    SyncJobHeld(SyncJobHeld),
    SyncJobApproved(SyncJobFinished),
    SyncJobRetrying(SyncJobRetrying),
    SyncConflictResolved(SyncConflictResolved),
    FileVersionKept(FileVersionKept),
    FilePatchStarted(FilePatchStarted),
    FilePatchSettled(FilePatchSettled),
    FileVersionsPruned(FileVersionsPruned),
    FileVersionRestored(FileVersionRestored),
    FileContentExtracted(FileContentExtracted),
    FileAnalyzed(FileAnalyzed),
}

/// An event as it is stored: type name, schema version and payload without the type tag.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
}

#[derive(Debug, Error)]
pub enum DecodeError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("{event_type} has schema version {version}, newer than this build knows ({known})")]
    FutureVersion { event_type: String, version: i32, known: i32 },
    #[error("malformed {event_type} v{version} payload: {source}")]
    Malformed {
        event_type: String,
        version: i32,
        source: serde_json::Error,
    },
}

impl DomainEvent {
    /// The current schema version of an event type.
    pub fn schema_version_of(event_type: &str) -> Option<i32> {
        match event_type {
            "FileDiscovered" => Some(2),
            "UserRegistered"
            | "UserPasswordChanged"
            | "PasswordResetRequested"
            | "TotpEnrollmentBegun"
            | "TotpEnabled"
            | "TotpDisabled"
            | "MfaCodeUsed"
            | "SmsFactorEnabled"
            | "SmsFactorDisabled"
            | "UserRoleGranted"
            | "UserRoleRevoked"
            | "ApiTokenCreated"
            | "ApiTokenRevoked"
            | "UserPlanSet"
            | "IpAllowlistSet"
            | "ExternalIdentityLinked"
            | "UserDeleted"
            | "EmailReleased"
            | "PasskeyRegistered"
            | "PasskeyUpdated"
            | "PasskeyRemoved"
            | "EmailClaimed"
            | "ProviderConnected"
            | "ProviderDisconnected"
            | "ProviderScheduleSet"
            | "ProviderCredentialsRenewed"
            | "FileMoved"
            | "FileDeleted"
            | "DeletedFileRestored"
            | "KeptContentReleased"
            | "FileChanged"
            | "FileRemoved"
            | "SyncJobCreated"
            | "SyncJobPhaseEntered"
            | "SyncJobProgressed"
            | "SyncJobPaused"
            | "SyncJobResumed"
            | "SyncJobCompleted"
            | "SyncJobFailed"
            | "SyncJobCancelled"
            | "SyncPairCreated"
            | "SyncDecisionRecorded"
            | "SyncBaseAdvanced"
            | "SyncRunRequested"
            | "SyncJobHeld"
            | "SyncJobApproved"
            | "SyncJobRetrying"
            | "SyncConflictResolved"
            | "FileVersionKept"
            | "FilePatchStarted"
            | "FilePatchSettled"
            | "FileVersionsPruned"
            | "FileVersionRestored"
            | "FileContentExtracted"
            | "FileAnalyzed" => Some(1),
            _ => None,
        }
    }

    pub fn encode(&self) -> EncodedEvent {
        // Serialising these plain structs cannot fail: every field is a string, number, map or timestamp.
        let mut payload = serde_json::to_value(self).unwrap_or(Value::Null);
        let event_type = match payload.as_object_mut().and_then(|o| o.remove("type")) {
            Some(Value::String(name)) => name,
            _ => String::new(),
        };
        let schema_version = Self::schema_version_of(&event_type).unwrap_or(1);
        EncodedEvent {
            event_type,
            schema_version,
            payload,
        }
    }

    /// Decodes a stored event, upcasting older schema versions first.
    ///
    /// # Errors
    /// [`DecodeError`] for unknown types, versions from the future, or payloads that do not parse.
    pub fn decode(event_type: &str, schema_version: i32, payload: &Value) -> Result<Self, DecodeError> {
        Self::decode_owned(event_type, schema_version, payload.clone())
    }

    /// [`Self::decode`] of a payload the caller gives up, which saves copying it (projector rebuilds
    /// decode millions).
    ///
    /// # Errors
    /// As [`Self::decode`].
    pub fn decode_owned(event_type: &str, schema_version: i32, payload: Value) -> Result<Self, DecodeError> {
        let known = Self::schema_version_of(event_type).ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        if schema_version > known {
            return Err(DecodeError::FutureVersion {
                event_type: event_type.to_owned(),
                version: schema_version,
                known,
            });
        }
        let mut object = match payload {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        if event_type == "FileDiscovered" && schema_version == 1 {
            upcast_file_discovered_v1(&mut object);
        }
        object.insert("type".into(), Value::String(event_type.to_owned()));
        serde_json::from_value(Value::Object(object)).map_err(|source| DecodeError::Malformed {
            event_type: event_type.to_owned(),
            version: schema_version,
            source,
        })
    }

    /// The user whose data this event is about.
    pub fn owner(&self) -> Option<UserId> {
        Some(match self {
            Self::UserRegistered(e) => e.user_id,
            Self::UserPasswordChanged(e) => e.user_id,
            Self::PasswordResetRequested(e) => e.user_id,
            Self::TotpEnrollmentBegun(e) => e.user_id,
            Self::TotpEnabled(e) => e.user_id,
            Self::TotpDisabled(e) => e.user_id,
            Self::MfaCodeUsed(e) => e.user_id,
            Self::SmsFactorEnabled(e) => e.user_id,
            Self::SmsFactorDisabled(e) => e.user_id,
            Self::UserRoleGranted(e) => e.user_id,
            Self::UserRoleRevoked(e) => e.user_id,
            Self::ApiTokenCreated(e) => e.user_id,
            Self::ApiTokenRevoked(e) => e.user_id,
            Self::UserPlanSet(e) => e.user_id,
            Self::IpAllowlistSet(e) => e.user_id,
            Self::ExternalIdentityLinked(e) => e.user_id,
            Self::UserDeleted(e) => e.user_id,
            Self::EmailReleased(e) => e.user_id,
            Self::PasskeyRegistered(e) => e.user_id,
            Self::PasskeyUpdated(e) => e.user_id,
            Self::PasskeyRemoved(e) => e.user_id,
            Self::EmailClaimed(e) => e.user_id,
            Self::ProviderConnected(e) => e.owner_id,
            Self::ProviderDisconnected(e) => e.owner_id,
            Self::ProviderScheduleSet(e) => e.owner_id,
            Self::ProviderCredentialsRenewed(e) => e.owner_id,
            Self::FileDiscovered(e) => e.owner_id,
            Self::FileMoved(e) => e.owner_id,
            Self::FileDeleted(e) => e.owner_id,
            Self::DeletedFileRestored(e) => e.owner_id,
            Self::KeptContentReleased(e) => e.owner_id,
            Self::FileChanged(e) => e.owner_id,
            Self::FileRemoved(e) => e.owner_id,
            Self::SyncJobCreated(e) => e.owner_id,
            Self::SyncPairCreated(e) => e.owner_id,
            Self::SyncDecisionRecorded(e) => e.owner_id,
            Self::SyncBaseAdvanced(e) => e.owner_id,
            Self::FileVersionKept(e) => e.owner_id,
            Self::FilePatchStarted(e) => e.owner_id,
            Self::FilePatchSettled(e) => e.owner_id,
            Self::FileVersionsPruned(e) => e.owner_id,
            Self::FileVersionRestored(e) => e.owner_id,
            Self::FileContentExtracted(e) => e.owner_id,
            Self::FileAnalyzed(e) => e.owner_id,
            _ => return None,
        })
    }
}

/// v1 → v2: `size` became `size_bytes`, `mtime` (Unix seconds) became `modified_at` (RFC 3339), and
/// `mime_type` was added (guessed from the name, as the v2 scanner does).
fn upcast_file_discovered_v1(object: &mut Map<String, Value>) {
    if let Some(size) = object.remove("size") {
        object.insert("size_bytes".into(), size);
    }
    if let Some(mtime) = object.remove("mtime") {
        let seconds = mtime.as_i64().unwrap_or_default();
        let at = Utc.timestamp_opt(seconds, 0).single().unwrap_or_default();
        object.insert("modified_at".into(), Value::String(at.to_rfc3339()));
    }
    if !object.contains_key("mime_type") {
        let path = object.get("path").and_then(Value::as_str).unwrap_or_default();
        object.insert("mime_type".into(), Value::String(guess_mime(path)));
    }
}

/// Fields of an event payload that hold hashes of secrets (passwords, tokens, codes) or secrets
/// themselves: what leaves CloudSync (an export) says that they were there, not what they are.
pub const HASHED_FIELDS: [&str; 7] = [
    "password_hash",
    "secret_hash",
    "token_hash",
    "code_hash",
    "recovery_codes",
    "secret",
    "passkey",
];

/// Fields that hold sealed values: the audit log shows that these changed, not what they are.
pub const SEALED_FIELDS: [&str; 3] = ["phone", "credentials", "ciphertext"];

/// `value` with every field of [`HASHED_FIELDS`] (and of [`SEALED_FIELDS`] with `sealed_too`), at
/// any depth, replaced by `"[redacted]"`.
pub fn redacted(value: Value, sealed_too: bool) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    if HASHED_FIELDS.contains(&key.as_str()) || (sealed_too && SEALED_FIELDS.contains(&key.as_str())) {
                        (key, Value::String("[redacted]".into()))
                    } else {
                        (key, redacted(value, sealed_too))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|item| redacted(item, sealed_too)).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn personal_data_is_sealed_or_clear_in_events_and_columns() {
        let sealed = Personal::Sealed {
            sealed: SealedSecret {
                nonce: "bm9uY2U=".into(),
                ciphertext: "Y2lwaGVy".into(),
            },
        };
        let clear = Personal::Clear("ada@example.org".into());
        for value in [&sealed, &clear] {
            let json = serde_json::to_value(value).expect("JSON");
            assert_eq!(&serde_json::from_value::<Personal>(json).expect("back"), value);
            assert_eq!(&Personal::from_column(&value.to_column()), value);
        }
        assert_eq!(
            serde_json::to_value(&clear).expect("JSON"),
            json!("ada@example.org"),
            "old events read as clear"
        );
    }

    #[test]
    fn encode_strips_the_tag_and_decode_restores_it() {
        let event = DomainEvent::EmailClaimed(EmailClaimed {
            email: Personal::Clear("a@example.org".into()),
            user_id: UserId::from_uuid(uuid::Uuid::nil()),
        });
        let encoded = event.encode();
        assert_eq!(encoded.event_type, "EmailClaimed");
        assert_eq!(encoded.schema_version, 1);
        assert!(encoded.payload.get("type").is_none());
        let decoded = DomainEvent::decode(&encoded.event_type, 1, &encoded.payload).expect("decodes");
        assert_eq!(decoded, event);
    }

    #[test]
    fn file_discovered_v1_is_upcast_to_v2() {
        let v1 = json!({
            "file_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "provider_id": "67e55044-10b1-426f-9247-bb680e5fe0c9",
            "owner_id": "67e55044-10b1-426f-9247-bb680e5fe0ca",
            "path": "docs/report.pdf",
            "size": 1234,
            "mtime": 1_700_000_000,
            "checksum": "ab",
        });
        let DomainEvent::FileDiscovered(e) = DomainEvent::decode("FileDiscovered", 1, &v1).expect("upcasts") else {
            panic!("wrong variant");
        };
        assert_eq!(e.size_bytes, 1234);
        assert_eq!(e.modified_at.timestamp(), 1_700_000_000);
        assert_eq!(e.mime_type, "application/pdf");
        assert_eq!(e.path.as_str(), "docs/report.pdf");
        assert_eq!(e.job_id, None);
        // Once upcast, it encodes as the current version.
        assert_eq!(DomainEvent::FileDiscovered(e).encode().schema_version, 2);
    }

    #[test]
    fn unknown_and_future_events_are_errors() {
        assert!(matches!(
            DomainEvent::decode("Nope", 1, &json!({})),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            DomainEvent::decode("FileMoved", 9, &json!({})),
            Err(DecodeError::FutureVersion { .. })
        ));
        assert!(matches!(
            DomainEvent::decode("FileMoved", 1, &json!({"x": 1})),
            Err(DecodeError::Malformed { .. })
        ));
    }
}
