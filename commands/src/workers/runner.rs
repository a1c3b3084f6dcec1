//! The job runner: a worker's consumer of the job queue (see `relay` for how jobs get there).
//!
//! A delivery names a job's attempt. The runner drops (acknowledges and forgets) one that is stale:
//! the job has ended, the attempt is not the current one or not yet due, or another live worker
//! holds the job's lease (it runs there). Otherwise it takes the lease, which marks the attempt
//! started, acknowledges the delivery and runs the job, so a long run is never one unacknowledged
//! delivery: from then on the lease (renewed while the run lasts) says who runs it, and the relay's
//! sweep retries the job if that worker goes away. A run that fails is retried after a backoff
//! (`SyncJobRetrying`) until its attempts are spent; one stopped by a shutdown hands its attempt
//! back to the queue at once.
//!
//! A worker takes at most `concurrency` jobs at a time: it consumes only while it has a free slot,
//! with the queue's prefetch set to its free slots, and stops consuming (giving back what the queue
//! sent ahead) while all are busy, so an idle worker elsewhere gets the waiting jobs.

use std::sync::Arc;
use std::time::Duration;

use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::{JobKind, SyncJob};
use cloudsync_queue::{Consumer, Delivery, JobQueue};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::leases::JobLease;
use super::queued;
use super::relay::{self, Again, Attempt, DELIVERY_LIMIT, JOB_QUEUE, JobRetries};
use crate::{CommandError, Commands};

/// How long the runner waits before it asks the queue (or the database) again after losing it.
const RECONNECT: Duration = Duration::from_secs(1);
/// The longest it waits between two tries.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// Runs jobs from the queue with bounded concurrency; owned by the server, stopped by its
/// cancellation token.
pub struct JobRunner {
    commands: Commands,
    queue: Arc<dyn JobQueue>,
    concurrency: usize,
    retries: JobRetries,
}

/// What became of a delivery.
enum Claim {
    /// This worker runs the attempt (the delivery is acknowledged).
    Run(JobLease, Attempt, JobKind),
    /// Nothing to do here.
    Dropped,
}

impl JobRunner {
    pub fn new(commands: Commands, queue: Arc<dyn JobQueue>, concurrency: usize, retries: JobRetries) -> Self {
        Self {
            commands,
            queue,
            concurrency: concurrency.max(1),
            retries,
        }
    }

    /// Takes jobs from the queue until `shutdown` is cancelled, then waits for running jobs to stop
    /// (each hands its attempt back).
    ///
    /// # Errors
    /// None so far: a queue that cannot be reached is asked again.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), CommandError> {
        let runner = Arc::new(self);
        let slots = Arc::new(Semaphore::new(runner.concurrency));
        let mut running: JoinSet<()> = JoinSet::new();
        let mut consumer: Option<Consumer> = None;
        let mut declared = false;
        loop {
            while running.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = Arc::clone(&slots).acquire_owned() => permit.map_err(|_| CommandError::Conflict("the job runner is stopping".into()))?,
            };
            if consumer.is_none() {
                let prefetch = u16::try_from(slots.available_permits() + 1).unwrap_or(u16::MAX);
                let opened = async {
                    if !declared {
                        runner.queue.declare(JOB_QUEUE, DELIVERY_LIMIT).await?;
                        declared = true;
                    }
                    runner.queue.consume(JOB_QUEUE, prefetch).await
                }
                .await;
                match opened {
                    Ok(opened) => consumer = Some(opened),
                    Err(error) => {
                        tracing::warn!(error = %error, "The job runner cannot reach its queue; asking again.");
                        drop(permit);
                        pause(&shutdown, RECONNECT).await;
                        continue;
                    }
                }
            }
            let next = match consumer.as_mut() {
                Some(deliveries) => tokio::select! {
                    () = shutdown.cancelled() => break,
                    next = deliveries.next() => next,
                },
                None => continue,
            };
            match next {
                Some(Ok(delivery)) => match runner.claim(delivery, &shutdown).await {
                    Claim::Run(lease, attempt, kind) => {
                        let runner = Arc::clone(&runner);
                        let shutdown = shutdown.clone();
                        running.spawn(async move { runner.carry_out(lease, attempt, kind, &shutdown, permit).await });
                    }
                    Claim::Dropped => drop(permit),
                },
                Some(Err(error)) => {
                    tracing::warn!(error = %error, "The job queue's consumer failed; consuming again.");
                    (consumer, declared) = (None, false);
                    pause(&shutdown, RECONNECT).await;
                }
                None => {
                    tracing::warn!("The job queue closed its consumer; consuming again.");
                    (consumer, declared) = (None, false);
                    pause(&shutdown, RECONNECT).await;
                }
            }
            if slots.available_permits() == 0 {
                // Every slot is busy: what the queue sent ahead goes back, to idle workers.
                consumer = None;
            }
        }
        drop(consumer);
        while running.join_next().await.is_some() {}
        Ok(())
    }

    /// Decides what to do with a delivery, and settles it. While the database cannot be reached
    /// the delivery is held (unsettled, so the queue does not count it as returned) and the
    /// decision tried again, a little later each time.
    async fn claim(&self, delivery: Delivery, shutdown: &CancellationToken) -> Claim {
        if delivery.attempt > 0 {
            metrics::counter!("cloudsync_queue_redelivered_total").increment(1);
        }
        let Some(attempt) = Attempt::from_job(&delivery.job) else {
            tracing::error!(job = %delivery.job.id, "A job queue message that names no job attempt goes to the dead letters.");
            if let Err(error) = delivery.reject().await {
                tracing::warn!(error = %error, "Could not reject a job queue message.");
            }
            return Claim::Dropped;
        };
        let mut wait = RECONNECT;
        // One holder for every try: a lease whose taking committed unseen is this worker's still.
        let holder = super::leases::holder_name();
        let claim = loop {
            match self.take(attempt, &holder, shutdown).await {
                Ok(claim) => break claim,
                // The database is unreachable: it will pass.
                Err(error @ CommandError::Store(_)) => {
                    tracing::warn!(job = %attempt.job_id, error = %error, "Could not take a job; trying again.");
                    if shutdown.is_cancelled() {
                        // Unsettled, it goes back to the queue with this consumer.
                        return Claim::Dropped;
                    }
                    pause(shutdown, wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
                // Anything else will not (a job stream this build cannot read, say): the delivery is
                // dropped, and the relay publishes the attempt again after `republish_after`.
                Err(error) => {
                    tracing::error!(job = %attempt.job_id, error = %error, "A job cannot be taken; it is published again later.");
                    break Claim::Dropped;
                }
            }
        };
        if let Err(error) = delivery.ack().await {
            // It comes back, and is dropped then: this worker holds the lease, or the job ended.
            tracing::warn!(job = %attempt.job_id, error = %error, "Could not acknowledge a job; it will be delivered again.");
        }
        claim
    }

    async fn take(&self, attempt: Attempt, holder: &str, shutdown: &CancellationToken) -> Result<Claim, CommandError> {
        let pool = self.commands.pool();
        let job_id = attempt.job_id;
        match queued::queued(pool, job_id).await? {
            Some(row) if row.attempt == attempt.attempt && row.due => {}
            // Ended, superseded by a later attempt, or not yet due (the relay publishes it then).
            _ => return Ok(Claim::Dropped),
        }
        let (job, version) = self.commands.load::<SyncJob>(&job_id.stream()).await?;
        let Some(kind) = job.kind().cloned() else {
            queued::forget(pool, job_id).await?;
            return Ok(Claim::Dropped);
        };
        if job.phase().is_none_or(|phase| phase.is_terminal()) {
            queued::forget(pool, job_id).await?;
            return Ok(Claim::Dropped);
        }
        match JobLease::try_take(&self.commands, job_id, version, attempt.attempt, holder, shutdown).await? {
            Some(lease) => Ok(Claim::Run(lease, attempt, kind)),
            None => {
                tracing::debug!(job = %job_id, "Another worker runs this job.");
                Ok(Claim::Dropped)
            }
        }
    }

    /// Runs an attempt under its lease in the correlation of the request that started the job (its
    /// events carry that id, and its log lines in the span `job`), then records how it ended and
    /// gives the lease up.
    async fn carry_out(&self, lease: JobLease, attempt: Attempt, kind: JobKind, shutdown: &CancellationToken, slot: OwnedSemaphorePermit) {
        use tracing::Instrument as _;
        let job_id = attempt.job_id;
        let correlation = match self.commands.store().read_stream(&job_id.stream()).await {
            Ok(events) => events.first().map(|e| e.metadata.correlation_id),
            Err(_) => None,
        }
        .unwrap_or_else(uuid::Uuid::new_v4);
        let span = tracing::info_span!("job", job = %job_id, attempt = attempt.attempt, request_id = %correlation);
        crate::core::correlated(
            correlation,
            self.carry_out_here(lease, attempt, kind, shutdown, slot).instrument(span),
        )
        .await;
    }

    async fn carry_out_here(
        &self,
        lease: JobLease,
        attempt: Attempt,
        kind: JobKind,
        shutdown: &CancellationToken,
        slot: OwnedSemaphorePermit,
    ) {
        let (commands, job_id) = (&self.commands, attempt.job_id);
        let run = lease.token().clone();
        let started = std::time::Instant::now();
        let (kind_label, result) = match kind {
            JobKind::Scan { .. } => ("scan", super::scan::run_scan(commands, job_id, &run).await),
            JobKind::Export(_) => ("export", super::export::run_export(commands, job_id, &run).await),
            JobKind::Sync { .. } => ("sync", super::sync::run_sync(commands, job_id, &run).await),
        };
        drop(slot);
        // A run records its job's failure or cancellation itself and returns Ok: the job's phase
        // says how it ended.
        let ended = match (&result, run.is_cancelled()) {
            (Ok(()), false) => commands
                .load::<SyncJob>(&job_id.stream())
                .await
                .ok()
                .and_then(|(job, _)| job.phase()),
            _ => None,
        };
        let outcome = if let Some(phase) = ended.filter(|phase| phase.is_terminal()) {
            match phase {
                cloudsync_domain::events::JobPhase::Completed => "completed",
                cloudsync_domain::events::JobPhase::Cancelled => "cancelled",
                _ => "failed",
            }
        } else if result.is_ok() && !run.is_cancelled() {
            // Ended its run without ending the job (paused, held for approval).
            "paused"
        } else if shutdown.is_cancelled() {
            "handed_back"
        } else if run.is_cancelled() {
            "lease_lost"
        } else {
            "failed"
        };
        metrics::counter!("cloudsync_jobs_total", "kind" => kind_label, "outcome" => outcome).increment(1);
        metrics::histogram!("cloudsync_job_duration_seconds", "kind" => kind_label, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        if shutdown.is_cancelled() && lease.still_held().await {
            // Stopped by the shutdown: the same attempt goes back to the queue as the lease goes.
            if let Err(error) = lease.hand_back(job_id, attempt.attempt).await {
                tracing::warn!(job = %job_id, error = %error, "Could not hand a job back; the relay's sweep will.");
            }
            return;
        }
        let recorded = if run.is_cancelled() {
            // The lease was lost (the process stalled, or stops): another worker may carry the job
            // on, and the relay's sweep looks after it if none does.
            if !shutdown.is_cancelled() {
                tracing::warn!(job = %job_id, "A run lost its job lease; the job is carried on elsewhere or retried.");
            }
            Ok(())
        } else {
            match result {
                Err(error) => {
                    tracing::warn!(job = %job_id, attempt = attempt.attempt, error = %error, "A job's run failed.");
                    let again = if retryable(&error) { Again::Later } else { Again::Never };
                    relay::stopped_short(commands, job_id, attempt.attempt, &error.to_string(), &self.retries, again).await
                }
                // The job has ended; the relay forgets it when it reads the end.
                Ok(()) => Ok(()),
            }
        };
        if let Err(error) = recorded {
            tracing::warn!(job = %job_id, error = %error, "Could not record how a job's attempt ended; the relay's sweep will.");
        }
        lease.release().await;
    }
}

/// Whether a run that failed this way may succeed when tried again: storage and database failures,
/// and races, may pass; a job that is malformed or names what is gone will not.
fn retryable(error: &CommandError) -> bool {
    matches!(
        error,
        CommandError::Storage(_) | CommandError::Store(_) | CommandError::Conflict(_) | CommandError::Scratch(_)
    )
}

async fn pause(shutdown: &CancellationToken, wait: Duration) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = tokio::time::sleep(wait) => {}
    }
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
    pub async fn run_job(&self, job_id: SyncJobId, cancel: &CancellationToken) -> Result<(), CommandError> {
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
            let result = match job.kind() {
                Some(JobKind::Scan { .. }) => super::scan::run_scan(self, job_id, &run).await,
                Some(JobKind::Export(_)) => super::export::run_export(self, job_id, &run).await,
                _ => super::sync::run_sync(self, job_id, &run).await,
            };
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
