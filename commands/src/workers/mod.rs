//! The work CloudSync does on its own: the job runner and the leases that give each job to one
//! worker, the scheduler, the chunk store's garbage collector, provider scans and sync runs.

mod analysis;
pub(crate) mod content;
pub(crate) mod gc;
pub(crate) mod leases;
pub(crate) mod pause;
pub(crate) mod runner;
pub(crate) mod scan;
mod schedule;
pub(crate) mod sync;

pub use content::{ContentPipeline, Retries as ContentRetries};
pub use gc::{GcReport, LEASE_TTL, Lease};
pub use leases::JOB_LEASE_TTL;
pub use runner::JobRunner;
pub use schedule::Scheduler;
