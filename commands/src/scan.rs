//! The provider scanner: lists a provider's tree through its `StorageProvider`, hashes every file's
//! content with BLAKE3 as it streams by (a few files at a time), and records `FileDiscovered` in
//! batches, each batch one transaction together with the job's progress.
//! File ids are derived from (provider, path), so a scan resumed after a crash never records a file twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudsync_domain::events::{FileDiscovered, guess_mime};
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::{Aggregate, DomainEvent, FileId, ProviderId, ProviderPath, SyncJobId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use cloudsync_providers::{ProviderError, StorageProvider};
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::handlers::{Context, encode, expected, storage_error};
use crate::{CommandError, Commands};

const BATCH: usize = 500;
const HASHING_CONCURRENCY: usize = 4;

struct Scanned {
    path: ProviderPath,
    size: u64,
    modified_at: DateTime<Utc>,
    checksum: String,
}

/// The id of the file found at `path` of `provider` by a scan.
pub fn scanned_file_id(provider: ProviderId, path: &ProviderPath) -> FileId {
    FileId::from_uuid(Uuid::new_v5(&provider.as_uuid(), path.as_str().as_bytes()))
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
            commands.job_step(job_id, version, &mut job, SyncJobCommand::Fail { reason: err.to_string(), at: Utc::now() }, &ctx).await?;
            return Ok(());
        }
    };
    if phase == JobPhase::Pending {
        version = commands.job_step(job_id, version, &mut job, SyncJobCommand::EnterPhase { phase: JobPhase::Scanning, at: Utc::now() }, &ctx).await?;
    }
    tracing::info!(job = %job_id, provider = %provider_id, "Scan started.");

    let hashing = Arc::clone(&provider);
    let mut batches = provider
        .list(&ProviderPath::root())
        .map(move |entry| {
            let provider = Arc::clone(&hashing);
            async move {
                let entry = entry.map_err(storage_error)?;
                match hash(&*provider, &entry.path, entry.size).await {
                    Ok(checksum) => Ok(Some(Scanned {
                        path: entry.path,
                        size: entry.size,
                        modified_at: entry.modified_at.unwrap_or_default(),
                        checksum,
                    })),
                    // Gone between listing and reading: it is no longer there to index.
                    Err(ProviderError::NotFound(_)) => Ok(None),
                    Err(err) => Err(storage_error(err)),
                }
            }
        })
        .buffered(HASHING_CONCURRENCY)
        .try_filter_map(|scanned| async move { Ok(scanned) })
        .try_chunks(BATCH)
        .map_err(|err| err.1)
        .boxed();
    let (mut files_done, mut bytes_done) = (0_u64, 0_u64);
    while let Some(batch) = batches.next().await {
        let batch = batch?;
        if cancel.is_cancelled() {
            return Ok(());
        }
        // Wait out a pause; stop when the job was cancelled meanwhile.
        loop {
            if job.phase().is_some_and(JobPhase::is_terminal) {
                return Ok(());
            }
            if !job.is_paused() {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
        }
        let new_files = files_done + batch.len() as u64;
        let new_bytes = bytes_done + batch.iter().map(|f| f.size).sum::<u64>();
        let progress = job.handle(SyncJobCommand::RecordProgress {
            files_done: new_files,
            bytes_done: new_bytes,
            files_total: None,
            bytes_total: None,
            at: Utc::now(),
        })?;
        let mut pending: Vec<&Scanned> = batch.iter().collect();
        loop {
            let mut appends: Vec<StreamAppend> = pending
                .iter()
                .map(|f| {
                    let file_id = scanned_file_id(provider_id, &f.path);
                    let event = DomainEvent::FileDiscovered(FileDiscovered {
                        file_id,
                        provider_id,
                        owner_id: owner,
                        path: f.path.clone(),
                        size_bytes: f.size,
                        modified_at: f.modified_at,
                        mime_type: guess_mime(f.path.as_str()),
                        checksum: f.checksum.clone(),
                        job_id: Some(job_id),
                    });
                    StreamAppend { stream: file_id.stream(), expected: ExpectedVersion::NoStream, events: vec![encode(&event, &ctx)] }
                })
                .collect();
            appends.push(StreamAppend { stream: job_id.stream(), expected: expected(version), events: progress.iter().map(|e| encode(e, &ctx)).collect() });
            match commands.store().append(appends).await {
                Ok(_) => break,
                Err(err) if err.is_concurrency() => {
                    // Either the job changed (paused, cancelled) or this batch was partly recorded
                    // before a crash: reload both and try again with what is still missing.
                    (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
                    if job.phase().is_some_and(JobPhase::is_terminal) {
                        return Ok(());
                    }
                    let mut missing = Vec::new();
                    for f in pending {
                        if commands.store().read_stream(&scanned_file_id(provider_id, &f.path).stream()).await?.is_empty() {
                            missing.push(f);
                        }
                    }
                    pending = missing;
                }
                Err(err) => return Err(err.into()),
            }
        }
        progress.iter().for_each(|e| job.apply(e));
        version += 1;
        (files_done, bytes_done) = (new_files, new_bytes);
    }
    let finish = SyncJobCommand::RecordProgress { files_done, bytes_done, files_total: Some(files_done), bytes_total: Some(bytes_done), at: Utc::now() };
    version = commands.job_step(job_id, version, &mut job, finish, &ctx).await?;
    commands.job_step(job_id, version, &mut job, SyncJobCommand::Complete { at: Utc::now() }, &ctx).await?;
    tracing::info!(job = %job_id, provider = %provider_id, files = files_done, bytes = bytes_done, "Scan finished.");
    Ok(())
}

/// BLAKE3 of a file's content, streamed.
async fn hash(provider: &dyn StorageProvider, path: &ProviderPath, size: u64) -> Result<String, ProviderError> {
    let mut stream = provider.read(path, 0..size).await?;
    let mut hasher = blake3::Hasher::new();
    while let Some(chunk) = stream.next().await {
        hasher.update(&chunk?);
    }
    Ok(hasher.finalize().to_hex().to_string())
}
