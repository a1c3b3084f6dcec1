//! Envelope encryption for secrets at rest: each user has a data key (AES-256-GCM), stored only
//! wrapped by the master key from configuration, in `user_keys` (outside the immutable event log, so
//! deleting it shreds the user's secrets). Events carry only [`SealedSecret`]s. The chunk store's
//! account keys are kept the same way ([`AccountKeys`]), wrapped by the chunk-store key instead.

use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_domain::UserId;
use cloudsync_domain::events::SealedSecret;
use cloudsync_eventstore::DbPool;
use rand::RngCore as _;

use crate::CommandError;

/// The key that wraps every user's data key (and the service's own secrets), with the keys it
/// replaced: a value sealed by any of them opens, new values are sealed by the current one and
/// name it (`<key id>:<nonce>.<ciphertext>`), so the old keys can be dropped once `rewrap` has run.
#[derive(Clone)]
pub struct MasterKey {
    current: [u8; 32],
    previous: Vec<[u8; 32]>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterKey({}, {} previous)", self.id(), self.previous.len())
    }
}

fn key_id(key: &[u8; 32]) -> String {
    blake3::hash(key).to_hex()[..8].to_owned()
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
        Ok(Self {
            current: key,
            previous: Vec::new(),
        })
    }

    /// This key, still opening what `previous` (earlier master keys) sealed.
    pub fn with_previous(mut self, previous: impl IntoIterator<Item = MasterKey>) -> Self {
        for key in previous {
            if key.current != self.current && !self.previous.contains(&key.current) {
                self.previous.push(key.current);
            }
        }
        self
    }

    /// A fresh random key and its base64 form.
    pub fn generate() -> (Self, String) {
        let mut key = [0_u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        (
            Self {
                current: key,
                previous: Vec::new(),
            },
            B64.encode(key),
        )
    }

    /// Keys for `purpose` derived from this master key and from each earlier one, the current
    /// first (BLAKE3's key derivation: they say nothing of the master key or of each other).
    pub fn derive(&self, purpose: &str) -> Vec<[u8; 32]> {
        let context = format!("cloudsync 2026 {purpose}");
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|key| blake3::derive_key(&context, key))
            .collect()
    }

    /// The current key's id (a hash prefix: it says nothing of the key).
    pub fn id(&self) -> String {
        key_id(&self.current)
    }

    /// Whether `sealed` was sealed by the current key.
    pub fn is_current(&self, sealed: &str) -> bool {
        sealed.split_once(':').is_some_and(|(id, _)| id == self.id())
    }

    /// Encrypts `plaintext` with the current master key, bound to `purpose`:
    /// `<key id>:<nonce>.<ciphertext>`, base64.
    ///
    /// # Errors
    /// Only if encryption fails.
    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<String, CommandError> {
        let (nonce, ciphertext) = seal_with(&self.current, plaintext, purpose.as_bytes())?;
        Ok(format!("{}:{}.{}", self.id(), B64.encode(nonce), B64.encode(ciphertext)))
    }

    /// Decrypts what [`MasterKey::seal`] sealed for the same `purpose`, with the key it names (or,
    /// for values sealed before keys were named, whichever key opens it).
    ///
    /// # Errors
    /// A key this ring does not have, another purpose, or a malformed or tampered text.
    pub fn open(&self, purpose: &str, sealed: &str) -> Result<Vec<u8>, CommandError> {
        let malformed = || CommandError::Storage("a sealed secret is malformed".into());
        let (id, body) = match sealed.split_once(':') {
            Some((id, body)) => (Some(id), body),
            None => (None, sealed),
        };
        let (nonce, ciphertext) = body.split_once('.').ok_or_else(malformed)?;
        let nonce = B64.decode(nonce).map_err(|_| malformed())?;
        let ciphertext = B64.decode(ciphertext).map_err(|_| malformed())?;
        let keys = std::iter::once(&self.current).chain(&self.previous);
        let mut candidates = keys.filter(|key| id.is_none_or(|id| key_id(key) == id)).peekable();
        if candidates.peek().is_none() {
            return Err(CommandError::Storage(format!(
                "a secret was sealed by master key {} which this server does not have (configure it as a previous master key)",
                id.unwrap_or("?")
            )));
        }
        let mut last = malformed();
        for key in candidates {
            match open_with(key, &nonce, &ciphertext, purpose.as_bytes()) {
                Ok(plaintext) => return Ok(plaintext),
                Err(err) => last = err,
            }
        }
        Err(last)
    }
}

pub(crate) fn seal_with(key: &[u8; 32], plaintext: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), CommandError> {
    let mut nonce = [0_u8; 12];
    rand::thread_rng().fill_bytes(&mut nonce);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| CommandError::Storage("encryption failed".into()))?;
    Ok((nonce.to_vec(), ciphertext))
}

pub(crate) fn open_with(key: &[u8; 32], nonce: &[u8], ciphertext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CommandError> {
    let nonce: [u8; 12] = nonce
        .try_into()
        .map_err(|_| CommandError::Storage("a sealed secret has a malformed nonce".into()))?;
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    cipher
        .decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| CommandError::Storage("a sealed secret cannot be opened (wrong key, or the key was destroyed)".into()))
}

/// What an erased user's key row holds instead of a key.
const ERASED: &str = "erased";

/// One random key per account, stored only wrapped by a key ring, in a table of its own
/// (`user_id`, `wrapped_key`, `created_at`): the data keys in `user_keys` (under the master key),
/// the chunk store's keys in `chunk_store_keys` (under the chunk-store key). Erasing an account
/// leaves a tombstone instead of its key.
#[derive(Clone)]
pub struct AccountKeys {
    ring: MasterKey,
    pool: DbPool,
    table: &'static str,
    /// Put before the user id to make what a wrapped key is bound to.
    purpose: &'static str,
}

/// What [`AccountKeys::lookup`] found.
pub enum KeyLookup {
    Key([u8; 32]),
    /// None was made yet.
    Missing,
    /// Destroyed with its account.
    Erased,
}

/// The table of the chunk store's account keys.
const CHUNK_STORE_KEYS: &str = "chunk_store_keys";

impl AccountKeys {
    /// The chunk store's account keys, wrapped by the chunk-store key ring `ring`.
    pub fn for_chunk_store(ring: MasterKey, pool: DbPool) -> Self {
        Self {
            ring,
            pool,
            table: CHUNK_STORE_KEYS,
            purpose: "chunk-store:",
        }
    }

    /// The key ring that wraps these keys.
    pub fn ring(&self) -> &MasterKey {
        &self.ring
    }

    fn aad(&self, user: impl std::fmt::Display) -> String {
        format!("{}{user}", self.purpose)
    }

    async fn stored(&self, user: UserId) -> Result<Option<String>, CommandError> {
        let query = format!("SELECT wrapped_key FROM {} WHERE user_id = $1", self.table);
        let id = user.to_string();
        cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_scalar(&query).bind(id).fetch_optional(p).await)
            .map_err(|err| CommandError::Store(err.into()))
    }

    /// The wrapped key, unless there is none or it was destroyed.
    async fn wrapped(&self, user: UserId) -> Result<Option<String>, CommandError> {
        Ok(self.stored(user).await?.filter(|k| k != ERASED))
    }

    fn unwrap_key(&self, user: UserId, wrapped: &str) -> Result<[u8; 32], CommandError> {
        self.ring
            .open(&self.aad(user), wrapped)?
            .try_into()
            .map_err(|_| CommandError::Storage("an account key has the wrong length".into()))
    }

    /// `user`'s key, made (and stored wrapped) on first use.
    ///
    /// # Errors
    /// An erased account ([`CommandError::NotFound`]); the key store is unreachable, or no key of
    /// the ring opens the key.
    pub async fn to_seal(&self, user: UserId) -> Result<[u8; 32], CommandError> {
        let text = match self.stored(user).await? {
            Some(erased) if erased == ERASED => return Err(CommandError::NotFound("user")),
            Some(text) => text,
            None => {
                let mut key = [0_u8; 32];
                rand::thread_rng().fill_bytes(&mut key);
                let text = self.ring.seal(&self.aad(user), &key)?;
                let insert = format!(
                    "INSERT INTO {} (user_id, wrapped_key, created_at) VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING",
                    self.table
                );
                let (id, now) = (user.to_string(), chrono::Utc::now().to_rfc3339());
                cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query(&insert)
                    .bind(&id)
                    .bind(&text)
                    .bind(&now)
                    .execute(p)
                    .await
                    .map(drop))
                .map_err(|err| CommandError::Store(err.into()))?;
                // Whoever won a race to create it, this is the key now.
                self.wrapped(user).await?.ok_or(CommandError::NotFound("user"))?
            }
        };
        self.unwrap_key(user, &text)
    }

    /// `user`'s key; `None` when there is none (never made, or the account was erased).
    ///
    /// # Errors
    /// The key store is unreachable, or no key of the ring opens the key.
    pub async fn to_open(&self, user: UserId) -> Result<Option<[u8; 32]>, CommandError> {
        match self.lookup(user).await? {
            KeyLookup::Key(key) => Ok(Some(key)),
            KeyLookup::Missing | KeyLookup::Erased => Ok(None),
        }
    }

    /// `user`'s key, or why there is none; never makes one.
    ///
    /// # Errors
    /// The key store is unreachable, or no key of the ring opens the key.
    pub async fn lookup(&self, user: UserId) -> Result<KeyLookup, CommandError> {
        match self.stored(user).await? {
            None => Ok(KeyLookup::Missing),
            Some(erased) if erased == ERASED => Ok(KeyLookup::Erased),
            Some(text) => self.unwrap_key(user, &text).map(KeyLookup::Key),
        }
    }

    /// Checks that the ring opens the keys already kept (one of them): a server started with
    /// another key than the one that wrapped them would otherwise fail on every account.
    ///
    /// # Errors
    /// No key of the ring opens a kept key; the key store is unreachable.
    pub async fn check(&self) -> Result<(), CommandError> {
        let query = format!("SELECT user_id, wrapped_key FROM {} WHERE wrapped_key <> $1 LIMIT 1", self.table);
        let row: Option<(String, String)> =
            cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_as(&query).bind(ERASED).fetch_optional(p).await)
                .map_err(|err| CommandError::Store(err.into()))?;
        if let Some((user, wrapped)) = row {
            self.ring.open(&self.aad(&user), &wrapped)?;
        }
        Ok(())
    }

    /// Whether `user` has a key (none yet, or destroyed by erasing the account: `false`).
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn has(&self, user: UserId) -> Result<bool, CommandError> {
        Ok(self.wrapped(user).await?.is_some())
    }

    /// Destroys `user`'s key: whatever was sealed with it can never be opened again
    /// (crypto-shredding), and no new key is made for the user.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn destroy(&self, user: UserId) -> Result<(), CommandError> {
        let (id, now) = (user.to_string(), chrono::Utc::now().to_rfc3339());
        // A tombstone, not a deletion: a key must not be made afresh for an erased user (also
        // written for a user who never had a key).
        let query = format!(
            "INSERT INTO {} (user_id, wrapped_key, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET wrapped_key = excluded.wrapped_key, created_at = excluded.created_at",
            self.table
        );
        cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query(&query)
            .bind(&id)
            .bind(ERASED)
            .bind(&now)
            .execute(p)
            .await
            .map(drop))
        .map_err(|err| CommandError::Store(err.into()))
    }

    /// Wraps every key with the ring's current key (those wrapped by an earlier one); returns how
    /// many were re-wrapped. Each row changes alone and only if it is still what was read, so this
    /// can run beside the service and be repeated after an interruption.
    ///
    /// # Errors
    /// A key that no key of the ring opens; store failures.
    pub async fn rewrap(&self) -> Result<usize, CommandError> {
        let query = format!("SELECT user_id, wrapped_key FROM {}", self.table);
        let rows: Vec<(String, String)> = cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_as(&query).fetch_all(p).await)
            .map_err(|err| CommandError::Storage(err.to_string()))?;
        let update = format!("UPDATE {} SET wrapped_key = $1 WHERE user_id = $2 AND wrapped_key = $3", self.table);
        let mut rewrapped = 0;
        for (user, wrapped) in rows {
            if wrapped == ERASED || self.ring.is_current(&wrapped) {
                continue;
            }
            let aad = self.aad(&user);
            let again = self.ring.seal(&aad, &self.ring.open(&aad, &wrapped)?)?;
            swap_sealed(&self.pool, &update, &again, &user, &wrapped).await?;
            rewrapped += 1;
        }
        Ok(rewrapped)
    }
}

/// Runs `update` (`SET <sealed> = $1 WHERE <key> = $2 AND <sealed> = $3`): the row changes only if
/// it still holds `old`.
async fn swap_sealed(pool: &DbPool, update: &str, new: &str, key: &str, old: &str) -> Result<(), CommandError> {
    cloudsync_eventstore::on_pool!(pool, |p| sqlx::query(update)
        .bind(new)
        .bind(key)
        .bind(old)
        .execute(p)
        .await
        .map(drop))
    .map_err(|err| CommandError::Storage(err.to_string()))
}

/// Seals and opens users' secrets.
#[derive(Clone)]
pub struct Vault {
    master: MasterKey,
    pool: DbPool,
    /// The users' data keys, wrapped by the master key.
    keys: AccountKeys,
    /// The key of the reservation streams' names, once read.
    reservations: Arc<tokio::sync::OnceCell<[u8; 32]>>,
}

/// The server secret that keys the reservation streams' names.
const RESERVATIONS: &str = "reservations";

impl Vault {
    pub fn new(master: MasterKey, pool: DbPool) -> Self {
        Self {
            keys: AccountKeys {
                ring: master.clone(),
                pool: pool.clone(),
                table: "user_keys",
                purpose: "",
            },
            master,
            pool,
            reservations: Arc::default(),
        }
    }
    /// The key of the reservation streams' names: made on first use, kept sealed by the master key
    /// in `server_secrets`, the same for every process of the installation.
    ///
    /// # Errors
    /// The database is unreachable, or no configured master key opens the secret.
    pub(crate) async fn reservation_key(&self) -> Result<[u8; 32], CommandError> {
        self.reservations
            .get_or_try_init(|| async {
                let aad = format!("server-secret:{RESERVATIONS}");
                let store = |err: sqlx::Error| CommandError::Store(err.into());
                let select = "SELECT sealed FROM server_secrets WHERE name = $1";
                let found: Option<String> = cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_scalar(select)
                    .bind(RESERVATIONS)
                    .fetch_optional(p)
                    .await)
                .map_err(store)?;
                let sealed = match found {
                    Some(sealed) => sealed,
                    None => {
                        let mut key = [0_u8; 32];
                        rand::thread_rng().fill_bytes(&mut key);
                        let sealed = self.master.seal(&aad, &key)?;
                        let insert = "INSERT INTO server_secrets (name, sealed) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING";
                        cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query(insert)
                            .bind(RESERVATIONS)
                            .bind(&sealed)
                            .execute(p)
                            .await
                            .map(drop))
                        .map_err(store)?;
                        // Whoever won a race to make it, this is the secret now.
                        cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_scalar(select).bind(RESERVATIONS).fetch_one(p).await)
                            .map_err(store)?
                    }
                };
                self.master
                    .open(&aad, &sealed)?
                    .try_into()
                    .map_err(|_| CommandError::Storage("the reservation key has the wrong length".into()))
            })
            .await
            .copied()
    }

    /// The database the vault keeps wrapped keys in (the write side's own tables are there too).
    pub(crate) fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Wraps every user's data key and the server's secrets with the current master key (those wrapped
    /// by an earlier one); returns how many users' keys were re-wrapped. Each row changes alone and
    /// only if it is still what was read, so this can run beside the service and be repeated after
    /// an interruption.
    ///
    /// # Errors
    /// A key that no configured master key opens; store failures.
    pub async fn rewrap(&self) -> Result<usize, CommandError> {
        let rewrapped = self.keys.rewrap().await?;
        // The server's own secrets too (not counted: the count is of users' keys).
        let secrets: Vec<(String, String)> =
            cloudsync_eventstore::on_pool!(&self.pool, |p| sqlx::query_as("SELECT name, sealed FROM server_secrets")
                .fetch_all(p)
                .await)
            .map_err(|err| CommandError::Storage(err.to_string()))?;
        let update = "UPDATE server_secrets SET sealed = $1 WHERE name = $2 AND sealed = $3";
        for (name, sealed) in secrets {
            if self.master.is_current(&sealed) {
                continue;
            }
            let aad = format!("server-secret:{name}");
            let again = self.master.seal(&aad, &self.master.open(&aad, &sealed)?)?;
            swap_sealed(&self.pool, update, &again, &name, &sealed).await?;
        }
        Ok(rewrapped)
    }

    /// `user`'s data key for sealing many values at once, made on first use.
    ///
    /// # Errors
    /// An erased account ([`CommandError::NotFound`]); the key store is unreachable.
    pub(crate) async fn key_to_seal(&self, user: UserId) -> Result<[u8; 32], CommandError> {
        self.keys.to_seal(user).await
    }

    /// `user`'s data key for opening many values at once, or why there is none (none made yet, or
    /// the account was erased).
    ///
    /// # Errors
    /// The key store is unreachable, or no configured master key opens the key.
    pub(crate) async fn key_to_open(&self, user: UserId) -> Result<KeyLookup, CommandError> {
        self.keys.lookup(user).await
    }

    /// Whether `user` has a data key (none yet, or destroyed by erasing the account: `false`).
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn has_key(&self, user: UserId) -> Result<bool, CommandError> {
        self.keys.has(user).await
    }

    /// Destroys `user`'s data key: whatever was sealed with it can never be opened again
    /// (crypto-shredding). Sealing for the user afterwards is refused.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn destroy(&self, user: UserId) -> Result<(), CommandError> {
        self.keys.destroy(user).await
    }

    /// Encrypts `plaintext` for `user`.
    ///
    /// # Errors
    /// The key store is unreachable.
    pub async fn seal(&self, user: UserId, plaintext: &[u8]) -> Result<SealedSecret, CommandError> {
        let key = self.keys.to_seal(user).await?;
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
        open_sealed(&self.keys.to_seal(user).await?, user, sealed)
    }

    /// Decrypts a secret sealed for `user`; `None` when the user has no key (the account was
    /// erased), so whatever was sealed for it reads as gone.
    ///
    /// # Errors
    /// Tampered ciphertext; the key store is unreachable.
    pub(crate) async fn open_if_kept(&self, user: UserId, sealed: &SealedSecret) -> Result<Option<Vec<u8>>, CommandError> {
        match self.keys.to_open(user).await? {
            Some(key) => open_sealed(&key, user, sealed).map(Some),
            None => Ok(None),
        }
    }
}

/// Decrypts `sealed` with `user`'s data key `key`.
fn open_sealed(key: &[u8; 32], user: UserId, sealed: &SealedSecret) -> Result<Vec<u8>, CommandError> {
    let decode = |part: &str| {
        B64.decode(part)
            .map_err(|_| CommandError::Storage("a sealed secret is malformed".into()))
    };
    open_with(
        key,
        &decode(&sealed.nonce)?,
        &decode(&sealed.ciphertext)?,
        user.to_string().as_bytes(),
    )
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

    #[test]
    fn sealed_values_name_their_key_and_open_after_a_rotation() {
        let (old, _) = MasterKey::generate();
        let legacy = {
            let (nonce, ciphertext) = seal_with(&old.current, b"secret", b"p").expect("seal");
            format!("{}.{}", B64.encode(nonce), B64.encode(ciphertext))
        };
        let sealed = old.seal("p", b"secret").expect("seal");
        assert!(sealed.starts_with(&format!("{}:", old.id())));
        let (new, _) = MasterKey::generate();
        assert!(new.open("p", &sealed).is_err(), "another key");
        assert!(new.open("p", &legacy).is_err());
        let ring = new.clone().with_previous([old.clone()]);
        assert_eq!(ring.open("p", &sealed).expect("the previous key opens it"), b"secret");
        assert_eq!(ring.open("p", &legacy).expect("unnamed values still open"), b"secret");
        assert!(!ring.is_current(&sealed) && ring.is_current(&ring.seal("p", b"x").expect("seal")));
        assert!(ring.open("q", &sealed).is_err(), "bound to its purpose");
    }
}
