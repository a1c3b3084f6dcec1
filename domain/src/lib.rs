//! CloudSync's pure core: ids, validated value types, aggregates, commands and versioned events — no I/O, no async.

pub mod aggregate;
pub mod clock;
pub mod events;
pub mod file;
pub mod ids;
pub mod manifest;
pub mod merge;
pub mod near;
pub mod provider;
pub mod reservation;
pub mod sync_job;
pub mod sync_pair;
#[cfg(test)]
pub(crate) mod testing;
pub mod user;
pub mod values;

pub use aggregate::{Aggregate, DomainError};
pub use events::{DecodeError, DomainEvent, EncodedEvent};
pub use ids::{FileId, ProviderId, SyncJobId, SyncPairId, UserId};
pub use values::{Email, ProviderKind, ProviderPath, ScanSchedule, ValueError};
