//! `queued_jobs`: the relay's row for each job that has not ended (see `relay`): its attempt, when
//! it is due, and whether it was published and started.

use std::time::Duration;

use cloudsync_domain::SyncJobId;
use cloudsync_eventstore::{DbPool, on_pool};

use super::db::{db_error, db_now_ms, millis};
use crate::CommandError;

/// A job's row in `queued_jobs`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queued {
    pub attempt: u32,
    /// Its due time has come.
    pub due: bool,
    /// The job's stream version when its attempt started, once it has.
    pub claimed: Option<i64>,
}

pub(crate) fn attempt_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The row of `job_id`, if it has not ended.
pub(crate) async fn queued(pool: &DbPool, job_id: SyncJobId) -> Result<Option<Queued>, CommandError> {
    let query = format!(
        "SELECT CAST(attempt AS BIGINT), due_at <= {}, claimed_at IS NOT NULL, claimed_version FROM queued_jobs WHERE job_id = $1",
        db_now_ms(pool)
    );
    let row: Option<(i64, bool, bool, Option<i64>)> =
        on_pool!(pool, |p| sqlx::query_as(&query).bind(job_id.to_string()).fetch_optional(p).await).map_err(db_error)?;
    Ok(row.map(|(attempt, due, claimed, version)| Queued {
        attempt: attempt_of(attempt),
        due,
        claimed: claimed.then_some(version.unwrap_or(0)),
    }))
}

/// Marks the current attempt of `job_id` started at the job's stream version `version`, unless it
/// was already.
pub(crate) async fn mark_claimed(pool: &DbPool, job_id: SyncJobId, version: i64) -> Result<(), CommandError> {
    let query = format!(
        "UPDATE queued_jobs SET claimed_at = {}, claimed_version = $2 WHERE job_id = $1 AND claimed_at IS NULL",
        db_now_ms(pool)
    );
    on_pool!(pool, |p| sqlx::query(&query)
        .bind(job_id.to_string())
        .bind(version)
        .execute(p)
        .await
        .map(drop))
    .map_err(db_error)
}

/// The job has ended: its row goes.
pub(crate) async fn forget(pool: &DbPool, job_id: SyncJobId) -> Result<(), CommandError> {
    let query = "DELETE FROM queued_jobs WHERE job_id = $1";
    on_pool!(pool, |p| sqlx::query(query).bind(job_id.to_string()).execute(p).await.map(drop)).map_err(db_error)
}

/// Attempt `attempt` of `job_id` is to be published again after `wait` (a shutdown hands the same
/// attempt back at once; a retry is the next attempt after a backoff).
pub(crate) async fn requeue(pool: &DbPool, job_id: SyncJobId, attempt: u32, wait: Duration) -> Result<(), CommandError> {
    let query = format!(
        "UPDATE queued_jobs SET attempt = $2, due_at = {} + $3, published_at = NULL, claimed_at = NULL, claimed_version = NULL \
         WHERE job_id = $1",
        db_now_ms(pool)
    );
    on_pool!(pool, |p| sqlx::query(&query)
        .bind(job_id.to_string())
        .bind(i64::from(attempt))
        .bind(millis(wait))
        .execute(p)
        .await
        .map(drop))
    .map_err(db_error)
}
