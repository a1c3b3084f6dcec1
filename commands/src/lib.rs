//! The write side: command handlers that load aggregates from their streams, decide, and append events
//! with an expected version; the vault that seals provider secrets; and the job runner that executes
//! long work (provider scans) and reports back by appending events.

mod accounts;
mod error;
mod gc;
mod handlers;
mod jobs;
mod leases;
mod mfa;
mod oauth;
mod scan;
mod schedule;
mod sealing;
mod secrets;
mod sync;

pub use accounts::NO_PASSWORD;
pub use error::CommandError;
pub use gc::{GcReport, LEASE_TTL, Lease};
pub use handlers::{Commands, Connected, Context, Moved};
pub use jobs::JobRunner;
pub use leases::JOB_LEASE_TTL;
pub use mfa::{CodeKind, TOTP_PERIOD, totp_base32, totp_code, totp_uri};
pub use oauth::{Authorization, DEFAULT_RENEW_MARGIN, OAuth, OAuthApp, is_oauth_kind};
pub use schedule::Scheduler;
pub use sealing::SealingStore;
pub use secrets::{MasterKey, Vault};
pub use sync::{Choice, DEFAULT_MAX_DELETE_PERCENT, SyncSettings};
