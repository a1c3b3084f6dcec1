//! The `User` aggregate: registration, the password (changes, resets, rehashing) and second
//! factors (TOTP with recovery codes, passkeys), with every one-time code accepted at most once.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::aggregate::{Aggregate, DomainError};
use crate::events::{ApiTokenCreated, ApiTokenRevoked, IpAllowlistSet, UserPlanSet, UserRoleGranted, UserRoleRevoked};
use crate::events::{
    DomainEvent, EmailClaimed, MfaCodeUsed, MfaMethod, PasskeyRegistered, PasskeyRemoved, PasskeyUpdated, PasswordChange,
    PasswordResetRequested, SealedSecret, SmsFactorDisabled, SmsFactorEnabled, TotpDisabled, TotpEnabled, TotpEnrollmentBegun,
    UserPasswordChanged, UserRegistered,
};
use crate::events::{Personal, UserDeleted};
use crate::ids::UserId;

/// A registered passkey.
#[derive(Debug, Clone, PartialEq)]
pub struct Passkey {
    pub credential_id: String,
    pub name: String,
    /// The verifier's record (public key, counter).
    pub record: Value,
    pub registered_at: DateTime<Utc>,
}

/// Proof of a second factor, as checked by the caller against the secret: the TOTP time step the
/// code matched, or a recovery code's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    Totp {
        step: u64,
    },
    RecoveryCode {
        hash: String,
    },
    /// A code sent by text message, checked by the caller against what it sent.
    Sms {
        hash: String,
    },
}

#[derive(Debug, Default, Clone)]
pub struct User {
    registered: Option<UserRegistered>,
    /// Erased: it no longer exists for anything but its history.
    deleted: bool,
    password_hash: Option<String>,
    /// The outstanding reset (token hash, expiry): only the latest request's token works, once.
    reset: Option<(String, DateTime<Utc>)>,
    totp_pending: Option<SealedSecret>,
    totp: Option<SealedSecret>,
    /// The last TOTP time step accepted: codes of it and earlier steps are refused.
    last_step: Option<u64>,
    /// Hashes of the recovery codes not yet used.
    recovery_codes: BTreeSet<String>,
    passkeys: BTreeMap<String, Passkey>,
    /// The phone number codes are sent to, sealed.
    sms: Option<SealedSecret>,
    /// Roles beyond `user`.
    roles: BTreeSet<String>,
    api_tokens: BTreeMap<uuid::Uuid, ApiToken>,
    /// Networks the user's credentials work from (CIDR); empty: anywhere.
    ip_allowlist: Vec<String>,
}

/// The roles there are; every user has `user`.
pub const ROLES: [&str; 3] = ["user", "admin", "auditor"];
/// The scopes an API token may carry.
pub const SCOPES: [&str; 4] = ["files:read", "files:write", "sync:run", "admin"];
/// The subscription tiers.
pub const TIERS: [&str; 3] = ["free", "pro", "team"];

/// A personal API token (its secret's hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiToken {
    pub id: uuid::Uuid,
    pub name: String,
    pub scopes: Vec<String>,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

pub enum UserCommand {
    Register {
        user_id: UserId,
        /// The address, sealed for the user (`email_stream` is derived from the clear address).
        email: Personal,
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// Erases the account (the caller destroys its data key).
    Delete {
        at: DateTime<Utc>,
    },
    /// A new hash: the user changed the password, or the same password was hashed again.
    SetPassword {
        password_hash: String,
        reason: PasswordChange,
        at: DateTime<Utc>,
    },
    RequestReset {
        token_hash: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// Sets a new password with the token of the latest reset request.
    Reset {
        token_hash: String,
        password_hash: String,
        at: DateTime<Utc>,
    },
    /// A new TOTP secret, pending until confirmed (replaces an earlier pending one).
    BeginTotp {
        secret: SealedSecret,
        at: DateTime<Utc>,
    },
    /// The pending secret is confirmed by a code of time step `step`.
    ConfirmTotp {
        step: u64,
        recovery_codes: Vec<String>,
        at: DateTime<Utc>,
    },
    /// Turns TOTP off, proven by a TOTP or recovery code.
    DisableTotp {
        proof: Proof,
        at: DateTime<Utc>,
    },
    /// A second factor presented at login.
    UseCode {
        proof: Proof,
        at: DateTime<Utc>,
    },
    RegisterPasskey {
        credential_id: String,
        name: String,
        record: Value,
        at: DateTime<Utc>,
    },
    UpdatePasskey {
        credential_id: String,
        record: Value,
        at: DateTime<Utc>,
    },
    RemovePasskey {
        credential_id: String,
        at: DateTime<Utc>,
    },
    /// Codes by text message to `phone` (sealed), whose number was proven by a code.
    EnableSms {
        phone: SealedSecret,
        at: DateTime<Utc>,
    },
    DisableSms {
        at: DateTime<Utc>,
    },
    GrantRole {
        role: String,
        at: DateTime<Utc>,
    },
    RevokeRole {
        role: String,
        at: DateTime<Utc>,
    },
    CreateApiToken {
        token_id: uuid::Uuid,
        name: String,
        scopes: Vec<String>,
        secret_hash: String,
        expires_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    RevokeApiToken {
        token_id: uuid::Uuid,
        at: DateTime<Utc>,
    },
    SetPlan {
        quota_bytes: Option<u64>,
        tier: String,
        by: UserId,
        at: DateTime<Utc>,
    },
    SetIpAllowlist {
        networks: Vec<String>,
        at: DateTime<Utc>,
    },
}

impl User {
    pub fn id(&self) -> Option<UserId> {
        self.registered.as_ref().filter(|_| !self.deleted).map(|r| r.user_id)
    }

    /// The address as recorded (sealed for the user).
    pub fn email(&self) -> Option<&Personal> {
        self.registered.as_ref().filter(|_| !self.deleted).map(|r| &r.email)
    }

    /// The current password hash.
    pub fn password_hash(&self) -> Option<&str> {
        self.password_hash.as_deref()
    }

    fn registered(&self) -> Result<&UserRegistered, DomainError> {
        self.registered
            .as_ref()
            .filter(|_| !self.deleted)
            .ok_or(DomainError::NotFound("user"))
    }

    /// The confirmed TOTP secret.
    pub fn totp_secret(&self) -> Option<&SealedSecret> {
        self.totp.as_ref()
    }

    /// The TOTP secret waiting for its first code.
    pub fn totp_pending(&self) -> Option<&SealedSecret> {
        self.totp_pending.as_ref()
    }

    /// The last TOTP time step accepted.
    pub fn last_totp_step(&self) -> Option<u64> {
        self.last_step
    }

    pub fn recovery_codes_left(&self) -> usize {
        self.recovery_codes.len()
    }

    pub fn passkeys(&self) -> impl Iterator<Item = &Passkey> {
        self.passkeys.values()
    }

    /// The phone number second-factor codes go to, sealed.
    pub fn sms_phone(&self) -> Option<&SealedSecret> {
        self.sms.as_ref()
    }

    /// Every role the user would have with `role` added (`add`) or taken away, `user` first.
    fn roles_with(&self, role: &str, add: bool) -> Vec<String> {
        let mut roles = self.roles.clone();
        if add {
            roles.insert(role.to_owned());
        } else {
            roles.remove(role);
        }
        std::iter::once("user".to_owned()).chain(roles).collect()
    }

    /// Every role of the user, `user` first.
    pub fn roles(&self) -> Vec<String> {
        std::iter::once("user".to_owned()).chain(self.roles.iter().cloned()).collect()
    }

    pub fn api_tokens(&self) -> impl Iterator<Item = &ApiToken> {
        self.api_tokens.values()
    }

    pub fn api_token(&self, id: uuid::Uuid) -> Option<&ApiToken> {
        self.api_tokens.get(&id)
    }

    pub fn ip_allowlist(&self) -> &[String] {
        &self.ip_allowlist
    }

    /// Whether a login needs a second factor.
    pub fn mfa_enabled(&self) -> bool {
        self.totp.is_some() || !self.passkeys.is_empty() || self.sms.is_some()
    }

    /// The event that accepts `proof`, or why it is refused.
    fn accept(&self, user_id: UserId, proof: Proof, at: DateTime<Utc>) -> Result<DomainEvent, DomainError> {
        let (method, step, code_hash) = match proof {
            Proof::Totp { step } => {
                if self.totp.is_none() {
                    return Err(DomainError::InvalidState("TOTP is not enabled".into()));
                }
                if self.last_step.is_some_and(|last| step <= last) {
                    return Err(DomainError::Invalid("this code was already used; wait for the next one".into()));
                }
                (MfaMethod::Totp, Some(step), None)
            }
            Proof::RecoveryCode { hash } => {
                if !self.recovery_codes.contains(&hash) {
                    return Err(DomainError::Invalid("the recovery code is wrong or was already used".into()));
                }
                (MfaMethod::RecoveryCode, None, Some(hash))
            }
            Proof::Sms { hash } => {
                if self.sms.is_none() {
                    return Err(DomainError::InvalidState("codes by text message are not enabled".into()));
                }
                (MfaMethod::Sms, None, Some(hash))
            }
        };
        Ok(DomainEvent::MfaCodeUsed(MfaCodeUsed {
            user_id,
            method,
            step,
            code_hash,
            at,
        }))
    }
}

impl Aggregate for User {
    type Command = UserCommand;
    type Event = DomainEvent;

    fn handle(&self, command: UserCommand) -> Result<Vec<DomainEvent>, DomainError> {
        match command {
            UserCommand::Register {
                user_id,
                email,
                password_hash,
                at,
            } => {
                if self.registered.is_some() {
                    return Err(DomainError::AlreadyExists("user"));
                }
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![
                    DomainEvent::UserRegistered(UserRegistered {
                        user_id,
                        email: email.clone(),
                        password_hash,
                        registered_at: at,
                    }),
                    DomainEvent::EmailClaimed(EmailClaimed { email, user_id }),
                ])
            }
            UserCommand::Delete { at } => {
                let user_id = self.registered()?.user_id;
                Ok(vec![DomainEvent::UserDeleted(UserDeleted { user_id, at })])
            }
            UserCommand::SetPassword { password_hash, reason, at } => {
                let user_id = self.registered()?.user_id;
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![DomainEvent::UserPasswordChanged(UserPasswordChanged {
                    user_id,
                    password_hash,
                    reason,
                    at,
                })])
            }
            UserCommand::RequestReset {
                token_hash,
                expires_at,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                if expires_at <= at {
                    return Err(DomainError::Invalid("a reset must expire after it is requested".into()));
                }
                Ok(vec![DomainEvent::PasswordResetRequested(PasswordResetRequested {
                    user_id,
                    token_hash,
                    expires_at,
                    at,
                })])
            }
            UserCommand::BeginTotp { secret, at } => {
                let user_id = self.registered()?.user_id;
                if self.totp.is_some() {
                    return Err(DomainError::InvalidState("TOTP is already enabled; disable it first".into()));
                }
                Ok(vec![DomainEvent::TotpEnrollmentBegun(TotpEnrollmentBegun { user_id, secret, at })])
            }
            UserCommand::ConfirmTotp { step, recovery_codes, at } => {
                let user_id = self.registered()?.user_id;
                if self.totp_pending.is_none() {
                    return Err(DomainError::InvalidState("no TOTP enrollment is waiting for a code".into()));
                }
                Ok(vec![
                    DomainEvent::TotpEnabled(TotpEnabled {
                        user_id,
                        recovery_codes,
                        at,
                    }),
                    // The code that confirmed it cannot sign in.
                    DomainEvent::MfaCodeUsed(MfaCodeUsed {
                        user_id,
                        method: MfaMethod::Totp,
                        step: Some(step),
                        code_hash: None,
                        at,
                    }),
                ])
            }
            UserCommand::DisableTotp { proof, at } => {
                let user_id = self.registered()?.user_id;
                let used = self.accept(user_id, proof, at)?;
                Ok(vec![used, DomainEvent::TotpDisabled(TotpDisabled { user_id, at })])
            }
            UserCommand::UseCode { proof, at } => {
                let user_id = self.registered()?.user_id;
                Ok(vec![self.accept(user_id, proof, at)?])
            }
            UserCommand::RegisterPasskey {
                credential_id,
                name,
                record,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                let name = name.trim().to_owned();
                if name.is_empty() || name.chars().count() > 64 {
                    return Err(DomainError::Invalid("a passkey's name must have 1 to 64 characters".into()));
                }
                if self.passkeys.contains_key(&credential_id) {
                    return Err(DomainError::AlreadyExists("passkey"));
                }
                Ok(vec![DomainEvent::PasskeyRegistered(PasskeyRegistered {
                    user_id,
                    credential_id,
                    name,
                    passkey: record,
                    at,
                })])
            }
            UserCommand::UpdatePasskey { credential_id, record, at } => {
                let user_id = self.registered()?.user_id;
                if !self.passkeys.contains_key(&credential_id) {
                    return Err(DomainError::NotFound("passkey"));
                }
                Ok(vec![DomainEvent::PasskeyUpdated(PasskeyUpdated {
                    user_id,
                    credential_id,
                    passkey: record,
                    at,
                })])
            }
            UserCommand::EnableSms { phone, at } => {
                let user_id = self.registered()?.user_id;
                Ok(vec![DomainEvent::SmsFactorEnabled(SmsFactorEnabled { user_id, phone, at })])
            }
            UserCommand::DisableSms { at } => {
                let user_id = self.registered()?.user_id;
                if self.sms.is_none() {
                    return Err(DomainError::InvalidState("codes by text message are not enabled".into()));
                }
                Ok(vec![DomainEvent::SmsFactorDisabled(SmsFactorDisabled { user_id, at })])
            }
            UserCommand::GrantRole { role, at } => {
                let user_id = self.registered()?.user_id;
                if !ROLES.contains(&role.as_str()) || role == "user" {
                    return Err(DomainError::Invalid(format!(
                        "{role:?} is not a role one can grant (admin, auditor)"
                    )));
                }
                if self.roles.contains(&role) {
                    return Ok(Vec::new());
                }
                let roles = self.roles_with(&role, true);
                Ok(vec![DomainEvent::UserRoleGranted(UserRoleGranted { user_id, role, roles, at })])
            }
            UserCommand::RevokeRole { role, at } => {
                let user_id = self.registered()?.user_id;
                if !self.roles.contains(&role) {
                    return Ok(Vec::new());
                }
                let roles = self.roles_with(&role, false);
                Ok(vec![DomainEvent::UserRoleRevoked(UserRoleRevoked { user_id, role, roles, at })])
            }
            UserCommand::CreateApiToken {
                token_id,
                name,
                scopes,
                secret_hash,
                expires_at,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                let name = name.trim().to_owned();
                if name.is_empty() || name.chars().count() > 64 {
                    return Err(DomainError::Invalid("a token's name must have 1 to 64 characters".into()));
                }
                if scopes.is_empty() {
                    return Err(DomainError::Invalid("a token needs at least one scope".into()));
                }
                if let Some(unknown) = scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
                    return Err(DomainError::Invalid(format!("{unknown:?} is not a scope ({})", SCOPES.join(", "))));
                }
                if scopes.iter().any(|s| s == "admin") && !self.roles.contains("admin") && !self.roles.contains("auditor") {
                    return Err(DomainError::Invalid(
                        "only administrators and auditors can create tokens with the admin scope".into(),
                    ));
                }
                if expires_at.is_some_and(|e| e <= at) {
                    return Err(DomainError::Invalid("a token must expire in the future".into()));
                }
                if self.api_tokens.len() >= 100 {
                    return Err(DomainError::InvalidState(
                        "an account has at most 100 API tokens; revoke some first".into(),
                    ));
                }
                Ok(vec![DomainEvent::ApiTokenCreated(ApiTokenCreated {
                    user_id,
                    token_id,
                    name,
                    scopes,
                    secret_hash,
                    expires_at,
                    at,
                })])
            }
            UserCommand::RevokeApiToken { token_id, at } => {
                let user_id = self.registered()?.user_id;
                if !self.api_tokens.contains_key(&token_id) {
                    return Err(DomainError::NotFound("API token"));
                }
                Ok(vec![DomainEvent::ApiTokenRevoked(ApiTokenRevoked { user_id, token_id, at })])
            }
            UserCommand::SetPlan { quota_bytes, tier, by, at } => {
                let user_id = self.registered()?.user_id;
                if !TIERS.contains(&tier.as_str()) {
                    return Err(DomainError::Invalid(format!("{tier:?} is not a tier ({})", TIERS.join(", "))));
                }
                Ok(vec![DomainEvent::UserPlanSet(UserPlanSet {
                    user_id,
                    quota_bytes,
                    tier,
                    by,
                    at,
                })])
            }
            UserCommand::SetIpAllowlist { networks, at } => {
                let user_id = self.registered()?.user_id;
                if networks.len() > 50 {
                    return Err(DomainError::Invalid("at most 50 networks".into()));
                }
                Ok(vec![DomainEvent::IpAllowlistSet(IpAllowlistSet { user_id, networks, at })])
            }
            UserCommand::RemovePasskey { credential_id, at } => {
                let user_id = self.registered()?.user_id;
                if !self.passkeys.contains_key(&credential_id) {
                    return Err(DomainError::NotFound("passkey"));
                }
                Ok(vec![DomainEvent::PasskeyRemoved(PasskeyRemoved {
                    user_id,
                    credential_id,
                    at,
                })])
            }
            UserCommand::Reset {
                token_hash,
                password_hash,
                at,
            } => {
                let user_id = self.registered()?.user_id;
                let invalid = || DomainError::Invalid("the reset token is invalid, expired or already used".into());
                let (expected, expires_at) = self.reset.as_ref().ok_or_else(invalid)?;
                if *expected != token_hash || *expires_at <= at {
                    return Err(invalid());
                }
                if password_hash.is_empty() {
                    return Err(DomainError::Invalid("a password hash is required".into()));
                }
                Ok(vec![DomainEvent::UserPasswordChanged(UserPasswordChanged {
                    user_id,
                    password_hash,
                    reason: PasswordChange::Reset,
                    at,
                })])
            }
        }
    }

    fn apply(&mut self, event: &DomainEvent) {
        match event {
            DomainEvent::UserRegistered(e) => {
                self.registered = Some(e.clone());
                self.password_hash = Some(e.password_hash.clone());
            }
            DomainEvent::UserDeleted(_) => self.deleted = true,
            DomainEvent::UserPasswordChanged(e) => {
                self.password_hash = Some(e.password_hash.clone());
                // Any new password ends an outstanding reset: its link must not work afterwards.
                self.reset = None;
            }
            DomainEvent::PasswordResetRequested(e) => self.reset = Some((e.token_hash.clone(), e.expires_at)),
            DomainEvent::TotpEnrollmentBegun(e) => self.totp_pending = Some(e.secret.clone()),
            DomainEvent::TotpEnabled(e) => {
                self.totp = self.totp_pending.take();
                self.recovery_codes = e.recovery_codes.iter().cloned().collect();
            }
            DomainEvent::TotpDisabled(_) => {
                self.totp = None;
                self.recovery_codes.clear();
            }
            DomainEvent::MfaCodeUsed(e) => {
                if let Some(step) = e.step {
                    self.last_step = Some(self.last_step.map_or(step, |last| last.max(step)));
                }
                if let Some(hash) = &e.code_hash {
                    self.recovery_codes.remove(hash);
                }
            }
            DomainEvent::PasskeyRegistered(e) => {
                self.passkeys.insert(
                    e.credential_id.clone(),
                    Passkey {
                        credential_id: e.credential_id.clone(),
                        name: e.name.clone(),
                        record: e.passkey.clone(),
                        registered_at: e.at,
                    },
                );
            }
            DomainEvent::PasskeyUpdated(e) => {
                if let Some(passkey) = self.passkeys.get_mut(&e.credential_id) {
                    passkey.record = e.passkey.clone();
                }
            }
            DomainEvent::PasskeyRemoved(e) => {
                self.passkeys.remove(&e.credential_id);
            }
            DomainEvent::UserRoleGranted(e) => {
                self.roles.insert(e.role.clone());
            }
            DomainEvent::UserRoleRevoked(e) => {
                self.roles.remove(&e.role);
            }
            DomainEvent::ApiTokenCreated(e) => {
                self.api_tokens.insert(
                    e.token_id,
                    ApiToken {
                        id: e.token_id,
                        name: e.name.clone(),
                        scopes: e.scopes.clone(),
                        secret_hash: e.secret_hash.clone(),
                        created_at: e.at,
                        expires_at: e.expires_at,
                    },
                );
            }
            DomainEvent::ApiTokenRevoked(e) => {
                self.api_tokens.remove(&e.token_id);
            }
            DomainEvent::IpAllowlistSet(e) => self.ip_allowlist.clone_from(&e.networks),
            DomainEvent::SmsFactorEnabled(e) => self.sms = Some(e.phone.clone()),
            DomainEvent::SmsFactorDisabled(_) => self.sms = None,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::testing::given;

    fn register() -> UserCommand {
        UserCommand::Register {
            user_id: UserId::from_uuid(Uuid::nil()),
            email: Personal::Clear("ada@example.org".into()),
            password_hash: "$argon2id$…".into(),
            at: DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn given_nothing_when_register_then_registered_and_email_claimed() {
        let events = given::<User>([]).when(register()).events();
        assert!(matches!(
            events.as_slice(),
            [DomainEvent::UserRegistered(_), DomainEvent::EmailClaimed(_)]
        ));
        let user = User::load(&events);
        assert_eq!(user.email(), Some(&Personal::Clear("ada@example.org".into())));
        let deleted = User::load(&then(registered(), UserCommand::Delete { at: at(1) }).expect("erased"));
        assert_eq!(deleted.id(), None, "an erased account is gone for everything but its history");
        let erased = then(registered(), UserCommand::Delete { at: at(1) }).expect("erased");
        given::<User>(erased)
            .when(UserCommand::Delete { at: at(2) })
            .then_error(DomainError::NotFound("user"));
    }

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::UNIX_EPOCH + chrono::Duration::minutes(minutes)
    }

    fn registered() -> Vec<DomainEvent> {
        given::<User>([]).when(register()).events()
    }

    /// `history` and what the user decides on `command` after it: the next test's history.
    fn then(mut history: Vec<DomainEvent>, command: UserCommand) -> Result<Vec<DomainEvent>, DomainError> {
        let events = given::<User>(history.clone()).when(command).decided()?;
        history.extend(events);
        Ok(history)
    }

    fn request(token: &str, at_minute: i64) -> UserCommand {
        UserCommand::RequestReset {
            token_hash: token.into(),
            expires_at: at(at_minute + 30),
            at: at(at_minute),
        }
    }

    fn reset(token: &str, at_minute: i64) -> UserCommand {
        UserCommand::Reset {
            token_hash: token.into(),
            password_hash: format!("$argon2id$new-{token}"),
            at: at(at_minute),
        }
    }

    #[test]
    fn a_reset_token_works_once_before_it_expires_and_only_the_latest() {
        let history = then(registered(), request("t1", 0)).expect("requested");
        assert!(then(history.clone(), reset("t2", 1)).is_err(), "a token never issued");
        assert!(then(history.clone(), reset("t1", 30)).is_err(), "expired at 30 minutes");
        let done = then(history.clone(), reset("t1", 29)).expect("reset");
        assert_eq!(User::load(&done).password_hash(), Some("$argon2id$new-t1"));
        assert!(then(done, reset("t1", 29)).is_err(), "used");
        let again = then(history, request("t2", 5)).expect("requested again");
        assert!(then(again.clone(), reset("t1", 6)).is_err(), "superseded by the later request");
        let changed = then(
            again.clone(),
            UserCommand::SetPassword {
                password_hash: "$argon2id$changed".into(),
                reason: PasswordChange::Changed,
                at: at(7),
            },
        )
        .expect("changed");
        assert!(
            then(changed, reset("t2", 8)).is_err(),
            "a password change ends the outstanding reset"
        );
        assert!(then(again, reset("t2", 8)).is_ok());
    }

    fn sealed() -> SealedSecret {
        SealedSecret {
            nonce: "n".into(),
            ciphertext: "c".into(),
        }
    }

    #[test]
    fn totp_codes_and_recovery_codes_are_accepted_once() {
        let code = |step| UserCommand::UseCode {
            proof: Proof::Totp { step },
            at: at(0),
        };
        let recovery = |hash: &str| UserCommand::UseCode {
            proof: Proof::RecoveryCode { hash: hash.into() },
            at: at(0),
        };
        let history = registered();
        assert!(then(history.clone(), code(5)).is_err(), "not enabled");
        let confirm = UserCommand::ConfirmTotp {
            step: 10,
            recovery_codes: vec!["r1".into(), "r2".into()],
            at: at(0),
        };
        assert!(then(history.clone(), confirm).is_err(), "nothing pending");
        let begun = then(
            history,
            UserCommand::BeginTotp {
                secret: sealed(),
                at: at(0),
            },
        )
        .expect("begun");
        assert!(!User::load(&begun).mfa_enabled(), "pending is not enabled");
        let confirm = UserCommand::ConfirmTotp {
            step: 10,
            recovery_codes: vec!["r1".into(), "r2".into()],
            at: at(0),
        };
        let enabled = then(begun, confirm).expect("confirmed");
        let user = User::load(&enabled);
        assert!(user.mfa_enabled() && user.totp_secret().is_some() && user.totp_pending().is_none());
        assert!(
            then(
                enabled.clone(),
                UserCommand::BeginTotp {
                    secret: sealed(),
                    at: at(0)
                }
            )
            .is_err()
        );
        assert!(then(enabled.clone(), code(10)).is_err(), "the confirming code's step");
        assert!(then(enabled.clone(), code(9)).is_err(), "an earlier step");
        let used = then(enabled, code(11)).expect("a new step");
        assert!(then(used.clone(), code(11)).is_err(), "replayed");
        let used = then(used, recovery("r1")).expect("recovery code");
        assert_eq!(User::load(&used).recovery_codes_left(), 1);
        assert!(then(used.clone(), recovery("r1")).is_err(), "used");
        assert!(then(used.clone(), recovery("nope")).is_err(), "unknown");
        let disabled = then(
            used,
            UserCommand::DisableTotp {
                proof: Proof::Totp { step: 12 },
                at: at(0),
            },
        )
        .expect("disabled");
        let user = User::load(&disabled);
        assert!(!user.mfa_enabled() && user.recovery_codes_left() == 0);
    }

    #[test]
    fn passkeys_are_registered_once_updated_and_removed() {
        let register = |id: &str, name: &str| UserCommand::RegisterPasskey {
            credential_id: id.into(),
            name: name.into(),
            record: serde_json::json!({ "id": id }),
            at: at(0),
        };
        let history = then(registered(), register("c1", " laptop ")).expect("registered");
        let user = User::load(&history);
        assert!(user.mfa_enabled());
        assert_eq!(user.passkeys().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["laptop"]);
        assert_eq!(
            then(history.clone(), register("c1", "again")).err(),
            Some(DomainError::AlreadyExists("passkey"))
        );
        assert!(then(history.clone(), register("c2", "")).is_err());
        let update = UserCommand::UpdatePasskey {
            credential_id: "c1".into(),
            record: serde_json::json!({ "counter": 2 }),
            at: at(1),
        };
        let updated = then(history.clone(), update).expect("updated");
        assert_eq!(
            User::load(&updated).passkeys().next().map(|p| p.record.clone()),
            Some(serde_json::json!({ "counter": 2 }))
        );
        let remove = |id: &str| UserCommand::RemovePasskey {
            credential_id: id.into(),
            at: at(2),
        };
        assert_eq!(then(updated.clone(), remove("c9")).err(), Some(DomainError::NotFound("passkey")));
        let removed = then(updated, remove("c1")).expect("removed");
        assert!(!User::load(&removed).mfa_enabled());
    }

    #[test]
    fn password_commands_need_a_registered_user() {
        given::<User>([]).when(request("t", 0)).then_error(DomainError::NotFound("user"));
        let set = UserCommand::SetPassword {
            password_hash: "$argon2id$x".into(),
            reason: PasswordChange::Rehashed,
            at: at(0),
        };
        given::<User>([]).when(set).then_error(DomainError::NotFound("user"));
    }

    #[test]
    fn given_registered_when_register_then_refused() {
        given::<User>(registered())
            .when(register())
            .then_error(DomainError::AlreadyExists("user"));
    }
}
