//! Second factors on the write side: TOTP (RFC 6238: HMAC-SHA1, six digits, 30-second steps, one
//! step of clock skew either way) with its secret sealed by the user's data key, single-use
//! recovery codes (only hashes kept), and the records of WebAuthn passkeys. Every code accepted is
//! recorded, so no code is ever accepted twice.

use cloudsync_domain::UserId;
use cloudsync_domain::user::{Proof, User, UserCommand};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use serde_json::Value;

use crate::{CommandError, Commands};

/// Seconds per TOTP time step.
pub const TOTP_PERIOD: u64 = 30;
const RECOVERY_CODES: usize = 10;
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// The six-digit code of time step `step`.
pub fn totp_code(secret: &[u8], step: u64) -> String {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    format!("{:06}", binary % 1_000_000)
}

/// The time step (current, previous or next) whose code is `code`, at Unix time `now`.
pub fn totp_step(secret: &[u8], code: &str, now: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / TOTP_PERIOD;
    (current.saturating_sub(1)..=current + 1).find(|step| {
        let expected = totp_code(secret, *step);
        // Compared in constant time.
        expected.bytes().zip(code.bytes()).fold(0_u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// The secret as authenticator apps take it: base32 without padding.
pub fn totp_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn totp_uri(secret: &[u8], account: &str, issuer: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits=6&period={TOTP_PERIOD}",
        encode(issuer),
        encode(account),
        totp_base32(secret),
        encode(issuer)
    )
}

/// A recovery code as typed: case, spaces and dashes do not matter.
fn normalise(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Letters in a recovery code: 16 of 31 (about 79 bits), so its hash cannot be searched.
const RECOVERY_LETTERS: usize = 16;

/// A one-time code's hash, keyed by its user: the same code hashes differently for everyone.
fn code_hash(user: UserId, code: &str) -> String {
    let key = blake3::derive_key("cloudsync one-time code", user.as_uuid().as_bytes());
    blake3::keyed_hash(&key, normalise(code).as_bytes()).to_hex().to_string()
}

fn recovery_codes() -> Vec<String> {
    let mut rng = rand::thread_rng();
    (0..RECOVERY_CODES)
        .map(|_| {
            let letters: Vec<char> = (0..RECOVERY_LETTERS)
                .map(|_| RECOVERY_ALPHABET[usize::try_from(rng.next_u32()).unwrap_or(0) % RECOVERY_ALPHABET.len()] as char)
                .collect();
            letters
                .chunks(4)
                .map(|c| c.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// How a second factor was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeKind {
    Totp,
    RecoveryCode,
    /// A code sent by text message (the caller checked it against what it sent).
    Sms,
}

impl Commands {
    /// The time now in Unix seconds, on the commands' clock: what TOTP codes are judged by.
    fn now_secs(&self) -> u64 {
        u64::try_from(self.clock.now().timestamp()).unwrap_or(0)
    }

    /// Generates a TOTP secret for `user`, records it sealed and pending, and returns it.
    ///
    /// # Errors
    /// TOTP already enabled; store failures.
    pub async fn begin_totp(&self, user: UserId) -> Result<Vec<u8>, CommandError> {
        let mut secret = vec![0_u8; 20];
        rand::thread_rng().fill_bytes(&mut secret);
        let (found, version) = self.load::<User>(&user.stream()).await?;
        let sealed = self.vault.seal(user, &secret).await?;
        self.act_on_user(
            user,
            (found, version),
            UserCommand::BeginTotp {
                secret: sealed,
                at: self.clock.now(),
            },
        )
        .await?;
        Ok(secret)
    }

    /// Enables the pending TOTP secret if `code` is one of its current codes; returns the recovery
    /// codes (shown once: only their hashes are kept).
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for a wrong code, nothing pending; store failures.
    pub async fn confirm_totp(&self, user: UserId, code: &str) -> Result<Vec<String>, CommandError> {
        let (found, version) = self.load::<User>(&user.stream()).await?;
        let sealed = found
            .totp_pending()
            .ok_or_else(|| CommandError::Invalid("no TOTP enrollment is waiting for a code (begin one first)".into()))?;
        let secret = self.vault.open(user, sealed).await?;
        let step = totp_step(&secret, code, self.now_secs()).ok_or_else(|| CommandError::Invalid("the code is wrong".into()))?;
        let codes = recovery_codes();
        let command = UserCommand::ConfirmTotp {
            step,
            recovery_codes: codes.iter().map(|c| code_hash(user, c)).collect(),
            at: self.clock.now(),
        };
        self.act_on_user(user, (found, version), command).await?;
        Ok(codes)
    }

    /// What `code` proves for `user`, if anything.
    async fn proof(&self, user: UserId, found: &User, kind: CodeKind, code: &str) -> Result<Proof, CommandError> {
        let wrong = || CommandError::Invalid("the code is wrong".into());
        match kind {
            CodeKind::Totp => {
                let sealed = found
                    .totp_secret()
                    .ok_or_else(|| CommandError::Invalid("TOTP is not enabled".into()))?;
                let secret = self.vault.open(user, sealed).await?;
                let step = totp_step(&secret, code, self.now_secs()).ok_or_else(wrong)?;
                Ok(Proof::Totp { step })
            }
            CodeKind::RecoveryCode => {
                if normalise(code).len() != RECOVERY_LETTERS {
                    return Err(wrong());
                }
                Ok(Proof::RecoveryCode {
                    hash: code_hash(user, code),
                })
            }
            CodeKind::Sms => Ok(Proof::Sms {
                hash: code_hash(user, code),
            }),
        }
    }

    /// Accepts a second factor at login, once.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for a wrong or reused code; store failures.
    pub async fn use_mfa_code(&self, user: UserId, kind: CodeKind, code: &str) -> Result<i64, CommandError> {
        let (found, version) = self.load::<User>(&user.stream()).await?;
        let proof = self.proof(user, &found, kind, code).await?;
        self.act_on_user(
            user,
            (found, version),
            UserCommand::UseCode {
                proof,
                at: self.clock.now(),
            },
        )
        .await
    }

    /// Turns TOTP off, proven by a TOTP or recovery code.
    ///
    /// # Errors
    /// [`CommandError::Invalid`] for a wrong code or TOTP not enabled; store failures.
    pub async fn disable_totp(&self, user: UserId, kind: CodeKind, code: &str) -> Result<i64, CommandError> {
        if kind == CodeKind::Sms {
            // A texted code is checked by whoever sent it; nothing here could check this one.
            return Err(CommandError::Invalid(
                "TOTP is turned off with a TOTP code or a recovery code".into(),
            ));
        }
        let (found, version) = self.load::<User>(&user.stream()).await?;
        let proof = self.proof(user, &found, kind, code).await?;
        self.act_on_user(
            user,
            (found, version),
            UserCommand::DisableTotp {
                proof,
                at: self.clock.now(),
            },
        )
        .await
    }

    /// Sends second-factor codes to `phone` from now on (the caller proved the number).
    ///
    /// # Errors
    /// Store failures.
    pub async fn enable_sms(&self, user: UserId, phone: &str) -> Result<i64, CommandError> {
        let phone = self.vault.seal(user, phone.as_bytes()).await?;
        self.change_user(
            user,
            UserCommand::EnableSms {
                phone,
                at: self.clock.now(),
            },
        )
        .await
    }

    /// Stops sending second-factor codes by text message.
    ///
    /// # Errors
    /// Not enabled; store failures.
    pub async fn disable_sms(&self, user: UserId) -> Result<i64, CommandError> {
        self.change_user(user, UserCommand::DisableSms { at: self.clock.now() }).await
    }

    /// The phone number second-factor codes go to.
    ///
    /// # Errors
    /// A destroyed key; store failures.
    pub async fn sms_phone(&self, user: UserId) -> Result<Option<String>, CommandError> {
        let (found, _) = self.load::<User>(&user.stream()).await?;
        let Some(sealed) = found.sms_phone() else { return Ok(None) };
        let phone = self.vault.open(user, sealed).await?;
        Ok(Some(String::from_utf8_lossy(&phone).into_owned()))
    }

    /// Records a passkey the user registered.
    ///
    /// # Errors
    /// A bad name or a credential already registered; store failures.
    pub async fn register_passkey(&self, user: UserId, credential_id: String, name: String, record: Value) -> Result<i64, CommandError> {
        let command = UserCommand::RegisterPasskey {
            credential_id,
            name,
            record,
            at: self.clock.now(),
        };
        self.change_user(user, command).await
    }

    /// Records a passkey's changed record (its counter, after a login).
    ///
    /// # Errors
    /// An unknown passkey; store failures.
    pub async fn update_passkey(&self, user: UserId, credential_id: String, record: Value) -> Result<i64, CommandError> {
        let command = UserCommand::UpdatePasskey {
            credential_id,
            record,
            at: self.clock.now(),
        };
        self.change_user(user, command).await
    }

    /// Removes one of the user's passkeys.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for a passkey that is not the user's; store failures.
    pub async fn remove_passkey(&self, user: UserId, credential_id: String) -> Result<i64, CommandError> {
        let command = UserCommand::RemovePasskey {
            credential_id,
            at: self.clock.now(),
        };
        self.change_user(user, command).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totp_matches_the_rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1, truncated to six digits.
        let secret = b"12345678901234567890";
        for (time, eight) in [(59_u64, "94287082"), (1_111_111_109, "07081804"), (2_000_000_000, "69279037")] {
            assert_eq!(totp_code(secret, time / TOTP_PERIOD), eight[2..], "T={time}");
        }
        let now = 1_111_111_109;
        let step = now / TOTP_PERIOD;
        assert_eq!(totp_step(secret, &totp_code(secret, step), now), Some(step));
        assert_eq!(
            totp_step(secret, &totp_code(secret, step - 1), now),
            Some(step - 1),
            "a step of skew"
        );
        assert_eq!(totp_step(secret, &totp_code(secret, step + 2), now), None);
        assert_eq!(totp_step(secret, "12345", now), None);
        assert_eq!(totp_step(secret, "abcdef", now), None);
    }

    #[test]
    fn provisioning_uris_and_recovery_codes_are_well_formed() {
        let uri = totp_uri(b"12345678901234567890", "ada@example.org", "CloudSync");
        assert_eq!(
            uri,
            "otpauth://totp/CloudSync:ada%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=CloudSync&algorithm=SHA1&digits=6&period=30"
        );
        let codes = recovery_codes();
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 19 && c.split('-').count() == 4), "{codes:?}");
        let (ada, bob) = (UserId::from_uuid(uuid::Uuid::new_v4()), UserId::from_uuid(uuid::Uuid::new_v4()));
        assert_eq!(
            code_hash(ada, &codes[0].to_uppercase().replace('-', " ")),
            code_hash(ada, &codes[0])
        );
        assert_ne!(code_hash(ada, &codes[0]), code_hash(bob, &codes[0]), "keyed by the user");
    }
}
