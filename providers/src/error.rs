//! Provider failures, sorted the way callers need them.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProviderError {
    #[error("not found: {0}")]
    NotFound(String),
    /// Bad credentials, or no permission for the operation.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The configuration or the path is unusable.
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("already exists: {0}")]
    AlreadyExists(String),
    #[error("not supported by this provider: {0}")]
    Unsupported(String),
    /// Worth retrying later (timeouts, throttling, 5xx) — after the built-in retries gave up.
    #[error("temporarily unavailable: {0}")]
    Temporary(String),
    #[error("storage error: {0}")]
    Other(String),
}

impl From<opendal::Error> for ProviderError {
    fn from(error: opendal::Error) -> Self {
        use opendal::ErrorKind as K;
        let message = error.to_string();
        match error.kind() {
            K::NotFound => Self::NotFound(message),
            K::PermissionDenied => Self::PermissionDenied(message),
            K::ConfigInvalid | K::IsADirectory | K::NotADirectory | K::RangeNotSatisfied => Self::Invalid(message),
            K::AlreadyExists | K::IsSameFile | K::ConditionNotMatch | K::Conflict => Self::AlreadyExists(message),
            K::Unsupported => Self::Unsupported(message),
            K::RateLimited => Self::Temporary(message),
            _ if error.is_temporary() => Self::Temporary(message),
            _ => Self::Other(message),
        }
    }
}

impl From<std::io::Error> for ProviderError {
    fn from(error: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let message = error.to_string();
        match error.kind() {
            K::NotFound => Self::NotFound(message),
            K::PermissionDenied => Self::PermissionDenied(message),
            K::AlreadyExists => Self::AlreadyExists(message),
            K::TimedOut | K::Interrupted | K::WouldBlock => Self::Temporary(message),
            _ => Self::Other(message),
        }
    }
}
