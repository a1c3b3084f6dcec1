//! The work CloudSync does on its own: the job relay, the job runner and the leases that give each
//! job to one worker, the scheduler, the chunk store's garbage collector, provider scans and sync
//! runs, and analytics exports.

mod analysis;
pub(crate) mod content;
mod db;
pub(crate) mod export;
pub(crate) mod gc;
pub(crate) mod leases;
pub(crate) mod pause;
mod queued;
pub(crate) mod relay;
pub(crate) mod runner;
pub(crate) mod scan;
mod schedule;
pub(crate) mod sync;

pub use content::{ContentPipeline, Retries as ContentRetries};
pub use export::{ExportProgress, Exporter};
pub use gc::{GcReport, LEASE_TTL, Lease};
pub use leases::{JOB_LEASE_TTL, SINGLETON_LEASE_TTL};
pub use relay::{JOB_QUEUE, JobRelay, JobRetries};
pub use runner::JobRunner;
pub use schedule::Scheduler;

use cloudsync_eventstore::{DbPool, on_pool};

use crate::CommandError;

/// How far the worker `name` has followed the log (0 before it started).
pub(crate) async fn checkpoint(pool: &DbPool, name: &str) -> Result<i64, CommandError> {
    let query = "SELECT position FROM worker_checkpoints WHERE name = $1";
    let position: Option<i64> = on_pool!(pool, |p| sqlx::query_scalar(query).bind(name).fetch_optional(p).await).map_err(db::db_error)?;
    Ok(position.unwrap_or(0))
}

pub(crate) async fn save_checkpoint(pool: &DbPool, name: &str, position: i64) -> Result<(), CommandError> {
    let query = "INSERT INTO worker_checkpoints (name, position) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET position = excluded.position";
    on_pool!(pool, |p| sqlx::query(query).bind(name).bind(position).execute(p).await.map(drop)).map_err(db::db_error)
}
