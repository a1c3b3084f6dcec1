//! The database handle that both sides share: the connection pool for the configured backend, its
//! migrations (`migrations/<backend>/`), and the one event store instance of the process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::{EventStore, PgEventStore, SqliteEventStore, StoreError};

/// The migration files this build embeds (names and sizes), from `build.rs`: a different set
/// rebuilds the crate.
pub const MIGRATION_SET: &str = env!("CLOUDSYNC_MIGRATIONS");

static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");
static SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Clone, Debug)]
pub enum DbPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A connected database: its pool and the process's event store on it.
#[derive(Clone)]
pub struct Database {
    pub pool: DbPool,
    pub events: Arc<dyn EventStore>,
    /// The log exactly as stored, whatever later wraps `events` (sealed fields stay sealed): what
    /// an export or an audit reads.
    pub stored: Arc<dyn EventStore>,
}

impl Database {
    /// Connects to `sqlite:…` or `postgres://…`, runs the migrations when `migrate` is set, and opens
    /// the event store.
    ///
    /// # Errors
    /// An unsupported URL scheme, a connection failure or a failed migration.
    pub async fn connect(url: &str, migrate: bool) -> Result<Self, StoreError> {
        let pool = Self::pool(url).await?;
        if migrate {
            Self::migrate_pool(&pool).await?;
        }
        let events: Arc<dyn EventStore> = match &pool {
            DbPool::Sqlite(p) => Arc::new(SqliteEventStore::new(p.clone()).await?),
            DbPool::Postgres(p) => Arc::new(PgEventStore::new(p.clone()).await?),
        };
        Ok(Self {
            pool,
            stored: Arc::clone(&events),
            events,
        })
    }

    async fn pool(url: &str) -> Result<DbPool, StoreError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            // No ping before each use: an SQLite connection is a file of this process, with no
            // peer to lose, and the ping was a round trip to the connection's worker thread
            // before every query.
            let pool = SqlitePoolOptions::new()
                .max_connections(16)
                .test_before_acquire(false)
                .connect_with(options)
                .await?;
            Ok(DbPool::Sqlite(pool))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(24)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Ok(DbPool::Postgres(pool))
        } else {
            Err(StoreError::Invalid("database URL must start with sqlite: or postgres://".into()))
        }
    }

    async fn migrate_pool(pool: &DbPool) -> Result<(), StoreError> {
        match pool {
            DbPool::Sqlite(p) => SQLITE.run(p).await?,
            DbPool::Postgres(p) => POSTGRES.run(p).await?,
        }
        Ok(())
    }

    /// Applies any pending migration.
    ///
    /// # Errors
    /// A failed migration.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Self::migrate_pool(&self.pool).await
    }

    pub fn backend(&self) -> &'static str {
        self.events.backend()
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.pool {
            DbPool::Sqlite(p) => p.close().await,
            DbPool::Postgres(p) => p.close().await,
        }
    }
}
