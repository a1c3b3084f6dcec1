//! File paths sealed in the log. With `seal_paths` configured, every path inside an event (a file's
//! path and its moves, a pair's folders, a decision's paths, a kept version's paths) is stored
//! sealed with its owner's data key, as `{"sealed_path": {nonce, ciphertext}}` in place of the text,
//! and so are the reason a job gave for stopping (it may name a file) and the labels an image
//! classifier gave a picture (they tell what it shows). The associated data of a
//! sealed path is `path:<user>`, apart from the user's other sealed values. [`SealingStore`] sits between
//! CloudSync and the event store: it seals on the way in and opens on the way out, so the
//! aggregates, the projectors and the API see plain events. Sealed paths are opened whether or not
//! sealing is configured now, so it can be turned on (or off) on a running installation.
//!
//! Hashes of passwords, tokens and codes (the fields of [`HASHED_FIELDS`] that hold text) are sealed
//! the same way in every new event, configured or not, as `{"sealed_hash": {nonce, ciphertext}}`
//! with the associated data `hash:<user>`: the log never holds a hash someone could try passwords
//! against once the account is erased. Hashes in events written before are left as they are.
//!
//! Once an account is erased its key is gone and its paths and hashes read as `erased`: its events
//! stay in the log and still replay (the projectors write no row for an erased account).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_domain::UserId;
use cloudsync_domain::events::HASHED_FIELDS;
use cloudsync_eventstore::{AppendOutcome, EventMetadata, EventStore, RecordedEvent, Snapshot, StoreError, StreamAppend};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::secrets::{KeyLookup, open_with, seal_with};
use crate::{CommandError, Vault};

/// The key that marks a sealed path.
const MARK: &str = "sealed_path";
/// The key that marks a sealed hash.
const HASH_MARK: &str = "sealed_hash";
/// What an erased account's paths read as (a path that names nothing of theirs).
const UNREADABLE: &str = "erased";

/// A data key unwrapped at an instant (`None`: the account was erased).
type KeptKey = (Instant, Option<[u8; 32]>);

/// The event store with paths sealed (when `seal` is set) and opened.
pub struct SealingStore {
    inner: Arc<dyn EventStore>,
    vault: Vault,
    seal: bool,
    /// Data keys unwrapped a moment ago (`None`: the account was erased), with when.
    keys: Mutex<HashMap<UserId, KeptKey>>,
}

impl SealingStore {
    /// Wraps `inner`; `seal`: seal the paths of new events (sealed ones are always opened).
    pub fn new(inner: Arc<dyn EventStore>, vault: Vault, seal: bool) -> Self {
        Self {
            inner,
            vault,
            seal,
            keys: Mutex::default(),
        }
    }
}

fn store_error(err: CommandError) -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(format!("sealed paths: {err}")))
}

/// Whose key seals an event's paths: its owner, else its user, else whoever caused it.
fn owner(payload: &Value, metadata: &EventMetadata) -> Option<UserId> {
    ["owner_id", "user_id"]
        .iter()
        .find_map(|key| payload.get(*key).and_then(Value::as_str).and_then(|id| Uuid::parse_str(id).ok()))
        .or(metadata.actor_id)
        .map(UserId::from_uuid)
}

/// Whether `key` of an object holds a path (or a picture's label, sealed as one). `to` is a path beside `from` (a move, a rename), but
/// a side where the object also has a `path` (a copy's destination side).
fn is_path(key: &str, object: &Map<String, Value>) -> bool {
    matches!(key, "path" | "from" | "provider_path" | "label") || (key == "to" && !object.contains_key("path"))
}

/// Seals every path in `value`; `reason` too at the top of a finished job.
fn seal_paths(value: &mut Value, key: &[u8; 32], aad: &[u8], top_reason: bool) -> Result<(), CommandError> {
    match value {
        Value::Object(object) => {
            let paths: Vec<String> = object
                .iter()
                .filter(|(name, v)| v.is_string() && (is_path(name, object) || (top_reason && *name == "reason")))
                .map(|(name, _)| name.clone())
                .collect();
            for (name, v) in object.iter_mut() {
                if paths.contains(name) {
                    let text = v.as_str().unwrap_or_default();
                    let (nonce, ciphertext) = seal_with(key, text.as_bytes(), aad)?;
                    *v = json!({ MARK: { "nonce": B64.encode(nonce), "ciphertext": B64.encode(ciphertext) } });
                } else {
                    seal_paths(v, key, aad, false)?;
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                seal_paths(item, key, aad, false)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Whether `value` holds a path [`seal_paths`] would seal.
fn has_paths(value: &Value, top_reason: bool) -> bool {
    match value {
        Value::Object(object) => object
            .iter()
            .any(|(name, v)| (v.is_string() && (is_path(name, object) || (top_reason && name == "reason"))) || has_paths(v, false)),
        Value::Array(items) => items.iter().any(|v| has_paths(v, false)),
        _ => false,
    }
}

/// Seals, with `key`, every hash at the top of `payload` (a text, or a list of texts).
fn seal_hashes(payload: &mut Value, key: &[u8; 32], aad: &[u8]) -> Result<(), CommandError> {
    let seal = |value: &mut Value| -> Result<(), CommandError> {
        let text = value.as_str().unwrap_or_default();
        let (nonce, ciphertext) = seal_with(key, text.as_bytes(), aad)?;
        *value = json!({ HASH_MARK: { "nonce": B64.encode(nonce), "ciphertext": B64.encode(ciphertext) } });
        Ok(())
    };
    let Some(object) = payload.as_object_mut() else { return Ok(()) };
    for (_, value) in object.iter_mut().filter(|(name, _)| HASHED_FIELDS.contains(&name.as_str())) {
        match value {
            Value::String(_) => seal(value)?,
            Value::Array(items) => items.iter_mut().filter(|item| item.is_string()).try_for_each(seal)?,
            _ => {}
        }
    }
    Ok(())
}

/// Whether `payload` has a hash [`seal_hashes`] would seal.
fn has_hashes(payload: &Value) -> bool {
    payload.as_object().is_some_and(|object| {
        object.iter().any(|(name, value)| {
            HASHED_FIELDS.contains(&name.as_str())
                && (value.is_string() || value.as_array().is_some_and(|items| items.iter().any(Value::is_string)))
        })
    })
}

/// A sealed value: whether it is a hash, its nonce and its ciphertext.
fn sealed_text(value: &Value) -> Option<(bool, &str, &str)> {
    let object = value.as_object().filter(|o| o.len() == 1)?;
    let (hash, sealed) = match (object.get(MARK), object.get(HASH_MARK)) {
        (Some(sealed), _) => (false, sealed),
        (None, Some(sealed)) => (true, sealed),
        (None, None) => return None,
    };
    Some((hash, sealed.get("nonce")?.as_str()?, sealed.get("ciphertext")?.as_str()?))
}

fn has_sealed(value: &Value) -> bool {
    match value {
        Value::Object(object) => sealed_text(value).is_some() || object.values().any(has_sealed),
        Value::Array(items) => items.iter().any(has_sealed),
        _ => false,
    }
}

/// Opens every sealed path and hash in `value` with `key` (the associated data as [`aad`] and
/// [`hash_aad`] make it for `user`); without a key (an erased account), or where it does not open,
/// the value reads as [`UNREADABLE`].
fn open_paths(value: &mut Value, key: Option<&[u8; 32]>, user: Option<UserId>) {
    if let Some((hash, nonce, ciphertext)) = sealed_text(value) {
        let opened = key.zip(user).and_then(|(key, user)| {
            let (nonce, ciphertext) = (B64.decode(nonce).ok()?, B64.decode(ciphertext).ok()?);
            let aad = if hash { hash_aad(user) } else { aad(user) };
            open_with(key, &nonce, &ciphertext, &aad).ok()
        });
        let text = opened.and_then(|bytes| String::from_utf8(bytes).ok());
        *value = Value::String(text.unwrap_or_else(|| UNREADABLE.to_owned()));
        return;
    }
    match value {
        Value::Object(object) => object.values_mut().for_each(|v| open_paths(v, key, user)),
        Value::Array(items) => items.iter_mut().for_each(|v| open_paths(v, key, user)),
        _ => {}
    }
}

/// How long an unwrapped data key is kept in memory.
const KEY_TTL: Duration = Duration::from_secs(30);

/// The associated data of a sealed path: apart from the user's other sealed values, so that no
/// other sealed value opens as a path.
fn aad(user: UserId) -> Vec<u8> {
    format!("path:{user}").into_bytes()
}

/// The associated data of a sealed hash, apart from the user's paths and other sealed values.
fn hash_aad(user: UserId) -> Vec<u8> {
    format!("hash:{user}").into_bytes()
}

/// The associated data of a sealed snapshot: apart from the user's other sealed values, and bound
/// to its stream, version and schema, so that no snapshot opens in another's place.
fn snapshot_aad(user: UserId, stream: &str, snapshot: &Snapshot) -> Vec<u8> {
    format!("snapshot:{user}:{stream}:{}:{}", snapshot.version, snapshot.schema).into_bytes()
}

/// The length of the nonce that starts a sealed snapshot's data.
const NONCE_LEN: usize = 12;

/// Whether an event of this type says at its top why a job stopped (text that may name a file).
fn has_reason(event_type: &str) -> bool {
    event_type.starts_with("SyncJob")
}

impl SealingStore {
    /// `user`'s data key (`None`: erased), from memory when it was unwrapped a moment ago.
    async fn key(&self, user: UserId, create: bool) -> Result<Option<[u8; 32]>, StoreError> {
        // A key to seal with is looked up again when none was kept: it may have been made since.
        if let Ok(keys) = self.keys.lock()
            && let Some((at, key)) = keys.get(&user)
            && at.elapsed() < KEY_TTL
            && (key.is_some() || !create)
        {
            return Ok(*key);
        }
        let key = if create {
            match self.vault.key_to_seal(user).await {
                Ok(key) => Some(key),
                Err(CommandError::NotFound(_)) => None,
                Err(err) => return Err(store_error(err)),
            }
        } else {
            match self.vault.key_to_open(user).await.map_err(store_error)? {
                KeyLookup::Key(key) => Some(key),
                // Not remembered: another process may make the key a moment later, and what it
                // seals must not read as erased here meanwhile (nor be folded into a snapshot so).
                KeyLookup::Missing => return Ok(None),
                KeyLookup::Erased => None,
            }
        };
        if let Ok(mut keys) = self.keys.lock() {
            keys.retain(|_, (at, _)| at.elapsed() < KEY_TTL);
            keys.insert(user, (Instant::now(), key));
        }
        Ok(key)
    }

    /// Whose an event is: its owner or user, else whoever caused it, else the owner named by the
    /// first event of its stream (a job's later events name nobody).
    async fn owner_of(&self, payload: &Value, metadata: &EventMetadata, stream: &str) -> Result<Option<UserId>, StoreError> {
        if let Some(user) = owner(payload, metadata) {
            return Ok(Some(user));
        }
        let first = self.inner.read_stream(stream).await?;
        Ok(first.first().and_then(|e| {
            owner(
                &e.payload,
                &EventMetadata {
                    actor_id: None,
                    ..e.metadata.clone()
                },
            )
        }))
    }

    async fn open_all(&self, mut events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>, StoreError> {
        for event in &mut events {
            if !has_sealed(&event.payload) {
                continue;
            }
            let Some(user) = self.owner_of(&event.payload, &event.metadata, &event.stream_id).await? else {
                open_paths(&mut event.payload, None, None);
                continue;
            };
            let key = self.key(user, false).await?;
            open_paths(&mut event.payload, key.as_ref(), Some(user));
        }
        Ok(events)
    }
}

#[async_trait]
impl EventStore for SealingStore {
    async fn append(&self, mut batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        for batch in &mut batches {
            for event in &mut batch.events {
                let top_reason = has_reason(&event.event_type);
                let paths = self.seal && has_paths(&event.payload, top_reason);
                let hashes = has_hashes(&event.payload);
                if !paths && !hashes {
                    continue;
                }
                // Never in the clear: an event whose owner cannot be told is refused.
                let user = self
                    .owner_of(&event.payload, &event.metadata, &batch.stream)
                    .await?
                    .ok_or_else(|| {
                        StoreError::Invalid(format!(
                            "{} holds what is sealed but names no owner to seal it for",
                            event.event_type
                        ))
                    })?;
                // An erased account (a scan or run still going): refused rather than recorded in
                // the clear.
                let key = self
                    .key(user, true)
                    .await?
                    .ok_or_else(|| StoreError::Invalid("the account was erased; nothing more is recorded for it".into()))?;
                if hashes {
                    seal_hashes(&mut event.payload, &key, &hash_aad(user)).map_err(store_error)?;
                }
                if paths {
                    seal_paths(&mut event.payload, &key, &aad(user), top_reason).map_err(store_error)?;
                }
            }
        }
        // An erased account's key leaves memory with it (other processes let it go within KEY_TTL).
        let erased: Vec<UserId> = batches
            .iter()
            .flat_map(|batch| &batch.events)
            .filter(|event| event.event_type == "UserDeleted")
            .filter_map(|event| owner(&event.payload, &event.metadata))
            .collect();
        let outcome = self.inner.append(batches).await;
        if !erased.is_empty()
            && let Ok(mut keys) = self.keys.lock()
        {
            for user in erased {
                keys.remove(&user);
            }
        }
        outcome
    }

    /// A snapshot is opened with its owner's key; where it does not open (the account was erased,
    /// the row was changed or names no owner) there is none.
    async fn snapshot(&self, stream: &str) -> Result<Option<Snapshot>, StoreError> {
        let Some(snapshot) = self.inner.snapshot(stream).await? else {
            return Ok(None);
        };
        let Some(user) = snapshot.owner.map(UserId::from_uuid) else {
            return Ok(None);
        };
        let Some(key) = self.key(user, false).await? else { return Ok(None) };
        let opened = snapshot
            .data
            .split_at_checked(NONCE_LEN)
            .and_then(|(nonce, ciphertext)| open_with(&key, nonce, ciphertext, &snapshot_aad(user, stream, &snapshot)).ok());
        Ok(opened.map(|data| Snapshot { data, ..snapshot }))
    }

    /// A snapshot is sealed with its owner's key, configured or not (it holds their paths), as the
    /// nonce followed by the ciphertext; one that names no owner is refused.
    async fn save_snapshot(&self, stream: &str, mut snapshot: Snapshot) -> Result<(), StoreError> {
        let user = snapshot
            .owner
            .map(UserId::from_uuid)
            .ok_or_else(|| StoreError::Invalid("a snapshot names no owner to seal it for".into()))?;
        let key = self
            .key(user, true)
            .await?
            .ok_or_else(|| StoreError::Invalid("the account was erased; nothing more is recorded for it".into()))?;
        let (mut sealed, ciphertext) = seal_with(&key, &snapshot.data, &snapshot_aad(user, stream, &snapshot)).map_err(store_error)?;
        sealed.extend(ciphertext);
        snapshot.data = sealed;
        self.inner.save_snapshot(stream, snapshot).await
    }

    async fn read_stream(&self, stream: &str) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream(stream).await?;
        self.open_all(events).await
    }

    async fn read_stream_after(&self, stream: &str, after: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_stream_after(stream, after).await?;
        self.open_all(events).await
    }

    async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_all(after, limit).await?;
        self.open_all(events).await
    }

    async fn read_by_actor(&self, actor: Uuid, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self.inner.read_by_actor(actor, after, limit).await?;
        self.open_all(events).await
    }

    async fn head(&self) -> Result<i64, StoreError> {
        self.inner.head().await
    }

    fn watch(&self) -> watch::Receiver<i64> {
        self.inner.watch()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn commit_stats(&self) -> cloudsync_eventstore::CommitStats {
        self.inner.commit_stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_sealed_where_they_are_paths_and_open_back_exactly() {
        let key = [7_u8; 32];
        let original = json!({
            "owner_id": "00000000-0000-0000-0000-000000000001",
            "path": "docs/diary.txt",
            "decision": { "path": "a.txt", "actions": [
                { "op": "copy", "to": "target", "from": "a.txt", "path": "a.txt" },
                { "op": "rename", "side": "source", "from": "old.txt", "to": "new.txt" }
            ] },
            "reason": "failed on docs/diary.txt",
            "size": 3,
        });
        let user = UserId::from_uuid(Uuid::from_u128(1));
        let mut sealed = original.clone();
        seal_paths(&mut sealed, &key, &aad(user), true).expect("sealed");
        let text = sealed.to_string();
        for clear in ["diary", "a.txt", "old.txt", "new.txt"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert_eq!(sealed["decision"]["actions"][0]["to"], json!("target"), "a side stays");
        assert!(has_sealed(&sealed));
        assert!(has_paths(&original, false) && !has_paths(&json!({ "user_id": "x", "at": "now" }), true));
        let mut opened = sealed.clone();
        open_paths(&mut opened, Some(&key), Some(user));
        assert_eq!(opened, original);
        let mut erased = sealed;
        open_paths(&mut erased, None, Some(user));
        assert_eq!(erased["path"], json!(UNREADABLE));
        assert_eq!(erased["decision"]["actions"][1]["to"], json!(UNREADABLE));
        let mut wrong = original.clone();
        seal_paths(&mut wrong, &key, &aad(user), false).expect("sealed");
        open_paths(&mut wrong, Some(&[8_u8; 32]), Some(user));
        assert_eq!(wrong["path"], json!(UNREADABLE), "another key opens nothing");
        assert_eq!(wrong["reason"], original["reason"], "reason only at the top of a finished job");
    }

    #[test]
    fn hashes_are_sealed_apart_from_paths_and_open_back_exactly() {
        let key = [7_u8; 32];
        let user = UserId::from_uuid(Uuid::from_u128(1));
        let original = json!({
            "user_id": user.to_string(),
            "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
            "recovery_codes": ["9f86d081", "60303ae2"],
            "passkey": { "cred": "public" },
            "reason": "changed",
        });
        assert!(has_hashes(&original) && !has_hashes(&json!({ "user_id": "x", "passkey": {} })));
        let mut sealed = original.clone();
        seal_hashes(&mut sealed, &key, &hash_aad(user)).expect("sealed");
        let text = sealed.to_string();
        for clear in ["argon2", "9f86d081", "60303ae2"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert_eq!(sealed["passkey"], original["passkey"], "a passkey's public record is no hash");
        assert!(sealed["recovery_codes"][1][HASH_MARK].is_object(), "each code on its own");
        let mut opened = sealed.clone();
        open_paths(&mut opened, Some(&key), Some(user));
        assert_eq!(opened, original);
        // A sealed hash does not open as a path of the same user, nor for another user.
        let mut as_path = sealed["password_hash"].clone();
        as_path = json!({ MARK: as_path[HASH_MARK].clone() });
        open_paths(&mut as_path, Some(&key), Some(user));
        assert_eq!(as_path, json!(UNREADABLE));
        let mut other = sealed.clone();
        open_paths(&mut other, Some(&key), Some(UserId::from_uuid(Uuid::from_u128(2))));
        assert_eq!(other["password_hash"], json!(UNREADABLE));
        let mut erased = sealed;
        open_paths(&mut erased, None, Some(user));
        assert_eq!(erased["recovery_codes"], json!([UNREADABLE, UNREADABLE]));
    }
}
