//! The read side: turns the event log into read models (the `users`, `providers`, `files` and
//! `sync_operations` tables), each projector committing its checkpoint with its writes, and answers
//! the queries the gateway asks of those tables. It never appends events.

mod ops;
pub mod queries;
mod runner;
mod sql;

pub use ops::{Op, Table, ops_for};
pub use queries::{
    AccountRow, FileRow, FileVersionRow, ProviderRow, Providers, ReadModels, SyncConflictRow, SyncOperationRow, SyncPairRow, UserRow,
};
pub use runner::{PROJECTORS, ProjectionError, Projections, catch_up, rebuild};
