//! The access tokens' signing keys: Ed25519 key pairs, each with a key id (`kid` in the token's
//! header), kept in the database (`signing_keys`, private halves sealed by the master key) so that
//! every API process signs and verifies with the same set.
//!
//! `cloudsync keys rotate` adds a key that signs from then on and retires the one it replaces. A
//! retired key keeps verifying for the grace period (the access tokens' lifetime plus the reload
//! interval), so a rotation logs nobody out; after it, its tokens are refused and the key is deleted
//! at the next rotation. Processes reload the set every [`RELOAD_EVERY`] and whenever a token names a
//! key id they do not know.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use cloudsync_eventstore::{DbPool, on_pool};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{DecodingKey, EncodingKey};
use rand::RngCore as _;

use crate::clock::Clock;

/// How often a process reloads the key set to pick up a rotation done elsewhere.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// A token naming an unknown key id makes the process reload at most this often.
const RELOAD_AT_MOST: Duration = Duration::from_secs(5);
const ALGORITHM: &str = "EdDSA";

/// What seals the private halves of signing keys at rest (the installation's master key ring).
pub trait Sealer: Send + Sync {
    /// Seals `plaintext` for `purpose`, with the current key.
    ///
    /// # Errors
    /// A sealing failure.
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> anyhow::Result<String>;
    /// Opens what [`Sealer::seal`] sealed for `purpose`, with whichever key of the ring sealed it.
    ///
    /// # Errors
    /// No key of the ring opens it, or it was sealed for another purpose.
    fn open(&self, purpose: &str, sealed: &str) -> anyhow::Result<Vec<u8>>;
    /// Whether `sealed` was sealed with the current key.
    fn is_current(&self, sealed: &str) -> bool;
}

/// One key pair, ready to sign and verify.
pub struct Key {
    pub kid: String,
    pub encoding: EncodingKey,
    pub decoding: DecodingKey,
    /// When a newer key replaced it (Unix milliseconds).
    pub retired_at: Option<i64>,
}

/// What `cloudsync keys list` shows of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: String,
    /// base64url of the raw public key (a JWK's `x`).
    pub public_key: String,
    pub created_at: i64,
    pub retired_at: Option<i64>,
}

struct Loaded {
    /// The newest key that is not retired: it signs.
    current: Arc<Key>,
    by_kid: HashMap<String, Arc<Key>>,
    at: Instant,
}

/// The process's view of the signing keys.
pub struct KeyRing {
    pool: DbPool,
    master: Arc<dyn Sealer>,
    grace: Duration,
    loaded: RwLock<Loaded>,
    reloading: tokio::sync::Mutex<()>,
    /// What decides when a retired key's grace period is over.
    clock: Arc<dyn Clock>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn purpose(kid: &str) -> String {
    format!("signing-key:{kid}")
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl KeyRing {
    /// Loads the key set, creating the first key on a fresh database. `grace`: how long a retired
    /// key keeps verifying.
    ///
    /// # Errors
    /// An unreachable database, or keys the master key cannot open.
    pub async fn open(pool: DbPool, master: Arc<dyn Sealer>, grace: Duration) -> anyhow::Result<Self> {
        if list(&pool).await?.iter().all(|k| k.retired_at.is_some()) {
            insert(&pool, &*master).await?;
        }
        let loaded = load(&pool, &*master).await?;
        Ok(Self {
            pool,
            master,
            grace,
            loaded: RwLock::new(loaded),
            reloading: tokio::sync::Mutex::new(()),
            clock: crate::clock::system(),
        })
    }

    /// The ring, with retired keys' grace periods ending by `clock`'s time.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key that signs new tokens.
    pub fn current(&self) -> Arc<Key> {
        Arc::clone(&self.read().current)
    }

    /// Whether the set is older than [`RELOAD_EVERY`].
    pub fn stale(&self) -> bool {
        self.read().at.elapsed() >= RELOAD_EVERY
    }

    /// The key with id `kid`, if it may still verify tokens (reloading the set once when the id is
    /// unknown here, since another process may have rotated).
    pub async fn verifying(&self, kid: &str) -> Option<Arc<Key>> {
        let found = self.read().by_kid.get(kid).cloned();
        let found = match found {
            Some(key) => Some(key),
            None => {
                if self.read().at.elapsed() >= RELOAD_AT_MOST {
                    self.reload().await;
                }
                self.read().by_kid.get(kid).cloned()
            }
        };
        let now = self.clock.now_ms();
        found.filter(|key| key.retired_at.is_none_or(|at| now < at.saturating_add(millis(self.grace))))
    }

    /// Reads the set again (errors are logged: the set in memory stays in use).
    pub async fn reload(&self) {
        let Ok(_one) = self.reloading.try_lock() else {
            // Someone else is reloading right now.
            let _ = self.reloading.lock().await;
            return;
        };
        match load(&self.pool, &*self.master).await {
            Ok(loaded) => {
                *self.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
            }
            Err(error) => tracing::warn!(error = %error, "The signing keys could not be reloaded; the known ones stay in use."),
        }
    }

    /// Adds a key that signs from now on, retires the others, and deletes keys retired longer ago
    /// than `grace`, by `clock`'s time. Returns the new key's id.
    ///
    /// # Errors
    /// An unreachable database.
    pub async fn rotate(pool: &DbPool, master: &dyn Sealer, grace: Duration, clock: &dyn Clock) -> anyhow::Result<String> {
        let kid = insert(pool, master).await?;
        let now = clock.now_ms();
        let retire = "UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL AND kid <> $2";
        let prune = "DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1";
        let expired = now.saturating_sub(millis(grace));
        on_pool!(pool, |p| {
            sqlx::query(retire).bind(now).bind(&kid).execute(p).await?;
            sqlx::query(prune).bind(expired).execute(p).await?;
        });
        Ok(kid)
    }
}

/// Seals every signing key's private half with the current master key (those sealed by an earlier
/// one); returns how many were re-sealed. Each row changes only if it is still what was read.
///
/// # Errors
/// A key no configured master key opens; store failures.
pub async fn rewrap(pool: &DbPool, master: &dyn Sealer) -> anyhow::Result<usize> {
    let rows: Vec<(String, String)> = on_pool!(pool, |p| sqlx::query_as("SELECT kid, private_key FROM signing_keys")
        .fetch_all(p)
        .await)?;
    let update = "UPDATE signing_keys SET private_key = $1 WHERE kid = $2 AND private_key = $3";
    let mut rewrapped = 0;
    for (kid, sealed) in rows {
        if master.is_current(&sealed) {
            continue;
        }
        let seed = master
            .open(&purpose(&kid), &sealed)
            .with_context(|| format!("signing key {kid} cannot be opened with the configured master keys"))?;
        let again = master.seal(&purpose(&kid), &seed).context("sealing a signing key")?;
        on_pool!(pool, |p| sqlx::query(update)
            .bind(&again)
            .bind(&kid)
            .bind(&sealed)
            .execute(p)
            .await
            .map(drop))?;
        rewrapped += 1;
    }
    Ok(rewrapped)
}

/// Every key in the database, oldest first.
///
/// # Errors
/// An unreachable database.
pub async fn list(pool: &DbPool) -> anyhow::Result<Vec<KeyInfo>> {
    type Row = (String, String, String, i64, Option<i64>);
    let query = "SELECT kid, algorithm, public_key, created_at, retired_at FROM signing_keys ORDER BY created_at, kid";
    let rows: Vec<Row> = on_pool!(pool, |p| sqlx::query_as(query).fetch_all(p).await)?;
    Ok(rows
        .into_iter()
        .map(|(kid, algorithm, public_key, created_at, retired_at)| KeyInfo {
            kid,
            algorithm,
            public_key,
            created_at,
            retired_at,
        })
        .collect())
}

/// Generates a key pair and stores it; returns its id.
async fn insert(pool: &DbPool, master: &dyn Sealer) -> anyhow::Result<String> {
    let mut seed = [0_u8; 32];
    rand::thread_rng().fill_bytes(&mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = B64URL.encode(signing.verifying_key().to_bytes());
    // The id says nothing secret: a hash of the public key, so it is stable and unique.
    let kid = blake3::hash(public.as_bytes()).to_hex()[..16].to_owned();
    let sealed = master.seal(&purpose(&kid), &seed).context("sealing a signing key")?;
    let query = "INSERT INTO signing_keys (kid, algorithm, public_key, private_key, created_at) VALUES ($1, $2, $3, $4, $5)";
    let now = now_ms();
    on_pool!(pool, |p| sqlx::query(query)
        .bind(&kid)
        .bind(ALGORITHM)
        .bind(&public)
        .bind(&sealed)
        .bind(now)
        .execute(p)
        .await
        .map(drop))?;
    Ok(kid)
}

async fn load(pool: &DbPool, master: &dyn Sealer) -> anyhow::Result<Loaded> {
    type Row = (String, String, Option<i64>);
    let query = "SELECT kid, private_key, retired_at FROM signing_keys ORDER BY created_at, kid";
    let rows: Vec<Row> = on_pool!(pool, |p| sqlx::query_as(query).fetch_all(p).await)?;
    let mut by_kid = HashMap::new();
    let mut current = None;
    for (kid, sealed, retired_at) in rows {
        let seed = master
            .open(&purpose(&kid), &sealed)
            .with_context(|| format!("signing key {kid} cannot be opened with this master key"))?;
        let seed: [u8; 32] = seed.try_into().map_err(|_| anyhow::anyhow!("signing key {kid} is malformed"))?;
        let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
        let der = signing.to_pkcs8_der().context("encoding a signing key")?;
        let key = Arc::new(Key {
            kid: kid.clone(),
            encoding: EncodingKey::from_ed_der(der.as_bytes()),
            decoding: DecodingKey::from_ed_der(&signing.verifying_key().to_bytes()),
            retired_at,
        });
        if retired_at.is_none() {
            // Ordered oldest first: the last unretired key is the newest.
            current = Some(Arc::clone(&key));
        }
        by_kid.insert(kid, key);
    }
    let current = current.context("no signing key is in use (run `cloudsync keys rotate`)")?;
    Ok(Loaded {
        current,
        by_kid,
        at: Instant::now(),
    })
}
