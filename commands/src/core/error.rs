//! Why a command failed, sorted the way callers need it: their fault, a conflict, or infrastructure.

use cloudsync_domain::{DecodeError, DomainError, ValueError};
use cloudsync_eventstore::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum CommandError {
    /// The target does not exist or belongs to someone else (indistinguishable on purpose).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The input is malformed or refused by the domain.
    #[error("{0}")]
    Invalid(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The command lost a race with another writer, or the target is in the way; retrying may succeed.
    #[error("{0}")]
    Conflict(String),
    /// The provider's storage failed (I/O error, vanished root).
    #[error("storage error: {0}")]
    Storage(String),
    #[error(transparent)]
    Store(StoreError),
    #[error("undecodable event: {0}")]
    Decode(#[from] DecodeError),
    /// A temporary file of this process (a scan's on-disk index) could not be written or read.
    #[error("temporary file: {0}")]
    Scratch(#[from] std::io::Error),
}

impl From<StoreError> for CommandError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Concurrency { stream, .. } => Self::Conflict(format!("{stream} was changed concurrently; try again")),
            other => Self::Store(other),
        }
    }
}

impl From<DomainError> for CommandError {
    fn from(error: DomainError) -> Self {
        match error {
            DomainError::NotFound(what) => Self::NotFound(what),
            DomainError::AlreadyExists(what) => Self::AlreadyExists(format!("{what} already exists")),
            DomainError::InvalidState(why) => Self::Conflict(why),
            DomainError::Invalid(why) => Self::Invalid(why),
        }
    }
}

impl From<ValueError> for CommandError {
    fn from(error: ValueError) -> Self {
        Self::Invalid(error.to_string())
    }
}

impl CommandError {
    /// Whether the caller caused it (as opposed to infrastructure failing).
    pub fn is_caller_fault(&self) -> bool {
        matches!(
            self,
            Self::NotFound(_) | Self::Invalid(_) | Self::AlreadyExists(_) | Self::Conflict(_)
        )
    }
}
