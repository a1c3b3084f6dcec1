//! The projector runner. Each read-model table has its own projector and checkpoint; a batch of
//! events is applied and the checkpoint advanced in one transaction that first locks the checkpoint
//! row, so the live runner and a concurrent `projections rebuild` never apply an event twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloudsync_domain::{DecodeError, DomainEvent};
use cloudsync_eventstore::leader::Leadership;
use cloudsync_eventstore::{Database, DbPool, EventStore, RecordedEvent, StoreError};
use thiserror::Error;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ops::{Op, Table, ops_for};
use crate::sql::{Placeholders, RUN_SIZES, Val, bind_pg, bind_sqlite, combined, statement, update_key};

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
    #[error("reading the log stopped: {0}")]
    Task(String),
}

/// Decodes each event of a page once and sorts the operations it causes by table, keeping for each
/// table only those of events after its checkpoint (`from`, by the index of its table in `tables`).
/// Events of types this build does not know are not read-model events and are passed over.
fn page_ops(events: Vec<RecordedEvent>, tables: &[Table], from: &[i64]) -> Result<Vec<Vec<Op>>, ProjectionError> {
    let mut ops: Vec<Vec<Op>> = vec![Vec::new(); tables.len()];
    for event in events {
        let position = event.position;
        if from.iter().all(|checkpoint| position <= *checkpoint) {
            continue;
        }
        match DomainEvent::decode_owned(&event.event_type, event.schema_version, event.payload) {
            Ok(decoded) => {
                for op in ops_for(&decoded, event.metadata.occurred_at) {
                    if let Some(index) = tables.iter().position(|t| *t == op.table())
                        && position > from[index]
                    {
                        ops[index].push(op);
                    }
                }
            }
            Err(DecodeError::UnknownType(_)) => {}
            Err(source) => return Err(ProjectionError::Decode { position, source }),
        }
    }
    Ok(ops)
}

/// A page of the log, decoded for a set of tables from their checkpoints (`from`).
struct Page {
    from: Vec<i64>,
    /// How many events were read, and the position of the last.
    read: usize,
    last: Option<i64>,
    ops: Vec<Vec<Op>>,
}

/// Reads the page after the lowest of `from` and decodes it (on a blocking thread: a page of
/// thousands of events is milliseconds of work).
async fn read_page(store: Arc<dyn EventStore>, tables: Vec<Table>, from: Vec<i64>, page: i64) -> Result<Page, ProjectionError> {
    let lowest = from.iter().copied().min().unwrap_or(0);
    let events = store.read_all(lowest, page).await?;
    let read = events.len();
    let last = events.last().map(|e| e.position);
    let decoded = from.clone();
    let ops = tokio::task::spawn_blocking(move || page_ops(events, &tables, &decoded))
        .await
        .map_err(|err| ProjectionError::Task(err.to_string()))??;
    Ok(Page { from, read, last, ops })
}

/// The next page, read while the current one is written.
type Prefetch = tokio::task::JoinHandle<Result<Page, ProjectionError>>;

const IS_ERASED: &str = "SELECT user_id FROM erased_users WHERE user_id = $1";
const MARK_ERASED: &str = "INSERT INTO erased_users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING";
const ENSURE: &str = "INSERT INTO projector_checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";
const SAVE: &str = "UPDATE projector_checkpoints SET position = $2 WHERE name = $1";
const PEEK: &str = "SELECT position FROM projector_checkpoints WHERE name = $1";
const LOCK_PG: &str = "SELECT position FROM projector_checkpoints WHERE name = $1 FOR UPDATE";

/// The events a page reads when a projector is behind.
const REBUILD_PAGE: i64 = 5000;

/// Applies the next page of events to `tables`, each from its own checkpoint, in one transaction.
/// Returns how many events it read, the lowest checkpoint after them and, when `prefetch` is set, the
/// next page, which is read and decoded while this one is written (pass it back as `prefetched`: it
/// is used only if every checkpoint is then where it was read from).
///
/// The page is read once, from the lowest checkpoint, and each event decoded once for all the
/// tables. It is read before the checkpoints are locked, so a projector never holds a lock (on
/// SQLite, the database's one write lock) while it waits for a second connection; if a checkpoint
/// moved meanwhile (a concurrent rebuild or live projector), the page is read again. Locks are taken
/// in the order of `tables`, which every caller gives in [`Table::ALL`]'s order, so two steps never
/// wait on each other in a circle.
async fn step(
    db: &Database,
    tables: &[Table],
    page: i64,
    mut prefetched: Option<Page>,
    prefetch: bool,
) -> Result<(usize, i64, Option<Prefetch>), ProjectionError> {
    /// Executes a run of operations with the same statement, several rows to a statement where
    /// [`combined`] can join them, in order.
    macro_rules! execute_run {
        ($tx:expr, $sql:expr, $run:expr, $bind:path, $style:expr) => {{
            let sql: &str = $sql;
            let mut rest: std::collections::VecDeque<Vec<Val>> = $run.into();
            let width = rest.front().map_or(0, Vec::len);
            while !rest.is_empty() {
                let size = RUN_SIZES.into_iter().find(|size| *size <= rest.len()).unwrap_or(1);
                match combined(sql, width, size, $style).filter(|_| size > 1) {
                    Some(joined) => {
                        let mut query = sqlx::query(&joined.text);
                        for values in rest.drain(..size) {
                            for index in &joined.order {
                                query = $bind(query, values[*index].clone());
                            }
                        }
                        query.execute($tx).await?;
                    }
                    None => {
                        let mut query = sqlx::query(sql);
                        for value in rest.pop_front().unwrap_or_default() {
                            query = $bind(query, value);
                        }
                        query.execute($tx).await?;
                    }
                }
            }
        }};
    }
    macro_rules! run {
        ($pool:expr, $begin:expr, $lock:expr, $bind:path, $style:expr) => {{
            for table in tables {
                sqlx::query(ENSURE).bind(table.name()).execute($pool).await?;
            }
            loop {
                let mut seen = Vec::with_capacity(tables.len());
                for table in tables {
                    seen.push(sqlx::query_scalar::<_, i64>(PEEK).bind(table.name()).fetch_one($pool).await?);
                }
                let current = match prefetched.take() {
                    Some(page) if page.from == seen => page,
                    _ => read_page(Arc::clone(&db.events), tables.to_vec(), seen.clone(), page).await?,
                };
                let Some(last) = current.last else {
                    return Ok((0, seen.iter().copied().min().unwrap_or(0), None));
                };
                let next =
                    prefetch.then(|| tokio::spawn(read_page(Arc::clone(&db.events), tables.to_vec(), vec![last; tables.len()], page)));
                let mut tx = $begin;
                let mut moved = false;
                for (table, seen) in tables.iter().zip(&seen) {
                    let checkpoint: i64 = sqlx::query_scalar($lock).bind(table.name()).fetch_one(&mut *tx).await?;
                    moved |= checkpoint != *seen;
                }
                if moved {
                    tx.rollback().await?;
                    if let Some(next) = next {
                        next.abort();
                    }
                    continue;
                }
                let Page { read, ops, .. } = current;
                // Accounts erased (by this projector or another): nothing is written for them.
                let mut erased = HashSet::new();
                let users: HashSet<uuid::Uuid> = ops.iter().flatten().filter_map(Op::creates_for).collect();
                for user in users {
                    let found: Option<String> = sqlx::query_scalar(IS_ERASED)
                        .bind(user.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                    if found.is_some() {
                        erased.insert(user);
                    }
                }
                // Accounts this page erases, recorded first and in order (two steps recording them
                // in different orders could deadlock); an erasure removes every row of the account
                // from each table, so skipping its earlier rows of this page leaves the same tables.
                let erasing: std::collections::BTreeSet<uuid::Uuid> = ops
                    .iter()
                    .flatten()
                    .filter_map(|op| match op {
                        Op::EraseUser { id, .. } => Some(*id),
                        _ => None,
                    })
                    .collect();
                for id in erasing {
                    sqlx::query(MARK_ERASED).bind(id.to_string()).execute(&mut *tx).await?;
                    erased.insert(id);
                }
                for ((table, ops), seen) in tables.iter().zip(ops).zip(&seen) {
                    let mut run: Vec<Vec<Val>> = Vec::new();
                    let mut run_sql = "";
                    // The rows the run's updates change: a second update of one ends the run.
                    let mut updated: HashSet<String> = HashSet::new();
                    for op in ops {
                        if op.creates_for().is_some_and(|user| erased.contains(&user)) {
                            continue;
                        }
                        let (sql, values) = statement(&op);
                        let key = update_key(sql).map(|key| format!("{:?}", key.iter().map(|i| values.get(*i)).collect::<Vec<_>>()));
                        if (sql != run_sql || key.as_ref().is_some_and(|key| updated.contains(key))) && !run.is_empty() {
                            execute_run!(&mut *tx, run_sql, std::mem::take(&mut run), $bind, $style);
                            updated.clear();
                        }
                        if let Some(key) = key {
                            updated.insert(key);
                        }
                        run_sql = sql;
                        run.push(values);
                    }
                    if !run.is_empty() {
                        execute_run!(&mut *tx, run_sql, run, $bind, $style);
                    }
                    // A table already past this page (a live projector got there first) keeps its
                    // checkpoint: moving it back would apply those events twice.
                    if *seen < last {
                        sqlx::query(SAVE).bind(table.name()).bind(last).execute(&mut *tx).await?;
                    }
                }
                tx.commit().await?;
                let lowest = seen.iter().map(|s| (*s).max(last)).min().unwrap_or(last);
                return Ok((read, lowest, next));
            }
        }};
    }
    match &db.pool {
        DbPool::Postgres(pool) => run!(
            pool,
            custom_plans(pool.begin().await?).await?,
            LOCK_PG,
            bind_pg,
            Placeholders::Numbered
        ),
        // BEGIN IMMEDIATE takes SQLite's write lock up front, which serialises projector batches.
        DbPool::Sqlite(pool) => run!(
            pool,
            pool.begin_with("BEGIN IMMEDIATE").await?,
            PEEK,
            bind_sqlite,
            Placeholders::Positional
        ),
    }
}

/// A projector's transaction on PostgreSQL, planning each statement for the values it is given. A
/// connection otherwise keeps the generic plan it made after a few executions, and one made while
/// a read model was still nearly empty (a first projection, a rebuild) reads the whole table for every
/// joined update once it has grown: a million-event rebuild took 98.5 s that way against 16.3 s.
async fn custom_plans(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    sqlx::query("SET LOCAL plan_cache_mode = force_custom_plan")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// How a rebuild went.
#[derive(Debug, Clone, Copy)]
pub struct Rebuilt {
    /// The events read from the log.
    pub events: u64,
    pub elapsed: Duration,
}

impl Rebuilt {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Empties one read model and replays the whole log into it. Safe while the server runs: both apply
/// batches under the checkpoint lock, so together they rebuild it exactly once. Returns the number of
/// events replayed.
///
/// # Errors
/// An unknown name, or a database failure.
pub async fn rebuild(db: &Database, name: &str) -> Result<u64, ProjectionError> {
    Ok(rebuild_many(db, &[name]).await?.events)
}

/// Empties the named read models and replays the whole log into all of them in one pass: each page
/// of events is read and decoded once, and written to every table in one transaction (runs of
/// inserts and deletes several rows to a statement). Safe while the server runs, like [`rebuild`].
///
/// # Errors
/// An unknown name, or a database failure.
pub async fn rebuild_many(db: &Database, names: &[&str]) -> Result<Rebuilt, ProjectionError> {
    let started = Instant::now();
    let mut tables = Vec::new();
    for name in names {
        let table = Table::parse(name).ok_or_else(|| ProjectionError::Unknown((*name).to_owned()))?;
        if !tables.contains(&table) {
            tables.push(table);
        }
    }
    tables.sort_by_key(|t| Table::ALL.iter().position(|a| a == t));
    restore_indexes(db).await?;
    // Each table is emptied and its secondary indexes (not those that keep rows unique, which the
    // writes rely on) dropped and remembered in one transaction: filling a table and then building
    // an index once is far cheaper than keeping it up to date row by row (a trigram index on paths).
    macro_rules! reset {
        ($tx:expr, $lock:expr, $indexes:expr) => {{
            let mut tx = $tx;
            for table in &tables {
                sqlx::query(ENSURE).bind(table.name()).execute(&mut *tx).await?;
                sqlx::query($lock).bind(table.name()).execute(&mut *tx).await?;
                sqlx::query(&format!("DELETE FROM {}", table.name())).execute(&mut *tx).await?;
                sqlx::query(SAVE).bind(table.name()).bind(0_i64).execute(&mut *tx).await?;
                let indexes: Vec<(String, String)> = sqlx::query_as($indexes).bind(table.name()).fetch_all(&mut *tx).await?;
                for (name, definition) in indexes {
                    sqlx::query(REMEMBER_INDEX)
                        .bind(&name)
                        .bind(table.name())
                        .bind(&definition)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        }};
    }
    match &db.pool {
        DbPool::Postgres(pool) => reset!(pool.begin().await?, LOCK_PG, INDEXES_PG),
        DbPool::Sqlite(pool) => reset!(pool.begin_with("BEGIN IMMEDIATE").await?, PEEK, INDEXES_SQLITE),
    }
    let events = replay(db, &tables).await?;
    restore_indexes(db).await?;
    Ok(Rebuilt {
        events,
        elapsed: started.elapsed(),
    })
}

/// A table's secondary indexes that do not keep rows unique: name and definition.
const INDEXES_PG: &str = "SELECT i.relname::TEXT, pg_get_indexdef(i.oid) FROM pg_index x \
     JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid \
     WHERE t.relname = $1 AND t.relnamespace = current_schema()::text::regnamespace AND NOT x.indisunique \
     ORDER BY i.relname";
const INDEXES_SQLITE: &str = "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = $1 \
     AND sql IS NOT NULL AND sql NOT LIKE 'CREATE UNIQUE%' ORDER BY name";
const REMEMBER_INDEX: &str = "INSERT INTO rebuild_indexes (name, table_name, definition) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";

/// Builds again the indexes that a full rebuild dropped (see [`rebuild_many`]): at its end, and
/// whenever projectors start, in case a rebuild was killed before its end. Each is built and
/// forgotten in one transaction.
///
/// # Errors
/// A database failure.
pub async fn restore_indexes(db: &Database) -> Result<(), ProjectionError> {
    const LIST: &str = "SELECT name, definition FROM rebuild_indexes ORDER BY name";
    const FORGET: &str = "DELETE FROM rebuild_indexes WHERE name = $1";
    macro_rules! restore {
        ($pool:expr, $begin:expr) => {{
            let remembered: Vec<(String, String)> = sqlx::query_as(LIST).fetch_all($pool).await?;
            for (name, definition) in remembered {
                let mut tx = $begin;
                // Another process may have built it meanwhile: only what is still remembered is built.
                if sqlx::query(FORGET).bind(&name).execute(&mut *tx).await?.rows_affected() == 1 {
                    sqlx::query(&definition).execute(&mut *tx).await?;
                    tracing::info!(index = %name, "Built an index that a rebuild of its read model had dropped.");
                }
                tx.commit().await?;
            }
        }};
    }
    match &db.pool {
        DbPool::Postgres(pool) => restore!(pool, pool.begin().await?),
        DbPool::Sqlite(pool) => restore!(pool, pool.begin_with("BEGIN IMMEDIATE").await?),
    }
    Ok(())
}

/// Applies the log up to its present head to `tables`, a page at a time, the next page read while
/// the last is written. Returns the number of events read.
async fn replay(db: &Database, tables: &[Table]) -> Result<u64, ProjectionError> {
    let head = db.events.head().await?;
    let mut events = 0_u64;
    let mut prefetched = None;
    loop {
        let (count, checkpoint, next) = step(db, tables, REBUILD_PAGE, prefetched.take(), true).await?;
        events += count as u64;
        if count == 0 || checkpoint >= head {
            if let Some(next) = next {
                next.abort();
            }
            return Ok(events);
        }
        // A page that failed to read is read again by the next step, which reports what failed.
        if let Some(next) = next {
            prefetched = next.await.ok().and_then(Result::ok);
        }
    }
}

/// Brings every read model up to the log's current head.
///
/// # Errors
/// A database failure.
pub async fn catch_up(db: &Database) -> Result<(), ProjectionError> {
    restore_indexes(db).await?;
    replay(db, &Table::ALL).await.map(drop)
}

/// The session advisory lock whose holder projects (any 64-bit key; this is "cloudsync" in ASCII).
pub const LEAD_LOCK: i64 = 0x636c_6f75_6473_796e;

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

    /// Runs every projector (catch up, then follow live appends) until `shutdown`. On PostgreSQL,
    /// where several processes share the read models, one of them projects (the holder of a
    /// session advisory lock, which another takes over the moment the holder's connection goes)
    /// and the others follow its checkpoints; on SQLite each process projects, serialised by the
    /// database's write lock.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if let Err(error) = restore_indexes(&self.db).await {
            tracing::error!(error = %error, "Could not build the indexes that an unfinished rebuild dropped.");
        }
        let DbPool::Postgres(pool) = &self.db.pool else {
            return self.project(&shutdown).await;
        };
        let mut leadership = Leadership::new(pool.clone(), LEAD_LOCK);
        while !shutdown.is_cancelled() {
            // Another process projects meanwhile: its checkpoints are read.
            let follow = || async {
                match self.read_checkpoints(pool).await {
                    Ok(()) => Some(self.position()),
                    Err(error) => {
                        tracing::warn!(error = %error, "Could not read the projectors' checkpoints.");
                        None
                    }
                }
            };
            let standing_by = leadership.stand_by(&*self.db.events, self.poll, &shutdown, "The read models' projectors", follow);
            let Some(lead) = standing_by.await else { return };
            tracing::info!("This process projects the read models now.");
            // The lock goes however projecting ends (a panic drops the lead).
            self.project(lead.lost()).await;
            lead.end().await;
            if !shutdown.is_cancelled() {
                tracing::warn!("Lost the projectors' lock; following the read models again.");
            }
        }
    }

    async fn project(&self, shutdown: &CancellationToken) {
        let loops = self.checkpoints.iter().map(|(table, sender)| self.follow(*table, sender, shutdown));
        futures::future::join_all(loops).await;
    }

    async fn read_checkpoints(&self, pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, position FROM projector_checkpoints")
            .fetch_all(pool)
            .await?;
        for (name, position) in rows {
            if let Some((_, sender)) = self.checkpoints.iter().find(|(table, _)| table.name() == name) {
                sender.send_if_modified(|current| {
                    let moved = position > *current;
                    *current = (*current).max(position);
                    moved
                });
            }
        }
        Ok(())
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
                match step(&self.db, &[table], PAGE, None, false).await {
                    Ok((count, checkpoint, _)) => {
                        known = Some(checkpoint);
                        sender.send_replace(checkpoint);
                        if count > 0 && !shutdown.is_cancelled() {
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

    /// How far each projector has got, by name.
    pub fn checkpoints(&self) -> Vec<(&'static str, i64)> {
        self.checkpoints.iter().map(|(table, s)| (table.name(), *s.borrow())).collect()
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

#[cfg(test)]
mod tests {
    use cloudsync_eventstore::testing::TestDatabase;
    use cloudsync_eventstore::{EventMetadata, ExpectedVersion, NewEvent, append_to};

    use super::*;

    async fn checkpoint(db: &Database, table: Table) -> i64 {
        cloudsync_eventstore::on_pool!(&db.pool, |p| sqlx::query_scalar(PEEK)
            .bind(table.name())
            .fetch_one(p)
            .await
            .expect("a checkpoint"))
    }

    /// A step over tables at different checkpoints reads from the lowest and leaves one that is
    /// already past its page where it is (moving it back would apply those events again).
    #[tokio::test(flavor = "multi_thread")]
    async fn a_step_leaves_a_table_that_is_ahead_where_it_is() {
        for test in [TestDatabase::sqlite().await, TestDatabase::postgres().await] {
            let db = &test.db;
            let noise = (0..10)
                .map(|n| NewEvent {
                    event_type: "NotAReadModelEvent".into(),
                    schema_version: 1,
                    payload: serde_json::json!({ "n": n }),
                    metadata: EventMetadata::new(None),
                })
                .collect();
            append_to(db.events.as_ref(), "noise-1", ExpectedVersion::NoStream, noise)
                .await
                .expect("append");
            for (table, at) in [(Table::Users, 0_i64), (Table::Files, 8)] {
                cloudsync_eventstore::on_pool!(&db.pool, |p| {
                    sqlx::query(ENSURE).bind(table.name()).execute(p).await.expect("ensure");
                    sqlx::query(SAVE).bind(table.name()).bind(at).execute(p).await.expect("save");
                });
            }
            let (read, lowest, _) = step(db, &[Table::Users, Table::Files], 3, None, false).await.expect("a step");
            assert_eq!((read, lowest), (3, 3), "{}", db.backend());
            assert_eq!(checkpoint(db, Table::Users).await, 3, "{}", db.backend());
            assert_eq!(checkpoint(db, Table::Files).await, 8, "{}", db.backend());
            test.cleanup().await;
        }
    }
}
