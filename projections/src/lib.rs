//! The read side: turns the event log into read models (the `users`, `providers`, `files`,
//! `sync_operations`, `sync_pairs`, `sync_conflicts` and `file_versions` tables, one projector
//! each), each projector committing its checkpoint with its writes, and answers the queries the
//! gateway asks of those tables. It never appends events. An erased account is recorded in
//! `erased_users` by each projector, which writes no row for it afterwards.

mod ops;
pub mod queries;
mod runner;
mod sql;

pub use ops::{Op, Table, ops_for};
pub use queries::{
    AccountRow, DeletedFileRow, FileRow, FileVersionRow, ProviderRow, Providers, QueryError, ReadModels, SyncConflictRow, SyncOperationRow,
    SyncPairRow, UserRow,
};
pub use runner::{LEAD_LOCK, PROJECTORS, ProjectionError, Projections, Rebuilt, catch_up, rebuild, rebuild_many, restore_indexes};
