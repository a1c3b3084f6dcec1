//! A running job's pauses: scans and sync runs ask between steps whether to go on.

use std::time::Duration;

use chrono::Utc;
use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::{JobPhase, SyncJob, SyncJobCommand};
use tokio_util::sync::CancellationToken;

use crate::core::Context;
use crate::{CommandError, Commands};

/// Whether a job should go on: false when `cancel` fires or the job has ended; waits out a pause
/// (or a hold), woken by new events (a resume appended by another process is noticed by the periodic
/// recheck). Reloads `job` and `version` as it waits.
pub(crate) async fn keep_running(
    commands: &Commands,
    job_id: SyncJobId,
    job: &mut SyncJob,
    version: &mut i64,
    cancel: &CancellationToken,
) -> Result<bool, CommandError> {
    let mut appended = commands.store().watch();
    loop {
        if cancel.is_cancelled() || job.phase().is_some_and(cloudsync_domain::sync_job::JobPhase::is_terminal) {
            return Ok(false);
        }
        if !job.is_paused() {
            return Ok(true);
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(false),
            _ = tokio::time::timeout(Duration::from_secs(1), appended.changed()) => {}
        }
        appended.borrow_and_update();
        (*job, *version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    }
}

/// Moves a pending job into its first working `phase`, once a pause (or a cancel) that came first
/// is waited out; false when the job is not to run after all (ended, cancelled, or `cancel` fired).
/// Reloads `job` and `version` as it goes.
pub(crate) async fn start(
    commands: &Commands,
    job_id: SyncJobId,
    job: &mut SyncJob,
    version: &mut i64,
    phase: JobPhase,
    ctx: &Context,
    cancel: &CancellationToken,
) -> Result<bool, CommandError> {
    loop {
        if !keep_running(commands, job_id, job, version, cancel).await? {
            return Ok(false);
        }
        let start = SyncJobCommand::EnterPhase { phase, at: Utc::now() };
        match commands.job_step(job_id, *version, job, start, ctx).await {
            Ok(v) => {
                *version = v;
                return Ok(true);
            }
            // Only the job lease's holder moves a job on: a conflict is a pause or a cancel that
            // came meanwhile. Look again.
            Err(CommandError::Conflict(_)) => (*job, *version) = commands.load::<SyncJob>(&job_id.stream()).await?,
            Err(err) => return Err(err),
        }
    }
}
