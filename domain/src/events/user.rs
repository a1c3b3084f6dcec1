//! What happens to accounts: registration, passwords, second factors, roles, tokens, plans,
//! external identities and erasure.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::ids::{ProviderId, UserId};
use crate::values::ProviderKind;

use super::{Personal, Sealable, SealedSecret};

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
