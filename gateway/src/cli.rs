//! The `cloudsync` command line: subcommands and their glue to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use cloudsync_domain::Aggregate as _;
use cloudsync_eventstore::{Database, RecordedEvent};
use uuid::Uuid;

use crate::config::Config;
use crate::root::{open_database, start};

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
    /// Manages the access tokens' signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Prints the GraphQL schema (SDL), as the repository keeps it in `schema.graphql`.
    Schema,
    /// Prints history from the event log: one stream's, or everything one user did, in order.
    Replay {
        /// A stream such as `file-<uuid>` or `user-<uuid>`.
        #[arg(long, conflicts_with = "user", required_unless_present = "user")]
        stream: Option<String>,
        /// A user id: every event that user caused.
        #[arg(long)]
        user: Option<Uuid>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Rebuilds one read model (users, providers, files, sync_operations, sync_pairs,
    /// sync_conflicts, file_versions, or all) from position 0. Safe while the server runs.
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
    /// configuration got a new one, with the old one as `master_key_previous`).
    Rewrap,
    /// Replaces the generated master key in the data dir by a new one and re-wraps everything
    /// with it; the old key stays in `master-key.previous` until you delete it. Stop the server
    /// first: a running server keeps the keys it started with.
    RotateMaster,
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("cloudsync: {error:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
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
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
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
        .init();
}

/// Drops log events that are known to carry secrets whatever the configured level: the request
/// signer used by the S3 and Azure adapters (reqsign) prints its credentials at debug level.
fn no_secrets(metadata: &tracing::Metadata<'_>) -> bool {
    !(metadata.target().starts_with("reqsign") && *metadata.level() > tracing::Level::INFO)
}

/// Runs one subcommand.
///
/// # Errors
/// Whatever stops it, with context.
pub async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    match command {
        Command::Schema => {
            print!("{}", crate::graphql::sdl());
            Ok(())
        }
        Command::Serve { bind } => {
            if let Some(bind) = bind {
                config.bind = bind;
                config.validate()?;
            }
            let server = start(&config).await?;
            println!("CloudSync is running: GraphQL at http://{}/graphql", server.addr());
            server.run_until(shutdown_signal()).await;
            Ok(())
        }
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
            let names: Vec<&str> = if name == "all" {
                cloudsync_projections::PROJECTORS.to_vec()
            } else {
                vec![name.as_str()]
            };
            for name in names {
                let replayed = cloudsync_projections::rebuild(&db, name)
                    .await
                    .with_context(|| format!("rebuilding {name}"))?;
                println!("Rebuilt {name} from {replayed} events.");
            }
            db.close().await;
            Ok(())
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
                    "Collected: {} pairs read ({} of erased accounts, let go), {} versions let go, {} of {} chunks deleted, {} interrupted writes removed.",
                    report.pairs, report.erased_pairs, report.versions_pruned, report.deleted, report.chunks, report.temporaries
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
        Command::Replay { stream, user, json } => {
            let db = open_database(&config).await?;
            let result = replay(&db, stream.as_deref(), user, json, &mut std::io::stdout().lock()).await;
            db.close().await;
            result
        }
    }
}

/// `cloudsync users import`: registers the accounts of a JSON Lines text; every line is checked
/// before anything is registered. Addresses already registered are skipped and reported.
///
/// # Errors
/// A bad line (with its number and what is wrong), or store failures.
pub async fn import_users(config: &Config, db: &Database, text: &str, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Line {
        email: String,
        password_hash: String,
    }
    let mut accounts = Vec::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let number = number + 1;
        match serde_json::from_str::<Line>(line) {
            Err(err) => problems.push(format!("line {number}: not an object with email and password_hash ({err})")),
            Ok(parsed) => match cloudsync_domain::Email::parse(&parsed.email) {
                Err(err) => problems.push(format!("line {number}: {err}")),
                Ok(_) if !cloudsync_identity::passwords::Passwords::recognised(&parsed.password_hash) => {
                    problems.push(format!("line {number}: the password hash is not argon2, bcrypt or PBKDF2"));
                }
                Ok(email) => accounts.push((email, parsed.password_hash)),
            },
        }
    }
    if !problems.is_empty() {
        bail!("nothing was imported:\n  {}", problems.join("\n  "));
    }
    let commands = crate::root::commands(config, db)?;
    let (mut imported, mut skipped) = (0, Vec::new());
    for (email, hash) in accounts {
        match commands.register(email.clone(), hash).await {
            Ok(_) => imported += 1,
            Err(cloudsync_commands::CommandError::AlreadyExists(_)) => skipped.push(email.as_str().to_owned()),
            Err(err) => return Err(err).with_context(|| format!("importing {}", email.as_str())),
        }
    }
    writeln!(out, "Imported {imported} accounts.")?;
    if !skipped.is_empty() {
        writeln!(out, "Skipped {} already registered: {}.", skipped.len(), skipped.join(", "))?;
    }
    Ok(())
}

/// `cloudsync users grant | revoke <email> <role>`.
///
/// # Errors
/// An unknown account or role, or store failures.
pub async fn roles(config: &Config, db: &Database, command: &UsersCommand, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let (email, role, grant) = match command {
        UsersCommand::Grant { email, role } => (email, role, true),
        UsersCommand::Revoke { email, role } => (email, role, false),
        UsersCommand::Import { .. } => bail!("not a role command"),
    };
    let email = cloudsync_domain::Email::parse(email).map_err(|err| anyhow::anyhow!("{err}"))?;
    let commands = crate::root::commands(config, db)?;
    let user = commands
        .user_by_email(&email)
        .await?
        .and_then(|u| u.id())
        .with_context(|| format!("no account has the address {}", email.as_str()))?;
    if grant {
        commands.grant_role(user, role).await?;
        writeln!(
            out,
            "{} now has the role {role} (from their next sign-in or refresh).",
            email.as_str()
        )?;
    } else {
        commands.revoke_role(user, role).await?;
        writeln!(
            out,
            "{} loses the role {role} at their next sign-in or refresh (revokeRole through the API ends their sessions at once).",
            email.as_str()
        )?;
    }
    Ok(())
}

/// `cloudsync keys list | rotate`.
///
/// # Errors
/// An unreachable database or a write error.
pub async fn keys(config: &Config, db: &Database, command: &KeysCommand, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    use cloudsync_identity::keys::{KeyRing, list};
    let grace = crate::root::key_grace(config);
    if matches!(command, KeysCommand::Rewrap | KeysCommand::RotateMaster) {
        let master = if matches!(command, KeysCommand::RotateMaster) {
            crate::root::replace_generated_master_key(config)?
        } else {
            crate::root::master_key(config)?
        };
        let users = cloudsync_commands::Vault::new(master.clone(), db.pool.clone()).rewrap().await?;
        let signing = cloudsync_identity::keys::rewrap(&db.pool, &crate::root::MasterSealer(master.clone())).await?;
        writeln!(
            out,
            "Master key {} now wraps everything: {users} user keys and {signing} signing keys re-wrapped.",
            master.id()
        )?;
        if matches!(command, KeysCommand::RotateMaster) {
            writeln!(
                out,
                "The old key is in {} until you delete it; start the server again to use the new one.",
                crate::root::PREVIOUS_MASTER_KEYS
            )?;
        }
        return Ok(());
    }
    if matches!(command, KeysCommand::Rotate) {
        let master = crate::root::master_key(config)?;
        let kid = KeyRing::rotate(&db.pool, &crate::root::MasterSealer(master), grace).await?;
        writeln!(out, "Key {kid} signs new access tokens from now on (every server within a minute).")?;
    }
    let time =
        |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    for key in list(&db.pool).await? {
        let state = match key.retired_at {
            None => "signs".to_owned(),
            Some(at) => format!("retired, verifies until {}", time(at.saturating_add(grace_ms))),
        };
        writeln!(out, "{}  {}  created {}  {state}", key.kid, key.algorithm, time(key.created_at))?;
    }
    Ok(())
}

/// Writes a stream's history, or everything a user did, in global order.
///
/// # Errors
/// Store failures, an unknown stream or a write error.
pub async fn replay(
    db: &Database,
    stream: Option<&str>,
    user: Option<Uuid>,
    json: bool,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let mut count = 0_u64;
    let mut print = |event: &RecordedEvent| -> anyhow::Result<()> {
        count += 1;
        if json {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        } else {
            let actor = event.metadata.actor_id.map_or_else(|| "-".to_owned(), |a| a.to_string());
            writeln!(
                out,
                "#{} {} {}@{} {} v{} actor={} {}",
                event.position,
                event.metadata.occurred_at.to_rfc3339(),
                event.stream_id,
                event.stream_version,
                event.event_type,
                event.schema_version,
                actor,
                event.payload
            )?;
        }
        Ok(())
    };
    match (stream, user) {
        (Some(stream), _) => {
            let events = db.events.read_stream(stream).await?;
            if events.is_empty() {
                bail!("stream {stream:?} has no events");
            }
            events.iter().try_for_each(&mut print)?;
        }
        (None, Some(user)) => {
            let mut after = 0;
            loop {
                let page = db.events.read_by_actor(user, after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = last.position;
                page.iter().try_for_each(&mut print)?;
            }
        }
        (None, None) => bail!("give --stream or --user"),
    }
    if count == 0 {
        bail!("no events found");
    }
    Ok(())
}

/// Requests a scan, runs it here (unless another worker holds it: then this one takes over should
/// that worker go away), and follows its progress live from the job's own events.
async fn scan(config: &Config, db: &Database, provider_id: Uuid) -> anyhow::Result<()> {
    let commands = crate::root::commands(config, db)?;
    let provider = cloudsync_domain::ProviderId::from_uuid(provider_id);
    let owner = commands.provider_owner(provider).await.context("finding the provider")?;
    let (job_id, _) = commands.request_scan(owner, provider).await?;
    let (files, _, _) = follow(db, &commands, job_id).await?;
    println!("Scan {job_id} completed: {files} files.");
    Ok(())
}

/// A pair to create from the command line.
struct NewPair {
    source: String,
    target: String,
    mode: String,
    policy: String,
    max_delete: u8,
    keep_versions: u32,
    keep_days: u32,
}

fn folder(raw: &str, what: &str) -> anyhow::Result<cloudsync_domain::sync_pair::SyncEndpoint> {
    let (id, path) = raw.split_once(':').unwrap_or((raw, ""));
    let id = Uuid::parse_str(id).with_context(|| format!("{what}: {id:?} is not a provider id (expected <provider id>:<path>)"))?;
    Ok(cloudsync_domain::sync_pair::SyncEndpoint {
        provider_id: cloudsync_domain::ProviderId::from_uuid(id),
        path: cloudsync_domain::ProviderPath::parse(path).with_context(|| format!("{what}: the path"))?,
    })
}

/// Starts a run of a pair (creating the pair first when asked), or carries on its run that has not
/// ended; runs it here (or stands by while another worker holds it) and follows it with a progress bar.
async fn sync(config: &Config, db: &Database, pair_id: Option<Uuid>, new_pair: Option<NewPair>) -> anyhow::Result<()> {
    use cloudsync_domain::merge::{ConflictPolicy, SyncMode};

    let commands = crate::root::commands(config, db)?;
    let job_id = match (pair_id, new_pair) {
        (Some(pair_id), _) => {
            let pair_id = cloudsync_domain::SyncPairId::from_uuid(pair_id);
            let owner = commands.pair_owner(pair_id).await.context("finding the sync pair")?;
            // A run that has not ended (interrupted, or going on in another process) is carried on
            // rather than refused.
            match commands.unfinished_run(owner, pair_id).await? {
                Some(job_id) => {
                    println!("Carrying on run {job_id} of this pair, which has not ended.");
                    job_id
                }
                None => commands.request_sync(owner, pair_id).await?.0,
            }
        }
        (None, Some(new)) => {
            let source = folder(&new.source, "--source")?;
            let target = folder(&new.target, "--target")?;
            let owner = commands
                .provider_owner(source.provider_id)
                .await
                .context("finding the source provider")?;
            let mode = match new.mode.as_str() {
                "copy" => SyncMode::Copy,
                "mirror" => SyncMode::Mirror,
                "two-way" => SyncMode::TwoWay,
                other => bail!("--mode {other:?}: expected copy, mirror or two-way"),
            };
            let policy = match new.policy.as_str() {
                "keep-both" => ConflictPolicy::KeepBoth,
                "newest-wins" => ConflictPolicy::NewestWins,
                "source-wins" => ConflictPolicy::SourceWins,
                "target-wins" => ConflictPolicy::TargetWins,
                "manual" => ConflictPolicy::Manual,
                other => bail!("--policy {other:?}: expected keep-both, newest-wins, source-wins, target-wins or manual"),
            };
            let settings = cloudsync_commands::SyncSettings {
                source,
                target,
                mode,
                policy,
                max_delete_percent: new.max_delete,
                schedule: None,
                realtime: false,
                keep_versions: new.keep_versions,
                keep_days: new.keep_days,
            };
            let (pair_id, job_id, _) = commands.sync_folders(owner, settings, true).await?;
            println!("Created sync pair {pair_id}.");
            job_id.context("the new pair's first run")?
        }
        (None, None) => bail!("give a pair id, or --source and --target"),
    };
    let (files, bytes, written) = follow(db, &commands, job_id).await?;
    println!("Sync {job_id} completed: {files} changes, {bytes} bytes brought across, {written} bytes written.");
    Ok(())
}

/// Runs a job here (or, while another worker holds it, stands by to take over) and follows it live from its own
/// events, with a progress bar; returns its final files and bytes done, and bytes written (sync runs).
async fn follow(
    db: &Database,
    commands: &cloudsync_commands::Commands,
    job_id: cloudsync_domain::SyncJobId,
) -> anyhow::Result<(u64, u64, u64)> {
    use cloudsync_domain::DomainEvent;
    use cloudsync_domain::sync_job::{JobPhase, SyncJob};

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let bytes_style = indicatif::ProgressStyle::with_template(
        "{spinner} {elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut runner = Some({
        let (commands, cancel) = (commands.clone(), cancel.clone());
        tokio::spawn(async move { commands.run_job(job_id, &cancel).await })
    });
    // Whoever runs the job, its events tell how far it is: ours are seen at once, another
    // process's within half a second.
    let mut events = JobEvents {
        store: std::sync::Arc::clone(&db.events),
        stream: job_id.stream(),
        appended: db.events.watch(),
        seen: 0,
        queue: std::collections::VecDeque::new(),
    };
    let mut history = Vec::new();
    let (mut files_done, mut bytes_done, mut bytes_written) = (0, 0, 0);
    let outcome = loop {
        tokio::select! {
            next = events.next() => {
                let event = next?;
                let decoded = DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)?;
                match &decoded {
                    DomainEvent::SyncJobProgressed(progress) => {
                        (files_done, bytes_done) = (progress.files_done, progress.bytes_done);
                        bytes_written = progress.bytes_written.unwrap_or(bytes_written);
                        match (progress.files_total, progress.bytes_total) {
                            (Some(files_total), Some(bytes_total)) if bytes_total > 0 => {
                                if bar.length() != Some(bytes_total) {
                                    bar.set_style(bytes_style.clone());
                                    bar.set_length(bytes_total);
                                }
                                bar.set_position(progress.bytes_done);
                                bar.set_message(format!("{} of {files_total} changes", progress.files_done));
                            }
                            _ => bar.set_message(format!("{} files, {} bytes", progress.files_done, progress.bytes_done)),
                        }
                    }
                    DomainEvent::SyncJobPhaseEntered(phase) => bar.set_message(phase.phase.as_str().to_owned()),
                    DomainEvent::SyncJobHeld(held) => bar.println(format!(
                        "Held: the run would delete {} files of the {}, more than the pair allows. Approve it with the approveSync mutation, or cancel it.",
                        held.deletes,
                        held.side.name()
                    )),
                    _ => {}
                }
                let reason = match &decoded {
                    DomainEvent::SyncJobFailed(f) | DomainEvent::SyncJobCancelled(f) => f.reason.clone(),
                    _ => None,
                };
                history.push(decoded);
                if let Some(phase) = SyncJob::load(&history).phase().filter(|p| p.is_terminal()) {
                    break (phase, reason);
                }
            }
            finished = async { match runner.as_mut() { Some(handle) => handle.await, None => std::future::pending().await } }, if runner.is_some() => {
                runner = None;
                // Ours stopped without ending the job: report why. (Ok means the job ended, and
                // its last events are still to arrive: a worker that loses the job's lease stands
                // by inside `run_job` until it can carry the job on.)
                if let Ok(Err(error)) = finished {
                    bar.finish_and_clear();
                    return Err(error.into());
                }
            }
        }
    };
    // Our worker, if it still runs, stops and gives its leases back before the process ends.
    cancel.cancel();
    if let Some(handle) = runner.take()
        && tokio::time::timeout(std::time::Duration::from_secs(5), handle).await.is_err()
    {
        tracing::warn!(job = %job_id, "The job's worker did not stop in time.");
    }
    bar.finish_and_clear();
    match outcome {
        (JobPhase::Completed, _) => Ok((files_done, bytes_done, bytes_written)),
        (phase, reason) => bail!("operation {job_id} {}: {}", phase.as_str(), reason.unwrap_or_default()),
    }
}

/// A job's own events as they are appended: its stream is read again whenever this process appends
/// to the log, and every half second for another process's appends. Only the job's few events are
/// read, not the run's decisions around them.
struct JobEvents {
    store: std::sync::Arc<dyn cloudsync_eventstore::EventStore>,
    stream: String,
    appended: tokio::sync::watch::Receiver<i64>,
    seen: usize,
    queue: std::collections::VecDeque<RecordedEvent>,
}

impl JobEvents {
    async fn next(&mut self) -> anyhow::Result<RecordedEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Ok(event);
            }
            self.appended.borrow_and_update();
            let all = self.store.read_stream(&self.stream).await?;
            if all.len() > self.seen {
                let fresh = all.len() - self.seen;
                self.queue.extend(all.into_iter().skip(self.seen));
                self.seen += fresh;
                continue;
            }
            tokio::select! {
                _ = self.appended.changed() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            }
        }
    }
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
