//! Envelope encryption for secrets at rest: each user has a data key (AES-256-GCM), stored only
//! wrapped by the master key from configuration, in `user_keys` (outside the immutable event log, so
//! deleting it shreds the user's secrets). Events carry only [`SealedSecret`]s.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_domain::UserId;
use cloudsync_domain::events::SealedSecret;
use cloudsync_eventstore::DbPool;
use rand::RngCore as _;

use crate::CommandError;

/// The key that wraps every user's data key.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(…)")
    }
}

impl MasterKey {
    /// Parses 32 bytes given as base64 (or 64 hex digits).
    ///
    /// # Errors
    /// Anything else.
    pub fn parse(text: &str) -> Result<Self, CommandError> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .unwrap_or_default()
        } else {
            B64.decode(text).unwrap_or_default()
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CommandError::Invalid("the master key must be 32 bytes, base64 or hex".into()))?;
        Ok(Self(key))
    }

    /// A fresh random key and its base64 form.
    pub fn generate() -> (Self, String) {
        let mut key = [0_u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        (Self(key), B64.encode(key))
    }

    /// Encrypts `plaintext` with the master key itself, bound to `purpose` (for the service's own
    /// secrets, such as its token-signing keys): `<nonce>.<ciphertext>`, base64.
    ///
    /// # Errors
    /// Only if encryption fails.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, CommandError> {
        let (nonce, ciphertext) = seal_with(&self.0, plaintext, purpose.as_bytes())?;
        Ok(format!("{}.{}", B64.encode(nonce), B64.encode(ciphertext)))
    }

    /// Decrypts what [`MasterKey::seal`] sealed for the same `purpose`.
    ///
    /// # Errors
    /// Another key or purpose, or a malformed or tampered text.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, CommandError> {
        let malformed = || CommandError::Storage("a sealed secret is malformed".into());
        let (nonce, ciphertext) = sealed.split_once('.').ok_or_else(malformed)?;
        let nonce = B64.decode(nonce).map_err(|_| malformed())?;
        let ciphertext = B64.decode(ciphertext).map_err(|_| malformed())?;
        open_with(&self.0, &nonce, &ciphertext, purpose.as_bytes())
    }
}

fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CommandError> {
    let mut nonce = [0_u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| CommandError::Storage("encryption failed".into()))?;
    Ok((nonce.to_vec(), ciphertext))
}

fn open_with(key: &[u8; 32], nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CommandError> {
    let nonce: [u8; 12] = nonce
        .try_into()
        .map_err(|_| CommandError::Storage("a sealed secret has a malformed nonce".into()))?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| CommandError::Storage("a sealed secret cannot be opened (wrong key, or the key was destroyed)".into()))
}

/// Seals and opens users' secrets.
#[derive(Clone)]
pub struct Vault {
    master: MasterKey,
    pool: DbPool,
}

impl Vault {
    pub fn new(master: MasterKey, pool: DbPool) -> Self {
        Self { master, pool }
    }

    /// The database the vault keeps wrapped keys in (the write side's own tables are there too).
    pub(crate) fn pool(&self) -> &DbPool {
        &self.pool
    }

    async fn wrapped_key(&self, user: UserId) -> Result<Option<String>, CommandError> {
        let query = "SELECT wrapped_key FROM user_keys WHERE user_id = $1";
        let id = user.to_string();
        match &self.pool {
            DbPool::Sqlite(p) => sqlx::query_scalar(query).bind(id).fetch_optional(p).await,
            DbPool::Postgres(p) => sqlx::query_scalar(query).bind(id).fetch_optional(p).await,
        }
        .map_err(|err| CommandError::Store(err.into()))
    }

    /// The user's data key, created (and stored wrapped) on first use.
    async fn data_key(&self, user: UserId) -> Result<[u8; 32], CommandError> {
        let aad = user.to_string();
        if self.wrapped_key(user).await?.is_none() {
            let mut key = [0_u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            let (nonce, wrapped) = seal_with(&self.master.0, &key, aad.as_bytes())?;
            let text = format!("{}.{}", B64.encode(nonce), B64.encode(wrapped));
            let insert = "INSERT INTO user_keys (user_id, wrapped_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING";
            let now = chrono::Utc::now().to_rfc3339();
            match &self.pool {
                DbPool::Sqlite(p) => sqlx::query(insert).bind(&aad).bind(&text).bind(&now).execute(p).await.map(drop),
                DbPool::Postgres(p) => sqlx::query(insert).bind(&aad).bind(&text).bind(&now).execute(p).await.map(drop),
            }
            .map_err(|err| CommandError::Store(err.into()))?;
        }
        // Whoever won a race to create it, this is the key now.
        let text = self
            .wrapped_key(user)
            .await?
            .ok_or_else(|| CommandError::Storage("the user's data key is gone".into()))?;
        let (nonce, wrapped) = text
            .split_once('.')
            .ok_or_else(|| CommandError::Storage("a wrapped key is malformed".into()))?;
        let decode = |part: &str| {
            B64.decode(part)
                .map_err(|_| CommandError::Storage("a wrapped key is malformed".into()))
        };
        let key = open_with(&self.master.0, &decode(nonce)?, &decode(wrapped)?, aad.as_bytes())?;
        key.try_into()
            .map_err(|_| CommandError::Storage("a data key has the wrong length".into()))
    }

    /// Encrypts `plaintext` for `user`.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn seal(&self, user: UserId, plaintext: &[u8]) -> Result<SealedSecret, CommandError> {
        let key = self.data_key(user).await?;
        let (nonce, ciphertext) = seal_with(&key, plaintext, user.to_string().as_bytes())?;
        Ok(SealedSecret {
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        })
    }

    /// Decrypts a secret sealed for `user`.
    ///
    /// # Errors
    /// A wrong or destroyed key, or tampered ciphertext.
    pub async fn open(&self, user: UserId, sealed: &SealedSecret) -> Result<Vec<u8>, CommandError> {
        let key = self.data_key(user).await?;
        let decode = |part: &str| {
            B64.decode(part)
                .map_err(|_| CommandError::Storage("a sealed secret is malformed".into()))
        };
        open_with(
            &key,
            &decode(&sealed.nonce)?,
            &decode(&sealed.ciphertext)?,
            user.to_string().as_bytes(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_round_trips_and_is_bound_to_its_key_and_user() {
        let key = [7_u8; 32];
        let (nonce, ciphertext) = seal_with(&key, b"hunter2", b"user-a").expect("seal");
        assert!(!ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open_with(&key, &nonce, &ciphertext, b"user-a").expect("open"), b"hunter2");
        assert!(open_with(&key, &nonce, &ciphertext, b"user-b").is_err(), "bound to the user");
        assert!(open_with(&[8_u8; 32], &nonce, &ciphertext, b"user-a").is_err(), "bound to the key");
        let mut tampered = ciphertext.clone();
        tampered[0] ^= 1;
        assert!(open_with(&key, &nonce, &tampered, b"user-a").is_err(), "authenticated");
    }

    #[test]
    fn master_keys_parse_from_base64_or_hex_only_at_32_bytes() {
        let (_, text) = MasterKey::generate();
        assert!(MasterKey::parse(&text).is_ok());
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not a key").is_err());
    }
}
