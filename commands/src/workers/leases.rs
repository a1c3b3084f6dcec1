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

pub(crate) use super::db::{db_error, db_now_ms, millis};

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
pub(crate) fn holder_name() -> String {
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
        let holder = holder_name();
        let mut waiting = false;
        loop {
            let (found, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
            if found.phase().is_none_or(|phase| phase.is_terminal()) {
                return Ok(None);
            }
            let started = Instant::now();
            if let Some(lease) = Self::try_take_at(commands, job_id, version, None, cancel, &holder, started).await? {
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

    /// Takes the lease of `job_id` (found at stream version `version`) to run its queued attempt
    /// `attempt`, if no live worker holds it, without waiting; `None` when another does. Taken, the
    /// attempt is marked started (claimed).
    pub(crate) async fn try_take(
        commands: &Commands,
        job_id: SyncJobId,
        version: i64,
        attempt: u32,
        holder: &str,
        cancel: &CancellationToken,
    ) -> Result<Option<Self>, CommandError> {
        Self::try_take_at(commands, job_id, version, Some(attempt), cancel, holder, Instant::now()).await
    }

    async fn try_take_at(
        commands: &Commands,
        job_id: SyncJobId,
        version: i64,
        attempt: Option<u32>,
        cancel: &CancellationToken,
        holder: &str,
        started: Instant,
    ) -> Result<Option<Self>, CommandError> {
        let pool = commands.pool().clone();
        let job = job_id.to_string();
        if !JOBS.try_take(&pool, &job, holder).await? {
            return Ok(None);
        }
        match super::queued::mark_claimed(&pool, job_id, version, attempt).await {
            Ok(claimed) if claimed || attempt.is_none() => {}
            // The attempt was superseded (or already started) meanwhile: not this delivery's to run.
            Ok(_) => {
                JOBS.release(&pool, &job, holder).await;
                return Ok(None);
            }
            Err(error) => {
                JOBS.release(&pool, &job, holder).await;
                return Err(error);
            }
        }
        let lease = Self {
            run: cancel.child_token(),
            stop: CancellationToken::new(),
            pool,
            job,
            holder: holder.to_owned(),
        };
        JOBS.keep(
            &lease.pool,
            &lease.job,
            &lease.holder,
            started,
            lease.stop.clone(),
            lease.run.clone(),
        );
        Ok(Some(lease))
    }

    /// Cancelled when the run must stop: `cancel` of [`JobLease::take`] fired, or the lease was lost.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.run
    }

    /// Whether this worker still holds the lease (it was not lost to a stall).
    pub(crate) async fn still_held(&self) -> bool {
        JOBS.holder(&self.pool, &self.job).await.ok().flatten().as_deref() == Some(self.holder.as_str())
    }

    /// Gives the lease up and hands queued attempt `attempt` back to the queue, at once and together.
    pub(crate) async fn hand_back(self, job_id: SyncJobId, attempt: u32) -> Result<(), CommandError> {
        self.stop.cancel();
        super::queued::hand_back(&self.pool, job_id, attempt, &self.holder).await
    }

    /// Gives the lease up.
    pub(crate) async fn release(self) {
        self.stop.cancel();
        JOBS.release(&self.pool, &self.job, &self.holder).await;
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A table of leases: `(<key>, holder, expires_at)`.
#[derive(Clone, Copy)]
pub(crate) struct Leases {
    table: &'static str,
    key: &'static str,
    ttl: Duration,
}

/// Which worker runs a job.
pub(crate) const JOBS: Leases = Leases {
    table: "job_leases",
    key: "job_id",
    ttl: JOB_LEASE_TTL,
};

/// Which process does work that one at a time may do (see [`lead`]).
pub(crate) const SINGLETONS: Leases = Leases {
    table: "singleton_leases",
    key: "name",
    ttl: SINGLETON_LEASE_TTL,
};

impl Leases {
    /// Takes the lease of `key` for `holder` when it is free: absent, lapsed, already `holder`'s,
    /// or held by a process of this machine that is gone. True when taken.
    pub(crate) async fn try_take(self, pool: &DbPool, key: &str, holder: &str) -> Result<bool, CommandError> {
        let Self { table, key: column, .. } = self;
        match self.holder(pool, key).await? {
            Some(other) if other != holder && !holder_gone(&other) => return Ok(false),
            Some(other) if other != holder => {
                // Only that holder's lease goes: a worker that took it meanwhile keeps its own.
                let forget = format!("DELETE FROM {table} WHERE {column} = $1 AND holder = $2");
                on_pool!(pool, |p| sqlx::query(&forget).bind(key).bind(&other).execute(p).await.map(drop)).map_err(db_error)?;
            }
            _ => {}
        }
        let now = db_now_ms(pool);
        let take = format!(
            "INSERT INTO {table} ({column}, holder, expires_at) VALUES ($1, $2, {now} + $3) \
             ON CONFLICT ({column}) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE {table}.expires_at <= {now} OR {table}.holder = excluded.holder"
        );
        self.touches_one(pool, &take, key, holder).await
    }

    /// Who holds the lease of `key` now and has not let it lapse (they may be gone, see
    /// [`Leases::is_held`]).
    pub(crate) async fn holder(self, pool: &DbPool, key: &str) -> Result<Option<String>, CommandError> {
        let Self { table, key: column, .. } = self;
        let current = format!(
            "SELECT holder FROM {table} WHERE {column} = $1 AND expires_at > {}",
            db_now_ms(pool)
        );
        on_pool!(pool, |p| sqlx::query_scalar(&current).bind(key).fetch_optional(p).await).map_err(db_error)
    }

    /// Whether a live worker holds the lease of `key`: one that has not let it lapse and is not a
    /// process of this machine that has ended.
    pub(crate) async fn is_held(self, pool: &DbPool, key: &str) -> Result<bool, CommandError> {
        Ok(self.holder(pool, key).await?.is_some_and(|holder| !holder_gone(&holder)))
    }

    /// Extends `holder`'s lease of `key`; false when another worker holds it now (or nobody).
    async fn renew(self, pool: &DbPool, key: &str, holder: &str) -> Result<bool, CommandError> {
        let query = format!(
            "UPDATE {} SET expires_at = {} + $3 WHERE {} = $1 AND holder = $2",
            self.table,
            db_now_ms(pool),
            self.key
        );
        self.touches_one(pool, &query, key, holder).await
    }

    /// Gives `holder`'s lease of `key` up.
    async fn release(self, pool: &DbPool, key: &str, holder: &str) {
        let query = format!("DELETE FROM {} WHERE {} = $1 AND holder = $2", self.table, self.key);
        let result = on_pool!(pool, |p| sqlx::query(&query).bind(key).bind(holder).execute(p).await.map(drop));
        if let Err(error) = result {
            tracing::warn!(lease = %key, error = %error, "Could not release a lease; it lapses on its own.");
        }
    }

    /// Runs a lease statement on (`key`, `holder`, the lease's lifetime); whether it changed one row.
    async fn touches_one(self, pool: &DbPool, query: &str, key: &str, holder: &str) -> Result<bool, CommandError> {
        let ttl = millis(self.ttl);
        let rows = on_pool!(pool, |p| sqlx::query(query)
            .bind(key)
            .bind(holder)
            .bind(ttl)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(db_error)?;
        Ok(rows == 1)
    }

    /// Keeps `holder`'s lease of `key` renewed until `stop`; `lost` is cancelled if it is lost.
    fn keep(self, pool: &DbPool, key: &str, holder: &str, taken: Instant, stop: CancellationToken, lost: CancellationToken) {
        let (pool, key, holder_name) = (pool.clone(), key.to_owned(), holder.to_owned());
        keep_renewed(
            self.table,
            holder.to_owned(),
            self.ttl,
            Arc::new(Mutex::new(taken)),
            stop,
            Some(lost),
            move || {
                let (pool, key, holder) = (pool.clone(), key.clone(), holder_name.clone());
                Box::pin(async move { self.renew(&pool, &key, &holder).await })
            },
        );
    }
}

/// How long a singleton's lease lasts unless renewed: how long another process waits to take over
/// from one that vanished without ending (one of this machine that ended is seen at once).
pub const SINGLETON_LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a process that stands by for a singleton asks again.
const SINGLETON_POLL: Duration = Duration::from_secs(1);

/// Does `work` in one process at a time among all that share the database: stands by until this
/// process holds the lease `name`, then runs `work` with a token that is cancelled when the lease
/// is lost or `shutdown` fires. When `work` returns (or the lease is lost) the lease is given up,
/// and this process stands by again, until `shutdown`.
pub(crate) async fn lead<F>(pool: DbPool, name: &'static str, shutdown: CancellationToken, mut work: F)
where
    F: FnMut(CancellationToken) -> BoxFuture<'static, ()>,
{
    let holder = holder_name();
    let mut waiting = false;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        match SINGLETONS.try_take(&pool, name, &holder).await {
            Ok(true) => {
                tracing::info!(singleton = name, "This process leads now.");
                waiting = false;
                let (stop, lost) = (CancellationToken::new(), shutdown.child_token());
                SINGLETONS.keep(&pool, name, &holder, started, stop.clone(), lost.clone());
                // Renewals stop however the work ends, a panic included: the lease then lapses.
                let renewing = stop.drop_guard();
                work(lost.clone()).await;
                drop(renewing);
                SINGLETONS.release(&pool, name, &holder).await;
                if !shutdown.is_cancelled() {
                    tracing::warn!(singleton = name, "Stopped leading; standing by.");
                }
                continue;
            }
            Ok(false) => {
                if !waiting {
                    waiting = true;
                    tracing::info!(singleton = name, "Another process leads; standing by.");
                }
            }
            Err(error) => tracing::warn!(singleton = name, error = %error, "Could not ask for a lease."),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SINGLETON_POLL) => {}
        }
    }
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
