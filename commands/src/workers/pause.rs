//! A running job's pauses: scans and sync runs ask between steps whether to go on.

use std::time::Duration;

use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::SyncJob;
use tokio_util::sync::CancellationToken;

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
