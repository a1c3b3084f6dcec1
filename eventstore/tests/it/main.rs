//! The event store contract suite: every test runs against SQLite and PostgreSQL.

/// Runs each named test (an `async fn(&TestDatabase)` of the calling module) once on each backend.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $name() {
                   let db = cloudsync_eventstore::testing::TestDatabase::new(cloudsync_eventstore::testing::Backend::Sqlite).await;
                   super::$name(&db).await;
                   db.cleanup().await;
               } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
               async fn $name() {
                   let db = cloudsync_eventstore::testing::TestDatabase::new(cloudsync_eventstore::testing::Backend::Postgres).await;
                   super::$name(&db).await;
                   db.cleanup().await;
               } )*
        }
    };
}
pub(crate) use on_both;

mod chain;
mod contract;
