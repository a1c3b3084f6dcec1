//! Point-in-time replays: the log up to a moment (a time, or a position) copied into a database of
//! its own, the read models, the search index and the vectors rebuilt from it, and served
//! read-only (`cloudsync replay --at <time> --into <folder>`, then `cloudsync --config
//! <folder>/cloudsync.toml serve`).
//!
//! The events are copied as stored (sealed values stay sealed) in their order, so they keep their
//! positions and stream versions and the copy's hash chain ends on the very link the log has at
//! that position, which the replay checks. The keys that open what the events seal (the users'
//! wrapped data keys, the chunk store's, the server's secrets and the erasure tombstones) are
//! copied as they are now: an account erased since stays unreadable in the past too. Texts and
//! vectors are read from the installation's chunk store, which the replay shares (read-only).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use cloudsync_eventstore::{Database, DbPool, EventStore, ExpectedVersion, RecordedEvent, StreamAppend};
use uuid::Uuid;

use crate::config::Config;

/// Where a replay stops.
#[derive(Debug, Clone, Copy)]
pub enum Cutoff {
    /// The log as it was at this time: every event up to the first that happened later.
    At(DateTime<Utc>),
    /// The log up to and including this position.
    Position(i64),
}

/// What a replay copied and built.
#[derive(Debug)]
pub struct Replayed {
    /// The position it ends at (the number of events copied).
    pub position: i64,
    /// When its last event happened.
    pub last_at: Option<DateTime<Utc>>,
    /// The configuration file that serves it read-only.
    pub config_file: PathBuf,
}

/// The tables, beside the log, that open what events seal; copied whole (all text columns).
const KEY_TABLES: [(&str, &[&str]); 4] = [
    ("user_keys", &["user_id", "wrapped_key", "created_at"]),
    ("chunk_store_keys", &["user_id", "wrapped_key", "created_at"]),
    ("server_secrets", &["name", "sealed"]),
    ("erased_users", &["user_id"]),
];

/// The key files of a data dir that the replay's folder gets a copy of (where the key is generated
/// into the data dir rather than configured).
const KEY_FILES: [&str; 4] = ["master-key", "master-key.previous", "chunk-store-key", "chunk-store-key.previous"];

/// How many events are copied per append.
const PAGE: i64 = 1000;

/// The configuration that serves the replay in `into` (with `database`, else SQLite in `into`):
/// read-only, everything embedded, the installation's models and chunk store.
pub fn replay_config(config: &Config, into: &Path, database: Option<String>) -> Config {
    Config {
        data_dir: into.to_path_buf(),
        database_url: database,
        read_only: true,
        elasticsearch_url: None,
        vector_url: None,
        redis_url: None,
        amqp_url: None,
        models_dir: Some(config.models_dir.clone().unwrap_or_else(|| config.data_dir.join("models"))),
        ..config.clone()
    }
}

/// Copies the log of `source` (`config`'s installation) up to `cutoff` into `into` (a new folder,
/// or an empty one; the events into `database`, else SQLite in it), and rebuilds every read model
/// there with `rebuild` (given the replay's configuration and database).
///
/// # Errors
/// A cutoff before the first event or past the last, a folder or database that already holds a
/// log, an unreadable source, or a copy whose chain does not end on the log's link there; nothing
/// of the installation changes either way.
pub async fn replay_into<F, Fut>(
    source: &Database,
    config: &Config,
    cutoff: Cutoff,
    into: &Path,
    database: Option<String>,
    rebuild: F,
) -> anyhow::Result<Replayed>
where
    F: FnOnce(Config, Database) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let head = source.stored.head().await?;
    let position = match cutoff {
        Cutoff::Position(position) if position < 1 || position > head => {
            bail!("--position must be between 1 and the log's last position, {head}")
        }
        Cutoff::Position(position) => position,
        Cutoff::At(at) => last_before(&*source.stored, at).await?,
    };
    if same_folder(&config.data_dir, into) {
        bail!("--into must be a folder of its own, not the data dir");
    }
    let replay = replay_config(config, into, database);
    std::fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let target = Database::connect(&replay.database_url(), true)
        .await
        .with_context(|| format!("opening the replay's database ({})", crate::root::redact(&replay.database_url())))?;
    let copied = async {
        if target.stored.head().await? > 0 {
            bail!(
                "{} already holds a log: give an empty folder or database",
                crate::root::redact(&replay.database_url())
            );
        }
        copy_keys(config, &source.pool, &target.pool, into).await?;
        let last_at = copy_log(&*source.stored, &*target.stored, position).await?;
        // The copy's chain is computed afresh as it is appended: it ends on the log's own link
        // only if every event came across exactly.
        let (tip, link) = cloudsync_eventstore::chain::tip(&target.pool).await?;
        let wanted = cloudsync_eventstore::chain::stored_link(&source.pool, position).await?;
        if tip != position || wanted != Some(link) {
            bail!(
                "the copy's hash chain does not end on the log's link at position {position}: the log changed under \
                 the copy, or was tampered with (run `cloudsync verify`)"
            );
        }
        Ok((last_at, link))
    }
    .await;
    target.close().await;
    let (last_at, link) = copied?;
    let db = crate::root::open_database(&replay).await?;
    let rebuilt = async {
        rebuild(replay.clone(), db.clone()).await?;
        forget_erased(&replay, &db).await
    }
    .await;
    db.close().await;
    rebuilt?;
    let config_file = into.join("cloudsync.toml");
    write_config(&replay, &config_file)?;
    let marker = serde_json::json!({ "position": position, "link": data_encoding::HEXLOWER.encode(&link) });
    std::fs::write(into.join(crate::root::REPLAY_MARKER), marker.to_string()).context("writing the replay's marker")?;
    Ok(Replayed {
        position,
        last_at,
        config_file,
    })
}

/// Accounts erased since the cut-off have no rows in the replay's read models (the erasure
/// tombstones came with the keys), but the search and vector indexes, which learn of an erasure
/// from the log, would hold their files: they are taken out of both.
async fn forget_erased(replay: &Config, db: &Database) -> anyhow::Result<()> {
    let erased: Vec<String> = cloudsync_eventstore::on_pool!(&db.pool, |p| sqlx::query_scalar("SELECT user_id FROM erased_users")
        .fetch_all(p)
        .await)?;
    let erased: Vec<cloudsync_domain::UserId> = erased
        .iter()
        .filter_map(|id| Uuid::parse_str(id).ok().map(cloudsync_domain::UserId::from_uuid))
        .collect();
    if erased.is_empty() {
        return Ok(());
    }
    let (_, index) = crate::root::search_engine(replay)?.open().await?;
    let checkpoint = index.checkpoint().await?;
    index
        .apply(cloudsync_search::Batch {
            erased: erased.clone(),
            checkpoint,
            ..cloudsync_search::Batch::default()
        })
        .await?;
    let vectors = crate::root::vector_index(replay).await?;
    let checkpoint = vectors.checkpoint().await?;
    vectors
        .apply(cloudsync_search::vectors::VectorBatch {
            erased,
            from: checkpoint,
            checkpoint,
            ..cloudsync_search::vectors::VectorBatch::default()
        })
        .await?;
    Ok(())
}

/// Whether `a` and `b` name one folder.
fn same_folder(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The last position of the log as it was at `at`: the one before the first event that happened
/// later.
async fn last_before(store: &dyn EventStore, at: DateTime<Utc>) -> anyhow::Result<i64> {
    let mut after = 0;
    loop {
        let page = store.read_all(after, PAGE).await?;
        let Some(last) = page.last() else { return Ok(after) };
        if let Some(later) = page.iter().find(|e| e.metadata.occurred_at > at) {
            if later.position == 1 {
                bail!(
                    "nothing had happened by {at}: the first event happened at {}",
                    later.metadata.occurred_at
                );
            }
            return Ok(later.position - 1);
        }
        after = last.position;
    }
}

/// Copies the events up to `position`, in order, as stored: when it happened, the last one's time.
async fn copy_log(source: &dyn EventStore, target: &dyn EventStore, position: i64) -> anyhow::Result<Option<DateTime<Utc>>> {
    let mut after = 0;
    let mut last_at = None;
    while after < position {
        let page = source.read_all(after, PAGE.min(position - after)).await?;
        let Some(last) = page.last() else { break };
        let (last_position, at) = (last.position, last.metadata.occurred_at);
        let outcome = target.append(batches(page)).await?;
        if outcome.last_position != last_position {
            bail!("the log has a gap before position {last_position}: the copy would renumber it");
        }
        (after, last_at) = (last_position, Some(at));
    }
    Ok(last_at)
}

/// Events in global order as appends, one per run of events of one stream.
fn batches(events: Vec<RecordedEvent>) -> Vec<StreamAppend> {
    let mut batches: Vec<StreamAppend> = Vec::new();
    for event in events {
        let new = cloudsync_eventstore::NewEvent {
            event_type: event.event_type,
            schema_version: event.schema_version,
            payload: event.payload,
            metadata: event.metadata,
        };
        match batches.last_mut() {
            Some(batch) if batch.stream == event.stream_id => batch.events.push(new),
            _ => batches.push(StreamAppend {
                stream: event.stream_id,
                expected: ExpectedVersion::Any,
                events: vec![new],
            }),
        }
    }
    batches
}

/// Copies the key tables, and the data dir's generated key files (readable by the owner only).
async fn copy_keys(config: &Config, source: &DbPool, target: &DbPool, into: &Path) -> anyhow::Result<()> {
    for (table, columns) in KEY_TABLES {
        let select = format!("SELECT {} FROM {table}", columns.join(", "));
        let rows: Vec<Vec<String>> = cloudsync_eventstore::on_pool!(source, |p| {
            use sqlx::Row as _;
            sqlx::query(&select).fetch_all(p).await.and_then(|rows| {
                rows.iter()
                    .map(|row| (0..columns.len()).map(|i| row.try_get::<String, _>(i)).collect())
                    .collect()
            })
        })
        .with_context(|| format!("reading {table}"))?;
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), marks.join(", "));
        for row in rows {
            cloudsync_eventstore::on_pool!(target, |p| {
                let mut query = sqlx::query(&insert);
                for value in &row {
                    query = query.bind(value);
                }
                query.execute(p).await.map(drop)
            })
            .with_context(|| format!("copying {table}"))?;
        }
    }
    for file in KEY_FILES {
        let from = config.data_dir.join(file);
        if from.exists() {
            let to = into.join(file);
            std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    // The chunk store in the data dir (texts, vectors, versions) is shared, not copied.
    let chunks = config.data_dir.join("chunks");
    if config.chunk_store.is_none() && chunks.exists() && !into.join("chunks").exists() {
        #[cfg(unix)]
        std::os::unix::fs::symlink(chunks.canonicalize()?, into.join("chunks")).context("linking the chunk store")?;
    }
    Ok(())
}

/// Writes the settings that serve the replay: its folder and database, read-only, the models'
/// folder. Whatever else the installation configured through its environment (keys, a chunk store
/// elsewhere) is given the same way when serving it.
fn write_config(replay: &Config, file: &Path) -> anyhow::Result<()> {
    let mut table = toml::Table::new();
    table.insert("data_dir".into(), replay.data_dir.display().to_string().into());
    if let Some(url) = &replay.database_url {
        table.insert("database_url".into(), url.clone().into());
    }
    table.insert("read_only".into(), true.into());
    if let Some(models) = &replay.models_dir {
        table.insert("models_dir".into(), models.display().to_string().into());
    }
    // Readable by its owner only: a database URL may hold a password.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut out = options.open(file).with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut out, toml::to_string(&table)?.as_bytes()).with_context(|| format!("writing {}", file.display()))
}
