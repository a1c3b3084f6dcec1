//! The `cloudsync` command line: subcommands and their glue to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cloudsync_eventstore::Database;
use uuid::Uuid;

use crate::config::Config;
use crate::root::{Role, open_database, start_as};

mod jobs;
mod keys;
mod replay;
mod users;

use jobs::{NewPair, scan, sync};
pub use keys::keys;
pub use replay::{replay, replay_correlation};
pub use users::{import_users, roles};

#[derive(Debug, Parser)]
#[command(
    name = "cloudsync",
    version,
    about = "CloudSync: one index, search and sync engine over all your storage."
)]
pub struct Cli {
    /// A TOML configuration file (CLOUDSYNC_* environment variables override it).
    #[arg(long, global = true, env = "CLOUDSYNC_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the API, the projectors and the workers (embedded defaults in ./data when nothing is configured).
    Serve {
        /// host:port to listen on (overrides CLOUDSYNC_BIND).
        #[arg(long)]
        bind: Option<String>,
        /// `all`, or `api` for the API and its read models only (jobs then run in `cloudsync
        /// worker` processes, through the RabbitMQ broker of CLOUDSYNC_AMQP_URL).
        #[arg(long, value_enum, default_value = "all", env = "CLOUDSYNC_ROLE")]
        role: Role,
        /// Serves what the database holds without changing it (as `read_only` does): no jobs,
        /// nothing recorded, mutations other than signing in refused.
        #[arg(long)]
        read_only: bool,
    },
    /// Runs jobs (scans, sync runs), the scheduler and the content pipeline, with no API: the
    /// same as `serve --role worker`. Its port (--bind) serves only /healthz and /readyz.
    Worker {
        /// host:port of its health endpoints (overrides CLOUDSYNC_BIND).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Applies pending database migrations and exits.
    Migrate,
    /// Manages the read-model projections.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Scans a provider now (only changes are recorded), with a progress bar.
    Scan {
        /// The provider's id.
        provider_id: Uuid,
    },
    /// Runs a sync pair now, with a progress bar: an existing pair (its id), or a new pair of two
    /// folders given as `<provider id>:<path>` (both providers must belong to one user).
    Sync {
        /// An existing pair's id.
        #[arg(conflicts_with_all = ["source", "target"], required_unless_present_all = ["source", "target"])]
        pair_id: Option<Uuid>,
        /// The source folder of a new pair, `<provider id>:<path>`.
        #[arg(long, requires = "target")]
        source: Option<String>,
        /// The target folder of a new pair, `<provider id>:<path>`.
        #[arg(long, requires = "source")]
        target: Option<String>,
        /// copy, mirror or two-way.
        #[arg(long, default_value = "two-way")]
        mode: String,
        /// keep-both, newest-wins, source-wins, target-wins or manual.
        #[arg(long, default_value = "keep-both")]
        policy: String,
        /// The largest share (percent) of a side a run may delete without approval.
        #[arg(long, default_value_t = cloudsync_commands::DEFAULT_MAX_DELETE_PERCENT)]
        max_delete: u8,
        /// Earlier versions kept of each file (0: none).
        #[arg(long, default_value_t = cloudsync_domain::events::DEFAULT_KEEP_VERSIONS)]
        keep_versions: u32,
        /// Days an earlier version is kept (0: no age limit).
        #[arg(long, default_value_t = cloudsync_domain::events::DEFAULT_KEEP_DAYS)]
        keep_days: u32,
    },
    /// Collects the chunk store's garbage: lets go of versions outside their pair's retention and
    /// deletes chunks nothing references. Sync runs in progress are waited for (new ones wait).
    Gc {
        /// How long to wait for sync runs in progress to end, in seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
    },
    /// Manages accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Manages the access tokens' signing keys, the master key and the chunk-store key.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints the GraphQL schema (SDL), as the repository keeps it in `schema.graphql`.
    Schema,
    /// Checks that the event log is as it was appended: every event's link in the hash chain, and
    /// every signed checkpoint. Prints the first event changed, removed, inserted or reordered and
    /// fails, or prints what it checked.
    Verify {
        /// A checkpoint kept outside the database (`<position>:<link in hex>`, as the server logs
        /// "Event chain checkpoint signed."), which the log must still match.
        #[arg(long)]
        expect: Option<String>,
    },
    /// Writes an analytics export: the event log (as stored: sealed fields stay sealed, hashes of
    /// secrets are redacted), the files or the sync operations, without erased accounts, as Parquet
    /// (zstd) or CSV. The output appears only once complete.
    Export {
        /// events, files or sync-operations.
        #[arg(long, value_parser = parse_subject)]
        what: cloudsync_domain::events::ExportSubject,
        /// parquet or csv (default: the output's extension, else parquet).
        #[arg(long, value_parser = parse_format)]
        format: Option<cloudsync_domain::events::ExportFormat>,
        /// The file to write.
        #[arg(long)]
        output: PathBuf,
        /// Only what happened (events), changed (files) or started (sync operations) at or after
        /// this time (RFC 3339, e.g. 2026-12-01T00:00:00Z).
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only what happened before this time.
        #[arg(long)]
        until: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// Prints history from the event log: one stream's, everything one user did, or everything one
    /// request and the jobs it started did, in order. With `--at` or `--position`, builds the read
    /// models as they were then into a folder of their own (`--into`), to serve read-only.
    Replay {
        /// A stream such as `file-<uuid>` or `user-<uuid>`.
        #[arg(long, conflicts_with_all = ["user", "correlation", "at", "position"], required_unless_present_any = ["user", "correlation", "at", "position"])]
        stream: Option<String>,
        /// A user id: every event that user caused.
        #[arg(long, conflicts_with_all = ["correlation", "at", "position"])]
        user: Option<Uuid>,
        /// A request id (`X-Request-Id`): the events of that request and of the jobs it started.
        #[arg(long, conflicts_with_all = ["at", "position"])]
        correlation: Option<Uuid>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
        /// The moment (RFC 3339) whose read models to build: the log up to the last event that
        /// had happened by then.
        #[arg(long, conflicts_with = "position", requires = "into")]
        at: Option<chrono::DateTime<chrono::Utc>>,
        /// The position of the log whose read models to build (its events up to this one).
        #[arg(long, requires = "into")]
        position: Option<i64>,
        /// A new (or empty) folder for the replay: its database (SQLite unless --database), search
        /// index, vectors and `cloudsync.toml`, which serves it read-only: `cloudsync --config
        /// <folder>/cloudsync.toml serve`.
        #[arg(long)]
        into: Option<PathBuf>,
        /// An empty database (`postgres://…`) for the replay's log and read models.
        #[arg(long, requires = "into")]
        database: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuilds one read model (users, providers, files, sync_operations, sync_pairs,
    /// sync_conflicts, file_versions, search, vectors, or all) from position 0. Safe while the
    /// server runs: the search index is built anew beside the live one, which answers until the
    /// swap; the vector index starts again from nothing (searches by meaning find less until it has
    /// caught up) and takes every vector from the log, running no model.
    Rebuild { name: String },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Registers accounts moved from another system: a JSON Lines file of
    /// `{"email": …, "password_hash": …}` with argon2, bcrypt (`$2b$…`) or PBKDF2 (`$pbkdf2-sha256$…`,
    /// or Django's `pbkdf2_sha256$…`) hashes. People sign in with their old passwords; the hash is
    /// replaced by an argon2id one at their first login. A file with any bad line imports nothing.
    Import { file: PathBuf },
    /// Gives an account a role (`admin`, `auditor`): how the first administrator is made.
    Grant { email: String, role: String },
    /// Takes a role from an account.
    Revoke { email: String, role: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Lists the signing keys: which one signs, and until when the retired ones still verify.
    List,
    /// Adds a new signing key that every server process uses within a minute; tokens signed with
    /// the keys it replaces keep working until they expire, so nobody is signed out.
    Rotate,
    /// Re-wraps every user's data key and every signing key with the current master key (after the
    /// configuration got a new one, with the old one as `master_key_previous`), and every
    /// account's chunk-store key with the current chunk-store key (likewise).
    Rewrap,
    /// Replaces the generated master key in the data dir by a new one and re-wraps everything
    /// with it; the old key stays in `master-key.previous` until you delete it. Stop the server
    /// first: a running server keeps the keys it started with.
    RotateMaster,
    /// Replaces the generated chunk-store key in the data dir by a new one and re-wraps every
    /// account's chunk-store key with it (the chunks themselves are not rewritten); the old key
    /// stays in `chunk-store-key.previous` until you delete it. Stop the server first.
    RotateChunkStore,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    // `cloudsync extract …` is the content pipeline's child process (see `cloudsync_content`): it
    // reads one file on stdin and answers on stdout, before any configuration or runtime.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("extract") {
        return ExitCode::from(u8::try_from(cloudsync_content::child_main(&args[2..])).unwrap_or(2));
    }
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cloudsync: {error:#}");
            return ExitCode::from(2);
        }
    };
    let reporting = crate::reporting::start(&config);
    init_tracing(&config, reporting.is_some());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cloudsync: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cloudsync: {error:#}");
            if reporting.is_some() {
                sentry::capture_message(&format!("{error:#}"), sentry::Level::Fatal);
            }
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (text or JSON), and errors to Sentry when `reporting` (see [`crate::reporting`]).
fn init_tracing(config: &Config, reporting: bool) {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOUDSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if config.log_format == "json" {
        layer.json().boxed()
    } else {
        layer.boxed()
    };
    tracing_subscriber::registry()
        .with(
            layer
                .with_filter(filter)
                .with_filter(tracing_subscriber::filter::filter_fn(no_secrets)),
        )
        .with(reporting.then(|| crate::reporting::layer().with_filter(tracing_subscriber::filter::filter_fn(no_secrets))))
        .init();
}

/// Drops log events that are known to carry secrets whatever the configured level: the request
/// signer used by the S3 and Azure adapters (reqsign) prints its credentials at debug level.
fn no_secrets(metadata: &tracing::Metadata<'_>) -> bool {
    !(metadata.target().starts_with("reqsign") && *metadata.level() > tracing::Level::INFO)
}

/// Runs one subcommand.
///
async fn serve(mut config: Config, bind: Option<String>, role: Role) -> anyhow::Result<()> {
    if let Some(bind) = bind {
        config.bind = bind;
        config.validate()?;
    }
    if role != Role::All && config.amqp_url.is_none() {
        tracing::warn!(
            role = ?role,
            "No job queue broker is configured (CLOUDSYNC_AMQP_URL): jobs recorded by API processes reach only \
             the worker that holds the job relay, through its own memory."
        );
    }
    let server = start_as(&config, role).await?;
    match role {
        Role::Worker => println!(
            "CloudSync worker is running: health at {}://{}/readyz",
            config.scheme(),
            server.addr()
        ),
        _ => println!("CloudSync is running: GraphQL at {}://{}/graphql", config.scheme(), server.addr()),
    }
    server.run_until(shutdown_signal()).await;
    Ok(())
}

/// # Errors
/// Whatever stops it, with context.
pub async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            Ok(())
        }
        Command::Verify { expect } => {
            let expected = expect.as_deref().map(crate::audit::parse_kept).transpose()?;
            let db = open_database(&config).await?;
            let signer = crate::audit::ChainSigner::new(&crate::root::master_key(&config)?);
            let report = signer.verify(&db, expected).await;
            db.close().await;
            let report = report?;
            println!("{report}");
            match report {
                crate::audit::Report::Intact { .. } => Ok(()),
                crate::audit::Report::Tampered(_) => anyhow::bail!("the event log does not verify"),
            }
        }
        Command::Serve { bind, role, read_only } => {
            let mut config = config;
            config.read_only |= read_only;
            serve(config, bind, role).await
        }
        Command::Worker { bind } => serve(config, bind, Role::Worker).await,
        Command::Migrate => {
            let db = open_database(&config).await?;
            println!("Migrations applied ({}).", db.backend());
            db.close().await;
            Ok(())
        }
        Command::Projections {
            command: ProjectionsCommand::Rebuild { name },
        } => {
            let db = open_database(&config).await?;
            let result = rebuild(&config, &db, &name).await;
            db.close().await;
            result
        }
        Command::Scan { provider_id } => {
            let db = open_database(&config).await?;
            let result = scan(&config, &db, provider_id).await;
            db.close().await;
            result
        }
        Command::Sync {
            pair_id,
            source,
            target,
            mode,
            policy,
            max_delete,
            keep_versions,
            keep_days,
        } => {
            let db = open_database(&config).await?;
            let new_pair = match (source, target) {
                (Some(source), Some(target)) => Some(NewPair {
                    source,
                    target,
                    mode,
                    policy,
                    max_delete,
                    keep_versions,
                    keep_days,
                }),
                _ => None,
            };
            let result = sync(&config, &db, pair_id, new_pair).await;
            db.close().await;
            result
        }
        Command::Gc { wait } => {
            let db = open_database(&config).await?;
            let result = async {
                let commands = crate::root::commands(&config, &db)?;
                let report = commands.collect_garbage(std::time::Duration::from_secs(wait)).await?;
                println!(
                    "Collected: {} pairs read ({} of erased accounts, let go), {} versions let go, {} deleted files past their \
                     retention let go, {} of {} chunks deleted, {} interrupted writes removed.",
                    report.pairs,
                    report.erased_pairs,
                    report.versions_pruned,
                    report.deleted_released,
                    report.deleted,
                    report.chunks,
                    report.temporaries
                );
                anyhow::Ok(())
            }
            .await;
            db.close().await;
            result
        }
        Command::Users {
            command: UsersCommand::Import { file },
        } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let db = open_database(&config).await?;
            let result = import_users(&config, &db, &text, &mut std::io::stdout().lock()).await;
            db.close().await;
            result
        }
        Command::Users { command } => {
            let db = open_database(&config).await?;
            let result = roles(&config, &db, &command, &mut std::io::stdout().lock()).await;
            db.close().await;
            result
        }
        Command::Keys { command } => {
            let db = open_database(&config).await?;
            let result = keys(&config, &db, &command, &mut std::io::stdout().lock()).await;
            db.close().await;
            result
        }
        Command::Export {
            what,
            format,
            output,
            since,
            until,
        } => {
            let format = format
                .or_else(|| output.extension().and_then(|e| parse_format(&e.to_string_lossy()).ok()))
                .unwrap_or(cloudsync_domain::events::ExportFormat::Parquet);
            let request = cloudsync_domain::events::ExportRequest {
                what,
                format,
                since,
                until,
            };
            if let (Some(since), Some(until)) = (since, until)
                && since >= until
            {
                anyhow::bail!("--since must be before --until");
            }
            let db = open_database(&config).await?;
            let started = std::time::Instant::now();
            let (progress, _) = tokio::sync::watch::channel(cloudsync_commands::ExportProgress::default());
            let result = cloudsync_export::export(&db, &request, &output, &progress, None).await;
            db.close().await;
            let done = result.with_context(|| format!("exporting {}", what.as_str()))?;
            println!(
                "Exported {} rows of {} to {} ({} bytes of {}) in {:.1} s.",
                done.rows,
                what.as_str(),
                output.display(),
                done.bytes,
                format.extension(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Replay {
            at,
            position,
            into: Some(into),
            database,
            ..
        } => {
            let cutoff = match (at, position) {
                (Some(at), _) => crate::history::Cutoff::At(at),
                (None, Some(position)) => crate::history::Cutoff::Position(position),
                (None, None) => anyhow::bail!("--into goes with --at or --position"),
            };
            let started = std::time::Instant::now();
            let source = open_database(&config).await?;
            let replayed = crate::history::replay_into(&source, &config, cutoff, &into, database, |config, db| async move {
                rebuild(&config, &db, "all").await
            })
            .await;
            source.close().await;
            let replayed = replayed?;
            println!(
                "Replayed the log up to position {} (its last event happened at {}) into {} in {:.1} s. Serve it \
                 read-only with: cloudsync --config {} serve",
                replayed.position,
                replayed.last_at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339()),
                into.display(),
                started.elapsed().as_secs_f64(),
                replayed.config_file.display()
            );
            Ok(())
        }
        Command::Replay {
            stream,
            user,
            correlation,
            json,
            ..
        } => {
            let db = open_database(&config).await?;
            let out = &mut std::io::stdout().lock();
            let result = match correlation {
                Some(correlation) => replay_correlation(&db, correlation, json, out).await,
                None => replay(&db, stream.as_deref(), user, json, out).await,
            };
            db.close().await;
            result
        }
    }
}

fn parse_subject(text: &str) -> Result<cloudsync_domain::events::ExportSubject, String> {
    use cloudsync_domain::events::ExportSubject;
    ExportSubject::ALL
        .into_iter()
        .find(|what| what.as_str() == text)
        .ok_or_else(|| "expected events, files or sync-operations".to_owned())
}

fn parse_format(text: &str) -> Result<cloudsync_domain::events::ExportFormat, String> {
    use cloudsync_domain::events::ExportFormat;
    [ExportFormat::Parquet, ExportFormat::Csv]
        .into_iter()
        .find(|format| format.extension() == text)
        .ok_or_else(|| "expected parquet or csv".to_owned())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Rebuilds the read model `name` (or `all`, the tables and the search and vector indexes) of
/// `db` from the log, printing what each took.
///
/// # Errors
/// An unknown name, or a rebuild that fails.
async fn rebuild(config: &Config, db: &Database, name: &str) -> anyhow::Result<()> {
    let all = name == "all";
    let mut names: Vec<&str> = if all { vec!["search", "vectors"] } else { vec![name] };
    // The read-model tables: all of them in one pass over the log.
    let tables: Vec<&str> = if all {
        cloudsync_projections::PROJECTORS.to_vec()
    } else {
        names.extract_if(.., |n| cloudsync_projections::PROJECTORS.contains(n)).collect()
    };
    let report = |what: &str, rebuilt: cloudsync_projections::Rebuilt| {
        println!(
            "Rebuilt {what} from {} events in {:.1} s ({:.0} events/s).",
            rebuilt.events,
            rebuilt.elapsed.as_secs_f64(),
            rebuilt.events_per_second()
        );
    };
    if !tables.is_empty() {
        let rebuilt = cloudsync_projections::rebuild_many(db, &tables)
            .await
            .with_context(|| format!("rebuilding {}", tables.join(", ")))?;
        report(&tables.join(", "), rebuilt);
    }
    for name in names {
        let started = std::time::Instant::now();
        let events = match name {
            "search" => {
                let engine = crate::root::search_engine(config)?;
                let texts: Arc<dyn cloudsync_search::TextSource> = Arc::new(crate::root::Texts(crate::root::commands(config, db)?));
                cloudsync_search::rebuild(&engine, Arc::clone(&db.events), Some(texts))
                    .await
                    .with_context(|| format!("rebuilding the search index ({})", engine.describe()))?
            }
            "vectors" => {
                let index = crate::root::vector_index(config).await?;
                let source = Arc::new(crate::root::StoredVectors(crate::root::commands(config, db)?));
                cloudsync_search::vectors::rebuild(&*index, Arc::clone(&db.events), source)
                    .await
                    .context("rebuilding the vector index")?
            }
            other => return Err(cloudsync_projections::ProjectionError::Unknown(other.to_owned()).into()),
        };
        report(
            name,
            cloudsync_projections::Rebuilt {
                events,
                elapsed: started.elapsed(),
            },
        );
    }
    Ok(())
}
