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

/// What a checkpoint signs: the chain's link at `position`, and the signature of the checkpoint
/// before it (empty for the first), so that removing a checkpoint breaks the next one's signature.
fn message(position: i64, link: &Link, previous: &[u8]) -> Vec<u8> {
    let mut message = b"cloudsync chain checkpoint\n".to_vec();
    message.extend_from_slice(&position.to_le_bytes());
    message.extend_from_slice(link);
    message.extend_from_slice(previous);
    message
}

/// A stored checkpoint: position, link, key id, signature.
type Checkpoint = (i64, Vec<u8>, String, Vec<u8>);

async fn checkpoints(db: &Database) -> anyhow::Result<Vec<Checkpoint>> {
    let query = "SELECT position, hash, key_id, signature FROM chain_checkpoints ORDER BY position";
    on_pool!(&db.pool, |p| sqlx::query_as(query).fetch_all(p).await).context("reading the signed checkpoints")
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

    /// Signs the chain's tip unless it is signed already, after checking every link since the last
    /// checkpoint (a log that does not verify is not signed); the position signed. Each checkpoint
    /// is also logged (position and link), for a record outside the database.
    ///
    /// # Errors
    /// An unreadable chain, a log that does not verify, or the checkpoint cannot be stored.
    pub async fn checkpoint(&self, db: &Database) -> anyhow::Result<Option<i64>> {
        let Some(key) = self.keys.first() else { return Ok(None) };
        let (position, link) = chain::tip(&db.pool).await?;
        let last = checkpoints(db).await?.pop();
        if position == 0 || last.as_ref().is_some_and(|(signed, ..)| *signed >= position) {
            return Ok(None);
        }
        let (from, from_link, previous) = match &last {
            Some((signed, hash, _, signature)) => (*signed, Link::try_from(hash.as_slice())?, signature.clone()),
            None => (0, chain::GENESIS, Vec::new()),
        };
        match chain::verify_from(db, from, from_link, &[]).await? {
            Ok(verified) if verified.events >= position => {}
            Ok(_) => return Ok(None),
            Err(finding) => anyhow::bail!("the event log does not verify since the last checkpoint ({finding}); nothing is signed"),
        }
        let signature = key.sign(&message(position, &link, &previous)).to_bytes().to_vec();
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
        tracing::info!(
            position,
            link = %data_encoding::HEXLOWER.encode(&link),
            key = %key_id(key),
            "Event chain checkpoint signed."
        );
        Ok(Some(position))
    }

    /// Signs the tip every [`CHECKPOINT_EVERY`] until `shutdown`. The last signature is the
    /// server's, once every task that appends has stopped (see `Server::stop`).
    pub async fn run(self: std::sync::Arc<Self>, db: Database, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(CHECKPOINT_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => self.sign_tip(&db).await,
            }
        }
    }

    /// [`Self::checkpoint`], with a failure logged rather than returned.
    pub async fn sign_tip(&self, db: &Database) {
        if let Err(error) = self.checkpoint(db).await {
            tracing::warn!(error = %format!("{error:#}"), "Could not sign the event chain's tip.");
        }
    }

    /// Signs again, with the current key, every checkpoint an earlier master key signed (after
    /// checking that signature), so that the earlier key may go; how many.
    ///
    /// # Errors
    /// An unreadable or unwritable checkpoint table.
    pub async fn resign(&self, db: &Database) -> anyhow::Result<usize> {
        let Some(current) = self.keys.first() else { return Ok(0) };
        // Each signature covers the one before it: re-signing one means re-signing those after it.
        let (mut old_previous, mut new_previous) = (Vec::new(), Vec::new());
        let mut resigned = 0;
        for (position, hash, kid, signature) in checkpoints(db).await? {
            let link = Link::try_from(hash.as_slice()).ok();
            let valid = link
                .zip(self.keys.iter().find(|key| key_id(key) == kid))
                .is_some_and(|(link, key)| {
                    ed25519_dalek::Signature::from_slice(&signature)
                        .is_ok_and(|sig| key.verifying_key().verify(&message(position, &link, &old_previous), &sig).is_ok())
                });
            let Some(link) = link.filter(|_| valid) else {
                anyhow::bail!("the checkpoint at {position} does not verify; it and those after it were not signed again");
            };
            let renewed = current.sign(&message(position, &link, &new_previous)).to_bytes().to_vec();
            if kid != key_id(current) || renewed != signature {
                let update = "UPDATE chain_checkpoints SET key_id = $1, signature = $2 WHERE position = $3";
                on_pool!(&db.pool, |p| sqlx::query(update)
                    .bind(key_id(current))
                    .bind(renewed.clone())
                    .bind(position)
                    .execute(p)
                    .await
                    .map(drop))?;
                resigned += 1;
            }
            old_previous = signature;
            new_previous = renewed;
        }
        Ok(resigned)
    }

    /// Walks the whole log (see `chain::verify`), then checks every signed checkpoint against the
    /// links the walk computed.
    ///
    /// # Errors
    /// An unreadable log or checkpoint table. A log that does not verify is `Ok` with the finding.
    pub async fn verify(&self, db: &Database, expected: Option<(i64, Link)>) -> anyhow::Result<Report> {
        let checkpoints = checkpoints(db).await?;
        let mut positions: Vec<i64> = checkpoints.iter().map(|c| c.0).collect();
        positions.extend(expected.map(|(position, _)| position));
        let verified = match chain::verify(db, &positions).await.context("reading the log")? {
            Ok(verified) => verified,
            Err(finding) => return Ok(Report::Tampered(finding.to_string())),
        };
        if let Some((position, link)) = expected {
            match verified.links_at.get(&position) {
                Some(found) if *found == link => {}
                Some(_) => {
                    return Ok(Report::Tampered(format!(
                        "the log's link at event {position} is not the one you kept: it was rewritten at or before {position}"
                    )));
                }
                None => {
                    return Ok(Report::Tampered(format!(
                        "the log ends before event {position}, which you kept a link of"
                    )));
                }
            }
        }
        let mut previous: &[u8] = &[];
        for (position, hash, kid, signature) in &checkpoints {
            let Some(key) = self.keys.iter().find(|key| key_id(key) == *kid) else {
                return Ok(Report::Tampered(format!(
                    "the checkpoint at {position} is signed by key {kid}, which no configured master key makes"
                )));
            };
            let signed = Link::try_from(hash.as_slice()).ok().and_then(|link| {
                let signature = ed25519_dalek::Signature::from_slice(signature).ok()?;
                key.verifying_key()
                    .verify(&message(*position, &link, previous), &signature)
                    .ok()
                    .map(|()| link)
            });
            let Some(link) = signed else {
                return Ok(Report::Tampered(format!(
                    "the checkpoint at {position} does not carry a valid signature (it, or the checkpoint before it, was changed or removed)"
                )));
            };
            previous = signature;
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
            last_checkpoint: checkpoints.last().map(|c| c.0),
        })
    }
}

/// A link kept outside the database, `<position>:<64 hex digits>`.
///
/// # Errors
/// Anything else.
pub fn parse_kept(text: &str) -> anyhow::Result<(i64, Link)> {
    let bad = || anyhow::anyhow!("--expect takes <position>:<link in hex>, as the server logs each checkpoint");
    let (position, hex) = text.trim().split_once(':').ok_or_else(bad)?;
    let position: i64 = position.parse().map_err(|_| bad())?;
    let link = data_encoding::HEXLOWER_PERMISSIVE.decode(hex.as_bytes()).map_err(|_| bad())?;
    Ok((position, Link::try_from(link.as_slice()).map_err(|_| bad())?))
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
