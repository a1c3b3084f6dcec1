//! `cloudsync scan` and `cloudsync sync`: a job run in this process, its progress followed on the
//! terminal until it ends.

use anyhow::{Context as _, bail};
use cloudsync_domain::Aggregate as _;
use cloudsync_eventstore::{Database, RecordedEvent};
use uuid::Uuid;

use crate::config::Config;

/// Requests a scan, runs it here (unless another worker holds it: then this one takes over should
/// that worker go away), and follows its progress live from the job's own events.
pub(super) async fn scan(config: &Config, db: &Database, provider_id: Uuid) -> anyhow::Result<()> {
    let commands = crate::root::commands(config, db)?;
    let provider = cloudsync_domain::ProviderId::from_uuid(provider_id);
    let owner = commands.provider_owner(provider).await.context("finding the provider")?;
    let (job_id, _) = commands.request_scan(owner, provider).await?;
    let (files, _, _) = follow(db, &commands, job_id).await?;
    println!("Scan {job_id} completed: {files} files.");
    Ok(())
}

/// A pair to create from the command line.
pub(super) struct NewPair {
    pub(super) source: String,
    pub(super) target: String,
    pub(super) mode: String,
    pub(super) policy: String,
    pub(super) max_delete: u8,
    pub(super) keep_versions: u32,
    pub(super) keep_days: u32,
}

pub(super) fn folder(raw: &str, what: &str) -> anyhow::Result<cloudsync_domain::sync_pair::SyncEndpoint> {
    let (id, path) = raw.split_once(':').unwrap_or((raw, ""));
    let id = Uuid::parse_str(id).with_context(|| format!("{what}: {id:?} is not a provider id (expected <provider id>:<path>)"))?;
    Ok(cloudsync_domain::sync_pair::SyncEndpoint {
        provider_id: cloudsync_domain::ProviderId::from_uuid(id),
        path: cloudsync_domain::ProviderPath::parse(path).with_context(|| format!("{what}: the path"))?,
    })
}

/// Starts a run of a pair (creating the pair first when asked), or carries on its run that has not
/// ended; runs it here (or stands by while another worker holds it) and follows it with a progress bar.
pub(super) async fn sync(config: &Config, db: &Database, pair_id: Option<Uuid>, new_pair: Option<NewPair>) -> anyhow::Result<()> {
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
pub(super) async fn follow(
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
                            _ => bar.set_message(format!("{} files, {} bytes", progress.files_done, progress.bytes_done))}
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
                    _ => None};
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
pub(super) struct JobEvents {
    pub(super) store: std::sync::Arc<dyn cloudsync_eventstore::EventStore>,
    pub(super) stream: String,
    pub(super) appended: tokio::sync::watch::Receiver<i64>,
    pub(super) seen: usize,
    pub(super) queue: std::collections::VecDeque<RecordedEvent>,
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
