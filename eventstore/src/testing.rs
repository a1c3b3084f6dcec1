//! Throw-away databases for tests: a SQLite file in a fresh temporary folder, or a fresh PostgreSQL
//! database on the test server, so tests run in parallel without seeing each other.

use std::path::PathBuf;

use sqlx::Connection as _;
use uuid::Uuid;

use crate::Database;

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("CLOUDSYNC_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database on the pgvector server of `CLOUDSYNC_TEST_PGVECTOR_URL` (which
/// `scripts/services` starts), as a URL; `None` where it is not set, except under `CI=true`, where a
/// missing server fails the test. `scripts/test` drops these databases on its next run.
///
/// # Panics
/// The server is set but unreachable, or missing under `CI=true`.
pub async fn pgvector_database() -> Option<String> {
    match std::env::var("CLOUDSYNC_TEST_PGVECTOR_URL") {
        Ok(admin) if !admin.is_empty() => {
            let name = format!("cs_test_vectors_{}", Uuid::new_v4().simple());
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|err| panic!("the pgvector server at {admin} is unreachable: {err}"));
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut conn)
                .await
                .expect("create a database on the pgvector server");
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
            Some(format!("{base}/{name}"))
        }
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CLOUDSYNC_TEST_PGVECTOR_URL is not set (run scripts/services and source its env file)")
        }
        _ => {
            eprintln!("CLOUDSYNC_TEST_PGVECTOR_URL is not set: pgvector is not tested");
            None
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDatabase {
    pub url: String,
    pub db: Database,
    pub backend: Backend,
    dir: PathBuf,
    pg_name: Option<String>,
}

impl TestDatabase {
    /// A migrated, empty database of the given backend.
    ///
    /// # Panics
    /// When the backend cannot be reached: a missing service fails the test, it never skips it.
    pub async fn new(backend: Backend) -> Self {
        let dir = std::env::temp_dir().join(format!("cloudsync-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temporary folder");
        let (url, pg_name) = match backend {
            Backend::Sqlite => (format!("sqlite://{}", dir.join("cloudsync.db").display()), None),
            Backend::Postgres => {
                let name = format!("cs_test_{}", Uuid::new_v4().simple());
                let admin = postgres_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|err| panic!("PostgreSQL at {admin} is required for this test (run scripts/services): {err}"));
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map_or(admin.as_str(), |(base, _)| base);
                (format!("{base}/{name}"), Some(name))
            }
        };
        let db = Database::connect(&url, true).await.expect("connect and migrate the test database");
        Self {
            url,
            db,
            backend,
            dir,
            pg_name,
        }
    }

    pub async fn sqlite() -> Self {
        Self::new(Backend::Sqlite).await
    }

    pub async fn postgres() -> Self {
        Self::new(Backend::Postgres).await
    }

    /// A folder that is removed with the database.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Closes the pool and removes the database. (A test that panics first leaves it behind;
    /// `scripts/test` sweeps those before each run.)
    pub async fn cleanup(self) {
        self.db.close().await;
        if let Some(name) = &self.pg_name
            && let Ok(mut conn) = sqlx::PgConnection::connect(&postgres_admin_url()).await
        {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
