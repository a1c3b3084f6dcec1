//! The exports' columns: one Arrow schema per subject, and the record batch of a page of rows.
//! Ids are text (the UUID's hyphenated form), times are microseconds in UTC, JSON documents
//! (payloads, metadata, labels) are text.

use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BooleanBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{Array as _, ArrayRef, RecordBatch, TimestampMicrosecondArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};
use cloudsync_domain::events::{ExportSubject, redacted};
use cloudsync_eventstore::RecordedEvent;
use cloudsync_projections::{FileRow, SyncOperationRow};
use uuid::Uuid;

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

fn int(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Int64, nullable)
}

fn time(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), nullable)
}

static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        int("position", false),
        text("event_id", false),
        text("stream_id", false),
        int("stream_version", false),
        text("event_type", false),
        Field::new("schema_version", DataType::Int32, false),
        time("occurred_at", false),
        text("actor_id", true),
        text("correlation_id", false),
        text("causation_id", true),
        text("payload", false),
    ]))
});

static FILES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("file_id", false),
        text("user_id", false),
        text("provider_id", false),
        text("path", false),
        text("name", false),
        int("size_bytes", false),
        text("mime_type", false),
        text("checksum", false),
        time("modified_at", false),
        time("created_at", false),
        time("updated_at", false),
        text("labels", false),
        text("metadata", false),
    ]))
});

static SYNC_OPERATIONS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        text("operation_id", false),
        text("user_id", false),
        text("kind", false),
        text("provider_id", true),
        text("pair_id", true),
        text("status", false),
        Field::new("paused", DataType::Boolean, false),
        int("files_done", false),
        int("bytes_done", false),
        int("files_total", true),
        int("bytes_total", true),
        int("bytes_written", true),
        text("error", true),
        int("retries", false),
        time("created_at", false),
        time("updated_at", false),
        time("completed_at", true),
        text("details", false),
    ]))
});

/// The columns of an export of `what`.
pub(crate) fn schema(what: ExportSubject) -> SchemaRef {
    Arc::clone(match what {
        ExportSubject::Events => &EVENTS,
        ExportSubject::Files => &FILES,
        ExportSubject::SyncOperations => &SYNC_OPERATIONS,
    })
}

fn ids(values: impl Iterator<Item = Option<Uuid>>) -> ArrayRef {
    let mut column = StringBuilder::new();
    for value in values {
        column.append_option(value.map(|id| id.hyphenated().to_string()));
    }
    Arc::new(column.finish())
}

fn texts<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
    let mut column = StringBuilder::new();
    for value in values {
        column.append_option(value);
    }
    Arc::new(column.finish())
}

fn jsons<'a>(values: impl Iterator<Item = &'a serde_json::Value>) -> ArrayRef {
    let mut column = StringBuilder::new();
    for value in values {
        column.append_value(value.to_string());
    }
    Arc::new(column.finish())
}

fn ints(values: impl Iterator<Item = Option<i64>>) -> ArrayRef {
    let mut column = Int64Builder::new();
    for value in values {
        column.append_option(value);
    }
    Arc::new(column.finish())
}

fn times(values: impl Iterator<Item = Option<DateTime<Utc>>>) -> ArrayRef {
    let mut column = TimestampMicrosecondBuilder::new().with_timezone("UTC");
    for value in values {
        column.append_option(value.map(|at| at.timestamp_micros()));
    }
    Arc::new(column.finish())
}

/// A page of events; payloads with their secrets' hashes redacted.
pub(crate) fn events(page: Vec<RecordedEvent>) -> Result<RecordBatch, ArrowError> {
    let mut versions = Int32Builder::new();
    let mut payloads = StringBuilder::new();
    let mut metadata = Vec::with_capacity(page.len());
    let mut rest = Vec::with_capacity(page.len());
    for event in page {
        versions.append_value(event.schema_version);
        payloads.append_value(redacted(event.payload, false).to_string());
        metadata.push(event.metadata);
        rest.push((event.position, event.stream_id, event.stream_version, event.event_type));
    }
    RecordBatch::try_new(
        schema(ExportSubject::Events),
        vec![
            ints(rest.iter().map(|e| Some(e.0))),
            ids(metadata.iter().map(|m| Some(m.event_id))),
            texts(rest.iter().map(|e| Some(e.1.as_str()))),
            ints(rest.iter().map(|e| Some(e.2))),
            texts(rest.iter().map(|e| Some(e.3.as_str()))),
            Arc::new(versions.finish()),
            times(metadata.iter().map(|m| Some(m.occurred_at))),
            ids(metadata.iter().map(|m| m.actor_id)),
            ids(metadata.iter().map(|m| Some(m.correlation_id))),
            ids(metadata.iter().map(|m| m.causation_id)),
            Arc::new(payloads.finish()),
        ],
    )
}

/// A page of files with their owners.
pub(crate) fn files(page: &[&(Uuid, FileRow)]) -> Result<RecordBatch, ArrowError> {
    let labels: Vec<serde_json::Value> = page.iter().map(|(_, f)| serde_json::json!(f.labels)).collect();
    RecordBatch::try_new(
        schema(ExportSubject::Files),
        vec![
            ids(page.iter().map(|(_, f)| Some(f.id))),
            ids(page.iter().map(|(owner, _)| Some(*owner))),
            ids(page.iter().map(|(_, f)| Some(f.provider_id))),
            texts(page.iter().map(|(_, f)| Some(f.path.as_str()))),
            texts(page.iter().map(|(_, f)| Some(f.name.as_str()))),
            ints(page.iter().map(|(_, f)| Some(f.size_bytes))),
            texts(page.iter().map(|(_, f)| Some(f.mime_type.as_str()))),
            texts(page.iter().map(|(_, f)| Some(f.checksum.as_str()))),
            times(page.iter().map(|(_, f)| Some(f.modified_at))),
            times(page.iter().map(|(_, f)| Some(f.created_at))),
            times(page.iter().map(|(_, f)| Some(f.updated_at))),
            jsons(labels.iter()),
            jsons(page.iter().map(|(_, f)| &f.metadata)),
        ],
    )
}

/// A page of sync operations with their owners.
pub(crate) fn sync_operations(page: &[&(Uuid, SyncOperationRow)]) -> Result<RecordBatch, ArrowError> {
    let pair = |op: &SyncOperationRow| op.details.get("pair_id")?.as_str().and_then(|id| Uuid::parse_str(id).ok());
    let mut paused = BooleanBuilder::new();
    for (_, op) in page {
        paused.append_value(op.paused);
    }
    RecordBatch::try_new(
        schema(ExportSubject::SyncOperations),
        vec![
            ids(page.iter().map(|(_, op)| Some(op.id))),
            ids(page.iter().map(|(owner, _)| Some(*owner))),
            texts(page.iter().map(|(_, op)| Some(op.kind.as_str()))),
            ids(page.iter().map(|(_, op)| op.provider_id)),
            ids(page.iter().map(|(_, op)| pair(op))),
            texts(page.iter().map(|(_, op)| Some(op.status.as_str()))),
            Arc::new(paused.finish()),
            ints(page.iter().map(|(_, op)| Some(op.files_done))),
            ints(page.iter().map(|(_, op)| Some(op.bytes_done))),
            ints(page.iter().map(|(_, op)| op.files_total)),
            ints(page.iter().map(|(_, op)| op.bytes_total)),
            ints(page.iter().map(|(_, op)| op.bytes_written)),
            texts(page.iter().map(|(_, op)| op.error.as_deref())),
            ints(page.iter().map(|(_, op)| Some(op.retries))),
            times(page.iter().map(|(_, op)| Some(op.created_at))),
            times(page.iter().map(|(_, op)| Some(op.updated_at))),
            times(page.iter().map(|(_, op)| op.completed_at)),
            jsons(page.iter().map(|(_, op)| &op.details)),
        ],
    )
}

/// `batch` with its UTC times labelled `+00:00`, the same instants: the CSV writer formats times
/// through a time zone it parses, and without a time-zone database it knows offsets only.
pub(crate) fn utc_as_offset(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|column| match column.as_any().downcast_ref::<TimestampMicrosecondArray>() {
            Some(times) => Arc::new(times.clone().with_timezone("+00:00")) as ArrayRef,
            None => Arc::clone(column),
        })
        .collect();
    let fields: Vec<Field> = columns
        .iter()
        .zip(batch.schema().fields())
        .map(|(column, field)| field.as_ref().clone().with_data_type(column.data_type().clone()))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}
