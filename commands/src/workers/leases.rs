//! Leases kept in the database: who may do a piece of work while it lasts, renewed in the background
//! until released, lapsing on their own when their holder dies.
//!
//! Expiry times are read off the database's clock, never the holder's, so machines whose clocks
//! disagree still agree on when a lease has lapsed.
//!
//! A *job lease* says which worker runs a job: the server's job runner, or `cloudsync sync` and
//! `cloudsync scan` in a terminal. Only its holder records the job's steps; a worker that finds the
//! lease held waits, and takes the job over once the holder has ended it, released it, or is gone (its
//! lease lapsed, or it was a process of this machine that no longer runs).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudsync_domain::SyncJobId;
use cloudsync_domain::sync_job::SyncJob;
use cloudsync_eventstore::{DbPool, on_pool};
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{CommandError, Commands};

/// How long a job lease lasts unless renewed.
pub const JOB_LEASE_TTL: Duration = Duration::from_secs(60);
/// How often holders renew their leases.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(10);
/// How often a worker waiting for a job lease asks again.
const JOB_POLL: Duration = Duration::from_secs(1);

/// The database's clock in Unix milliseconds, as an SQL expression.
pub(crate) fn db_now_ms(pool: &DbPool) -> &'static str {
    match pool {
        DbPool::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        DbPool::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn db_error(err: sqlx::Error) -> CommandError {
    CommandError::Store(err.into())
}

/// Renews a lease every [`RENEW_EVERY`] until `stop` is cancelled; `renewed` holds when the last
/// renewal succeeded. When the lease is found lost (`renew` says false), or has gone unrenewed for
/// longer than `ttl` less a renewal's margin, `lost` (where given) is cancelled and renewing stops.
pub(crate) fn keep_renewed(
    what: &'static str,
    holder: String,
    ttl: Duration,
    renewed: Arc<Mutex<Instant>>,
    stop: CancellationToken,
    lost: Option<CancellationToken>,
    renew: impl Fn() -> BoxFuture<'static, Result<bool, CommandError>> + Send + 'static,
) {
    tokio::spawn(async move {
        let give_up = |why: &str| {
            tracing::warn!(holder = %holder, lease = what, "{why}");
            if let Some(lost) = &lost {
                lost.cancel();
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RENEW_EVERY) => {}
            }
            // Woken after a stall longer than the lease: another worker may hold it by now.
            if renewed.lock().is_ok_and(|at| at.elapsed() >= ttl) {
                return give_up("A lease went unrenewed past its lifetime (the process stalled).");
            }
            let attempt = Instant::now();
            match renew().await {
                Ok(true) => {
                    if let Ok(mut at) = renewed.lock() {
                        *at = attempt;
                    }
                }
                Ok(false) => return give_up("A lease lapsed before it was renewed."),
                Err(error) => {
                    tracing::warn!(holder = %holder, lease = what, error = %error, "Could not renew a lease.");
                    if renewed.lock().is_ok_and(|at| at.elapsed() + RENEW_EVERY >= ttl) {
                        return give_up("A lease could not be renewed in time.");
                    }
                }
            }
        }
    });
}

/// Which processes this one can see, for lease holders: the host's name, its boot and this
/// process's PID namespace (`<host>:<boot id>:<pid namespace>`). Processes that share all three
/// see each other in `/proc`; a host name alone is shared by containers that cannot.
fn host() -> String {
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default();
    let namespace = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = format!(
        "{}:{}:{namespace}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/random/boot_id")
    );
    name.replace('/', "_")
}

/// A holder's name: `<host>/<process id>/<unique>` (see [`host`]).
fn holder_name() -> String {
    format!("{}/{}/{}", host(), std::process::id(), uuid::Uuid::now_v7().simple())
}

/// Whether `holder` was a process of this machine that no longer runs (on Linux, no
/// `/proc/<pid>`): its lease need not be waited out. Holders elsewhere are only known gone once
/// their lease lapses.
fn holder_gone(holder: &str) -> bool {
    let mut parts = holder.splitn(3, '/');
    let (Some(host_name), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    match pid.parse::<u32>() {
        Ok(pid) if host_name == host() => cloudsync_providers::process_ended(pid),
        _ => false,
    }
}

/// The lease under which one worker runs a job. Dropping it stops the renewals; [`JobLease::release`]
/// also gives it up at once.
pub(crate) struct JobLease {
    pool: DbPool,
    job: String,
    holder: String,
    stop: CancellationToken,
    /// Cancelled when the lease is lost: the work stops recording.
    run: CancellationToken,
}

impl JobLease {
    /// Takes the lease of `job_id`, waiting while another live worker holds it. `None` when the job
    /// has ended (whoever ran it) or `cancel` fires first.
    pub(crate) async fn take(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken) -> Result<Option<Self>, CommandError> {
        let pool = commands.pool().clone();
        let (job, holder) = (job_id.to_string(), holder_name());
        let mut waiting = false;
        loop {
            let (found, _) = commands.load::<SyncJob>(&job_id.stream()).await?;
            if found.phase().is_none_or(|phase| phase.is_terminal()) {
                return Ok(None);
            }
            let started = Instant::now();
            if try_take(&pool, &job, &holder).await? {
                let lease = Self {
                    run: cancel.child_token(),
                    stop: CancellationToken::new(),
                    pool,
                    job,
                    holder,
                };
                let (pool, job, holder) = (lease.pool.clone(), lease.job.clone(), lease.holder.clone());
                keep_renewed(
                    "job",
                    lease.holder.clone(),
                    JOB_LEASE_TTL,
                    Arc::new(Mutex::new(started)),
                    lease.stop.clone(),
                    Some(lease.run.clone()),
                    move || {
                        let (pool, job, holder) = (pool.clone(), job.clone(), holder.clone());
                        Box::pin(async move { renew(&pool, &job, &holder).await })
                    },
                );
                return Ok(Some(lease));
            }
            if !waiting {
                waiting = true;
                tracing::info!(job = %job_id, "Another worker runs this job; waiting for it to end or go away.");
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(None),
                () = tokio::time::sleep(JOB_POLL) => {}
            }
        }
    }

    /// Cancelled when the run must stop: `cancel` of [`JobLease::take`] fired, or the lease was lost.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.run
    }

    /// Gives the lease up.
    pub(crate) async fn release(self) {
        self.stop.cancel();
        let query = "DELETE FROM job_leases WHERE job_id = $1 AND holder = $2";
        let result = on_pool!(&self.pool, |p| sqlx::query(query)
            .bind(&self.job)
            .bind(&self.holder)
            .execute(p)
            .await
            .map(drop));
        if let Err(error) = result {
            tracing::warn!(job = %self.job, error = %error, "Could not release a job lease; it lapses on its own.");
        }
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Takes the lease of `job` for `holder` when it is free: absent, lapsed, already `holder`'s, or
/// held by a process of this machine that is gone. True when taken.
async fn try_take(pool: &DbPool, job: &str, holder: &str) -> Result<bool, CommandError> {
    let now = db_now_ms(pool);
    let current = format!("SELECT holder FROM job_leases WHERE job_id = $1 AND expires_at > {now}");
    let held: Option<String> = on_pool!(pool, |p| sqlx::query_scalar(&current).bind(job).fetch_optional(p).await).map_err(db_error)?;
    match held {
        Some(other) if other != holder && !holder_gone(&other) => return Ok(false),
        Some(other) if other != holder => {
            // Only that holder's lease goes: a worker that took it meanwhile keeps its own.
            let forget = "DELETE FROM job_leases WHERE job_id = $1 AND holder = $2";
            on_pool!(pool, |p| sqlx::query(forget).bind(job).bind(&other).execute(p).await.map(drop)).map_err(db_error)?;
        }
        _ => {}
    }
    let take = format!(
        "INSERT INTO job_leases (job_id, holder, expires_at) VALUES ($1, $2, {now} + $3) \
         ON CONFLICT (job_id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
         WHERE job_leases.expires_at <= {now} OR job_leases.holder = excluded.holder"
    );
    touches_one(pool, &take, job, holder).await
}

/// Extends `holder`'s lease of `job`; false when another worker holds it now (or nobody).
async fn renew(pool: &DbPool, job: &str, holder: &str) -> Result<bool, CommandError> {
    let query = format!(
        "UPDATE job_leases SET expires_at = {} + $3 WHERE job_id = $1 AND holder = $2",
        db_now_ms(pool)
    );
    touches_one(pool, &query, job, holder).await
}

/// Runs a lease statement on (`job`, `holder`, the lease's lifetime); whether it changed one row.
async fn touches_one(pool: &DbPool, query: &str, job: &str, holder: &str) -> Result<bool, CommandError> {
    let ttl = millis(JOB_LEASE_TTL);
    let rows = on_pool!(pool, |p| sqlx::query(query)
        .bind(job)
        .bind(holder)
        .bind(ttl)
        .execute(p)
        .await
        .map(|r| r.rows_affected()))
    .map_err(db_error)?;
    Ok(rows == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_process_of_this_machine_that_is_gone_counts_as_gone() {
        let here = host();
        assert!(!holder_gone(&format!("{here}/{}/x", std::process::id())), "this process");
        // Process 1 always runs.
        assert!(!holder_gone(&format!("{here}/1/x")));
        // Process ids go up to 2^22 on Linux: this one is not running.
        assert!(holder_gone(&format!("{here}/4294967294/x")));
        assert!(!holder_gone("another-machine/4294967294/x"), "elsewhere: only its lapse tells");
        // The same host name and boot, another PID namespace (`pid:[<inode>]`).
        let elsewhere = here
            .rsplit_once(':')
            .map_or_else(|| "x".to_owned(), |(rest, _)| format!("{rest}:[1]"));
        assert!(
            !holder_gone(&format!("{elsewhere}/4294967294/x")),
            "a process of another PID namespace, even on this host and boot, is not seen in /proc"
        );
        assert!(!holder_gone("malformed"));
        assert!(!holder_gone(&format!("{here}/not-a-pid/x")));
    }
}
