//! One run of a sync pair, as a job: scanning, planning, holding for approval, then carrying out
//! the decisions with a bounded pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use cloudsync_domain::events::SyncPairCreated;
use cloudsync_domain::merge::{self, Action, Decision, Side, SyncMode};
use cloudsync_domain::sync_job::{JobKind, JobPhase, SyncJob, SyncJobCommand};
use cloudsync_domain::sync_pair::SyncPair;
use cloudsync_domain::{ProviderKind, ProviderPath, SyncJobId};
use cloudsync_providers::StorageProvider;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::listing::{Listing, hash_into, list_side, needs_hash};
use super::recorder::{Recorder, Tracker};
use super::write::Flusher;
use super::{BATCH, DELTA_MIN, Executor, KEEP_TEXT, Outcome, TRANSFERS, action_paths};
use crate::core::Context;
use crate::workers::gc::Lease;
use crate::{CommandError, Commands};

/// Runs (or resumes) a sync job to its end. Returns quietly when the job has already ended, or is
/// cancelled while it runs.
pub(crate) async fn run_sync(commands: &Commands, job_id: SyncJobId, cancel: &CancellationToken) -> Result<(), CommandError> {
    let (job, version) = commands.load::<SyncJob>(&job_id.stream()).await?;
    let (Some(owner), Some(JobKind::Sync { pair_id, .. }), Some(phase)) = (job.owner(), job.kind().cloned(), job.phase()) else {
        return Err(CommandError::NotFound("sync job"));
    };
    if phase.is_terminal() {
        return Ok(());
    }
    let mut tracker = Tracker {
        commands,
        ctx: Context::new(Some(owner)),
        job_id,
        job,
        version,
        cancel,
    };
    let (pair, pair_version) = commands.load::<SyncPair>(&pair_id.stream()).await?;
    let Some(settings) = pair.live_for(owner).cloned() else {
        return tracker.fail("the sync pair no longer exists".into()).await;
    };
    let sides = match futures::try_join!(
        commands.provider(owner, settings.source.provider_id),
        commands.provider(owner, settings.target.provider_id)
    ) {
        Ok(sides) => sides,
        Err(err) => return tracker.fail(err.to_string()).await,
    };
    if !tracker.enter(JobPhase::Scanning).await? {
        return Ok(());
    }
    tracing::info!(job = %job_id, pair = %pair_id, "Sync started.");
    // Writes that a killed process left half-done are cleared away first: on local folders here
    // (their listings leave temporary files out); elsewhere from what the listings find, below.
    for (provider, endpoint) in [(&sides.0, &settings.source), (&sides.1, &settings.target)] {
        if provider.kind() != ProviderKind::Local {
            continue;
        }
        match provider.remove_abandoned_writes(&endpoint.path).await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(job = %job_id, removed, "Removed temporary files of interrupted writes."),
            Err(error) => tracing::warn!(job = %job_id, error = %error, "Could not look for interrupted writes."),
        }
    }
    // Writes in place that a stopped run left half-done are settled before anything is listed.
    let (pair, pair_version) = if pair.pending_patches().next().is_some() {
        match super::delta::settle_pending(commands, &tracker.ctx, &pair, [&*sides.0, &*sides.1]).await {
            Ok(settled) => tracing::info!(job = %job_id, settled, "Settled interrupted writes in place."),
            Err(err) => {
                return tracker
                    .fail(format!("an interrupted write in place could not be settled: {err}"))
                    .await;
            }
        }
        commands.load::<SyncPair>(&pair_id.stream()).await?
    } else {
        (pair, pair_version)
    };
    let listing = async {
        futures::try_join!(
            list_side(Arc::clone(&sides.0), settings.source.path.clone(), &pair, Side::Source),
            list_side(Arc::clone(&sides.1), settings.target.path.clone(), &pair, Side::Target),
        )
    };
    let (mut source, mut target) = tokio::select! {
    () = cancel.cancelled() => return Ok(()),
    listed = listing => listed?};
    // Large files that the other side writes in place are hashed by that write (where there is a
    // chunk store for the undo), when they lie on a local folder, whose fine-grained modification
    // times show a change made while they are read. Text files small enough to be kept for merges
    // are hashed here. One-way pairs carry only the source's changes over.
    let in_place = |from: &Arc<dyn StorageProvider>, onto: &Arc<dyn StorageProvider>| {
        (commands.chunk_store().is_some() && from.kind() == ProviderKind::Local && onto.writes_in_place())
            .then_some(DELTA_MIN.max(KEEP_TEXT + 1))
    };
    let two_way = settings.mode == SyncMode::TwoWay;
    let (for_source, for_target) = (
        needs_hash(&source, &target, pair.base(), in_place(&sides.0, &sides.1)),
        needs_hash(&target, &source, pair.base(), in_place(&sides.1, &sides.0).filter(|_| two_way)),
    );
    let hashing = async {
        futures::try_join!(
            hash_into(&*sides.0, &mut source, for_source),
            hash_into(&*sides.1, &mut target, for_target)
        )
    };
    tokio::select! {
    () = cancel.cancelled() => return Ok(()),
    hashed = hashing => hashed?};
    if !tracker.running().await? || !tracker.enter(JobPhase::Planning).await? {
        return Ok(());
    }
    let decisions = merge::plan(settings.mode, settings.policy, pair.base(), &source.tree, &target.tree, Utc::now());
    if let Some((side, count)) = merge::exceeds_delete_limit(&decisions, &source.tree, &target.tree, settings.max_delete_percent)
        && !tracker.job.deletes_approved()
    {
        tracing::warn!(job = %job_id, side = side.name(), deletes = count, "Sync held: it would delete more than the pair allows.");
        let hold = SyncJobCommand::Hold {
            side,
            deletes: count as u64,
            at: Utc::now(),
        };
        tracker.step(hold).await?;
        if !tracker.running().await? {
            return Ok(());
        }
    }
    // From here on the run stores chunks that it records later: the collector waits for it.
    let lease = match commands.chunk_store() {
        // Each worker its own name: one that lost the job cannot release its successor's lease.
        Some(_) => match commands
            .chunk_lease(format!("sync-{job_id}-{}", Uuid::now_v7().simple()), cancel)
            .await?
        {
            Some(lease) => Some(lease),
            None => return Ok(()),
        },
        None => None,
    };
    let result = transfer(
        commands,
        tracker,
        &settings,
        (pair, pair_version),
        [sides.0, sides.1],
        [source, target],
        &decisions,
        lease.as_ref(),
    )
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result
}

/// The rest of a run, once it holds its chunk-store lease: keeps the versions its decisions would
/// replace, carries the decisions out and records what the sides agree on.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transfer(
    commands: &Commands,
    tracker: Tracker<'_>,
    settings: &SyncPairCreated,
    (pair, pair_version): (SyncPair, i64),
    sides: [Arc<dyn StorageProvider>; 2],
    listings: [Listing; 2],
    decisions: &[Decision],
    lease: Option<&Lease>,
) -> Result<(), CommandError> {
    let (job_id, pair_id, cancel) = (tracker.job_id, settings.pair_id, tracker.cancel);
    let flushers = [Flusher::new(Arc::clone(&sides[0])), Flusher::new(Arc::clone(&sides[1]))];
    let executor = Executor {
        sides,
        folders: [settings.source.path.clone(), settings.target.path.clone()],
        providers: [settings.source.provider_id, settings.target.provider_id],
        listings,
        pair_id,
        owner: settings.owner_id,
        job_id,
        chunks: commands.chunks_for(settings.owner_id).await?,
        flushers,
        versions: settings.keep_versions > 0,
        pair: pair.clone(),
        policy: settings.policy,
        commands: commands.clone(),
        ctx: tracker.ctx,
        lease: lease.map(Lease::watch),
        recorded: std::sync::Mutex::new(Vec::new()),
    };
    let mut run = Recorder {
        tracker,
        pair_id,
        pair,
        pair_version: Some(pair_version),
        pending: Vec::new(),
        late: Vec::new(),
        files: 0,
        bytes: 0,
        written: 0,
        failures: Vec::new(),
        last_commit: Instant::now(),
        totals: None,
        lease,
    };
    run.record_decisions(decisions).await?;
    let files_total = decisions.len() as u64;
    let bytes_total: u64 = decisions.iter().flat_map(|d| &d.actions).map(transfer_size).sum();
    run.totals = Some((files_total, bytes_total));
    if !run.tracker.enter(JobPhase::Transferring).await? {
        return Ok(());
    }
    // What both sides agree on already (unchanged, or changed the same way on both): the base
    // catches up without any transfer.
    executor.remove_abandoned().await;
    let agreed = executor.already_agreed(decisions).await;
    for batch in agreed.chunks(BATCH) {
        run.pending.extend_from_slice(batch);
        run.commit().await?;
    }
    // What the decisions would overwrite or delete is kept (and recorded) first; a decision whose
    // version could not be kept is not carried out.
    let blocked = executor.keep_versions(decisions, &mut run).await?;

    // Decisions that rename or resolve conflicts move files between paths that other decisions may
    // use: they run one at a time, first. The rest touch one path each and run in parallel.
    let (ordered, parallel): (Vec<&Decision>, Vec<&Decision>) = decisions.iter().partition(|d| {
        d.actions.len() > 1
            || d.actions
                .iter()
                .any(|a| matches!(a, Action::Rename { .. } | Action::MergeText { .. } | Action::Unresolved { .. }))
    });
    for decision in ordered {
        if !run.tracker.running().await? {
            return Ok(());
        }
        let outcome = match blocked_by(&blocked, decision) {
            Some(why) => Outcome::failed(why.clone()),
            None => executor.carry_out(decision).await,
        };
        run.finished(decision, outcome).await?;
    }
    let mut queue = parallel.into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < TRANSFERS {
            match queue.next() {
                Some(decision) => in_flight.push(carry_out(&executor, decision, blocked_by(&blocked, decision))),
                None => break,
            }
        }
        let next = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        next = in_flight.next() => next};
        let Some((decision, outcome)) = next else { break };
        run.finished(decision, outcome).await?;
        if !run.tracker.running().await? {
            return Ok(());
        }
    }
    drop(in_flight);
    let beside = std::mem::take(&mut *executor.recorded.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    run.finish(beside).await
}

pub(super) async fn carry_out<'a>(executor: &'a Executor, decision: &'a Decision, blocked: Option<&String>) -> (&'a Decision, Outcome) {
    match blocked {
        Some(why) => (decision, Outcome::failed(why.clone())),
        None => (decision, executor.carry_out(decision).await),
    }
}

/// Why a decision may not be carried out: a path it touches had content that could not be kept.
pub(super) fn blocked_by<'a>(blocked: &'a HashMap<ProviderPath, String>, decision: &Decision) -> Option<&'a String> {
    if blocked.is_empty() {
        return None;
    }
    std::iter::once(&decision.path)
        .chain(decision.actions.iter().flat_map(action_paths))
        .find_map(|path| blocked.get(path))
}

/// How many bytes an action moves.
pub(super) fn transfer_size(action: &Action) -> u64 {
    match action {
        Action::Copy { version, .. } => version.size,
        Action::MergeText { source, target, .. } => source.size + target.size,
        _ => 0,
    }
}
