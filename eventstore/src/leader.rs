//! One process at a time among those that share a PostgreSQL database: the holder of a session
//! advisory lock, taken on a connection of its own. The lock goes the moment that connection does
//! (the process ended or was killed, or the server closed the session), so another process takes
//! over at its next try. Used for work whose results every process shares (the read models, a
//! shared search or vector index), where the others only follow how far it has got.

use std::future::Future;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the holder checks that its connection (and so its lock) is still there.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often a process that stands by asks for the lock.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// How often it looks how far the holder has got while that is behind the log.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Asks for the lock `key` on `pool`.
pub struct Leadership {
    pool: PgPool,
    key: i64,
    /// The connection that asks (and holds the lock once granted), kept between tries.
    asking: Option<PgConnection>,
}

impl Leadership {
    pub fn new(pool: PgPool, key: i64) -> Self {
        Self { pool, key, asking: None }
    }

    /// Takes the lock if no other process holds it: a [`Lead`] whose token is cancelled when the
    /// lock is lost, or `parent` fires.
    ///
    /// # Errors
    /// The database is unreachable.
    pub async fn try_lead(&mut self, parent: &CancellationToken) -> Result<Option<Lead>, sqlx::Error> {
        let mut connection = match self.asking.take() {
            Some(connection) => connection,
            None => self.pool.acquire().await?.detach(),
        };
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut connection)
            .await?;
        if !locked {
            self.asking = Some(connection);
            return Ok(None);
        }
        let lost = parent.child_token();
        let task = tokio::spawn(hold(connection, self.key, lost.clone()));
        Ok(Some(Lead { lost, task: Some(task) }))
    }
}

impl Leadership {
    /// Stands by until this process takes the lock (`None` at `shutdown`): meanwhile `follow` reads
    /// how far the holder has got (the position it reached; `None` when it could not tell), every
    /// `poll` or on an append to `events`, and every 50 ms while that is behind the log, where a
    /// caller may be waiting for the holder. `what` names the work in the log.
    pub async fn stand_by<F, Fut>(
        &mut self,
        events: &dyn crate::EventStore,
        poll: Duration,
        shutdown: &CancellationToken,
        what: &str,
        mut follow: F,
    ) -> Option<Lead>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<i64>>,
    {
        let mut notified = events.watch();
        let mut asked = None::<Instant>;
        let mut said = false;
        loop {
            if asked.is_none_or(|at| at.elapsed() >= ASK_EVERY) {
                asked = Some(Instant::now());
                match self.try_lead(shutdown).await {
                    Ok(Some(lead)) => {
                        tracing::info!("{what}: this process leads now.");
                        return Some(lead);
                    }
                    Ok(None) if !said => {
                        said = true;
                        tracing::info!("{what}: another process leads; following how far it has got.");
                    }
                    Ok(None) => {}
                    Err(error) => tracing::warn!(error = %error, "{what}: could not ask for the lock."),
                }
            }
            notified.borrow_and_update();
            let reached = follow().await;
            let behind = match (events.head().await, reached) {
                (Ok(head), Some(reached)) => reached < head,
                _ => true,
            };
            let wait = if behind { FOLLOW_EVERY } else { poll.min(ASK_EVERY) };
            tokio::select! {
                () = shutdown.cancelled() => return None,
                _ = tokio::time::timeout(wait, notified.changed()), if !behind => {}
                () = tokio::time::sleep(wait), if behind => {}
            }
        }
    }
}

/// The lock, held until dropped or [`Lead::end`]; a panic that drops it gives the lock back too.
pub struct Lead {
    lost: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Lead {
    /// Cancelled once the lock is lost (or the parent token fires): the work it guards stops.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Gives the lock back and waits until it is.
    pub async fn end(mut self) {
        self.lost.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.lost.cancel();
    }
}

/// Holds the lock's connection until `lost`, checking it; a failed check cancels `lost` (the lock
/// went with the connection).
async fn hold(mut connection: PgConnection, key: i64, lost: CancellationToken) {
    loop {
        tokio::select! {
            () = lost.cancelled() => break,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let checked = tokio::time::timeout(CHECK_EVERY, sqlx::query("SELECT 1").execute(&mut connection)).await;
        if !matches!(checked, Ok(Ok(_))) {
            tracing::warn!(key, "An advisory lock went with its connection (it failed or did not answer).");
            lost.cancel();
            return;
        }
    }
    // Closing the connection would give the lock back too: unlocking first says so at once.
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut connection);
    if matches!(tokio::time::timeout(CHECK_EVERY, unlock).await, Ok(Ok(_))) {
        let _ = tokio::time::timeout(CHECK_EVERY, sqlx::Connection::close(connection)).await;
    }
}
