//! Event store throughput benchmark: how fast `cloudsync-eventstore` appends and reads on each backend,
//! next to the ceiling of a raw INSERT loop on the same database in the same run.
//!
//! For each backend (SQLite: a fresh file in a temporary folder, opened through `Database::connect`, so
//! WAL + `synchronous=FULL`; PostgreSQL: a fresh database `cs_bench_<uuid>` created on
//! `postgres://postgres@127.0.0.1:5432/postgres`, or `$CLOUDSYNC_BENCH_POSTGRES_URL`, and dropped at the
//! end) it measures:
//!
//! 1. appends/s of single-event transactions from 1 writer, each to a new stream (`ExpectedVersion::NoStream`);
//! 2. the same from 16 and from 64 concurrent writers (tokio tasks), with how many transactions the
//!    store's group commit used for them, and from 16 writers taking turns over two store instances
//!    on one database (as two processes would);
//! 3. events/s of appends that carry a batch of 100 events each;
//! 4. the catch-up read rate: events/s reading the whole log with `read_all` in pages of 1000;
//! 5. a rebuild of the read models (`cloudsync_projections::rebuild_many` of every table, what
//!    `cloudsync projections rebuild all` runs) after `BENCH_REBUILD_EVENTS` domain events of a
//!    scanned tree are appended: one user and provider, then in every thousand events 800 files
//!    discovered, 100 changed, 60 moved and 40 removed. Its rate counts those events only (the log
//!    also holds the scenarios' own events, which the rebuild reads and passes over).
//!
//! Beside each, the raw ceiling: a plain table `raw_events(id, stream_id, payload)` (bigserial + jsonb on
//! PostgreSQL, INTEGER PRIMARY KEY + TEXT on SQLite) written with sqlx directly: single-row autocommit
//! INSERTs from 1, 16 and 64 writers, and 100-row multi-value INSERTs; for the read row, a keyset-paged
//! `SELECT` of 1000 rows at a time. The batches are also set beside the same 100-row INSERTs into
//! `raw_log`, a copy of the log's table with its columns and indexes (not its triggers, nor the
//! chain's table), bound as the store binds them: what the log's shape costs before CloudSync's
//! own work. The raw pool on SQLite is a second pool on the same file with the same
//! pragmas as the store's; on PostgreSQL a second pool with the same options. On PostgreSQL the 16
//! writers are also set beside `pgbench` with 16 clients running a one-row INSERT script on that table.
//!
//! Knobs (environment):
//! - `BENCH_EVENTS`: single-event appends per write scenario (default 5000);
//! - `BENCH_BATCHES`: 100-event batches for scenario 3 (default `BENCH_EVENTS / 25`, i.e. 200);
//! - `BENCH_MAX_SECS`: a cap on each measurement, so a slow disk cannot stretch the run (default 10);
//! - `BENCH_REBUILD_EVENTS`: domain events for scenario 5 (default 100000; the issue's figure is for
//!   1000000);
//! - `BENCH_BACKENDS`: `sqlite,postgres` (default both);
//! - `BENCH_KEEP=1`: keep the databases afterwards (their URLs go to stderr), e.g. to time
//!   `cloudsync projections rebuild all` on them;
//! - `CLOUDSYNC_BENCH_POSTGRES_URL`: the PostgreSQL server's admin URL.
//!
//! The result is a Markdown table on stdout (progress goes to stderr). Run it with:
//!
//! ```text
//! cargo run --release -p cloudsync-bench --bin event_store
//! ```

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cloudsync_eventstore::{Database, EventMetadata, EventStore, ExpectedVersion, NewEvent, StreamAppend, append_to};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection as _, PgPool, SqlitePool};
use tokio::task::JoinSet;
use uuid::Uuid;

mod tree;

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const BATCH_SIZE: usize = 100;
const PAGE_SIZE: i64 = 1000;
const WRITERS: usize = 16;
/// Unmeasured operations run before the write scenarios, to open connections and fill statement caches.
const WARM_UP_OPS: u64 = 32;

/// What one run does, read from the environment.
#[derive(Debug, Clone)]
struct Config {
    events: u64,
    batches: u64,
    max: Duration,
    rebuild_events: u64,
    sqlite: bool,
    postgres: bool,
    postgres_url: String,
}

impl Config {
    fn from_env() -> anyhow::Result<Self> {
        let events = env_u64("BENCH_EVENTS")?.unwrap_or(5000).max(1);
        let batches = env_u64("BENCH_BATCHES")?.unwrap_or(events / 25).max(1);
        let max = Duration::from_secs(env_u64("BENCH_MAX_SECS")?.unwrap_or(10).max(1));
        let backends = std::env::var("BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
        let mut sqlite = false;
        let mut postgres = false;
        for name in backends.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "sqlite" => sqlite = true,
                "postgres" => postgres = true,
                other => bail!("BENCH_BACKENDS: unknown backend {other:?} (expected sqlite and/or postgres)"),
            }
        }
        let postgres_url = std::env::var("CLOUDSYNC_BENCH_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into());
        let rebuild_events = env_u64("BENCH_REBUILD_EVENTS")?.unwrap_or(100_000).max(1000);
        Ok(Self {
            events,
            batches,
            max,
            rebuild_events,
            sqlite,
            postgres,
            postgres_url,
        })
    }
}

/// `BENCH_KEEP=1`: the benchmark's databases are kept (and named on stderr), to run the CLI on them.
fn keep() -> bool {
    std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1")
}

fn env_u64(name: &str) -> anyhow::Result<Option<u64>> {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("{name}={value:?} is not a whole number")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {name}")),
    }
}

/// The outcome of one timed loop.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// Events (or rows) written or read.
    units: u64,
    /// Operations (appends, INSERT statements, pages) completed.
    ops: u64,
    elapsed: Duration,
    /// Stopped by the `BENCH_MAX_SECS` cap before it did every planned operation.
    capped: bool,
}

impl Measured {
    fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.units as f64 / secs } else { 0.0 }
    }

    fn describe(&self) -> String {
        format!(
            "{} in {} ops, {:.2} s{}",
            thousands(self.units as f64),
            thousands(self.ops as f64),
            self.elapsed.as_secs_f64(),
            if self.capped { ", capped" } else { "" }
        )
    }
}

/// One line of the result table.
struct Row {
    backend: &'static str,
    scenario: &'static str,
    store: Measured,
    raw: Measured,
    /// How the store's appends were grouped into transactions, where it grouped them.
    groups: Option<(u64, u64)>,
}

/// Runs `op(0)`, `op(1)`, … up to `total_ops` (or until `max` has passed) from `writers` concurrent tasks;
/// each `op` returns how many units it did.
async fn drive<F, Fut>(writers: usize, total_ops: u64, max: Duration, op: F) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + max;
    let mut tasks = JoinSet::new();
    for _ in 0..writers {
        let op = Arc::clone(&op);
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let (mut units, mut ops) = (0_u64, 0_u64);
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total_ops {
                    break;
                }
                units += op(i).await?;
                ops += 1;
            }
            anyhow::Ok((units, ops))
        });
    }
    let (mut units, mut ops) = (0, 0);
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a benchmark task panicked").and_then(|r| r) {
            Ok((u, o)) => {
                units += u;
                ops += o;
            }
            Err(err) => {
                // Stop the others rather than let them run to the deadline.
                tasks.abort_all();
                if failure.is_none() {
                    failure = Some(err);
                }
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    Ok(Measured {
        units,
        ops,
        elapsed: start.elapsed(),
        capped: ops < total_ops,
    })
}

/// A realistic event payload (about 200 bytes of JSON).
fn payload(i: u64) -> Value {
    json!({
        "file_id": Uuid::new_v4(),
        "path": format!("/bench/folder-{}/file-{i:08}.bin", i % 97),
        "size_bytes": 4096 + i,
        "mime_type": "application/octet-stream",
        "checksum": format!("{:064x}", u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
    })
}

fn new_event(i: u64, metadata: EventMetadata) -> NewEvent {
    NewEvent {
        event_type: "FileUploaded".into(),
        schema_version: 1,
        payload: payload(i),
        metadata,
    }
}

fn new_stream() -> String {
    format!("file-{}", Uuid::new_v4().simple())
}

// ---- CloudSync event store ----

/// Single-event appends, each to a new stream.
async fn store_single(store: &Arc<dyn EventStore>, writers: usize, total: u64, max: Duration) -> anyhow::Result<Measured> {
    store_single_over(std::slice::from_ref(store), writers, total, max).await
}

/// Single-event appends, each to a new stream, taking turns over `stores`.
async fn store_single_over(stores: &[Arc<dyn EventStore>], writers: usize, total: u64, max: Duration) -> anyhow::Result<Measured> {
    let stores: Arc<[Arc<dyn EventStore>]> = stores.into();
    let actor = Uuid::new_v4();
    drive(writers, total, max, move |i| {
        let store = Arc::clone(&stores[i as usize % stores.len()]);
        async move {
            let event = new_event(i, EventMetadata::new(Some(actor)));
            append_to(store.as_ref(), &new_stream(), ExpectedVersion::NoStream, vec![event])
                .await
                .context("single-event append")?;
            Ok(1)
        }
    })
    .await
}

/// Appends of `BATCH_SIZE` events each, each to a new stream.
async fn store_batches(store: &Arc<dyn EventStore>, total: u64, max: Duration) -> anyhow::Result<Measured> {
    let store = Arc::clone(store);
    let actor = Uuid::new_v4();
    drive(1, total, max, move |i| {
        let store = Arc::clone(&store);
        async move {
            let first = EventMetadata::new(Some(actor));
            let events: Vec<NewEvent> = (0..BATCH_SIZE as u64)
                .map(|k| new_event(i * BATCH_SIZE as u64 + k, if k == 0 { first.clone() } else { first.next() }))
                .collect();
            let count = events.len() as u64;
            store
                .append(vec![StreamAppend {
                    stream: new_stream(),
                    expected: ExpectedVersion::NoStream,
                    events,
                }])
                .await
                .context("batch append")?;
            Ok(count)
        }
    })
    .await
}

/// Reads the whole log with `read_all` in pages of `PAGE_SIZE`.
async fn store_catch_up(store: &dyn EventStore) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let (mut after, mut units, mut ops) = (0_i64, 0_u64, 0_u64);
    loop {
        let page = store.read_all(after, PAGE_SIZE).await.context("read_all")?;
        let Some(last) = page.last() else { break };
        after = last.position;
        units += page.len() as u64;
        ops += 1;
    }
    Ok(Measured {
        units,
        ops,
        elapsed: start.elapsed(),
        capped: false,
    })
}

// ---- Raw sqlx ceiling ----

#[derive(Clone)]
enum RawPool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The log's columns, for the copy of its table.
const LOG_COLUMNS: &str = "position, stream_id, stream_version, event_type, schema_version, payload, event_id, correlation_id, \
     causation_id, actor_id, occurred_at";

/// The `raw_events` table and the statements that write and read it.
#[derive(Clone)]
struct Raw {
    pool: RawPool,
    /// The database's URL, for `pgbench` (PostgreSQL only).
    url: Option<String>,
    insert_one: Arc<str>,
    insert_batch: Arc<str>,
    /// A batch into `raw_log`, a copy of the log's table (its columns and indexes, not its triggers).
    insert_log_batch: Arc<str>,
    read_page: Arc<str>,
    /// The next position in `raw_log`.
    log_position: Arc<AtomicU64>,
}

impl Raw {
    async fn sqlite(pool: SqlitePool) -> anyhow::Result<Self> {
        sqlx::query("CREATE TABLE raw_events (id INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, payload TEXT NOT NULL)")
            .execute(&pool)
            .await
            .context("create raw_events on SQLite")?;
        let schema: Vec<String> = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE tbl_name = 'events' AND type IN ('table', 'index') AND sql IS NOT NULL",
        )
        .fetch_all(&pool)
        .await
        .context("read the log's schema")?;
        for statement in schema {
            let copy = statement.replacen("events", "raw_log", 2).replacen("events_", "raw_log_", 1);
            sqlx::query(&copy)
                .execute(&pool)
                .await
                .with_context(|| format!("copy the log's table: {copy}"))?;
        }
        let values = vec!["(?, ?)"; BATCH_SIZE].join(", ");
        let log_values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; BATCH_SIZE].join(", ");
        Ok(Self {
            pool: RawPool::Sqlite(pool),
            url: None,
            insert_one: "INSERT INTO raw_events (stream_id, payload) VALUES (?, ?)".into(),
            insert_batch: format!("INSERT INTO raw_events (stream_id, payload) VALUES {values}").into(),
            insert_log_batch: format!("INSERT INTO raw_log ({LOG_COLUMNS}) VALUES {log_values}").into(),
            log_position: Arc::default(),
            read_page: "SELECT id, stream_id, payload FROM raw_events WHERE id > ? ORDER BY id LIMIT ?".into(),
        })
    }

    async fn postgres(pool: PgPool, url: &str) -> anyhow::Result<Self> {
        sqlx::query("CREATE TABLE raw_events (id BIGSERIAL PRIMARY KEY, stream_id TEXT NOT NULL, payload JSONB NOT NULL)")
            .execute(&pool)
            .await
            .context("create raw_events on PostgreSQL")?;
        sqlx::query("CREATE TABLE raw_log (LIKE events INCLUDING ALL)")
            .execute(&pool)
            .await
            .context("copy the log's table on PostgreSQL")?;
        let values = (0..BATCH_SIZE)
            .map(|r| format!("(${}, ${}::jsonb)", 2 * r + 1, 2 * r + 2))
            .collect::<Vec<_>>()
            .join(", ");
        let log_values = (0..BATCH_SIZE)
            .map(|r| {
                let n = |k: usize| 11 * r + k;
                format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}::jsonb, ${}, ${}, ${}, ${}, ${})",
                    n(1),
                    n(2),
                    n(3),
                    n(4),
                    n(5),
                    n(6),
                    n(7),
                    n(8),
                    n(9),
                    n(10),
                    n(11)
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            pool: RawPool::Postgres(pool),
            url: Some(url.to_owned()),
            insert_one: "INSERT INTO raw_events (stream_id, payload) VALUES ($1, $2::jsonb)".into(),
            insert_batch: format!("INSERT INTO raw_events (stream_id, payload) VALUES {values}").into(),
            insert_log_batch: format!("INSERT INTO raw_log ({LOG_COLUMNS}) VALUES {log_values}").into(),
            log_position: Arc::default(),
            read_page: "SELECT id, stream_id, payload::text FROM raw_events WHERE id > $1 ORDER BY id LIMIT $2".into(),
        })
    }

    async fn insert_one(&self, stream: &str, payload: &str) -> anyhow::Result<()> {
        match &self.pool {
            RawPool::Sqlite(p) => sqlx::query(&self.insert_one).bind(stream).bind(payload).execute(p).await.map(drop),
            RawPool::Postgres(p) => sqlx::query(&self.insert_one).bind(stream).bind(payload).execute(p).await.map(drop),
        }
        .context("raw single-row INSERT")
    }

    async fn insert_batch(&self, rows: &[(String, String)]) -> anyhow::Result<()> {
        match &self.pool {
            RawPool::Sqlite(p) => {
                let mut query = sqlx::query(&self.insert_batch);
                for (stream, payload) in rows {
                    query = query.bind(stream).bind(payload);
                }
                query.execute(p).await.map(drop)
            }
            RawPool::Postgres(p) => {
                let mut query = sqlx::query(&self.insert_batch);
                for (stream, payload) in rows {
                    query = query.bind(stream).bind(payload);
                }
                query.execute(p).await.map(drop)
            }
        }
        .context("raw multi-row INSERT")
    }

    /// `BATCH_SIZE` events of one new stream into `raw_log`, each column bound as the store binds it
    /// on this backend (ids as text and times as text on SQLite, native types on PostgreSQL).
    async fn insert_log_batch(&self, first: u64) -> anyhow::Result<()> {
        let stream = new_stream();
        let start = self.log_position.fetch_add(BATCH_SIZE as u64, Ordering::Relaxed);
        let meta = EventMetadata::new(Some(Uuid::new_v4()));
        let rows: Vec<(i64, i64, String, EventMetadata)> = (0..BATCH_SIZE as u64)
            .map(|k| {
                let position = i64::try_from(start + k + 1).unwrap_or(i64::MAX);
                (position, k as i64 + 1, payload(first + k).to_string(), meta.next())
            })
            .collect();
        // The same binds on either pool; ids go as text on SQLite, as the store writes them there.
        macro_rules! insert {
            ($pool:expr, $id:expr) => {{
                let mut query = sqlx::query(&self.insert_log_batch);
                for (position, version, payload, m) in &rows {
                    query = query
                        .bind(position)
                        .bind(&stream)
                        .bind(version)
                        .bind("FileUploaded")
                        .bind(1_i32)
                        .bind(payload)
                        .bind($id(m.event_id))
                        .bind($id(m.correlation_id))
                        .bind(m.causation_id.map($id))
                        .bind(m.actor_id.map($id))
                        .bind(m.occurred_at);
                }
                query.execute($pool).await.map(drop)
            }};
        }
        match &self.pool {
            RawPool::Sqlite(p) => insert!(p, |id: Uuid| id.to_string()),
            RawPool::Postgres(p) => insert!(p, |id: Uuid| id),
        }
        .context("raw multi-row INSERT into the log's table")
    }

    async fn read_page(&self, after: i64) -> anyhow::Result<Vec<(i64, String, String)>> {
        match &self.pool {
            RawPool::Sqlite(p) => sqlx::query_as(&self.read_page).bind(after).bind(PAGE_SIZE).fetch_all(p).await,
            RawPool::Postgres(p) => sqlx::query_as(&self.read_page).bind(after).bind(PAGE_SIZE).fetch_all(p).await,
        }
        .context("raw paged SELECT")
    }

    async fn close(&self) {
        match &self.pool {
            RawPool::Sqlite(p) => p.close().await,
            RawPool::Postgres(p) => p.close().await,
        }
    }
}

/// Single-row autocommit INSERTs.
async fn raw_single(raw: &Raw, writers: usize, total: u64, max: Duration) -> anyhow::Result<Measured> {
    let raw = raw.clone();
    drive(writers, total, max, move |i| {
        let raw = raw.clone();
        async move {
            raw.insert_one(&new_stream(), &payload(i).to_string()).await?;
            Ok(1)
        }
    })
    .await
}

/// `BATCH_SIZE`-row multi-value INSERTs.
async fn raw_batches(raw: &Raw, total: u64, max: Duration) -> anyhow::Result<Measured> {
    let raw = raw.clone();
    drive(1, total, max, move |i| {
        let raw = raw.clone();
        async move {
            let stream = new_stream();
            let rows: Vec<(String, String)> = (0..BATCH_SIZE as u64)
                .map(|k| (stream.clone(), payload(i * BATCH_SIZE as u64 + k).to_string()))
                .collect();
            raw.insert_batch(&rows).await?;
            Ok(rows.len() as u64)
        }
    })
    .await
}

/// `BATCH_SIZE`-row multi-value INSERTs into the copy of the log's table.
async fn raw_log_batches(raw: &Raw, total: u64, max: Duration) -> anyhow::Result<Measured> {
    let raw = raw.clone();
    drive(1, total, max, move |i| {
        let raw = raw.clone();
        async move {
            raw.insert_log_batch(i * BATCH_SIZE as u64).await?;
            Ok(BATCH_SIZE as u64)
        }
    })
    .await
}

/// `pgbench` with `clients` clients, each transaction one single-row INSERT into `raw_events` (the
/// payload as large as the other scenarios'), for `max`.
fn pgbench(url: &str, clients: usize, max: Duration) -> anyhow::Result<Measured> {
    let script = std::env::temp_dir().join(format!("cloudsync-bench-pgbench-{}.sql", Uuid::new_v4().simple()));
    std::fs::write(
        &script,
        format!(
            "INSERT INTO raw_events (stream_id, payload) VALUES ('file-' || :client_id || '-' || random(), '{}'::jsonb);\n",
            payload(7)
        ),
    )?;
    let output = std::process::Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &max.as_secs().to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .context("running pgbench (Debian's postgresql-client)")?;
    let _ = std::fs::remove_file(&script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    }
    let number = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let done = number("number of transactions actually processed:").context("pgbench printed no transaction count")?;
    let tps = number("tps =").context("pgbench printed no tps")?;
    Ok(Measured {
        units: done as u64,
        ops: done as u64,
        elapsed: Duration::from_secs_f64(done / tps),
        capped: false,
    })
}

/// Reads the whole raw table with keyset paging.
async fn raw_catch_up(raw: &Raw) -> anyhow::Result<Measured> {
    let start = Instant::now();
    let (mut after, mut units, mut ops) = (0_i64, 0_u64, 0_u64);
    loop {
        let page = raw.read_page(after).await?;
        let Some((last, _, _)) = page.last() else { break };
        after = *last;
        units += page.len() as u64;
        ops += 1;
    }
    Ok(Measured {
        units,
        ops,
        elapsed: start.elapsed(),
        capped: false,
    })
}

// ---- Per backend ----

/// Runs every scenario on one connected backend, pushing each finished row into `rows`.
async fn bench_backend(
    backend: &'static str,
    url: &str,
    db: &Database,
    raw: &Raw,
    cfg: &Config,
    report: &mut Report,
) -> anyhow::Result<()> {
    let Report { rows, rebuilds } = report;
    let store = &db.events;
    eprintln!("[{backend}] warming up");
    store_single(store, WRITERS, WARM_UP_OPS, cfg.max)
        .await
        .context("warm-up (store)")?;
    raw_single(raw, WRITERS, WARM_UP_OPS, cfg.max).await.context("warm-up (raw)")?;

    let mut record = |scenario: &'static str, store: Measured, raw: Measured, groups: Option<(u64, u64)>| {
        eprintln!(
            "[{backend}] {scenario}: CloudSync {:.0}/s ({}), raw {:.0}/s ({})",
            store.rate(),
            store.describe(),
            raw.rate(),
            raw.describe()
        );
        rows.push(Row {
            backend,
            scenario,
            store,
            raw,
            groups,
        });
    };
    // Appends and transactions during one measurement.
    let grouped = |before: cloudsync_eventstore::CommitStats| {
        let after = store.commit_stats();
        Some((after.requests - before.requests, after.transactions - before.transactions))
    };

    let before = store.commit_stats();
    let s = store_single(store, 1, cfg.events, cfg.max)
        .await
        .context("store: single-event appends, 1 writer")?;
    let g = grouped(before);
    let r = raw_single(raw, 1, cfg.events, cfg.max)
        .await
        .context("raw: single-row INSERTs, 1 writer")?;
    record("single-event appends, 1 writer", s, r, g);

    let before = store.commit_stats();
    let sixteen = store_single(store, WRITERS, cfg.events, cfg.max)
        .await
        .context("store: single-event appends, 16 writers")?;
    let g = grouped(before);
    let r = raw_single(raw, WRITERS, cfg.events, cfg.max)
        .await
        .context("raw: single-row INSERTs, 16 writers")?;
    record("single-event appends, 16 writers", sixteen, r, g);
    if backend == "postgres"
        && let Some(url) = &raw.url
    {
        let r = pgbench(url, WRITERS, cfg.max).context("pgbench")?;
        record("single-event appends, 16 writers (raw: pgbench, 16 clients)", sixteen, r, g);
    }
    // Two store instances on one database, as two processes would be: their writers take turns.
    let other = Database::connect(url, false).await.context("a second store instance")?;
    let pair = [Arc::clone(store), Arc::clone(&other.events)];
    let shared = store_single_over(&pair, WRITERS, cfg.events, cfg.max)
        .await
        .context("store: single-event appends, 16 writers over two instances")?;
    other.close().await;
    record(
        "single-event appends, 16 writers over two store instances (raw: 16 writers)",
        shared,
        r,
        None,
    );

    let before = store.commit_stats();
    let s = store_single(store, 4 * WRITERS, cfg.events, cfg.max)
        .await
        .context("store: single-event appends, 64 writers")?;
    let g = grouped(before);
    let r = raw_single(raw, 4 * WRITERS, cfg.events, cfg.max)
        .await
        .context("raw: single-row INSERTs, 64 writers")?;
    record("single-event appends, 64 writers", s, r, g);

    let s = store_batches(store, cfg.batches, cfg.max)
        .await
        .context("store: 100-event batches")?;
    let r = raw_batches(raw, cfg.batches, cfg.max).await.context("raw: 100-row INSERTs")?;
    record("batches of 100 events, 1 writer", s, r, None);
    let r = raw_log_batches(raw, cfg.batches, cfg.max)
        .await
        .context("raw: 100-row INSERTs into the log's table")?;
    record("batches of 100 events (raw: into a copy of the log's table)", s, r, None);

    let s = store_catch_up(store.as_ref()).await.context("store: catch-up read")?;
    let r = raw_catch_up(raw).await.context("raw: catch-up read")?;
    record("catch-up read, pages of 1000 (raw: keyset SELECT)", s, r, None);

    eprintln!("[{backend}] appending {} domain events for the rebuild", cfg.rebuild_events);
    let live = tree::append_tree(store.as_ref(), cfg.rebuild_events)
        .await
        .context("append the tree's events")?;
    eprintln!("[{backend}] rebuilding every read model");
    let rebuilt = cloudsync_projections::rebuild_many(db, &cloudsync_projections::PROJECTORS)
        .await
        .context("rebuild the read models")?;
    let files: i64 = cloudsync_eventstore::on_pool!(&db.pool, |p| sqlx::query_scalar("SELECT COUNT(*) FROM files")
        .fetch_one(p)
        .await
        .context("count the files"))?;
    anyhow::ensure!(
        usize::try_from(files).is_ok_and(|files| files == live),
        "the rebuilt files table has {files} rows; the tree has {live} files"
    );
    rebuilds.push(Rebuild {
        backend,
        events: cfg.rebuild_events,
        read: rebuilt.events,
        files,
        elapsed: rebuilt.elapsed,
    });
    Ok(())
}

/// Everything measured.
#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    rebuilds: Vec<Rebuild>,
}

/// A rebuild of the read models, as scenario 5 measured it.
struct Rebuild {
    backend: &'static str,
    /// The domain events of the tree.
    events: u64,
    /// Every event the rebuild read, the other scenarios' included.
    read: u64,
    /// Rows in `files` afterwards.
    files: i64,
    elapsed: Duration,
}

async fn run_sqlite(cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("cloudsync-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let result = sqlite_in(&dir, cfg, report).await;
    if keep() {
        eprintln!("[sqlite] kept: CLOUDSYNC_DATABASE_URL=sqlite://{}/cloudsync.db", dir.display());
    } else if let Err(err) = std::fs::remove_dir_all(&dir) {
        eprintln!("warning: could not remove {}: {err}", dir.display());
    }
    result
}

async fn sqlite_in(dir: &Path, cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    let path = dir.join("cloudsync.db");
    let url = format!("sqlite://{}", path.display());
    eprintln!("[sqlite] {}", path.display());
    let db = Database::connect(&url, true)
        .await
        .with_context(|| format!("connect and migrate {url}"))?;
    // The same options `Database::connect` uses for the store's pool.
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .context("open the raw SQLite pool")?;
    let raw = Raw::sqlite(pool).await?;
    let result = bench_backend("sqlite", &url, &db, &raw, cfg, report).await;
    raw.close().await;
    db.close().await;
    result
}

/// The URL of database `name` on the server of `admin` (keeping credentials and query parameters).
fn database_url(admin: &str, name: &str) -> anyhow::Result<String> {
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base
        .split_once("://")
        .with_context(|| format!("{admin:?} is not a postgres:// URL"))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    })
}

async fn run_postgres(cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    let admin = &cfg.postgres_url;
    let name = format!("cs_bench_{}", Uuid::new_v4().simple());
    let url = database_url(admin, &name)?;
    {
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| format!("connect to PostgreSQL at {admin} (set CLOUDSYNC_BENCH_POSTGRES_URL)"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("create {name}"))?;
        conn.close().await.context("close the admin connection")?;
    }
    eprintln!("[postgres] database {name}");
    let result = postgres_in(&url, cfg, report).await;
    if keep() {
        eprintln!("[postgres] kept: CLOUDSYNC_DATABASE_URL={url}");
        return result;
    }
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(admin).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await
    .with_context(|| format!("drop the benchmark database {name}"));
    match (result, dropped) {
        (Err(err), Err(drop_err)) => {
            eprintln!("error: {drop_err:#}");
            Err(err)
        }
        (Err(err), Ok(())) | (Ok(()), Err(err)) => Err(err),
        (Ok(()), Ok(())) => Ok(()),
    }
}

async fn postgres_in(url: &str, cfg: &Config, report: &mut Report) -> anyhow::Result<()> {
    let db = Database::connect(url, true)
        .await
        .context("connect and migrate the benchmark database")?;
    // The same options `Database::connect` uses for the store's pool.
    let pool = PgPoolOptions::new()
        .max_connections(24)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("open the raw PostgreSQL pool")?;
    let raw = Raw::postgres(pool, url).await?;
    let result = bench_backend("postgres", url, &db, &raw, cfg, report).await;
    raw.close().await;
    db.close().await;
    result
}

// ---- Output ----

/// `1234567.8` → `"1,234,568"`.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}

fn print_report(cfg: &Config, report: &Report) {
    let rows = &report.rows;
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let cpu = cpu_model().map(|m| format!(" ({m})")).unwrap_or_default();
    println!("# CloudSync event store benchmark");
    println!();
    println!(
        "nproc {nproc}{cpu}, {}/{}, {}; BENCH_EVENTS={} single-event appends per scenario, {} batches of {BATCH_SIZE}, \
         cap {} s per measurement",
        std::env::consts::OS,
        std::env::consts::ARCH,
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        cfg.events,
        cfg.batches,
        cfg.max.as_secs(),
    );
    println!();
    println!("| backend | scenario | CloudSync events/s | raw INSERT rows/s | ratio |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        let (s, r) = (row.store.rate(), row.raw.rate());
        let ratio = if r > 0.0 { format!("{:.2}", s / r) } else { "n/a".into() };
        let mark = |m: &Measured| if m.capped { " †" } else { "" };
        println!(
            "| {} | {} | {}{} | {}{} | {ratio} |",
            row.backend,
            row.scenario,
            thousands(s),
            mark(&row.store),
            thousands(r),
            mark(&row.raw)
        );
    }
    println!();
    println!(
        "ratio = CloudSync / raw. † = stopped by the {} s cap before all planned operations.",
        cfg.max.as_secs()
    );
    println!("Raw table: no secondary indexes or version checks; raw read = keyset-paged SELECT without JSON decoding.");
    println!();
    for row in rows {
        let groups = row.groups.map_or(String::new(), |(appends, transactions)| {
            format!(
                " ({} appends in {} transactions, {:.1} a transaction)",
                thousands(appends as f64),
                thousands(transactions as f64),
                appends as f64 / transactions.max(1) as f64
            )
        });
        println!(
            "- {} / {}: CloudSync {}{groups}; raw {}",
            row.backend,
            row.scenario,
            row.store.describe(),
            row.raw.describe()
        );
    }
    if !report.rebuilds.is_empty() {
        println!();
        println!("| backend | rebuild of every read model | domain events | events/s (target 50,000) | rows in files |");
        println!("|---|---|---:|---:|---:|");
        for rebuild in &report.rebuilds {
            let seconds = rebuild.elapsed.as_secs_f64();
            println!(
                "| {} | {:.1} s, {} events read | {} | {} | {} |",
                rebuild.backend,
                seconds,
                thousands(rebuild.read as f64),
                thousands(rebuild.events as f64),
                thousands(rebuild.events as f64 / seconds.max(1e-9)),
                thousands(rebuild.files as f64)
            );
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let mut report = Report::default();
    let mut failures = Vec::new();
    if cfg.sqlite
        && let Err(err) = run_sqlite(&cfg, &mut report).await
    {
        eprintln!("sqlite benchmark failed: {err:#}");
        failures.push("sqlite");
    }
    if cfg.postgres
        && let Err(err) = run_postgres(&cfg, &mut report).await
    {
        eprintln!("postgres benchmark failed: {err:#}");
        failures.push("postgres");
    }
    print_report(&cfg, &report);
    if !failures.is_empty() {
        bail!("the benchmark failed on {}", failures.join(" and "));
    }
    Ok(())
}
