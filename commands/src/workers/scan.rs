//! The provider scanner, incremental: it rebuilds what the log says the provider holds (from the
//! owner's own events, never from a read model), lists the provider through its `StorageProvider`,
//! and records only differences:
//!
//! - a path it knows with the same size and version tag (ETag, or size+mtime) is unchanged and is not
//!   even read;
//! - a known path with other facts is hashed (BLAKE3, streamed) and recorded as `FileChanged` when
//!   anything differs;
//! - an unknown path is hashed; if a file that vanished has the same checksum and size it is
//!   `FileMoved`, otherwise `FileDiscovered`;
//! - a known path that is no longer listed is `FileRemoved` — only after a complete listing.
//!
//! Events are appended in batches, each one transaction together with the job's progress, with the
//! expected version of every file stream, so a concurrent move or delete makes the scan fail (and a
//! later rescan settle it) rather than record stale facts. A rescan of an unchanged provider appends
//! nothing but its job's own progress.
//!
//! The known files are replayed into an on-disk index ordered by path (see [`known`]), so memory
//! stays about the same whatever the size of the tree: a few bytes per file (one bit for "seen",
//! ten for the Bloom filter of contents, a block's first path per 32 files).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use cloudsync_domain::events::{FileDiscovered, guess_mime};
use cloudsync_domain::file::FileCommand;
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::{Aggregate, DomainEvent, FileId, ProviderId, ProviderPath, SyncJobId, UserId};
use cloudsync_eventstore::{ExpectedVersion, NewEvent, StreamAppend};
use cloudsync_providers::{Entry, ProviderError, StorageProvider};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use crate::core::{Context, encode, expected, storage_error};
use crate::{CommandError, Commands};

mod known;

use known::{Content, Known, KnownFiles, Marks, content};

const BATCH: usize = 500;
const HASHING_CONCURRENCY: usize = 8;

/// Whether a listing entry shows the same file as `known`, without reading it: same size, and the
/// same version tag where both have one, else the same modification time.
fn unchanged(entry: &Entry, known: &Known) -> bool {
    entry.size == known.size
        && match (&entry.etag, &known.etag) {
            (Some(seen), Some(known)) => seen.as_str() == &**known,
            _ => entry.modified_at.is_some_and(|m| m == known.modified_at),
        }
}

/// A listed file whose content was read.
struct Hashed {
    entry: Entry,
    checksum: String,
    /// The known file at its path, with its ordinal.
    known: Option<(usize, Known)>,
}

/// What to do with one listing entry.
enum Seen {
    /// A known file (its ordinal) that has not changed.
    Unchanged(usize, u64),
    Hashed(Hashed),
}

/// Runs (or resumes) a scan job to its end. Returns quietly when the job has already ended or is
/// cancelled while it runs.
pub(crate) async fn run_scan(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken) -> Result<(), CommandError> {
    let (mut job, mut version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    let (Some(owner), Some(JobKind::Scan { provider_id }), Some(phase)) = (job.owner(), job.kind().cloned(), job.phase()) else {
        return Err(CommandError::NotFound("sync job"));
    };
    if phase.is_terminal() {
        return Ok(());
    }
    let ctx = Context::new(Some(owner));
    let provider = match commands.provider(owner, provider_id).await {
        Ok(provider) => provider,
        Err(err) => {
            commands
                .job_step(
                    job_id,
                    version,
                    &mut job,
                    SyncJobCommand::Fail {
                        reason: err.to_string(),
                        at: Utc::now(),
                    },
                    &ctx,
                )
                .await?;
            return Ok(());
        }
    };
    if phase == JobPhase::Pending
        && !super::pause::start(commands, job_id, &mut job, &mut version, JobPhase::Scanning, &ctx, cancel).await?
    {
        return Ok(());
    }
    let known = Arc::new(KnownFiles::load(commands, owner, provider_id, known::RUN_LEN).await?);
    tracing::info!(job = %job_id, provider = %provider_id, known = known.len(), "Scan started.");

    let mut scan = Scan {
        commands,
        ctx,
        job_id,
        provider_id,
        owner,
        job,
        version,
        files_done: 0,
        bytes_done: 0,
        cancel,
    };
    // The known files this pass listed, by ordinal.
    let mut seen = Marks::new(known.len());
    // Unknown files whose content may match a known file: perhaps moves, decided after the listing.
    let mut maybe_moved: Vec<Hashed> = Vec::new();

    let reader = Arc::clone(&provider);
    let view = Arc::clone(&known);
    let mut listed = provider
        .list(&ProviderPath::root())
        .map(move |entry| {
            let provider = Arc::clone(&reader);
            let view = Arc::clone(&view);
            async move {
                let entry = entry.map_err(storage_error)?;
                let known = view.get(entry.path.as_str())?;
                if let Some((ordinal, k)) = &known
                    && unchanged(&entry, k)
                {
                    return Ok(Some(Seen::Unchanged(*ordinal, k.size)));
                }
                match hash(&*provider, &entry.path, entry.size).await {
                    Ok(checksum) => Ok(Some(Seen::Hashed(Hashed { entry, checksum, known }))),
                    // Gone between listing and reading: it is no longer there to index.
                    Err(ProviderError::NotFound(_)) => Ok(None),
                    Err(err) => Err(storage_error(err)),
                }
            }
        })
        .buffered(HASHING_CONCURRENCY)
        .try_filter_map(|seen| async move { Ok(seen) })
        .try_chunks(BATCH)
        .map_err(|err| err.1)
        .boxed();

    // Listing and hashing go on while a batch is committed: a task runs them a couple of batches ahead.
    let (ready, mut batches) = tokio::sync::mpsc::channel(2);
    // The lister stops with the scan, however the scan ends.
    let _lister = AbortOnDropHandle::new(tokio::spawn(async move {
        while let Some(batch) = listed.next().await {
            if ready.send(batch).await.is_err() {
                break;
            }
        }
    }));
    loop {
        // A cancelled scan stops at once, even while the provider is being retried.
        let batch = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            batch = batches.recv() => batch,
        };
        let Some(batch) = batch else { break };
        let batch = batch?;
        if !scan.running().await? {
            return Ok(());
        }
        let mut appends = Vec::new();
        let mut counted = (0_u64, 0_u64);
        for listed in batch {
            match listed {
                Seen::Unchanged(ordinal, size) => {
                    counted = (counted.0 + 1, counted.1 + size);
                    seen.set(ordinal);
                }
                Seen::Hashed(hashed) => {
                    counted = (counted.0 + 1, counted.1 + hashed.entry.size);
                    if let Some((ordinal, k)) = &hashed.known {
                        seen.set(*ordinal);
                        let events = k
                            .aggregate(&hashed.entry.path, provider_id, owner)
                            .handle(FileCommand::RecordChange {
                                by: owner,
                                size_bytes: hashed.entry.size,
                                modified_at: hashed.entry.modified_at.unwrap_or_default(),
                                checksum: hashed.checksum.clone(),
                                etag: hashed.entry.etag.clone(),
                                job_id: Some(job_id),
                            })?;
                        if !events.is_empty() {
                            appends.push(scan.file_append(k.file_id, k.version, &events));
                        }
                    } else if known.may_hold(&content(&hashed.checksum), hashed.entry.size) {
                        maybe_moved.push(hashed);
                    } else {
                        appends.push(scan.discovery(&hashed));
                    }
                }
            }
        }
        scan.commit(appends, counted).await?;
    }

    // The listing is complete: what was not seen has moved or gone.
    let mut missing: HashMap<(Content, u64), Vec<(ProviderPath, Known)>> = HashMap::new();
    for record in known.iter()? {
        let (ordinal, path, k) = record?;
        if !seen.get(ordinal) {
            missing
                .entry((k.checksum, k.size))
                .or_default()
                .push((ProviderPath::parse(&path)?, k));
        }
    }
    let mut appends = Vec::new();
    for hashed in maybe_moved {
        match missing.get_mut(&(content(&hashed.checksum), hashed.entry.size)).and_then(Vec::pop) {
            Some((from, k)) => {
                let events = k.aggregate(&from, provider_id, owner).handle(FileCommand::RecordMove {
                    by: owner,
                    to: hashed.entry.path.clone(),
                    at: Utc::now(),
                })?;
                appends.push(scan.file_append(k.file_id, k.version, &events));
            }
            None => appends.push(scan.discovery(&hashed)),
        }
        if appends.len() >= BATCH {
            scan.commit(std::mem::take(&mut appends), (0, 0)).await?;
        }
    }
    for (path, k) in missing.into_values().flatten() {
        let events = k.aggregate(&path, provider_id, owner).handle(FileCommand::RecordRemoval {
            by: owner,
            job_id: Some(job_id),
        })?;
        appends.push(scan.file_append(k.file_id, k.version, &events));
        if appends.len() >= BATCH {
            scan.commit(std::mem::take(&mut appends), (0, 0)).await?;
        }
    }
    if !appends.is_empty() {
        scan.commit(appends, (0, 0)).await?;
    }
    scan.finish().await
}

/// The running scan's bookkeeping: its job and how far it has got.
struct Scan<'a> {
    commands: &'a Commands,
    ctx: Context,
    job_id: SyncJobId,
    provider_id: ProviderId,
    owner: UserId,
    job: SyncJob,
    version: i64,
    files_done: u64,
    bytes_done: u64,
    cancel: &'a CancellationToken,
}

impl Scan<'_> {
    fn events(&self, events: &[DomainEvent]) -> Vec<NewEvent> {
        events.iter().map(|e| encode(e, &self.ctx)).collect()
    }

    fn file_append(&self, file_id: FileId, version: i64, events: &[DomainEvent]) -> StreamAppend {
        StreamAppend {
            stream: file_id.stream(),
            expected: ExpectedVersion::Exact(version),
            events: self.events(events),
        }
    }

    fn discovery(&self, hashed: &Hashed) -> StreamAppend {
        // Time-ordered ids (UUIDv7): new file streams are appended at the end of the log's stream index
        // instead of touching a random page of it for every file.
        let file_id = FileId::from_uuid(Uuid::now_v7());
        let event = DomainEvent::FileDiscovered(FileDiscovered {
            file_id,
            provider_id: self.provider_id,
            owner_id: self.owner,
            path: hashed.entry.path.clone(),
            size_bytes: hashed.entry.size,
            modified_at: hashed.entry.modified_at.unwrap_or_default(),
            mime_type: guess_mime(hashed.entry.path.as_str()),
            checksum: hashed.checksum.clone(),
            job_id: Some(self.job_id),
            etag: hashed.entry.etag.clone(),
        });
        StreamAppend {
            stream: file_id.stream(),
            expected: ExpectedVersion::NoStream,
            events: self.events(&[event]),
        }
    }

    /// Whether to go on (see [`super::pause::keep_running`]).
    async fn running(&mut self) -> Result<bool, CommandError> {
        super::pause::keep_running(self.commands, self.job_id, &mut self.job, &mut self.version, self.cancel).await
    }

    /// Appends a batch of file events with the job's progress, in one transaction.
    async fn commit(&mut self, mut appends: Vec<StreamAppend>, (files, bytes): (u64, u64)) -> Result<(), CommandError> {
        let (files_done, bytes_done) = (self.files_done + files, self.bytes_done + bytes);
        let progress = self.job.handle(SyncJobCommand::RecordProgress {
            files_done,
            bytes_done,
            files_total: None,
            bytes_total: None,
            bytes_written: None,
            at: Utc::now(),
        })?;
        appends.push(StreamAppend {
            stream: self.job_id.stream(),
            expected: expected(self.version),
            events: self.events(&progress),
        });
        match self.commands.store().append(appends).await {
            Ok(_) => {}
            Err(err) if err.is_concurrency() => {
                return Err(CommandError::Conflict(
                    "the provider's files or the job changed while it was scanned; scan again to settle them".into(),
                ));
            }
            Err(err) => return Err(err.into()),
        }
        progress.iter().for_each(|e| self.job.apply(e));
        self.version += i64::try_from(progress.len()).unwrap_or(1);
        (self.files_done, self.bytes_done) = (files_done, bytes_done);
        Ok(())
    }

    async fn finish(mut self) -> Result<(), CommandError> {
        let (files_done, bytes_done) = (self.files_done, self.bytes_done);
        let finish = SyncJobCommand::RecordProgress {
            files_done,
            bytes_done,
            files_total: Some(files_done),
            bytes_total: Some(bytes_done),
            bytes_written: None,
            at: Utc::now(),
        };
        self.version = self
            .commands
            .job_step(self.job_id, self.version, &mut self.job, finish, &self.ctx)
            .await?;
        self.commands
            .job_step(
                self.job_id,
                self.version,
                &mut self.job,
                SyncJobCommand::Complete { at: Utc::now() },
                &self.ctx,
            )
            .await?;
        tracing::info!(job = %self.job_id, provider = %self.provider_id, files = files_done, bytes = bytes_done, "Scan finished.");
        Ok(())
    }
}

/// BLAKE3 of a file's content, streamed. The content must be as long as the listing said: a
/// provider that answers with less (or more) is not trusted with the file's checksum.
pub(crate) async fn hash(provider: &dyn StorageProvider, path: &ProviderPath, size: u64) -> Result<String, ProviderError> {
    let (checksum, read) = hash_stream(provider.read(path, 0..size).await?).await?;
    if read != size {
        return Err(ProviderError::Temporary(format!(
            "{path}: listed with {size} bytes, but {read} could be read; scan again"
        )));
    }
    Ok(checksum)
}

/// BLAKE3 (hex) of everything `stream` yields, and how many bytes that was.
pub(crate) async fn hash_stream(mut stream: cloudsync_providers::ByteStream) -> Result<(String, u64), ProviderError> {
    let mut hasher = blake3::Hasher::new();
    let mut read = 0_u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        read += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((hasher.finalize().to_hex().to_string(), read))
}
