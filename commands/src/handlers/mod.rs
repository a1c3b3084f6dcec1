//! Command handlers, one module per aggregate: load the aggregate from its stream, let it decide,
//! append what it decided with the version it was loaded at. Nothing here reads a read model.

mod duplicates;
mod file;
mod job;
mod mfa;
mod provider;
mod sync_pair;
mod user;

pub use duplicates::{DUPLICATE, Resolution, Resolved};
pub use file::Moved;
pub use mfa::{CodeKind, TOTP_PERIOD, totp_base32, totp_code, totp_uri};
pub use provider::Connected;
pub use sync_pair::{Choice, DEFAULT_MAX_DELETE_PERCENT, SyncSettings};
pub use user::NO_PASSWORD;
