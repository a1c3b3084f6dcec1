//! The in-process job queue, durable through the event log: the runner follows the log from its
//! checkpoint, starts a worker for every `SyncJobCreated`, and advances the checkpoint only past jobs
//! that have ended, so a job interrupted by a crash is picked up again (and resumes) at the next start.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::{JobKind, SyncJob, SyncJobCommand};
use cloudsync_eventstore::{DbPool, subscribe};
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::core::Context;
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

impl Commands {
    /// Runs a job to its end in this task (the CLI does this; the server's job runner does the same)
    /// under the job's lease: while another live worker holds it, waits, and carries the job on
    /// from its last recorded step once that worker has gone (its lease lapsed, or its process on
    /// this machine ended). A run that loses the lease (a stall) stops, and this worker stands by
    /// again in the same way. Returns quietly when the job has ended (whoever ran it), or when
    /// `cancel` fires.
    ///
    /// # Errors
    /// What stopped the job.
    pub async fn run_job(&self, job_id: SyncJobId, cancel: &tokio_util::sync::CancellationToken) -> Result<(), CommandError> {
        self.run_job_in(job_id, cancel, None).await
    }

    /// [`Commands::run_job`], taking one of `slots` (where given) once it holds the job's lease:
    /// a job that waits for another worker takes no slot meanwhile.
    pub(crate) async fn run_job_in(
        &self,
        job_id: SyncJobId,
        cancel: &tokio_util::sync::CancellationToken,
        slots: Option<&tokio::sync::Semaphore>,
    ) -> Result<(), CommandError> {
        let (job, _) = self.load::<SyncJob>(&job_id.stream()).await?;
        if job.kind().is_none() {
            return Err(CommandError::NotFound("sync job"));
        }
        loop {
            // One worker at a time: the others wait, and take over if it goes away.
            let Some(lease) = super::leases::JobLease::take(self, job_id, cancel).await? else {
                return Ok(());
            };
            let run = lease.token().clone();
            let slot = match slots {
                Some(slots) => tokio::select! {
                    () = run.cancelled() => None,
                    slot = slots.acquire() => Some(slot.map_err(|_| CommandError::Conflict("the job runner is stopping".into()))?),
                },
                None => None,
            };
            let result = if run.is_cancelled() {
                Ok(())
            } else {
                match job.kind() {
                    Some(JobKind::Scan { .. }) => super::scan::run_scan(self, job_id, &run).await,
                    _ => super::sync::run_sync(self, job_id, &run).await,
                }
            };
            drop(slot);
            lease.release().await;
            // The run stopped because the lease was lost, not because it ended or was cancelled:
            // stand by for the job again (another worker may be carrying it on).
            if result.is_ok() && run.is_cancelled() && !cancel.is_cancelled() {
                tracing::warn!(job = %job_id, "A run lost its job lease; standing by to take the job up again.");
                continue;
            }
            return result;
        }
    }
}
