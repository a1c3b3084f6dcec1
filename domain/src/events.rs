//! Every fact CloudSync records, with a stable type name and a schema version, and the upcasters that
//! bring old versions up to date when they are read.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::ids::{FileId, ProviderId, SyncJobId, SyncPairId, UserId};
use crate::merge::{ConflictPolicy, Decision, Side, SyncMode, Version};
use crate::sync_job::{JobKind, JobPhase};
use crate::sync_pair::SyncEndpoint;
use crate::values::{ProviderKind, ProviderPath, ScanSchedule};

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

/// Why a user's password hash changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordChange {
    /// The user changed it, knowing the old one.
    Changed,
    /// Set through a reset token sent by mail.
    Reset,
    /// The same password, hashed again with the configured parameters (an older or imported hash
    /// was upgraded at login).
    Rehashed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserPasswordChanged {
    pub user_id: UserId,
    pub password_hash: String,
    pub reason: PasswordChange,
    pub at: DateTime<Utc>,
}

/// A password reset was asked for: the token sent by mail (only its hash is kept) works once,
/// until `expires_at`, and only while it is the latest one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasswordResetRequested {
    pub user_id: UserId,
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MfaMethod {
    Totp,
    RecoveryCode,
    Passkey,
    Sms,
}

/// A TOTP secret was generated for the user, not yet confirmed with a code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotpEnrollmentBegun {
    pub user_id: UserId,
    /// The secret, sealed with the user's data key.
    pub secret: SealedSecret,
    pub at: DateTime<Utc>,
}

/// The pending TOTP secret was confirmed with a code: logins now need a second factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotpEnabled {
    pub user_id: UserId,
    /// Hashes of the single-use recovery codes shown to the user once.
    pub recovery_codes: Vec<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TotpDisabled {
    pub user_id: UserId,
    pub at: DateTime<Utc>,
}

/// A one-time code was accepted (so it is never accepted again): a TOTP time step, or a recovery
/// or SMS code's hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaCodeUsed {
    pub user_id: UserId,
    pub method: MfaMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_hash: Option<String>,
    pub at: DateTime<Utc>,
}

/// Codes by text message are a second factor: `phone` (E.164), sealed with the user's data key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsFactorEnabled {
    pub user_id: UserId,
    pub phone: SealedSecret,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SmsFactorDisabled {
    pub user_id: UserId,
    pub at: DateTime<Utc>,
}

/// A role given to a user (`admin`, `auditor`; everyone is a `user`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRoleGranted {
    pub user_id: UserId,
    pub role: String,
    /// Every role the user has now.
    pub roles: Vec<String>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRoleRevoked {
    pub user_id: UserId,
    pub role: String,
    /// Every role the user has now.
    pub roles: Vec<String>,
    pub at: DateTime<Utc>,
}

/// A personal API token: only its secret's hash is kept; it allows `scopes` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenCreated {
    pub user_id: UserId,
    pub token_id: Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub secret_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiTokenRevoked {
    pub user_id: UserId,
    pub token_id: Uuid,
    pub at: DateTime<Utc>,
}

/// An administrator set the user's storage quota (`None`: unlimited) and subscription tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserPlanSet {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    pub tier: String,
    pub by: UserId,
    pub at: DateTime<Utc>,
}

/// The networks (CIDR) the user's credentials work from; empty: anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpAllowlistSet {
    pub user_id: UserId,
    pub networks: Vec<String>,
    pub at: DateTime<Utc>,
}

/// The user signs in with an OpenID provider's account (`issuer`, `subject`). Recorded on the user's
/// stream and on the identity's reservation stream, so an external account belongs to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalIdentityLinked {
    pub user_id: UserId,
    pub issuer: String,
    /// The person's id at the provider (often an address), sealed with the user's data key.
    pub subject: Personal,
    pub at: DateTime<Utc>,
}

/// Recorded on the `email-…` reservation stream when the account that claimed the address is
/// erased: the address may be registered again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailReleased {
    pub user_id: UserId,
    pub at: DateTime<Utc>,
}

/// The account was erased: its data key is destroyed, so the personal data sealed in its events
/// can no longer be read; its read-model rows are removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDeleted {
    pub user_id: UserId,
    pub at: DateTime<Utc>,
}

/// A WebAuthn passkey was registered: `passkey` is the verifier's record of it (public key,
/// counter), as the WebAuthn library serialises it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyRegistered {
    pub user_id: UserId,
    pub credential_id: String,
    pub name: String,
    pub passkey: Value,
    pub at: DateTime<Utc>,
}

/// A passkey's record changed when it was used (its signature counter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyUpdated {
    pub user_id: UserId,
    pub credential_id: String,
    pub passkey: Value,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PasskeyRemoved {
    pub user_id: UserId,
    pub credential_id: String,
    pub at: DateTime<Utc>,
}

/// Recorded on the `email-…` reservation stream so an address belongs to at most one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailClaimed {
    /// The address, sealed with the user's data key (the stream's name is derived from it).
    pub email: Personal,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderConnected {
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub kind: ProviderKind,
    /// The name its owner gave it, sealed with the owner's data key.
    pub display_name: Personal,
    /// Non-secret configuration (for `local`: the root folder; endpoints, buckets, user names),
    /// sealed with the owner's data key.
    pub config: Sealable<Value>,
    /// The secret settings (passwords, keys, tokens), sealed with the owner's data key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<SealedSecret>,
    /// When the sealed access token expires (OAuth providers); it is renewed before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_expire_at: Option<DateTime<Utc>>,
    pub connected_at: DateTime<Utc>,
}

/// An OAuth provider's tokens were renewed with its refresh token: the new tokens replace the old.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderCredentialsRenewed {
    pub provider_id: ProviderId,
    pub owner_id: UserId,
    pub secrets: SealedSecret,
    pub expires_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// Ciphertext that only the owner's data key opens (AES-256-GCM, base64 nonce and ciphertext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub nonce: String,
    pub ciphertext: String,
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
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobCreated {
    pub job_id: SyncJobId,
    pub owner_id: UserId,
    pub kind: JobKind,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobPhaseEntered {
    pub job_id: SyncJobId,
    pub phase: JobPhase,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobProgressed {
    pub job_id: SyncJobId,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_total: Option<u64>,
    pub bytes_total: Option<u64>,
    /// A sync run's bytes written to the sides so far (less than `bytes_done` where only changed
    /// ranges were written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobFinished {
    pub job_id: SyncJobId,
    pub at: DateTime<Utc>,
    /// Why it failed or was cancelled; `None` when it completed.
    pub reason: Option<String>,
}

/// Two folders are to be kept in agreement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncPairCreated {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub source: SyncEndpoint,
    pub target: SyncEndpoint,
    pub mode: SyncMode,
    pub policy: ConflictPolicy,
    pub max_delete_percent: u8,
    /// When the pair runs on its own: a cron schedule (or none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScanSchedule>,
    /// Whether a change reported by either side's change feed starts a run.
    #[serde(default)]
    pub realtime: bool,
    /// How many earlier versions of each file are kept (0: none).
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
    /// How many days an earlier version is kept (0: as long as `keep_versions` allows).
    #[serde(default = "default_keep_days")]
    pub keep_days: u32,
    pub at: DateTime<Utc>,
}

/// Versions kept per file unless a pair says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 10;
/// Days a version is kept unless a pair says otherwise.
pub const DEFAULT_KEEP_DAYS: u32 = 30;

fn default_keep_versions() -> u32 {
    DEFAULT_KEEP_VERSIONS
}

fn default_keep_days() -> u32 {
    DEFAULT_KEEP_DAYS
}

/// Why a file's content was kept as an earlier version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionReason {
    /// A run was about to write other content over it.
    Replaced,
    /// A run was about to delete it.
    Deleted,
    /// A restore was about to bring back an earlier version over it.
    Restored,
}

impl VersionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replaced => "REPLACED",
            Self::Deleted => "DELETED",
            Self::Restored => "RESTORED",
        }
    }
}

/// Content of one side of a pair that was about to be overwritten or deleted, kept whole in the
/// chunk store (recorded before the change is made).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionKept {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_id: Uuid,
    pub side: Side,
    pub provider_id: ProviderId,
    /// The file's path relative to the pair's folder.
    pub path: ProviderPath,
    /// The file's path on its provider.
    pub provider_path: ProviderPath,
    pub version: Version,
    /// The chunk-store id of the content's manifest.
    pub content: String,
    pub reason: VersionReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<SyncJobId>,
    pub at: DateTime<Utc>,
}

/// Earlier versions that fell out of the pair's retention (too many, or too old): their content
/// may be collected from the chunk store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionsPruned {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_ids: Vec<Uuid>,
    pub at: DateTime<Utc>,
}

/// The owner brought an earlier version back: it was written over the file at `path` on `side`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileVersionRestored {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub version_id: Uuid,
    pub side: Side,
    pub path: ProviderPath,
    pub at: DateTime<Utc>,
}

/// A run of a pair was requested: the job that carries it out. One run of a pair at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRunRequested {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub at: DateTime<Utc>,
}

/// The owner settled a conflict left for them (`MANUAL`): the next run carries the choice out, as
/// long as both sides still hold the versions it was made about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncConflictResolved {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub path: ProviderPath,
    pub resolution: Resolution,
    pub source: Option<Version>,
    pub target: Option<Version>,
    pub at: DateTime<Utc>,
}

/// How a conflict is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "keep", rename_all = "snake_case")]
pub enum Resolution {
    Source,
    Target,
    /// Both versions, the target's renamed as a conflict copy.
    Both,
    /// Content the owner merged, kept in the chunk store under `content` (a manifest id), with
    /// its checksum and size.
    Merged {
        content: String,
        version: Version,
    },
}

/// A sync run stopped before its first change: its plan deletes more of a side than the pair allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncJobHeld {
    pub job_id: SyncJobId,
    pub side: Side,
    pub deletes: u64,
    pub at: DateTime<Utc>,
}

/// A run's decision about one path, with its reason, recorded before it is carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncDecisionRecorded {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub decision: Decision,
    pub at: DateTime<Utc>,
}

/// One path's agreed state after a run; `None` when both sides agreed it is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseChange {
    pub path: ProviderPath,
    pub version: Option<Version>,
    /// What each side's listing showed of the agreed file (its ETag, or size and modification
    /// time): a later listing that shows the same is not read again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tag: Option<String>,
    /// The chunk-store id of the agreed content's manifest, where the content is kept (text files,
    /// for the next line merge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored: Option<String>,
    /// The chunk-store id of the agreed content's chunk manifest (large files): the next change of
    /// the file is written as the byte ranges that differ, where the side accepts ranged writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// A run ended with both sides agreeing on these paths: the merge base of the next run moves on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncBaseAdvanced {
    pub pair_id: SyncPairId,
    pub owner_id: UserId,
    pub job_id: SyncJobId,
    pub changes: Vec<BaseChange>,
    pub at: DateTime<Utc>,
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
    SyncConflictResolved(SyncConflictResolved),
    FileVersionKept(FileVersionKept),
    FileVersionsPruned(FileVersionsPruned),
    FileVersionRestored(FileVersionRestored),
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
            | "SyncConflictResolved"
            | "FileVersionKept"
            | "FileVersionsPruned"
            | "FileVersionRestored" => Some(1),
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
        let known = Self::schema_version_of(event_type).ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))?;
        if schema_version > known {
            return Err(DecodeError::FutureVersion {
                event_type: event_type.to_owned(),
                version: schema_version,
                known,
            });
        }
        let mut object = match payload {
            Value::Object(map) => map.clone(),
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
            Self::FileChanged(e) => e.owner_id,
            Self::FileRemoved(e) => e.owner_id,
            Self::SyncJobCreated(e) => e.owner_id,
            Self::SyncPairCreated(e) => e.owner_id,
            Self::SyncDecisionRecorded(e) => e.owner_id,
            Self::SyncBaseAdvanced(e) => e.owner_id,
            Self::FileVersionKept(e) => e.owner_id,
            Self::FileVersionsPruned(e) => e.owner_id,
            Self::FileVersionRestored(e) => e.owner_id,
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

/// The MIME type CloudSync records for a file name.
pub fn guess_mime(path: &str) -> String {
    mime_guess::from_path(path).first_or_octet_stream().essence_str().to_owned()
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
