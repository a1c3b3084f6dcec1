//! Errors as clients see them: a message and a stable `code` extension. Infrastructure failures are
//! logged with their cause and shown only as an opaque id.

use async_graphql::ErrorExtensions as _;
use cloudsync_commands::CommandError;
use uuid::Uuid;

/// Stable error codes, sent as `extensions.code`.
pub mod code {
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    pub const NOT_FOUND: &str = "NOT_FOUND";
    pub const ALREADY_EXISTS: &str = "ALREADY_EXISTS";
    pub const CONFLICT: &str = "CONFLICT";
    pub const INTERNAL: &str = "INTERNAL_SERVER_ERROR";
    pub const PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
    pub const VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const FORBIDDEN: &str = "FORBIDDEN";
}

#[derive(Debug)]
pub enum ApiError {
    Unauthenticated(String),
    /// Authenticated, but the credential or role does not allow this.
    Forbidden(String),
    BadInput(String),
    NotFound(String),
    AlreadyExists(String),
    Conflict(String),
    Internal(String),
    /// Too many requests of a kind: try again after the duration.
    RateLimited(std::time::Duration),
}

impl ApiError {
    pub fn not_found(what: &str) -> Self {
        Self::NotFound(format!("{what} not found"))
    }

    /// Logs an infrastructure failure and returns the opaque error the client sees.
    pub fn internal(error: &dyn std::fmt::Display) -> Self {
        let id = Uuid::new_v4();
        tracing::error!(error_id = %id, error = %error, "Request failed.");
        Self::Internal(id.to_string())
    }

    /// [`ApiError::internal`] for an error with causes: the log line has the whole chain
    /// (`error: cause: its cause`), the client only the id.
    pub fn failed(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::internal(&cause_chain(error))
    }
}

/// An error and its causes, outermost first, each once (a message that already ends with its
/// cause's text does not repeat it).
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        match error {
            CommandError::NotFound(what) => Self::not_found(what),
            CommandError::Invalid(why) => Self::BadInput(why),
            CommandError::AlreadyExists(why) => Self::AlreadyExists(why),
            CommandError::Conflict(why) => Self::Conflict(why),
            other => Self::failed(&other),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::failed(&error)
    }
}

impl From<cloudsync_projections::QueryError> for ApiError {
    fn from(error: cloudsync_projections::QueryError) -> Self {
        Self::failed(&error)
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(error: ApiError) -> Self {
        let (message, code) = match error {
            ApiError::Unauthenticated(m) => (m, code::UNAUTHENTICATED),
            ApiError::Forbidden(m) => (m, code::FORBIDDEN),
            ApiError::BadInput(m) => (m, code::BAD_USER_INPUT),
            ApiError::NotFound(m) => (m, code::NOT_FOUND),
            ApiError::AlreadyExists(m) => (m, code::ALREADY_EXISTS),
            ApiError::Conflict(m) => (m, code::CONFLICT),
            ApiError::RateLimited(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return async_graphql::Error::new(format!("too many requests; try again in {seconds} s")).extend_with(|_, e| {
                    e.set("code", code::RATE_LIMITED);
                    e.set("retryAfter", seconds);
                });
            }
            ApiError::Internal(id) => {
                return async_graphql::Error::new(format!("internal error (id {id})")).extend_with(|_, e| {
                    e.set("code", code::INTERNAL);
                    e.set("errorId", id.clone());
                });
            }
        };
        async_graphql::Error::new(message).extend_with(|_, e| e.set("code", code))
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("the read failed")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("the read failed: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn a_logged_failure_names_every_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied");
        assert_eq!(super::cause_chain(&Outer(io())), "the read failed: permission denied");
        assert_eq!(super::cause_chain(&Repeating(io())), "the read failed: permission denied");
    }
}
