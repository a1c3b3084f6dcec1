//! The job relay: the event log is the outbox of the job queue. One process at a time (the
//! singleton lease `relay`) follows the log from its checkpoint and keeps `queued_jobs`, a row for
//! every job that has not ended; it publishes each row's attempt to the queue (returning once the
//! queue holds it: RabbitMQ's publisher confirm) and only then marks it published. A crash between
//! the two publishes the attempt again, which workers drop (see `runner`).
//!
//! Its sweep looks after attempts that stopped without saying so: a job started (claimed) whose
//! worker no longer holds its lease (the process was killed, or lost its connection past the lease's
//! lifetime) is retried as the next attempt, after a backoff, or fails once its attempts are spent;
//! an attempt published long ago and never started is published again (a queue that lost it). Each
//! attempt that stops short is a `SyncJobRetrying` event, so `syncStatus` shows why and when.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::{SyncJob, SyncJobCommand};
use cloudsync_eventstore::{DbPool, on_pool, subscribe};
use cloudsync_queue::{Job, JobQueue, QueueError};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::db::{db_error, db_now_ms, millis};
use super::leases::JOBS;
use super::queued::{Queued, attempt_of, forget, queued, requeue, resumed, unpublish};
use crate::core::Context;
use crate::{CommandError, Commands};

/// The queue jobs travel through.
pub const JOB_QUEUE: &str = "cloudsync.jobs";
/// How often the broker may hand one job back (a worker that could not reach the database) before
/// it goes to the dead-letter queue; the sweep publishes it again later.
pub(crate) const DELIVERY_LIMIT: u32 = 20;
const CHECKPOINT: &str = "relay";
/// How often due attempts are looked for when the log is quiet, and the sweep runs.
const TICK: Duration = Duration::from_secs(1);
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// Attempts published at once.
const BATCH: i64 = 200;

/// How often a job is tried, and how long it waits between attempts.
#[derive(Debug, Clone, Copy)]
pub struct JobRetries {
    /// Attempts in all; past them the job fails with the last attempt's reason.
    pub attempts: u32,
    /// The wait after the first attempt; each later wait doubles, up to `max_wait`.
    pub first_wait: Duration,
    pub max_wait: Duration,
    /// An attempt published this long ago and never started is published again: a safety net for
    /// a queue that lost what it held (purged, or its broker's data lost). A copy of an attempt that
    /// is only waiting in a long queue is dropped by the worker that gets it second.
    pub republish_after: Duration,
}

impl Default for JobRetries {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(600),
            republish_after: Duration::from_secs(3600),
        }
    }
}

impl JobRetries {
    /// The wait after attempt `attempt` (1 the first time).
    pub fn wait_after(&self, attempt: u32) -> Duration {
        let doubled = self.first_wait.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        doubled.min(self.max_wait)
    }
}

/// What a queued job's message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Attempt {
    pub job_id: SyncJobId,
    pub attempt: u32,
}

impl Attempt {
    fn to_job(self) -> Job {
        Job {
            id: format!("{}/{}", self.job_id, self.attempt),
            body: serde_json::to_vec(&self).unwrap_or_default(),
        }
    }

    pub(crate) fn from_job(job: &Job) -> Option<Self> {
        serde_json::from_slice(&job.body).ok()
    }
}

/// When a job whose attempt stopped short is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Again {
    /// After the attempt's backoff.
    Later,
    /// At once.
    Now,
    /// Never: trying again cannot help.
    Never,
}

/// Attempt `attempt` of `job_id` stopped short for `reason`: the job is retried as the next attempt
/// (a `SyncJobRetrying` event), or fails once its attempts are spent or where `again` says never.
pub(crate) async fn stopped_short(
    commands: &Commands,
    job_id: SyncJobId,
    attempt: u32,
    reason: &str,
    retries: &JobRetries,
    again: Again,
) -> Result<(), CommandError> {
    let (mut job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    if job.phase().is_none_or(|phase| phase.is_terminal()) {
        return forget(commands.pool(), job_id).await;
    }
    let ctx = Context::new(job.owner());
    let now = Utc::now();
    if attempt >= retries.attempts || again == Again::Never {
        tracing::error!(job = %job_id, attempt, reason, "A job failed for good.");
        let reason = if again == Again::Never {
            reason.to_owned()
        } else {
            format!("gave up after {attempt} attempts: {reason}")
        };
        let fail = SyncJobCommand::Fail { reason, at: now };
        commands.job_step(job_id, version, &mut job, fail, &ctx).await?;
        return forget(commands.pool(), job_id).await;
    }
    let wait = if again == Again::Later {
        retries.wait_after(attempt)
    } else {
        Duration::ZERO
    };
    tracing::warn!(job = %job_id, attempt, reason, wait_s = wait.as_secs_f64(), "A job's attempt stopped short; it will be retried.");
    let retry = SyncJobCommand::Retry {
        attempt,
        reason: reason.to_owned(),
        retry_at: chrono::Duration::from_std(wait)
            .ok()
            .and_then(|wait| now.checked_add_signed(wait))
            .unwrap_or(now),
        at: now,
    };
    commands.job_step(job_id, version, &mut job, retry, &ctx).await?;
    requeue(commands.pool(), job_id, attempt, attempt + 1, wait).await
}

/// Publishes jobs from the log to the queue; see the module's documentation.
pub struct JobRelay {
    commands: Commands,
    queue: Arc<dyn JobQueue>,
    retries: JobRetries,
}

impl JobRelay {
    pub fn new(commands: Commands, queue: Arc<dyn JobQueue>, retries: JobRetries) -> Self {
        Self { commands, queue, retries }
    }

    /// Relays while this process holds the lease `relay`, standing by while another does, until
    /// `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let relay = Arc::new(self);
        let pool = relay.commands.pool().clone();
        super::leases::lead(pool, "relay", shutdown, move |lead| {
            let relay = Arc::clone(&relay);
            Box::pin(async move {
                if let Err(error) = relay.relay(&lead).await {
                    tracing::error!(error = %error, "The job relay stopped; it starts again.");
                    tokio::select! {
                        () = lead.cancelled() => {}
                        () = tokio::time::sleep(TICK) => {}
                    }
                }
            })
        })
        .await;
    }

    async fn relay(&self, lead: &CancellationToken) -> Result<(), CommandError> {
        let pool = self.commands.pool();
        self.queue.declare(JOB_QUEUE, DELIVERY_LIMIT).await.map_err(queue_error)?;
        if !self.queue.durable() {
            // A queue in memory lost what it held with the process that held it.
            let query = "UPDATE queued_jobs SET published_at = NULL WHERE claimed_at IS NULL";
            on_pool!(pool, |p| sqlx::query(query).execute(p).await.map(drop)).map_err(db_error)?;
        }
        let start = super::checkpoint(pool, CHECKPOINT).await?;
        // Jobs found while catching up (the log read from an old checkpoint) are published by the
        // tick, together; once live, each at once.
        let live_from = self.commands.store().head().await?;
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), start, Duration::from_millis(500)));
        // Attempts the queue gave up on (returned too often) are published again.
        let mut dead = self
            .queue
            .consume(&cloudsync_queue::dead_letters(JOB_QUEUE), 16)
            .await
            .map_err(queue_error)?;
        let (mut seen, mut saved) = (start, start);
        let mut tick = tokio::time::interval(TICK);
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = lead.cancelled() => break,
                letter = dead.next() => match letter {
                    Some(Ok(letter)) => {
                        if let Some(attempt) = Attempt::from_job(&letter.job) {
                            tracing::warn!(job = %attempt.job_id, attempt = attempt.attempt, "The queue gave a job up; it is published again.");
                            metrics::counter!("cloudsync_queue_dead_lettered_total").increment(1);
                            unpublish(pool, attempt.job_id, attempt.attempt).await?;
                        }
                        letter.ack().await.map_err(queue_error)?;
                    }
                    Some(Err(error)) => return Err(queue_error(error)),
                    None => return Err(CommandError::Storage("job queue: the dead letters' consumer ended".into())),
                },
                next = events.next() => match next {
                    Some(Ok(event)) => {
                        seen = event.position;
                        let job_id = || event.payload.get("job_id").and_then(|v| v.as_str()).and_then(|s| s.parse::<SyncJobId>().ok());
                        match (event.event_type.as_str(), job_id()) {
                            ("SyncJobCreated", Some(job_id)) => {
                                let query = format!(
                                    "INSERT INTO queued_jobs (job_id, attempt, due_at) VALUES ($1, 1, {}) ON CONFLICT (job_id) DO NOTHING",
                                    db_now_ms(pool)
                                );
                                on_pool!(pool, |p| sqlx::query(&query).bind(job_id.to_string()).execute(p).await.map(drop)).map_err(db_error)?;
                                super::save_checkpoint(pool, CHECKPOINT, seen).await?;
                                saved = seen;
                                if seen > live_from {
                                    self.publish_due().await?;
                                }
                            }
                            ("SyncJobCompleted" | "SyncJobFailed" | "SyncJobCancelled", Some(job_id)) => {
                                forget(pool, job_id).await?;
                                super::save_checkpoint(pool, CHECKPOINT, seen).await?;
                                saved = seen;
                            }
                            _ => {}
                        }
                    }
                    Some(Err(error)) => tracing::warn!(error = %error, "The job relay could not read the log; retrying."),
                    None => break,
                },
                _ = tick.tick() => {
                    if seen != saved {
                        super::save_checkpoint(pool, CHECKPOINT, seen).await?;
                        saved = seen;
                    }
                    self.publish_due().await?;
                }
                _ = sweep.tick() => self.sweep().await?,
            }
        }
        if seen != saved {
            super::save_checkpoint(pool, CHECKPOINT, seen).await?;
        }
        Ok(())
    }

    /// Publishes the attempts that are due and not yet published.
    async fn publish_due(&self) -> Result<(), CommandError> {
        let pool = self.commands.pool();
        let query = format!(
            "SELECT job_id, CAST(attempt AS BIGINT) FROM queued_jobs WHERE published_at IS NULL AND due_at <= {} \
             ORDER BY due_at LIMIT {BATCH}",
            db_now_ms(pool)
        );
        let due: Vec<(String, i64)> = on_pool!(pool, |p| sqlx::query_as(&query).fetch_all(p).await).map_err(db_error)?;
        let mark = format!(
            "UPDATE queued_jobs SET published_at = {} WHERE job_id = $1 AND attempt = $2 AND published_at IS NULL",
            db_now_ms(pool)
        );
        for (job, attempt) in due {
            let Ok(job_id) = job.parse::<SyncJobId>() else {
                forget_named(pool, &job).await?;
                continue;
            };
            let message = Attempt {
                job_id,
                attempt: attempt_of(attempt),
            };
            self.queue.publish(JOB_QUEUE, message.to_job()).await.map_err(queue_error)?;
            metrics::counter!("cloudsync_queue_published_total").increment(1);
            on_pool!(pool, |p| sqlx::query(&mark).bind(&job).bind(attempt).execute(p).await.map(drop)).map_err(db_error)?;
        }
        Ok(())
    }

    /// Attempts that stopped without saying so, and publications a queue lost.
    async fn sweep(&self) -> Result<(), CommandError> {
        let pool = self.commands.pool();
        let claimed = "SELECT job_id, CAST(attempt AS BIGINT) FROM queued_jobs WHERE claimed_at IS NOT NULL";
        let claimed: Vec<(String, i64)> = on_pool!(pool, |p| sqlx::query_as(claimed).fetch_all(p).await).map_err(db_error)?;
        for (job, attempt) in claimed {
            let Ok(job_id) = job.parse::<SyncJobId>() else {
                forget_named(pool, &job).await?;
                continue;
            };
            if let Err(error) = self.look_after(job_id, &job, attempt_of(attempt)).await {
                tracing::warn!(job = %job_id, error = %error, "Could not look after a job whose worker may have gone.");
            }
        }
        let stale = format!(
            "UPDATE queued_jobs SET published_at = NULL WHERE claimed_at IS NULL AND published_at < {} - $1",
            db_now_ms(pool)
        );
        let ttl = millis(self.retries.republish_after);
        on_pool!(pool, |p| sqlx::query(&stale).bind(ttl).execute(p).await.map(drop)).map_err(db_error)
    }
}

impl JobRelay {
    /// A started attempt: if its worker went away, it is resumed (the job moved on during it) or
    /// counted as stopped short (it did not: a job that brings its worker down ends, failed, after
    /// its attempts).
    async fn look_after(&self, job_id: SyncJobId, job: &str, attempt: u32) -> Result<(), CommandError> {
        let pool = self.commands.pool();
        if JOBS.is_held(pool, job).await? {
            return Ok(());
        }
        // Read again: a worker that ended the job or handed it back changes the row before it
        // gives its lease up.
        let Some(Queued {
            claimed: Some(claimed_version),
            attempt: current,
            ..
        }) = queued(pool, job_id).await?
        else {
            return Ok(());
        };
        if current != attempt {
            return Ok(());
        }
        let (found, version) = self.commands.load::<SyncJob>(&job_id.stream()).await?;
        if found.phase().is_none_or(|phase| phase.is_terminal()) {
            return forget(pool, job_id).await;
        }
        // A job that moved on is carried on, a limited number of times: one that brings its worker
        // down whatever it has done (a scan records its progress as it lists) is not resumed forever.
        if version > claimed_version && resumed(pool, job_id).await? <= self.retries.attempts {
            tracing::warn!(job = %job_id, attempt, "The worker running a job went away; it is carried on from its last step.");
            return requeue(pool, job_id, attempt, attempt, Duration::ZERO).await;
        }
        let reason = "the worker running it went away (its process ended, or lost the database for longer than its lease)";
        stopped_short(&self.commands, job_id, attempt, reason, &self.retries, Again::Now).await
    }
}

async fn forget_named(pool: &DbPool, job: &str) -> Result<(), CommandError> {
    let query = "DELETE FROM queued_jobs WHERE job_id = $1";
    on_pool!(pool, |p| sqlx::query(query).bind(job).execute(p).await.map(drop)).map_err(db_error)
}

pub(crate) fn queue_error(error: QueueError) -> CommandError {
    CommandError::Storage(format!("job queue: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_their_limit() {
        let retries = JobRetries {
            attempts: 5,
            first_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(60),
            republish_after: Duration::from_secs(600),
        };
        let waits: Vec<u64> = (1..=5).map(|a| retries.wait_after(a).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 60, 60]);
        assert_eq!(retries.wait_after(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn an_attempt_travels_as_json_named_by_job_and_attempt() {
        let attempt = Attempt {
            job_id: SyncJobId::from_uuid(uuid::Uuid::from_u128(7)),
            attempt: 3,
        };
        let job = attempt.to_job();
        assert!(job.id.ends_with("/3"));
        assert_eq!(Attempt::from_job(&job), Some(attempt));
        assert_eq!(
            Attempt::from_job(&Job {
                id: "x".into(),
                body: b"{}".to_vec()
            }),
            None
        );
    }
}
