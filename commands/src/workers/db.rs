//! What the workers' bookkeeping tables share: the database's clock, durations in milliseconds,
//! and database errors as command errors.

use std::time::Duration;

use cloudsync_eventstore::DbPool;

use crate::CommandError;

/// The database's clock in Unix milliseconds, as an SQL expression.
pub(crate) fn db_now_ms(pool: &DbPool) -> &'static str {
    match pool {
        DbPool::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        DbPool::Postgres(_) => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
    }
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn db_error(err: sqlx::Error) -> CommandError {
    CommandError::Store(err.into())
}
