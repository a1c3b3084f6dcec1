//! Analytics export: the event log, the files read model or the sync operations read model as a
//! Parquet file (zstd-compressed row groups) or CSV, with typed columns and UTC timestamps.
//!
//! An export streams: the database is read a page at a time, each page becomes one Arrow record
//! batch, and a blocking writer thread encodes the batches as they come (a channel two batches
//! deep between them), closing a Parquet row group every [`ROW_GROUP_ROWS`] rows, or earlier when the
//! memory it holds grows past [`ROW_GROUP_BYTES`]. Memory stays bounded whatever the export's size. The file is written under a
//! temporary name of its own beside the output (`.<name>.<random>.partial`, so that two attempts
//! never share one) and renamed once complete and flushed to the disk, so a crash or a failure never
//! leaves a partial file under the output's name.
//!
//! Events are exported as stored: sealed fields stay sealed (the export never reads a data key),
//! hashes of passwords, tokens and codes are redacted, and everything of an erased account (its
//! events by owner or by actor) is left out. The read models hold no row of an erased account.

mod columns;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::RecordBatch;
use async_trait::async_trait;
use cloudsync_commands::{ExportProgress, Exporter};
use cloudsync_domain::events::{ExportFormat, ExportRequest, ExportSubject};
use cloudsync_eventstore::{Database, EventFilter, RecordedEvent};
use cloudsync_projections::ReadModels;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// Rows read from the database at a time (one record batch).
pub const PAGE: i64 = 4096;

/// Rows in a Parquet row group at most (DuckDB's own row group size): what the writer buffers stays
/// the same however long the export.
pub const ROW_GROUP_ROWS: usize = 122_880;

/// A Parquet row group is written out early once the memory it holds passes this (rows of large
/// payloads).
pub const ROW_GROUP_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading the database: {0}")]
    Read(String),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("encoding: {0}")]
    Encode(String),
}

impl From<parquet::errors::ParquetError> for ExportError {
    fn from(error: parquet::errors::ParquetError) -> Self {
        Self::Encode(error.to_string())
    }
}

impl From<arrow_schema::ArrowError> for ExportError {
    fn from(error: arrow_schema::ArrowError) -> Self {
        Self::Encode(error.to_string())
    }
}

/// Writes `request` to `output` (replacing a file there only once the export is whole); publishes
/// rows and bytes written so far on `progress`, reads nothing while `held` (when given) says true,
/// and returns the totals. The export is written under a temporary name beside it first: a dropped
/// or failed export removes it, and the next export to the same output removes what a crash left.
///
/// # Errors
/// An unreadable database, or an output that cannot be written.
pub async fn export(
    db: &Database,
    request: &ExportRequest,
    output: &Path,
    progress: &watch::Sender<ExportProgress>,
    held: Option<watch::Receiver<bool>>,
) -> Result<ExportProgress, ExportError> {
    let write_error = |source: std::io::Error| ExportError::Write {
        path: output.to_path_buf(),
        source,
    };
    let partial = Partial::create(output).map_err(write_error)?;
    let file = partial.file.try_clone().map_err(write_error)?;
    let written = Arc::new(AtomicU64::new(0));
    let (batches, received) = mpsc::channel::<RecordBatch>(2);
    let writer = {
        let (format, schema, written) = (request.format, columns::schema(request.what), Arc::clone(&written));
        tokio::task::spawn_blocking(move || write_batches(file, format, &schema, received, &written))
    };
    let mut sink = Sink {
        batches,
        rows: 0,
        written: Arc::clone(&written),
        progress,
        held,
    };
    let read = match request.what {
        ExportSubject::Events => read_events(db, request, &mut sink).await,
        ExportSubject::Files => read_files(db, request, &mut sink).await,
        ExportSubject::SyncOperations => read_operations(db, request, &mut sink).await,
    };
    let rows = sink.rows;
    drop(sink);
    let encoded = writer.await.map_err(|e| ExportError::Encode(format!("the writer stopped: {e}")))?;
    read?;
    encoded?;
    let bytes = partial.keep_as(output).map_err(write_error)?;
    let done = ExportProgress { rows, bytes };
    progress.send_replace(done);
    Ok(done)
}

/// The export's file under a temporary name of its own beside the output
/// (`.<output's name>.<random>.partial`), removed unless kept.
struct Partial {
    path: PathBuf,
    file: std::fs::File,
    kept: bool,
}

/// A temporary file of an export to the same output that nothing has written for this long was
/// left by a crash: the next export to that output removes it. (A running export writes every
/// page; one held by a pause whose job was taken over elsewhere has lost its lease.)
const ABANDONED: std::time::Duration = std::time::Duration::from_secs(15 * 60);

impl Partial {
    fn create(output: &Path) -> std::io::Result<Self> {
        let name = output
            .file_name()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "the output names no file"))?
            .to_string_lossy()
            .into_owned();
        let folder = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let prefix = format!(".{name}.");
        for entry in std::fs::read_dir(folder)?.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let abandoned = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|at| at.elapsed().is_ok_and(|age| age > ABANDONED));
            if file.starts_with(&prefix) && file.ends_with(".partial") && abandoned {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let (file, path) = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(".partial")
            .tempfile_in(folder)?
            .keep()
            .map_err(|e| e.error)?;
        Ok(Self { path, file, kept: false })
    }

    /// Flushes the file to the disk and renames it `output`; its size.
    fn keep_as(mut self, output: &Path) -> std::io::Result<u64> {
        self.file.sync_all()?;
        let bytes = self.file.metadata()?.len();
        std::fs::rename(&self.path, output)?;
        self.kept = true;
        // The rename itself reaches the disk with its folder (best effort: the file is whole).
        if let Some(folder) = output.parent().filter(|p| !p.as_os_str().is_empty())
            && let Err(error) = std::fs::File::open(folder).and_then(|f| f.sync_all())
        {
            tracing::warn!(folder = %folder.display(), error = %error, "The export's folder could not be flushed.");
        }
        Ok(bytes)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where the readers put their batches: the writer's channel, counting rows and publishing progress.
struct Sink<'a> {
    batches: mpsc::Sender<RecordBatch>,
    rows: u64,
    written: Arc<AtomicU64>,
    progress: &'a watch::Sender<ExportProgress>,
    held: Option<watch::Receiver<bool>>,
}

impl Sink<'_> {
    /// Waits while the export is held (a paused job), before a page is read.
    async fn proceed(&mut self) {
        if let Some(held) = &mut self.held {
            // A sender gone (the job ended) holds nothing.
            let _ = held.wait_for(|held| !*held).await;
        }
    }

    /// Hands a batch to the writer; false when the writer has stopped (it failed, and says why).
    async fn send(&mut self, batch: RecordBatch) -> bool {
        self.rows += batch.num_rows() as u64;
        self.progress.send_replace(ExportProgress {
            rows: self.rows,
            bytes: self.written.load(Ordering::Relaxed),
        });
        self.batches.send(batch).await.is_ok()
    }
}

/// The log up to its head as the export began, without erased accounts' events.
async fn read_events(db: &Database, request: &ExportRequest, sink: &mut Sink<'_>) -> Result<(), ExportError> {
    let read = |e: cloudsync_eventstore::StoreError| ExportError::Read(e.to_string());
    let head = db.stored.head().await.map_err(read)?;
    let deleted = EventFilter {
        event_types: vec!["UserDeleted".into()],
        ..EventFilter::default()
    };
    let erased: HashSet<Uuid> = db
        .stored
        .read_filtered(&deleted, 0, i64::MAX)
        .await
        .map_err(read)?
        .iter()
        .filter_map(owner)
        .collect();
    let mut after = 0;
    while after < head {
        sink.proceed().await;
        let page = db.stored.read_all(after, PAGE).await.map_err(read)?;
        let Some(last) = page.last() else { break };
        after = last.position;
        let kept: Vec<RecordedEvent> = page
            .into_iter()
            .filter(|e| e.position <= head && request.admits(e.metadata.occurred_at))
            .filter(|e| !owner(e).is_some_and(|o| erased.contains(&o)) && !e.metadata.actor_id.is_some_and(|a| erased.contains(&a)))
            .collect();
        if !kept.is_empty() && !sink.send(columns::events(kept)?).await {
            break;
        }
    }
    Ok(())
}

/// Whose data an event is about: the `owner_id` or `user_id` its payload names, else its actor.
fn owner(event: &RecordedEvent) -> Option<Uuid> {
    ["owner_id", "user_id"]
        .iter()
        .find_map(|key| event.payload.get(*key)?.as_str().and_then(|id| Uuid::parse_str(id).ok()))
        .or(event.metadata.actor_id)
}

/// A read-model row with its owner's id.
type Owned<R> = (Uuid, R);

/// A read model's rows a page at a time in key order (`fetch` gives the page after a key), those
/// whose time (`key`) falls in the window made into batches by `batch`.
async fn read_rows<R, Page>(
    request: &ExportRequest,
    sink: &mut Sink<'_>,
    fetch: impl Fn(Option<Uuid>) -> Page,
    key: fn(&R) -> (Uuid, chrono::DateTime<chrono::Utc>),
    batch: fn(&[&Owned<R>]) -> Result<RecordBatch, arrow_schema::ArrowError>,
) -> Result<(), ExportError>
where
    Page: std::future::Future<Output = Result<Vec<Owned<R>>, cloudsync_projections::QueryError>>,
{
    let mut after = None;
    loop {
        sink.proceed().await;
        let page = fetch(after).await.map_err(|e| ExportError::Read(e.to_string()))?;
        let Some((_, last)) = page.last() else { break };
        after = Some(key(last).0);
        let kept: Vec<_> = page.iter().filter(|(_, row)| request.admits(key(row).1)).collect();
        if !kept.is_empty() && !sink.send(batch(&kept)?).await {
            break;
        }
    }
    Ok(())
}

async fn read_files(db: &Database, request: &ExportRequest, sink: &mut Sink<'_>) -> Result<(), ExportError> {
    let reads = ReadModels::new(db.pool.clone());
    let fetch = |after| reads.all_files(after, PAGE);
    read_rows(request, sink, fetch, |file| (file.id, file.updated_at), columns::files).await
}

async fn read_operations(db: &Database, request: &ExportRequest, sink: &mut Sink<'_>) -> Result<(), ExportError> {
    let reads = ReadModels::new(db.pool.clone());
    let fetch = |after| reads.all_sync_operations(after, PAGE);
    read_rows(request, sink, fetch, |op| (op.id, op.created_at), columns::sync_operations).await
}

/// Counts the bytes that reach the file.
struct Counted<W> {
    inner: W,
    written: Arc<AtomicU64>,
}

impl<W: Write> Write for Counted<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Encodes the batches as they arrive (on a blocking thread) into `file`, then the format's footer.
fn write_batches(
    file: std::fs::File,
    format: ExportFormat,
    schema: &arrow_schema::SchemaRef,
    mut batches: mpsc::Receiver<RecordBatch>,
    written: &Arc<AtomicU64>,
) -> Result<(), ExportError> {
    let io = |source| ExportError::Encode(format!("writing: {source}"));
    match format {
        ExportFormat::Parquet => {
            let out = Counted {
                inner: std::io::BufWriter::with_capacity(1 << 20, file),
                written: Arc::clone(written),
            };
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
                .set_created_by(format!("CloudSync {}", env!("CARGO_PKG_VERSION")))
                .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                .build();
            let mut writer = ArrowWriter::try_new(out, Arc::clone(schema), Some(properties))?;
            while let Some(batch) = batches.blocking_recv() {
                writer.write(&batch)?;
                if writer.memory_size() >= ROW_GROUP_BYTES {
                    writer.flush()?;
                }
            }
            let mut out = writer.into_inner()?;
            out.flush().map_err(io)?;
        }
        ExportFormat::Csv => {
            // Unbuffered here (the CSV writer buffers, and its last flush would panic on an error).
            let out = Counted {
                inner: file,
                written: Arc::clone(written),
            };
            let mut writer = arrow_csv::WriterBuilder::new()
                .with_header(true)
                .with_timestamp_tz_format("%Y-%m-%dT%H:%M:%S%.6fZ".to_owned())
                .build(out);
            // The header, even when no row follows.
            writer.write(&columns::utc_as_offset(&RecordBatch::new_empty(Arc::clone(schema)))?)?;
            while let Some(batch) = batches.blocking_recv() {
                writer.write(&columns::utc_as_offset(&batch)?)?;
            }
            let mut out = writer.into_inner();
            out.flush().map_err(io)?;
        }
    }
    Ok(())
}

/// Writes exports into one folder as `<job id>.<format>`: the export jobs' [`Exporter`].
pub struct Folder {
    db: Database,
    folder: PathBuf,
}

impl Folder {
    pub fn new(db: Database, folder: PathBuf) -> Self {
        Self { db, folder }
    }
}

#[async_trait]
impl Exporter for Folder {
    async fn export(
        &self,
        request: &ExportRequest,
        name: &str,
        progress: &watch::Sender<ExportProgress>,
        held: watch::Receiver<bool>,
    ) -> Result<ExportProgress, String> {
        std::fs::create_dir_all(&self.folder).map_err(|e| format!("creating the export folder {}: {e}", self.folder.display()))?;
        export(&self.db, request, &self.folder.join(name), progress, Some(held))
            .await
            .map_err(|e| e.to_string())
    }

    async fn discard(&self, name: &str) {
        let path = self.folder.join(name);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), error = %error, "A cancelled export's file could not be removed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(folder: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(folder)
            .expect("folder")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_partial_file_is_its_attempts_own_and_goes_unless_kept() {
        let folder = tempfile::tempdir().expect("folder");
        let output = folder.path().join("events.parquet");
        // A crash's leftover, untouched for long, and a live attempt's, written a moment ago.
        let old = folder.path().join(".events.parquet.crashed.partial");
        std::fs::File::create(&old)
            .and_then(|f| f.set_modified(std::time::SystemTime::now() - ABANDONED * 2))
            .expect("old file");
        let first = Partial::create(&output).expect("first");
        assert!(!old.exists(), "what a crash left goes");
        let second = Partial::create(&output).expect("second");
        assert_ne!(first.path, second.path, "two attempts never share a file");
        assert!(first.path.exists() && second.path.exists(), "a live attempt's file stays");
        drop(first);
        (&second.file).write_all(b"whole").expect("write");
        assert_eq!(second.keep_as(&output).expect("kept"), 5);
        assert_eq!(names(folder.path()), ["events.parquet"]);
    }
}
