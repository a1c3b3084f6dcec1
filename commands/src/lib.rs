//! The write side: command handlers that load aggregates from their streams, decide, and append events
//! with an expected version; the local-folder storage access they act through; and the job runner that
//! executes long work (provider scans) and reports back by appending events.

mod error;
mod handlers;
mod jobs;
pub mod local;
mod scan;

pub use error::CommandError;
pub use handlers::{Commands, Connected, Context, Moved};
pub use jobs::JobRunner;
pub use scan::scanned_file_id;
