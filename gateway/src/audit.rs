//! Signed checkpoints of the event log's hash chain, and `cloudsync verify`.
//!
//! The chain itself (`cloudsync_eventstore::chain`) shows an event changed, removed, inserted or
//! reordered; someone who rewrites the whole chain to match a forged log is caught by checkpoints:
//! now and then a process signs the chain's tip (its position and link) with Ed25519 under a key
//! derived from the master key, which the database does not hold. Verification needs the master
//! key (or one of the previous ones the checkpoint was signed under); the public keys it prints
//! let anyone else check a checkpoint they were given.

use std::time::Duration;

use anyhow::Context as _;
use cloudsync_commands::MasterKey;
use cloudsync_eventstore::chain::{self, Link};
use cloudsync_eventstore::{Database, on_pool};
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use tokio_util::sync::CancellationToken;

/// How often the chain's tip is signed (when the log has moved).
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// The checkpoint signing keys: the current master key's first, then earlier ones' (to verify
/// checkpoints signed before a rotation).
pub struct ChainSigner {
    keys: Vec<SigningKey>,
}

/// What a checkpoint signs.
fn message(position: i64, link: &Link) -> Vec<u8> {
    let mut message = b"cloudsync chain checkpoint\n".to_vec();
    message.extend_from_slice(&position.to_le_bytes());
    message.extend_from_slice(link);
    message
}

/// A public key's id: the first 16 hex digits of the key.
fn key_id(key: &SigningKey) -> String {
    data_encoding::HEXLOWER.encode(&key.verifying_key().to_bytes()[..8])
}

impl ChainSigner {
    pub fn new(master: &MasterKey) -> Self {
        Self {
            keys: master.derive("chain checkpoints").iter().map(SigningKey::from_bytes).collect(),
        }
    }

    /// The current public key, hex.
    pub fn public_key(&self) -> String {
        self.keys
            .first()
            .map(|key| data_encoding::HEXLOWER.encode(&key.verifying_key().to_bytes()))
            .unwrap_or_default()
    }

    /// Signs the chain's tip unless it is signed already; the position signed.
    ///
    /// # Errors
    /// An unreadable chain, or the checkpoint cannot be stored.
    pub async fn checkpoint(&self, db: &Database) -> anyhow::Result<Option<i64>> {
        let Some(key) = self.keys.first() else { return Ok(None) };
        let (position, link) = chain::tip(&db.pool).await?;
        let query = "SELECT COALESCE(MAX(position), 0) FROM chain_checkpoints";
        let signed: i64 = on_pool!(&db.pool, |p| sqlx::query_scalar(query).fetch_one(p).await)?;
        if position == 0 || position <= signed {
            return Ok(None);
        }
        let signature = key.sign(&message(position, &link)).to_bytes().to_vec();
        let insert = "INSERT INTO chain_checkpoints (position, hash, key_id, signature, signed_at) VALUES ($1, $2, $3, $4, $5) \
                      ON CONFLICT (position) DO NOTHING";
        on_pool!(&db.pool, |p| sqlx::query(insert)
            .bind(position)
            .bind(link.to_vec())
            .bind(key_id(key))
            .bind(signature.clone())
            .bind(chrono::Utc::now())
            .execute(p)
            .await
            .map(drop))?;
        Ok(Some(position))
    }

    /// Signs the tip every [`CHECKPOINT_EVERY`] until `shutdown`, and once more then.
    pub async fn run(self, db: Database, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            let stopping = tokio::select! {
                () = shutdown.cancelled() => true,
                _ = every.tick() => false,
            };
            if let Err(error) = self.checkpoint(&db).await {
                tracing::warn!(error = %format!("{error:#}"), "Could not sign the event chain's tip.");
            }
            if stopping {
                return;
            }
        }
    }

    /// Signs again, with the current key, every checkpoint an earlier master key signed (after
    /// checking that signature), so that the earlier key may go; how many.
    ///
    /// # Errors
    /// An unreadable or unwritable checkpoint table.
    pub async fn resign(&self, db: &Database) -> anyhow::Result<usize> {
        let Some(current) = self.keys.first() else { return Ok(0) };
        let query = "SELECT position, hash, key_id, signature FROM chain_checkpoints WHERE key_id <> $1";
        let older: Vec<(i64, Vec<u8>, String, Vec<u8>)> =
            on_pool!(&db.pool, |p| sqlx::query_as(query).bind(key_id(current)).fetch_all(p).await)?;
        let mut resigned = 0;
        for (position, hash, kid, signature) in older {
            let Some(key) = self.keys.iter().find(|key| key_id(key) == kid) else {
                continue;
            };
            let Ok(link) = Link::try_from(hash.as_slice()) else { continue };
            let Ok(signature) = ed25519_dalek::Signature::from_slice(&signature) else {
                continue;
            };
            if key.verifying_key().verify(&message(position, &link), &signature).is_err() {
                continue;
            }
            let update = "UPDATE chain_checkpoints SET key_id = $1, signature = $2 WHERE position = $3";
            let signature = current.sign(&message(position, &link)).to_bytes().to_vec();
            on_pool!(&db.pool, |p| sqlx::query(update)
                .bind(key_id(current))
                .bind(signature.clone())
                .bind(position)
                .execute(p)
                .await
                .map(drop))?;
            resigned += 1;
        }
        Ok(resigned)
    }

    /// Walks the whole log (see `chain::verify`), then checks every signed checkpoint against the
    /// links the walk computed.
    ///
    /// # Errors
    /// An unreadable log or checkpoint table. A log that does not verify is `Ok` with the finding.
    pub async fn verify(&self, db: &Database) -> anyhow::Result<Report> {
        let query = "SELECT position, hash, key_id, signature FROM chain_checkpoints ORDER BY position";
        let checkpoints: Vec<(i64, Vec<u8>, String, Vec<u8>)> =
            on_pool!(&db.pool, |p| sqlx::query_as(query).fetch_all(p).await).context("reading the signed checkpoints")?;
        let positions: Vec<i64> = checkpoints.iter().map(|c| c.0).collect();
        let verified = match chain::verify(db, &positions).await.context("reading the log")? {
            Ok(verified) => verified,
            Err(finding) => return Ok(Report::Tampered(finding.to_string())),
        };
        for (position, hash, kid, signature) in &checkpoints {
            let Some(key) = self.keys.iter().find(|key| key_id(key) == *kid) else {
                return Ok(Report::Tampered(format!(
                    "the checkpoint at {position} is signed by key {kid}, which no configured master key makes"
                )));
            };
            let signed = Link::try_from(hash.as_slice()).ok().and_then(|link| {
                let signature = ed25519_dalek::Signature::from_slice(signature).ok()?;
                key.verifying_key()
                    .verify(&message(*position, &link), &signature)
                    .ok()
                    .map(|()| link)
            });
            let Some(link) = signed else {
                return Ok(Report::Tampered(format!(
                    "the checkpoint at {position} does not carry a valid signature"
                )));
            };
            match verified.links_at.get(position) {
                None => {
                    return Ok(Report::Tampered(format!(
                        "events up to {position} were signed for, but the log ends at {}: events were removed from its end",
                        verified.events
                    )));
                }
                Some(computed) if *computed != link => {
                    let after = checkpoints.iter().map(|c| c.0).filter(|p| p < position).max().unwrap_or(0);
                    return Ok(Report::Tampered(format!(
                        "the log was rewritten between events {} and {position}: its chain differs from the one signed at {position}",
                        after + 1
                    )));
                }
                Some(_) => {}
            }
        }
        Ok(Report::Intact {
            events: verified.events,
            head: data_encoding::HEXLOWER.encode(&verified.head),
            checkpoints: checkpoints.len(),
            last_checkpoint: positions.last().copied(),
        })
    }
}

/// What `cloudsync verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Intact {
        events: i64,
        head: String,
        checkpoints: usize,
        last_checkpoint: Option<i64>,
    },
    /// The first thing wrong, in words.
    Tampered(String),
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Intact {
                events,
                head,
                checkpoints,
                last_checkpoint,
            } => {
                write!(f, "intact: {events} events, chain head {head}, {checkpoints} signed checkpoints")?;
                match last_checkpoint {
                    Some(at) => write!(f, " (the last at event {at})"),
                    None => Ok(()),
                }
            }
            Self::Tampered(why) => write!(f, "tampered: {why}"),
        }
    }
}
