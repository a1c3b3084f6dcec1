//! Analytics export jobs: the job runner hands an export to the process's [`Exporter`] and records
//! its progress (rows as files, bytes written) when it has moved, at most once a second. A pause
//! holds the export between two pages (no query is left open); a cancel, a lost lease or a shutdown
//! drops it, and the exporter leaves no file behind. A retried attempt writes the file again from
//! the start.

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use cloudsync_domain::SyncJobId;
use cloudsync_domain::events::ExportRequest;
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::core::Context;
use crate::{CommandError, Commands};

/// How often a running export's progress is recorded.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Rows and bytes an export has written so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportProgress {
    pub rows: u64,
    pub bytes: u64,
}

/// Writes analytics exports; the server gives one that writes into its export folder.
#[async_trait]
pub trait Exporter: Send + Sync {
    /// Writes `request` as the file `name` (only once it is whole: a dropped or failed export
    /// leaves nothing under that name), publishing its progress on `progress` and reading nothing
    /// while `held` says true; the totals.
    ///
    /// # Errors
    /// Why the export could not be written, for the job's failure.
    async fn export(
        &self,
        request: &ExportRequest,
        name: &str,
        progress: &watch::Sender<ExportProgress>,
        held: watch::Receiver<bool>,
    ) -> Result<ExportProgress, String>;

    /// Removes the file `name` (an export cancelled as it ended).
    async fn discard(&self, name: &str);
}

/// Runs (or runs again) an export job to its end. Returns quietly when the job has ended, is
/// cancelled, or `cancel` fires.
pub(crate) async fn run_export(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken) -> Result<(), CommandError> {
    let (mut job, mut version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    let (Some(owner), Some(JobKind::Export(request)), Some(phase)) = (job.owner(), job.kind().cloned(), job.phase()) else {
        return Err(CommandError::NotFound("sync job"));
    };
    if phase.is_terminal() {
        return Ok(());
    }
    let ctx = Context::new(Some(owner));
    let fail = |reason: String| SyncJobCommand::Fail { reason, at: Utc::now() };
    let Some(exporter) = commands.exporter.clone() else {
        commands
            .job_step(job_id, version, &mut job, fail("this process cannot write exports".into()), &ctx)
            .await?;
        return Ok(());
    };
    if phase == JobPhase::Pending
        && !super::pause::start(commands, job_id, &mut job, &mut version, JobPhase::Transferring, &ctx, cancel).await?
    {
        return Ok(());
    }
    let name = request.file_name(job_id);
    tracing::info!(job = %job_id, what = request.what.as_str(), format = request.format.extension(), file = %name, "Export started.");
    let (progress, seen) = watch::channel(ExportProgress::default());
    let (hold, held) = watch::channel(job.is_paused());
    let export = exporter.export(&request, &name, &progress, held);
    tokio::pin!(export);
    let mut every = tokio::time::interval(PROGRESS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recorded = ExportProgress::default();
    let outcome = loop {
        tokio::select! {
            outcome = &mut export => break outcome,
            () = cancel.cancelled() => return Ok(()),
            _ = every.tick() => {
                // A pause holds the export between two pages; a cancel drops it (and its file).
                (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
                if job.phase().is_none_or(JobPhase::is_terminal) {
                    return Ok(());
                }
                hold.send_replace(job.is_paused());
                let done = *seen.borrow();
                if !job.is_paused() && done != recorded {
                    match commands.job_step(job_id, version, &mut job, record(done, false), &ctx).await {
                        Ok(v) => (version, recorded) = (v, done),
                        // A pause or a cancel came meanwhile: the next tick sees it.
                        Err(CommandError::Conflict(_)) => {}
                        Err(err) => return Err(err),
                    }
                }
            }
        }
    };
    match &outcome {
        Ok(done) => tracing::info!(job = %job_id, rows = done.rows, bytes = done.bytes, file = %name, "Export written."),
        Err(reason) => tracing::warn!(job = %job_id, reason = %reason, "Export failed."),
    }
    // Recorded once the job may move on: a pause that came as the export ended is waited out, and
    // a cancel stands (its file goes).
    loop {
        if !super::pause::keep_running(commands, job_id, &mut job, &mut version, cancel).await? {
            if job.phase() == Some(JobPhase::Cancelled) {
                exporter.discard(&name).await;
            }
            return Ok(());
        }
        let ended = match &outcome {
            Ok(done) => match commands.job_step(job_id, version, &mut job, record(*done, true), &ctx).await {
                Ok(v) => {
                    commands
                        .job_step(job_id, v, &mut job, SyncJobCommand::Complete { at: Utc::now() }, &ctx)
                        .await
                }
                Err(err) => Err(err),
            },
            Err(reason) => commands.job_step(job_id, version, &mut job, fail(reason.clone()), &ctx).await,
        };
        match ended {
            Ok(_) => return Ok(()),
            // A pause or a cancel came meanwhile: look again. A job that has not changed refuses
            // the step for good (its phase does not allow it): that is the attempt's error.
            Err(CommandError::Conflict(why)) => {
                let seen = version;
                (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
                if version == seen {
                    return Err(CommandError::Conflict(why));
                }
            }
            Err(err) => return Err(err),
        }
    }
}

fn record(done: ExportProgress, last: bool) -> SyncJobCommand {
    SyncJobCommand::RecordProgress {
        files_done: done.rows,
        bytes_done: done.bytes,
        files_total: last.then_some(done.rows),
        bytes_total: last.then_some(done.bytes),
        bytes_written: Some(done.bytes),
        at: Utc::now(),
    }
}
