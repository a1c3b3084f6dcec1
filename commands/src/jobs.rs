//! The in-process job queue, durable through the event log: the runner follows the log from its
//! checkpoint, starts a worker for every `SyncJobCreated`, and advances the checkpoint only past jobs
//! that have ended, so a job interrupted by a crash is picked up again (and resumes) at the next start.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::{SyncJob, SyncJobCommand};
use cloudsync_eventstore::{DbPool, subscribe};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handlers::Context;
use crate::{CommandError, Commands};

const CHECKPOINT: &str = "jobs";

/// Runs jobs with bounded concurrency; owned by the server, stopped by its cancellation token.
pub struct JobRunner {
    commands: Commands,
    pool: DbPool,
    concurrency: usize,
    poll: Duration,
}

impl JobRunner {
    pub fn new(commands: Commands, pool: DbPool) -> Self {
        Self {
            commands,
            pool,
            concurrency: 4,
            poll: Duration::from_millis(500),
        }
    }

    /// Follows the log until `shutdown` is cancelled, then waits for running jobs to stop.
    ///
    /// # Errors
    /// When the checkpoint cannot be read.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CommandError> {
        let start = load_checkpoint(&self.pool).await?;
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), start, self.poll));
        let mut running: JoinSet<i64> = JoinSet::new();
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        let (mut seen, mut saved) = (start, start);
        // Jobs run `concurrency` at a time; one waiting for another worker's lease takes no slot.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(position) = done {
                        in_flight.remove(&position);
                    }
                }
                next = events.next() => match next {
                    Some(Ok(event)) => {
                        seen = event.position;
                        if event.event_type == "SyncJobCreated" {
                            let job_id = event.payload.get("job_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<SyncJobId>().ok());
                            if let Some(job_id) = job_id {
                                in_flight.insert(event.position);
                                let commands = self.commands.clone();
                                let cancel = shutdown.child_token();
                                let position = event.position;
                                let slots = Arc::clone(&slots);
                                running.spawn(async move {
                                    execute(&commands, job_id, &cancel, &slots).await;
                                    position
                                });
                            }
                        }
                    }
                    Some(Err(error)) => tracing::warn!(error = %error, "The job runner could not read the log; retrying."),
                    None => break,
                },
            }
            let checkpoint = in_flight.first().map_or(seen, |first| first - 1);
            if checkpoint != saved {
                if let Err(error) = save_checkpoint(&self.pool, checkpoint).await {
                    tracing::warn!(error = %error, "The job runner could not save its checkpoint.");
                } else {
                    saved = checkpoint;
                }
            }
        }
        while running.join_next().await.is_some() {}
        Ok(())
    }
}

async fn execute(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken, slots: &tokio::sync::Semaphore) {
    if let Err(error) = commands.run_job_in(job_id, cancel, Some(slots)).await {
        tracing::error!(job = %job_id, error = %error, "Job failed.");
        if let Ok((mut job, version)) = commands.load::<SyncJob>(&job_id.stream()).await {
            let ctx = Context::new(job.owner());
            let fail = SyncJobCommand::Fail {
                reason: error.to_string(),
                at: Utc::now(),
            };
            if let Err(error) = commands.job_step(job_id, version, &mut job, fail, &ctx).await {
                tracing::warn!(job = %job_id, error = %error, "Could not record the job's failure.");
            }
        }
    }
}

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

async fn load_checkpoint(pool: &DbPool) -> Result<i64, CommandError> {
    let query = "SELECT position FROM worker_checkpoints WHERE name = $1";
    let position: Option<i64> = match pool {
        DbPool::Sqlite(p) => sqlx::query_scalar(query).bind(CHECKPOINT).fetch_optional(p).await,
        DbPool::Postgres(p) => sqlx::query_scalar(query).bind(CHECKPOINT).fetch_optional(p).await,
    }
    .map_err(|err| CommandError::Store(err.into()))?;
    Ok(position.unwrap_or(0))
}

async fn save_checkpoint(pool: &DbPool, position: i64) -> Result<(), CommandError> {
    let query = "INSERT INTO worker_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position";
    match pool {
        DbPool::Sqlite(p) => sqlx::query(query).bind(CHECKPOINT).bind(position).execute(p).await.map(drop),
        DbPool::Postgres(p) => sqlx::query(query).bind(CHECKPOINT).bind(position).execute(p).await.map(drop),
    }
    .map_err(|err| CommandError::Store(err.into()))
}
