//! Tamper evidence: every event has a link in a hash chain, BLAKE3 over the previous link and the
//! event as it is stored (its position, stream, version, type, schema version, payload as canonical
//! JSON, ids, actor and time to the microsecond). Sealed fields are hashed sealed, so the chain still
//! verifies after crypto-shredding destroys a key, and no plaintext goes into it. The writer of each
//! backend adds the links of a group in the group's own transaction (and first the links of any
//! events written without them: a log from before the chain, or by an older build).
//!
//! [`verify`] walks the log and reports the first event that was changed, removed, inserted or
//! reordered. A chain that was rewritten whole to match a forged log is caught by the signed
//! checkpoints the gateway keeps (`chain_checkpoints`), which [`Verified::links_at`] lets it check.

use std::collections::HashMap;

use serde_json::Value;

use crate::{Database, DbPool, EventMetadata, RecordedEvent, StoreError};

/// A link of the chain.
pub type Link = [u8; 32];

/// The link before the first event.
pub const GENESIS: Link = [0; 32];

/// What a link covers of an event: as it is stored.
pub(crate) struct Fields<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub payload: &'a Value,
    pub metadata: &'a EventMetadata,
}

pub(crate) fn link_fields(previous: &Link, event: &Fields<'_>) -> Link {
    let mut hasher = blake3::Hasher::new_derive_key("cloudsync 2026 event chain");
    hasher.update(previous);
    let m = event.metadata;
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(&event.position.to_le_bytes());
    field(event.stream_id.as_bytes());
    field(&event.stream_version.to_le_bytes());
    field(event.event_type.as_bytes());
    field(&event.schema_version.to_le_bytes());
    field(&canonical(event.payload));
    field(m.event_id.as_bytes());
    field(m.correlation_id.as_bytes());
    field(m.causation_id.as_ref().map_or(&[][..], |u| &u.as_bytes()[..]));
    field(m.actor_id.as_ref().map_or(&[][..], |u| &u.as_bytes()[..]));
    field(&m.occurred_at.timestamp_micros().to_le_bytes());
    *hasher.finalize().as_bytes()
}

/// The link of `event` at `position` (normally its own) after `previous`.
pub fn link_at(previous: &Link, event: &RecordedEvent, position: i64) -> Link {
    link_fields(
        previous,
        &Fields {
            position,
            stream_id: &event.stream_id,
            stream_version: event.stream_version,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            payload: &event.payload,
            metadata: &event.metadata,
        },
    )
}

/// A group writer's last link and its position, valid while nobody else has appended since.
#[derive(Default)]
pub(crate) struct TipCache(std::sync::Mutex<Option<(i64, Link)>>);

impl TipCache {
    /// The remembered link, if it is the one at `head` (the log's last position, read under the
    /// append lock).
    pub(crate) fn at(&self, head: i64) -> Option<Link> {
        self.get().filter(|(position, _)| *position == head).map(|(_, link)| link)
    }

    /// The remembered position and link, if any.
    pub(crate) fn get(&self) -> Option<(i64, Link)> {
        *self.0.lock().ok()?
    }

    /// Remembers `link` at `position` (once its transaction has committed).
    pub(crate) fn set(&self, position: i64, link: Link) {
        if let Ok(mut tip) = self.0.lock() {
            *tip = Some((position, link));
        }
    }
}

/// The stored tip as read (`None`: no link yet).
pub(crate) fn parse_tip(stored: Option<(i64, Vec<u8>)>) -> Result<(i64, Link), StoreError> {
    match stored {
        Some((position, hash)) => Ok((
            position,
            Link::try_from(hash.as_slice()).map_err(|_| StoreError::Corrupt {
                position,
                reason: "its chain link is not 32 bytes".into(),
            })?,
        )),
        None => Ok((0, GENESIS)),
    }
}

/// The query of the stored tip.
pub(crate) const TIP: &str = "SELECT position, hash FROM event_chain ORDER BY position DESC LIMIT 1";

/// The links of `events` (read in order) on from `previous`, with their positions.
pub(crate) fn link_events(previous: Link, events: &[RecordedEvent]) -> Vec<(i64, Link)> {
    let mut link = previous;
    events
        .iter()
        .map(|event| {
            link = self::link(&link, event);
            (event.position, link)
        })
        .collect()
}

/// The links of the rows a group writes, on from `previous`.
pub(crate) fn links_of(previous: Link, rows: &[crate::types::Row<'_>]) -> Vec<Link> {
    let mut links = Vec::with_capacity(rows.len());
    let mut previous = previous;
    for row in rows {
        previous = link_fields(
            &previous,
            &Fields {
                position: row.position,
                stream_id: row.stream_id,
                stream_version: row.stream_version,
                event_type: &row.event.event_type,
                schema_version: row.event.schema_version,
                payload: &row.event.payload,
                metadata: &row.event.metadata,
            },
        );
        links.push(previous);
    }
    links
}

/// The link of `event` after `previous`.
pub fn link(previous: &Link, event: &RecordedEvent) -> Link {
    link_at(previous, event, event.position)
}

/// JSON with object keys in order and no spaces, whatever order the database keeps them in.
fn canonical(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            // serde_json keeps a map's keys in order unless its `preserve_order` feature is on:
            // sorted here all the same, so that no feature of a dependency can change a link.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Number(number) => write_number(number, out),
        Value::String(text) => write_string(text, out),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Null => out.extend_from_slice(b"null"),
    }
}

/// A string as serde_json writes it (quoted, escaped).
fn write_string(text: &str, out: &mut Vec<u8>) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// A number as both databases give it back: PostgreSQL's JSONB prints a whole float without its
/// exponent or fraction (`1e16` comes back `10000000000000000`, `-0.0` as `0`), so a float with no
/// fraction that an integer can hold is written as that integer.
fn write_number(number: &serde_json::Number, out: &mut Vec<u8>) {
    use std::io::Write as _;
    // Writing into a Vec cannot fail.
    let _ = match number.as_f64() {
        // Whole floats that an i64 or a u64 holds (what serde_json reads such digits back as).
        Some(float) if number.is_f64() && float.fract() == 0.0 && (-9.2e18..0.0).contains(&float) => write!(out, "{}", float as i64),
        Some(float) if number.is_f64() && float.fract() == 0.0 && (0.0..1.8e19).contains(&float.abs()) => {
            write!(out, "{}", float.abs() as u64)
        }
        _ => write!(out, "{number}"),
    };
}

/// What is wrong with the log, at the first place it goes wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The event at this position is not the one that was appended there.
    Changed(i64),
    /// The event that was at this position is gone.
    Removed(i64),
    /// The event at this position was never appended there: the ones after it moved up.
    Inserted(i64),
    /// The events at this position and the next were swapped.
    Reordered(i64),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Changed(at) => write!(f, "event {at} was changed"),
            Self::Removed(at) => write!(f, "event {at} was removed"),
            Self::Inserted(at) => write!(f, "event {at} was inserted"),
            Self::Reordered(at) => write!(f, "events {at} and {} were reordered", at + 1),
        }
    }
}

/// A log whose every event matches its link.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The last position checked (from the start: the number of events).
    pub events: i64,
    /// The last link (the genesis link for an empty log).
    pub head: Link,
    /// The links at the positions asked for (where the log reaches them).
    pub links_at: HashMap<i64, Link>,
}

/// Walks the log in order as stored (`Database::stored`: sealed values sealed, as they were
/// linked), recomputing each link from the one before and comparing it with the stored one; returns the links at `wanted` positions, or what is wrong where it first goes wrong.
///
/// # Errors
/// An unreadable log.
pub async fn verify(db: &Database, wanted: &[i64]) -> Result<Result<Verified, Finding>, StoreError> {
    verify_from(db, 0, GENESIS, wanted).await
}

/// [`verify`] of the events after `start`, whose link is `link` (known good: a signed checkpoint's).
///
/// # Errors
/// An unreadable log.
pub async fn verify_from(db: &Database, start: i64, link: Link, wanted: &[i64]) -> Result<Result<Verified, Finding>, StoreError> {
    const PAGE: i64 = 1000;
    let wanted: std::collections::HashSet<i64> = wanted.iter().copied().collect();
    let mut previous = link;
    let mut expected = start + 1;
    let mut links_at = HashMap::new();
    let mut after = start;
    // The event before the page's first, for a look at a pair across pages.
    loop {
        let events = db.stored.read_all(after, PAGE).await?;
        // One more link than events, to look one ahead.
        let stored = stored_links(&db.pool, after, events.last().map_or(after, |e| e.position) + 1).await?;
        let Some(last) = events.last() else {
            // Links past the last event: events removed from the end, unless an append committed
            // them (with their links) since the events were read.
            let appended = !stored.is_empty() && !db.stored.read_all(after, 1).await?.is_empty();
            if appended {
                continue;
            }
            return Ok(match stored.keys().min() {
                Some(at) if *at >= expected => Err(Finding::Removed(expected)),
                _ => Ok(Verified {
                    events: expected - 1,
                    head: previous,
                    links_at,
                }),
            });
        };
        after = last.position;
        for (i, event) in events.iter().enumerate() {
            let next = events.get(i + 1);
            if event.position != expected {
                // A gap: the missing events were removed (their links may be gone too).
                return Ok(Err(if event.position > expected {
                    Finding::Removed(expected)
                } else {
                    Finding::Inserted(event.position)
                }));
            }
            let Some(link) = stored.get(&event.position) else {
                return Ok(Err(Finding::Inserted(event.position)));
            };
            let computed = self::link(&previous, event);
            if computed != *link {
                return Ok(Err(classify(&previous, event, next, &stored)));
            }
            if wanted.contains(&event.position) {
                links_at.insert(event.position, computed);
            }
            previous = computed;
            expected += 1;
        }
    }
}

/// Why `event` does not match its stored link: the simplest change to the log that explains it.
fn classify(previous: &Link, event: &RecordedEvent, next: Option<&RecordedEvent>, stored: &HashMap<i64, Link>) -> Finding {
    let at = event.position;
    let (Some(here), there) = (stored.get(&at), stored.get(&(at + 1))) else {
        return Finding::Changed(at);
    };
    // The next event is the one appended here: swapped with this one, or this one put in before it.
    if let Some(next) = next
        && link_at(previous, next, at) == *here
    {
        let swapped = there.is_some_and(|there| link_at(here, event, at + 1) == *there);
        return if swapped { Finding::Reordered(at) } else { Finding::Inserted(at) };
    }
    // This event was appended one place later: the one before it here was removed.
    if there.is_some_and(|there| link_at(here, event, at + 1) == *there) {
        return Finding::Removed(at);
    }
    Finding::Changed(at)
}

/// The stored links in `(after, upto]`.
async fn stored_links(pool: &DbPool, after: i64, upto: i64) -> Result<HashMap<i64, Link>, StoreError> {
    let query = "SELECT position, hash FROM event_chain WHERE position > $1 AND position <= $2";
    let rows: Vec<(i64, Vec<u8>)> = crate::on_pool!(pool, |p| sqlx::query_as(query).bind(after).bind(upto).fetch_all(p).await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(position, hash)| Some((position, Link::try_from(hash.as_slice()).ok()?)))
        .collect())
}

/// The link stored for the event at `position`, if there is one.
///
/// # Errors
/// An unreadable chain.
pub async fn stored_link(pool: &DbPool, position: i64) -> Result<Option<Link>, StoreError> {
    Ok(stored_links(pool, position - 1, position).await?.remove(&position))
}

/// The last link and its position (`(0, GENESIS)` before the first event).
///
/// # Errors
/// An unreadable chain.
pub async fn tip(pool: &DbPool) -> Result<(i64, Link), StoreError> {
    let query = "SELECT position, hash FROM event_chain ORDER BY position DESC LIMIT 1";
    let row: Option<(i64, Vec<u8>)> = crate::on_pool!(pool, |p| sqlx::query_as(query).fetch_optional(p).await)?;
    Ok(row
        .and_then(|(position, hash)| Some((position, Link::try_from(hash.as_slice()).ok()?)))
        .unwrap_or((0, GENESIS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_the_databases_give_them_back() {
        let written = json_value(r#"{"a": 1e16, "b": -0.0, "c": 0.44949105381965637, "d": 3.0, "e": 1.5e-7, "f": -2e3, "g": 1e20}"#);
        let from_jsonb = json_value(
            r#"{"a": 10000000000000000, "b": 0, "c": 0.44949105381965637, "d": 3, "e": 0.00000015, "f": -2000, "g": 100000000000000000000}"#,
        );
        assert_eq!(canonical(&written), canonical(&from_jsonb));
        // A float read back from its own text is the same float (serde_json's `float_roundtrip`).
        let score = f64::from(0.449_491_05_f32);
        let again: Value = serde_json::from_str(&serde_json::json!(score).to_string()).expect("json");
        assert_eq!(again.as_f64(), Some(score));
    }

    fn json_value(text: &str) -> Value {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn canonical_json_does_not_depend_on_key_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"y":2,"x":"é"}],"c":null}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{ "a": {"c": null, "d": [1, {"x": "é", "y": 2}]}, "b": 1 }"#).expect("json");
        assert_eq!(canonical(&a), canonical(&b));
        assert_eq!(canonical(&a), r#"{"a":{"c":null,"d":[1,{"x":"é","y":2}]},"b":1}"#.as_bytes());
    }

    #[test]
    fn canonical_json_escapes_as_serde_json_writes() {
        // Links already stored were made from serde_json's own text of each key and string; with
        // keys in order and no whole floats, that is the whole of the canonical text.
        let value = serde_json::json!({
            "quote \" and \\": ["tab\t", "nul\u{0}", "\u{1f}", "é ✓ 𝄞", "\u{2028}"],
            "n": [-3, 0, 18_446_744_073_709_551_615_u64, 0.5, -1.25e-9, true, false, null],
            "\u{7f}": {}
        });
        assert_eq!(canonical(&value), serde_json::to_vec(&value).expect("json"));
    }
}
