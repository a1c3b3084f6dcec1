//! The values that cross the event store's boundary.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

/// Who and what caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventMetadata {
    pub event_id: Uuid,
    /// Shared by every event that one request or job caused.
    pub correlation_id: Uuid,
    /// The event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// The user on whose behalf it happened.
    pub actor_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

impl EventMetadata {
    /// Fresh metadata for an event in a new correlation.
    pub fn new(actor_id: Option<Uuid>) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
            actor_id,
            occurred_at: Utc::now(),
        }
    }

    /// Fresh metadata for another event of the same correlation.
    pub fn next(&self) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            occurred_at: Utc::now(),
            ..self.clone()
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: EventMetadata,
}

/// An event as stored, with its place in its stream and in the global log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: String,
    pub stream_version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: Value,
    pub metadata: EventMetadata,
}

/// A stream folded up to a version, kept so that the next load reads only the events after it. It
/// is a cache of the log, never its truth: a snapshot that cannot be read (an unknown schema, a key
/// that is gone) is passed over and the stream read from its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The stream version folded into it.
    pub version: i64,
    /// What folded it and how it is encoded: a reader passes over a schema it does not know.
    pub schema: String,
    /// Whose it is: the account whose key seals it (see the commands' sealing store).
    pub owner: Option<Uuid>,
    pub data: Vec<u8>,
}

/// The version a stream must have for an append to go through. Versions count events: a stream with
/// three events is at version 3; a stream that does not exist is at version 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    Exact(i64),
}

impl ExpectedVersion {
    fn admits(self, actual: i64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual == 0,
            Self::Exact(expected) => expected == actual,
        }
    }
}

/// Events for one stream inside an atomic append.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

/// What an append wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendOutcome {
    /// Global positions of the first and last event written (equal to the head when nothing was written).
    pub first_position: i64,
    pub last_position: i64,
    /// Each stream's version after the append.
    pub stream_versions: HashMap<String, i64>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    /// Someone else appended to the stream first: reload and decide again.
    #[error("concurrency conflict on stream {stream}: expected {expected:?}, found version {actual}")]
    Concurrency {
        stream: String,
        expected: ExpectedVersion,
        actual: i64,
    },
    #[error("invalid append: {0}")]
    Invalid(String),
    /// The append's call went unanswered and the log could not be asked whether it committed: read
    /// the stream before deciding again.
    #[error("the append may or may not have been written: {0}")]
    Unsettled(String),
    #[error("stored event at position {position} is unreadable: {reason}")]
    Corrupt { position: i64, reason: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub fn is_concurrency(&self) -> bool {
        matches!(self, Self::Concurrency { .. })
    }
}

/// One row to insert, after the version checks.
pub(crate) struct Row<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub stream_version: i64,
    pub event: &'a NewEvent,
}

/// Checks every batch's expected version against `current` (the stored versions of the streams
/// involved, absent meaning 0) and numbers the events from `head + 1`.
pub(crate) fn plan_rows<'a>(
    batches: &'a [StreamAppend],
    mut current: HashMap<String, i64>,
    head: i64,
) -> Result<(Vec<Row<'a>>, HashMap<String, i64>), StoreError> {
    let mut rows = Vec::with_capacity(batches.iter().map(|b| b.events.len()).sum());
    let mut position = head;
    for batch in batches {
        validate_stream_name(&batch.stream)?;
        let version = current.entry(batch.stream.clone()).or_insert(0);
        if !batch.expected.admits(*version) {
            return Err(StoreError::Concurrency {
                stream: batch.stream.clone(),
                expected: batch.expected,
                actual: *version,
            });
        }
        for event in &batch.events {
            if event.event_type.is_empty() {
                return Err(StoreError::Invalid("an event needs a type".into()));
            }
            position += 1;
            *version += 1;
            rows.push(Row {
                position,
                stream_id: &batch.stream,
                stream_version: *version,
                event,
            });
        }
    }
    Ok((rows, current))
}

fn validate_stream_name(stream: &str) -> Result<(), StoreError> {
    let ok = !stream.is_empty()
        && stream.len() <= 200
        && stream.contains('-')
        && stream.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "malformed stream name {stream:?} (expected <kind>-<id>)"
        )))
    }
}

/// Which events a filtered read returns: each set condition must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Caused by this user.
    pub actor: Option<Uuid>,
    pub stream: Option<String>,
    /// Of any of these types (none: any type).
    pub event_types: Vec<String>,
    /// At or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Before this time.
    pub to: Option<DateTime<Utc>>,
}

impl EventFilter {
    pub fn admits(&self, event: &RecordedEvent) -> bool {
        self.actor.is_none_or(|actor| event.metadata.actor_id == Some(actor))
            && self.stream.as_ref().is_none_or(|stream| event.stream_id == *stream)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.from.is_none_or(|from| event.metadata.occurred_at >= from)
            && self.to.is_none_or(|to| event.metadata.occurred_at < to)
    }
}
