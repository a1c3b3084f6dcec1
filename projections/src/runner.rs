//! The projector runner. Each read-model table has its own projector and checkpoint; a batch of
//! events is applied and the checkpoint advanced in one transaction that first locks the checkpoint
//! row, so the live runner and a concurrent `projections rebuild` never apply an event twice.

use std::sync::Arc;
use std::time::Duration;

use cloudsync_domain::{DecodeError, DomainEvent};
use cloudsync_eventstore::{Database, DbPool, RecordedEvent, StoreError};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ops::{Op, Table, ops_for};
use crate::sql::{bind_pg, bind_sqlite, statement};

/// The projectors, by name (each named after its table).
pub const PROJECTORS: [&str; 8] = [
    "users",
    "providers",
    "files",
    "sync_operations",
    "sync_pairs",
    "sync_conflicts",
    "file_versions",
    "deleted_files",
];

const PAGE: i64 = 500;

#[derive(Debug, Error)]
pub enum ProjectionError {
    #[error(
        "unknown projector {0:?}; known: users, providers, files, sync_operations, sync_pairs, sync_conflicts, file_versions, deleted_files, search, vectors"
    )]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("event at position {position} cannot be projected: {source}")]
    Decode { position: i64, source: DecodeError },
}

/// The operations of `events` that concern `table`. Events of types this build does not know are
/// not read-model events and are passed over.
fn table_ops(events: &[RecordedEvent], table: Table) -> Result<Vec<Op>, ProjectionError> {
    let mut ops = Vec::new();
    for event in events {
        match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload) {
            Ok(decoded) => ops.extend(
                ops_for(&decoded, event.metadata.occurred_at)
                    .into_iter()
                    .filter(|op| op.table() == table),
            ),
            Err(DecodeError::UnknownType(_)) => {}
            Err(source) => {
                return Err(ProjectionError::Decode {
                    position: event.position,
                    source,
                });
            }
        }
    }
    Ok(ops)
}

const IS_ERASED: &str = "SELECT user_id FROM erased_users WHERE user_id = $1";
const MARK_ERASED: &str = "INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING";
const ENSURE: &str = "INSERT INTO projector_checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";
const SAVE: &str = "UPDATE projector_checkpoints SET position = $2 WHERE name = $1";

/// Applies the next page of events to one table. Returns how many events it consumed and the
/// checkpoint after them.
///
/// The page is read before the checkpoint is locked, so a projector never holds the lock (on SQLite,
/// the database's one write lock) while it waits for a second connection; if the checkpoint moved
/// meanwhile (a concurrent rebuild), the page is read again.
async fn step(db: &Database, table: Table, page: i64) -> Result<(usize, i64), ProjectionError> {
    let name = table.name();
    const PEEK: &str = "SELECT position FROM projector_checkpoints WHERE name = $1";
    macro_rules! run {
        ($pool:expr, $begin:expr, $lock:expr, $bind:path) => {{
            sqlx::query(ENSURE).bind(name).execute($pool).await?;
            loop {
                let seen: i64 = sqlx::query_scalar(PEEK).bind(name).fetch_one($pool).await?;
                let events = db.events.read_all(seen, page).await?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Ok((0, seen));
                };
                let mut tx = $begin;
                let checkpoint: i64 = sqlx::query_scalar($lock).bind(name).fetch_one(&mut *tx).await?;
                if checkpoint != seen {
                    tx.rollback().await?;
                    continue;
                }
                let ops = table_ops(&events, table)?;
                // Accounts erased (by this projector or another): nothing is written for them.
                let mut erased = std::collections::HashSet::new();
                let users: std::collections::HashSet<uuid::Uuid> = ops.iter().filter_map(Op::creates_for).collect();
                for user in users {
                    let found: Option<String> = sqlx::query_scalar(IS_ERASED)
                        .bind(user.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if found.is_some() {
                        erased.insert(user);
                    }
                }
                for op in ops {
                    if op.creates_for().is_some_and(|user| erased.contains(&user)) {
                        continue;
                    }
                    if let Op::EraseUser { id, .. } = &op {
                        sqlx::query(MARK_ERASED).bind(id.to_string()).execute(&mut *tx).await?;
                        erased.insert(*id);
                    }
                    let (sql, values) = statement(&op);
                    let mut query = sqlx::query(sql);
                    for value in values {
                        query = $bind(query, value);
                    }
                    query.execute(&mut *tx).await?;
                }
                sqlx::query(SAVE).bind(name).bind(last).execute(&mut *tx).await?;
                tx.commit().await?;
                return Ok((events.len(), last));
            }
        }};
    }
    match &db.pool {
        DbPool::Postgres(pool) => run!(
            pool,
            pool.begin().await?,
            "SELECT position FROM projector_checkpoints WHERE name = $1 FOR UPDATE",
            bind_pg
        ),
        // BEGIN IMMEDIATE takes SQLite's write lock up front, which serialises projector batches.
        DbPool::Sqlite(pool) => run!(
            pool,
            pool.begin_with("BEGIN IMMEDIATE").await?,
            "SELECT position FROM projector_checkpoints WHERE name = $1",
            bind_sqlite
        ),
    }
}

/// Empties one read model and replays the whole log into it. Safe while the server runs: both apply
/// batches under the checkpoint lock, so together they rebuild it exactly once. Returns the number of
/// events replayed.
///
/// # Errors
/// An unknown name, or a database failure.
pub async fn rebuild(db: &Database, name: &str) -> Result<u64, ProjectionError> {
    let table = Table::parse(name).ok_or_else(|| ProjectionError::Unknown(name.to_owned()))?;
    let reset = format!("DELETE FROM {}", table.name());
    macro_rules! reset {
        ($tx:expr, $lock:expr) => {{
            let mut tx = $tx;
            sqlx::query(ENSURE).bind(table.name()).execute(&mut *tx).await?;
            sqlx::query($lock).bind(table.name()).execute(&mut *tx).await?;
            sqlx::query(&reset).execute(&mut *tx).await?;
            sqlx::query(SAVE).bind(table.name()).bind(0_i64).execute(&mut *tx).await?;
            tx.commit().await?;
        }};
    }
    match &db.pool {
        DbPool::Postgres(pool) => reset!(
            pool.begin().await?,
            "SELECT position FROM projector_checkpoints WHERE name = $1 FOR UPDATE"
        ),
        DbPool::Sqlite(pool) => reset!(
            pool.begin_with("BEGIN IMMEDIATE").await?,
            "SELECT position FROM projector_checkpoints WHERE name = $1"
        ),
    }
    let head = db.events.head().await?;
    let mut replayed = 0_u64;
    loop {
        let (count, checkpoint) = step(db, table, 1000).await?;
        replayed += count as u64;
        if checkpoint >= head {
            return Ok(replayed);
        }
    }
}

/// Brings every read model up to the log's current head.
///
/// # Errors
/// A database failure.
pub async fn catch_up(db: &Database) -> Result<(), ProjectionError> {
    let head = db.events.head().await?;
    for table in Table::ALL {
        loop {
            let (count, checkpoint) = step(db, table, 1000).await?;
            if count == 0 || checkpoint >= head {
                break;
            }
        }
    }
    Ok(())
}

/// The live projectors of a running server and how far each has got.
pub struct Projections {
    db: Database,
    checkpoints: Vec<(Table, watch::Sender<i64>)>,
    poll: Duration,
}

impl Projections {
    pub fn new(db: Database) -> Arc<Self> {
        let checkpoints = Table::ALL.into_iter().map(|t| (t, watch::Sender::new(0))).collect();
        Arc::new(Self {
            db,
            checkpoints,
            poll: Duration::from_millis(500),
        })
    }

    /// Runs every projector (catch up, then follow live appends) until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let loops = self
            .checkpoints
            .iter()
            .map(|(table, sender)| self.follow(*table, sender, &shutdown));
        futures::future::join_all(loops).await;
    }

    async fn follow(&self, table: Table, sender: &watch::Sender<i64>, shutdown: &CancellationToken) {
        let mut notified = self.db.events.watch();
        let mut known: Option<i64> = None;
        loop {
            notified.borrow_and_update();
            // A cheap read of the head first, so an idle projector does not take the write lock.
            let behind = match (known, self.db.events.head().await) {
                (Some(checkpoint), Ok(head)) => head > checkpoint,
                _ => true,
            };
            if behind {
                match step(&self.db, table, PAGE).await {
                    Ok((count, checkpoint)) => {
                        known = Some(checkpoint);
                        sender.send_replace(checkpoint);
                        if count > 0 {
                            continue;
                        }
                    }
                    Err(error) => tracing::error!(projector = table.name(), error = %error, "Projection failed; retrying."),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tokio::time::timeout(self.poll, notified.changed()) => {}
            }
        }
    }

    /// The position every read model has reached.
    pub fn position(&self) -> i64 {
        self.checkpoints.iter().map(|(_, s)| *s.borrow()).min().unwrap_or(0)
    }

    /// The position the most advanced read model has reached.
    pub fn max_position(&self) -> i64 {
        self.checkpoints.iter().map(|(_, s)| *s.borrow()).max().unwrap_or(0)
    }

    /// Waits until every read model has reached `position` (read-your-writes); false on timeout.
    pub async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let wait = async {
            for (_, sender) in &self.checkpoints {
                let mut rx = sender.subscribe();
                if rx.wait_for(|p| *p >= position).await.is_err() {
                    return false;
                }
            }
            true
        };
        tokio::time::timeout(timeout, wait).await.unwrap_or(false)
    }
}
