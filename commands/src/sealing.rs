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
//! Once an account is erased its key is gone and its paths read as `erased`: its events stay in the
//! log and still replay (the projectors write no row for an erased account).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cloudsync_domain::UserId;
use cloudsync_eventstore::{AppendOutcome, EventMetadata, EventStore, RecordedEvent, StoreError, StreamAppend};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use uuid::Uuid;

use crate::secrets::{open_with, seal_with};
use crate::{CommandError, Vault};

/// The key that marks a sealed path.
const MARK: &str = "sealed_path";
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

fn sealed_text(value: &Value) -> Option<(&str, &str)> {
    let sealed = value.as_object().filter(|o| o.len() == 1)?.get(MARK)?;
    Some((sealed.get("nonce")?.as_str()?, sealed.get("ciphertext")?.as_str()?))
}

fn has_sealed(value: &Value) -> bool {
    match value {
        Value::Object(object) => sealed_text(value).is_some() || object.values().any(has_sealed),
        Value::Array(items) => items.iter().any(has_sealed),
        _ => false,
    }
}

/// Opens every sealed path in `value` with `key`; without a key (an erased account), or where it
/// does not open, the path reads as [`UNREADABLE`].
fn open_paths(value: &mut Value, key: Option<&[u8; 32]>, aad: &[u8]) {
    if let Some((nonce, ciphertext)) = sealed_text(value) {
        let opened = key.and_then(|key| {
            let (nonce, ciphertext) = (B64.decode(nonce).ok()?, B64.decode(ciphertext).ok()?);
            open_with(key, &nonce, &ciphertext, aad).ok()
        });
        let text = opened.and_then(|bytes| String::from_utf8(bytes).ok());
        *value = Value::String(text.unwrap_or_else(|| UNREADABLE.to_owned()));
        return;
    }
    match value {
        Value::Object(object) => object.values_mut().for_each(|v| open_paths(v, key, aad)),
        Value::Array(items) => items.iter_mut().for_each(|v| open_paths(v, key, aad)),
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

/// Whether an event of this type says at its top why a job stopped (text that may name a file).
fn has_reason(event_type: &str) -> bool {
    event_type.starts_with("SyncJob")
}

impl SealingStore {
    /// `user`'s data key (`None`: erased), from memory when it was unwrapped a moment ago.
    async fn key(&self, user: UserId, create: bool) -> Result<Option<[u8; 32]>, StoreError> {
        if let Ok(keys) = self.keys.lock()
            && let Some((at, key)) = keys.get(&user)
            && at.elapsed() < KEY_TTL
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
            self.vault.key_to_open(user).await.map_err(store_error)?
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
                open_paths(&mut event.payload, None, &[]);
                continue;
            };
            let key = self.key(user, false).await?;
            open_paths(&mut event.payload, key.as_ref(), &aad(user));
        }
        Ok(events)
    }
}

#[async_trait]
impl EventStore for SealingStore {
    async fn append(&self, mut batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        if self.seal {
            for batch in &mut batches {
                for event in &mut batch.events {
                    let top_reason = has_reason(&event.event_type);
                    if !has_paths(&event.payload, top_reason) {
                        continue;
                    }
                    // Never in the clear: an event whose owner cannot be told is refused.
                    let user = self
                        .owner_of(&event.payload, &event.metadata, &batch.stream)
                        .await?
                        .ok_or_else(|| StoreError::Invalid(format!("{} names paths but no owner to seal them for", event.event_type)))?;
                    // An erased account (a scan or run still going): refused rather than recorded
                    // in the clear.
                    let key = self
                        .key(user, true)
                        .await?
                        .ok_or_else(|| StoreError::Invalid("the account was erased; nothing more is recorded for it".into()))?;
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
        let mut sealed = original.clone();
        seal_paths(&mut sealed, &key, b"aad", true).expect("sealed");
        let text = sealed.to_string();
        for clear in ["diary", "a.txt", "old.txt", "new.txt"] {
            assert!(!text.contains(clear), "{clear} in {text}");
        }
        assert_eq!(sealed["decision"]["actions"][0]["to"], json!("target"), "a side stays");
        assert!(has_sealed(&sealed));
        assert!(has_paths(&original, false) && !has_paths(&json!({ "user_id": "x", "at": "now" }), true));
        let mut opened = sealed.clone();
        open_paths(&mut opened, Some(&key), b"aad");
        assert_eq!(opened, original);
        let mut erased = sealed;
        open_paths(&mut erased, None, b"aad");
        assert_eq!(erased["path"], json!(UNREADABLE));
        assert_eq!(erased["decision"]["actions"][1]["to"], json!(UNREADABLE));
        let mut wrong = original.clone();
        seal_paths(&mut wrong, &key, b"aad", false).expect("sealed");
        open_paths(&mut wrong, Some(&[8_u8; 32]), b"aad");
        assert_eq!(wrong["path"], json!(UNREADABLE), "another key opens nothing");
        assert_eq!(wrong["reason"], original["reason"], "reason only at the top of a finished job");
    }
}
