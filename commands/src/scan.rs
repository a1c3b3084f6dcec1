//! The provider scanner: walks a provider's tree on a blocking thread, hashes every file with BLAKE3,
//! and records `FileDiscovered` in batches, each batch one transaction together with the job's progress.
//! File ids are derived from (provider, path), so a scan resumed after a crash never records a file twice.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudsync_domain::events::{FileDiscovered, guess_mime};
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::{Aggregate, DomainEvent, FileId, ProviderId, ProviderPath, SyncJobId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::handlers::{Context, encode, expected};
use crate::local::LocalRoot;
use crate::{CommandError, Commands};

const BATCH: usize = 500;

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
    let root = match commands.provider_root(owner, provider_id).await {
        Ok(root) => root,
        Err(err) => {
            commands.job_step(job_id, version, &mut job, SyncJobCommand::Fail { reason: err.to_string(), at: Utc::now() }, &ctx).await?;
            return Ok(());
        }
    };
    if phase == JobPhase::Pending {
        version = commands.job_step(job_id, version, &mut job, SyncJobCommand::EnterPhase { phase: JobPhase::Scanning, at: Utc::now() }, &ctx).await?;
    }
    tracing::info!(job = %job_id, provider = %provider_id, "Scan started.");

    let (tx, mut rx) = mpsc::channel::<Result<Vec<Scanned>, CommandError>>(2);
    let walk_root = root.clone();
    let walker = tokio::task::spawn_blocking(move || walk(&walk_root, &tx));
    let (mut files_done, mut bytes_done) = (0_u64, 0_u64);
    while let Some(batch) = rx.recv().await {
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
    walker.await.map_err(|err| CommandError::Storage(format!("the scan walker failed: {err}")))??;
    let finish = SyncJobCommand::RecordProgress { files_done, bytes_done, files_total: Some(files_done), bytes_total: Some(bytes_done), at: Utc::now() };
    version = commands.job_step(job_id, version, &mut job, finish, &ctx).await?;
    commands.job_step(job_id, version, &mut job, SyncJobCommand::Complete { at: Utc::now() }, &ctx).await?;
    tracing::info!(job = %job_id, provider = %provider_id, files = files_done, bytes = bytes_done, "Scan finished.");
    Ok(())
}

/// Walks the root (never following symlinks), sending batches of hashed files.
fn walk(root: &LocalRoot, tx: &mpsc::Sender<Result<Vec<Scanned>, CommandError>>) -> Result<(), CommandError> {
    let mut batch = Vec::with_capacity(BATCH);
    for entry in walkdir::WalkDir::new(root.path()).follow_links(false).sort_by_file_name() {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!(error = %error, "Skipped an unreadable entry while scanning.");
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        match scan_one(root.path(), entry.path()) {
            Ok(Some(file)) => batch.push(file),
            Ok(None) => {}
            Err(error) => tracing::warn!(path = %entry.path().display(), error = %error, "Skipped a file that could not be read."),
        }
        if batch.len() == BATCH && tx.blocking_send(Ok(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))).is_err() {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
    Ok(())
}

fn scan_one(root: &Path, host: &Path) -> std::io::Result<Option<Scanned>> {
    let Some(relative) = host.strip_prefix(root).ok().and_then(Path::to_str) else {
        tracing::warn!(path = %host.display(), "Skipped a file whose name is not UTF-8.");
        return Ok(None);
    };
    let Ok(path) = ProviderPath::parse(relative) else {
        tracing::warn!(path = %host.display(), "Skipped a file whose name CloudSync cannot represent.");
        return Ok(None);
    };
    let file = std::fs::File::open(host)?;
    let meta = file.metadata()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&file)?;
    let modified_at = meta.modified().map(DateTime::<Utc>::from).unwrap_or_default();
    Ok(Some(Scanned { path, size: meta.len(), modified_at, checksum: hasher.finalize().to_hex().to_string() }))
}

