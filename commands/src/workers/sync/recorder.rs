//! The run's recorded steps: finished decisions advance the pair's base in the same transaction as
//! the job's progress, in batches.

use std::time::Instant;

use chrono::Utc;
use cloudsync_domain::events::{BaseChange, FileVersionKept};
use cloudsync_domain::merge::Decision;
use cloudsync_domain::sync_job::{JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::sync_pair::{SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, DomainEvent, SyncJobId, SyncPairId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use tokio_util::sync::CancellationToken;

use super::{BATCH, Outcome, RECORD_EVERY};
use crate::core::{Context, encode, expected};
use crate::workers::gc::Lease;
use crate::{CommandError, Commands};

/// The job's state and its steps.
pub(super) struct Tracker<'a> {
    pub(super) commands: &'a Commands,
    pub(super) ctx: Context,
    pub(super) job_id: SyncJobId,
    pub(super) job: SyncJob,
    pub(super) version: i64,
    pub(super) cancel: &'a CancellationToken,
}

impl Tracker<'_> {
    pub(super) async fn step(&mut self, command: SyncJobCommand) -> Result<(), CommandError> {
        self.version = self
            .commands
            .job_step(self.job_id, self.version, &mut self.job, command, &self.ctx)
            .await?;
        Ok(())
    }

    pub(super) async fn fail(&mut self, reason: String) -> Result<(), CommandError> {
        tracing::warn!(job = %self.job_id, reason = %reason, "Sync failed.");
        self.step(SyncJobCommand::Fail { reason, at: Utc::now() }).await
    }

    /// Moves the job forward to `phase` unless it is there or beyond (a resumed run). False when
    /// the run must stop (the job ended, or `cancel` fired). Only the job lease's holder moves a
    /// job on, so a conflict here is a pause or a cancel that came meanwhile.
    pub(super) async fn enter(&mut self, phase: JobPhase) -> Result<bool, CommandError> {
        let order = |p: JobPhase| {
            [JobPhase::Pending, JobPhase::Scanning, JobPhase::Planning, JobPhase::Transferring]
                .iter()
                .position(|q| *q == p)
        };
        for _ in 0..3 {
            // A pause (or a cancel) lands between steps: wait it out first.
            if !self.running().await? {
                return Ok(false);
            }
            let current = self.job.phase().unwrap_or(JobPhase::Pending);
            if order(current) >= order(phase) {
                return Ok(true);
            }
            match self.step(SyncJobCommand::EnterPhase { phase, at: Utc::now() }).await {
                Ok(()) => return Ok(true),
                // Paused or cancelled meanwhile: look again.
                Err(CommandError::Conflict(_)) => {
                    (self.job, self.version) = self.commands.load::<SyncJob>(&self.job_id.stream()).await?;
                }
                Err(err) => return Err(err),
            }
        }
        Err(CommandError::Conflict(
            "the job kept changing while it was started; run it again".into(),
        ))
    }

    /// Whether to go on (see [`crate::workers::pause::keep_running`]).
    pub(super) async fn running(&mut self) -> Result<bool, CommandError> {
        crate::workers::pause::keep_running(self.commands, self.job_id, &mut self.job, &mut self.version, self.cancel).await
    }
}

/// Records decisions, finished steps and progress.
pub(super) struct Recorder<'a> {
    pub(super) tracker: Tracker<'a>,
    pub(super) pair_id: SyncPairId,
    pub(super) pair: SyncPair,
    /// The version of the pair's stream that `pair` is the fold of, while that is known: `None`
    /// once something else appended to the stream between this recorder's appends (the executor's
    /// writes in place among them).
    pub(super) pair_version: Option<i64>,
    pub(super) pending: Vec<BaseChange>,
    pub(super) late: Vec<Decision>,
    pub(super) files: u64,
    pub(super) bytes: u64,
    pub(super) written: u64,
    pub(super) failures: Vec<String>,
    pub(super) last_commit: Instant,
    pub(super) totals: Option<(u64, u64)>,
    /// The run's chunk-store lease: nothing is recorded once it may have lapsed (the collector may
    /// have taken chunks the records would name).
    pub(super) lease: Option<&'a Lease>,
}

impl Recorder<'_> {
    pub(super) async fn record_decisions(&mut self, decisions: &[Decision]) -> Result<(), CommandError> {
        for batch in decisions.chunks(BATCH) {
            let mut events = Vec::new();
            for decision in batch {
                events.extend(self.pair.handle(SyncPairCommand::RecordDecision {
                    job_id: self.tracker.job_id,
                    decision: decision.clone(),
                    at: Utc::now(),
                })?);
            }
            self.append_pair(&events, None).await?;
        }
        Ok(())
    }

    /// Appends pair events, with the job's progress when given, in one transaction.
    pub(super) async fn append_pair(&mut self, events: &[DomainEvent], progress: Option<SyncJobCommand>) -> Result<(), CommandError> {
        if self.lease.is_some_and(|lease| !lease.valid()) {
            return Err(CommandError::Conflict(
                "the run could not renew its chunk-store lease in time; it stopped, and the next run starts over".into(),
            ));
        }
        let ctx = self.tracker.ctx;
        loop {
            let mut appends = Vec::new();
            if !events.is_empty() {
                appends.push(StreamAppend {
                    stream: self.pair_id.stream(),
                    // Only the pair's one running job appends its runs' facts; a concurrent settings
                    // change does not conflict with them.
                    expected: ExpectedVersion::Any,
                    events: events.iter().map(|e| encode(e, &ctx)).collect(),
                });
            }
            let progressed = match &progress {
                Some(command) if !self.tracker.job.phase().is_some_and(JobPhase::is_terminal) => {
                    self.tracker.job.handle(command.clone())?
                }
                _ => Vec::new(),
            };
            if !progressed.is_empty() {
                appends.push(StreamAppend {
                    stream: self.tracker.job_id.stream(),
                    expected: expected(self.tracker.version),
                    events: progressed.iter().map(|e| encode(e, &ctx)).collect(),
                });
            }
            if appends.is_empty() {
                return Ok(());
            }
            match self.tracker.commands.store().append(appends).await {
                Ok(outcome) => {
                    events.iter().for_each(|e| self.pair.apply(e));
                    if !events.is_empty() {
                        let reached = outcome.stream_versions.get(&self.pair_id.stream()).copied();
                        let appended = i64::try_from(events.len()).unwrap_or(i64::MAX);
                        self.pair_version = self.pair_version.filter(|known| reached == Some(known + appended)).and(reached);
                    }
                    progressed.iter().for_each(|e| self.tracker.job.apply(e));
                    self.tracker.version += i64::try_from(progressed.len()).unwrap_or(0);
                    return Ok(());
                }
                // The job was paused, resumed or cancelled meanwhile: reload it and record the
                // finished steps again (they did happen), with progress only if the job still
                // takes it.
                Err(err) if err.is_concurrency() => {
                    (self.tracker.job, self.tracker.version) = self.tracker.commands.load::<SyncJob>(&self.tracker.job_id.stream()).await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    pub(super) async fn finished(&mut self, decision: &Decision, outcome: Outcome) -> Result<(), CommandError> {
        self.files += 1;
        self.bytes += outcome.bytes;
        self.written += outcome.written;
        if let Some(error) = outcome.error {
            tracing::warn!(job = %self.tracker.job_id, path = %decision.path, error = %error, "A sync step was not carried out.");
            self.failures.push(format!("{}: {error}", decision.path));
        }
        self.pending.extend(outcome.changes);
        self.late.extend(outcome.late);
        if self.pending.len() >= BATCH || self.last_commit.elapsed() >= RECORD_EVERY {
            self.commit().await?;
        }
        Ok(())
    }

    /// Records the finished steps: the base advances over them, with the job's progress.
    pub(super) async fn commit(&mut self) -> Result<(), CommandError> {
        self.last_commit = Instant::now();
        let changes = std::mem::take(&mut self.pending);
        let mut advanced = Vec::new();
        // Conflicts that only carrying a decision out revealed (a line merge that was not clean,
        // under `MANUAL`) are recorded like the plan's own.
        for decision in std::mem::take(&mut self.late) {
            advanced.extend(self.pair.handle(SyncPairCommand::RecordDecision {
                job_id: self.tracker.job_id,
                decision,
                at: Utc::now(),
            })?);
        }
        if !changes.is_empty() {
            advanced.extend(self.pair.handle(SyncPairCommand::AdvanceBase {
                job_id: self.tracker.job_id,
                changes,
                at: Utc::now(),
            })?);
        }
        let (files_total, bytes_total) = self.totals.unzip();
        let progress = SyncJobCommand::RecordProgress {
            files_done: self.files,
            bytes_done: self.bytes,
            files_total,
            bytes_total,
            bytes_written: Some(self.written),
            at: Utc::now(),
        };
        self.append_pair(&advanced, Some(progress)).await
    }

    /// Records versions kept before the decisions that replace them are carried out.
    pub(super) async fn keep(&mut self, versions: Vec<FileVersionKept>) -> Result<(), CommandError> {
        let events = self.pair.handle(SyncPairCommand::KeepVersions(versions))?;
        self.append_pair(&events, None).await
    }

    /// Ends the run; `beside`: the pair's events that the executor recorded itself (writes in
    /// place), which this recorder's view of the pair takes in first.
    pub(super) async fn finish(mut self, beside: Vec<DomainEvent>) -> Result<(), CommandError> {
        if !beside.is_empty() {
            // Appended between this recorder's own events: the order of the fold is not known here.
            self.pair_version = None;
        }
        beside.iter().for_each(|e| self.pair.apply(e));
        self.commit().await?;
        // Versions beyond the pair's retention are let go (the collector frees their chunks),
        // those that writes in place recorded beside this recorder (`beside`) included.
        let pruned = self.pair.handle(SyncPairCommand::PruneVersions { at: Utc::now() })?;
        self.append_pair(&pruned, None).await?;
        // This run's events go into the pair's snapshot before the run is seen to end (a long
        // run's decisions would otherwise be replayed by the next process to load the pair): from
        // this recorder's own fold where it is the stream's, else by loading the pair again.
        let (commands, stream) = (self.tracker.commands, self.pair_id.stream());
        let folded = match self.pair_version {
            Some(version) => commands.fold_into_pair(&stream, self.pair.clone(), version).await,
            None => commands.load::<SyncPair>(&stream).await.map(|_| ()),
        };
        if let Err(error) = folded {
            tracing::warn!(job = %self.tracker.job_id, error = %error, "Could not load the pair after its run.");
        }
        if !self.tracker.running().await? {
            return Ok(());
        }
        if self.failures.is_empty() {
            self.tracker.step(SyncJobCommand::Complete { at: Utc::now() }).await?;
            tracing::info!(job = %self.tracker.job_id, files = self.files, bytes = self.bytes, written = self.written, "Sync finished.");
            return Ok(());
        }
        let count = self.failures.len();
        let first = self.failures.swap_remove(0);
        let reason = format!(
            "{count} of {} changes could not be made (they are retried by the next run); first: {first}",
            self.files
        );
        self.tracker.fail(reason).await
    }
}
