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

/// Marks attempt `attempt` of `job_id` (any attempt where `None`: a run in a terminal) started at
/// the job's stream version `version`, unless it was already. Only the holder of the job's lease
/// marks it. Whether it did.
pub(crate) async fn mark_claimed(pool: &DbPool, job_id: SyncJobId, version: i64, attempt: Option<u32>) -> Result<bool, CommandError> {
    let query = format!(
        "UPDATE queued_jobs SET claimed_at = {}, claimed_version = $2 WHERE job_id = $1 AND claimed_at IS NULL \
         AND ($3 < 0 OR attempt = $3)",
        db_now_ms(pool)
    );
    on_pool!(pool, |p| sqlx::query(&query)
        .bind(job_id.to_string())
        .bind(version)
        .bind(attempt.map_or(-1, i64::from))
        .execute(p)
        .await
        .map(|done| done.rows_affected() == 1))
    .map_err(db_error)
}

/// The job has ended: its row goes.
pub(crate) async fn forget(pool: &DbPool, job_id: SyncJobId) -> Result<(), CommandError> {
    let query = "DELETE FROM queued_jobs WHERE job_id = $1";
    on_pool!(pool, |p| sqlx::query(query).bind(job_id.to_string()).execute(p).await.map(drop)).map_err(db_error)
}

/// Attempt `from` of `job_id` is followed by attempt `to` (the same one, handed back; or the next
/// one, retried), published after `wait`. Nothing changes where the row has moved past `from`.
pub(crate) async fn requeue(pool: &DbPool, job_id: SyncJobId, from: u32, to: u32, wait: Duration) -> Result<(), CommandError> {
    let query = format!(
        "UPDATE queued_jobs SET attempt = $3, due_at = {} + $4, published_at = NULL, claimed_at = NULL, claimed_version = NULL \
         WHERE job_id = $1 AND attempt = $2",
        db_now_ms(pool)
    );
    on_pool!(pool, |p| sqlx::query(&query)
        .bind(job_id.to_string())
        .bind(i64::from(from))
        .bind(i64::from(to))
        .bind(millis(wait))
        .execute(p)
        .await
        .map(drop))
    .map_err(db_error)
}

/// A worker that stops hands attempt `attempt` of `job_id` back: its lease (`holder`'s) goes and
/// the attempt is published again at once, in one transaction, so that nobody sees the attempt
/// started by a worker that no longer holds it.
pub(crate) async fn hand_back(pool: &DbPool, job_id: SyncJobId, attempt: u32, holder: &str) -> Result<(), CommandError> {
    let job = job_id.to_string();
    let unclaim = format!(
        "UPDATE queued_jobs SET due_at = {}, published_at = NULL, claimed_at = NULL, claimed_version = NULL \
         WHERE job_id = $1 AND attempt = $2 AND EXISTS (SELECT 1 FROM job_leases WHERE job_id = $1 AND holder = $3)",
        db_now_ms(pool)
    );
    let release = "DELETE FROM job_leases WHERE job_id = $1 AND holder = $2";
    on_pool!(pool, |p| async {
        let mut tx = p.begin().await?;
        sqlx::query(&unclaim)
            .bind(&job)
            .bind(i64::from(attempt))
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        sqlx::query(release).bind(&job).bind(holder).execute(&mut *tx).await?;
        tx.commit().await
    }
    .await)
    .map_err(db_error)
}

/// Counts a resume of `job_id` (an attempt carried on after its worker went away); the resumes so
/// far, this one included.
pub(crate) async fn resumed(pool: &DbPool, job_id: SyncJobId) -> Result<u32, CommandError> {
    let query = "UPDATE queued_jobs SET resumes = resumes + 1 WHERE job_id = $1 RETURNING CAST(resumes AS BIGINT)";
    let count: Option<i64> =
        on_pool!(pool, |p| sqlx::query_scalar(query).bind(job_id.to_string()).fetch_optional(p).await).map_err(db_error)?;
    Ok(count.map_or(0, attempt_of))
}

/// An attempt that the queue gave up on (dead-lettered): it is published again, unless it has
/// started or moved on meanwhile.
pub(crate) async fn unpublish(pool: &DbPool, job_id: SyncJobId, attempt: u32) -> Result<(), CommandError> {
    let query = "UPDATE queued_jobs SET published_at = NULL WHERE job_id = $1 AND attempt = $2 AND claimed_at IS NULL";
    on_pool!(pool, |p| sqlx::query(query)
        .bind(job_id.to_string())
        .bind(i64::from(attempt))
        .execute(p)
        .await
        .map(drop))
    .map_err(db_error)
}
