//! Sync pair commands: creating a pair, requesting and approving runs, settling conflicts.

use chrono::Utc;
use cloudsync_chunks::put_content;
use cloudsync_domain::events::{Resolution, SyncPairCreated};
use cloudsync_domain::merge::{self, SyncMode, Version};
use cloudsync_domain::provider::ProviderConnection;
use cloudsync_domain::sync_job::{JobKind, SyncJob, SyncJobCommand};
use cloudsync_domain::sync_pair::{SyncEndpoint, SyncPair, SyncPairCommand};
use cloudsync_domain::{Aggregate, DomainEvent, ProviderKind, ProviderPath, ScanSchedule, SyncJobId, SyncPairId, UserId};
use cloudsync_eventstore::{ExpectedVersion, StreamAppend};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::core::{Context, encode, expected};
use crate::workers::gc::Lease;
use crate::{CommandError, Commands};

/// How a pair is set up.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub source: SyncEndpoint,
    pub target: SyncEndpoint,
    pub mode: SyncMode,
    pub policy: merge::ConflictPolicy,
    /// A run that would delete more than this share of a side's files waits for approval.
    pub max_delete_percent: u8,
    pub schedule: Option<ScanSchedule>,
    pub realtime: bool,
    /// Earlier versions kept of each file (0: none), and for how many days (0: no age limit).
    pub keep_versions: u32,
    pub keep_days: u32,
}

/// How the owner settles a conflict.
#[derive(Debug, Clone)]
pub enum Choice {
    Source,
    Target,
    /// Both versions: the older change is kept as a conflict copy.
    Both,
    /// The owner's own merge, written to both sides.
    Merged(Vec<u8>),
}

/// The default share of a side a run may delete without asking.
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;

impl Commands {
    /// Creates a sync pair of two of `user`'s folders and, when `run_now`, its first run.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown, disconnected or someone else's providers; overlapping
    /// folders, bad limits, and real time on a provider without a change feed are
    /// [`CommandError::Invalid`].
    pub async fn sync_folders(
        &self,
        user: UserId,
        settings: SyncSettings,
        run_now: bool,
    ) -> Result<(SyncPairId, Option<SyncJobId>, i64), CommandError> {
        for endpoint in [&settings.source, &settings.target] {
            let (provider, _) = self.load::<ProviderConnection>(&endpoint.provider_id.stream()).await?;
            let connected = provider.active_for(user).ok_or(CommandError::NotFound("provider"))?;
            if settings.realtime && connected.kind != ProviderKind::Local {
                return Err(CommandError::Invalid(format!(
                    "real-time sync needs a change feed, which {} providers do not offer; use a schedule",
                    connected.kind.as_str()
                )));
            }
        }
        let pair_id = SyncPairId::from_uuid(Uuid::now_v7());
        let now = Utc::now();
        let mut pair = SyncPair::default();
        let created = pair.handle(SyncPairCommand::Create(SyncPairCreated {
            pair_id,
            owner_id: user,
            source: settings.source,
            target: settings.target,
            mode: settings.mode,
            policy: settings.policy,
            max_delete_percent: settings.max_delete_percent,
            schedule: settings.schedule,
            realtime: settings.realtime,
            keep_versions: settings.keep_versions,
            keep_days: settings.keep_days,
            at: now,
        }))?;
        created.iter().for_each(|e| pair.apply(e));
        let ctx = Context::new(Some(user));
        let mut pair_events = created;
        let mut appends = Vec::new();
        let job_id = if run_now {
            let (job_events, run) = new_run(&pair, user)?;
            pair_events.extend(run.1);
            appends.push(StreamAppend {
                stream: run.0.stream(),
                expected: ExpectedVersion::NoStream,
                events: job_events.iter().map(|e| encode(e, &ctx)).collect(),
            });
            Some(run.0)
        } else {
            None
        };
        appends.insert(
            0,
            StreamAppend {
                stream: pair_id.stream(),
                expected: ExpectedVersion::NoStream,
                events: pair_events.iter().map(|e| encode(e, &ctx)).collect(),
            },
        );
        let outcome = self.store().append(appends).await?;
        Ok((pair_id, job_id, outcome.last_position))
    }

    /// Starts a run of one of `user`'s sync pairs.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs; [`CommandError::Conflict`]
    /// while a run of the pair has not ended (the message names it).
    pub async fn request_sync(&self, user: UserId, pair_id: SyncPairId) -> Result<(SyncJobId, i64), CommandError> {
        // An erased account's pairs do not run again.
        self.user(user).await?.ok_or(CommandError::NotFound("sync pair"))?;
        let (pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
        if let Some(last) = self.run_in_progress(&pair).await? {
            return Err(CommandError::Conflict(format!(
                "a run of this pair is still in progress: operation {last}"
            )));
        }
        let (job_events, (job_id, pair_events)) = new_run(&pair, user)?;
        let ctx = Context::new(Some(user));
        let outcome = self
            .store()
            .append(vec![
                StreamAppend {
                    stream: pair_id.stream(),
                    expected: expected(version),
                    events: pair_events.iter().map(|e| encode(e, &ctx)).collect(),
                },
                StreamAppend {
                    stream: job_id.stream(),
                    expected: ExpectedVersion::NoStream,
                    events: job_events.iter().map(|e| encode(e, &ctx)).collect(),
                },
            ])
            .await?;
        Ok((job_id, outcome.last_position))
    }

    /// Lets a run held by the max-delete rail go on, deletes included.
    ///
    /// # Errors
    /// Not found (or someone else's), or a job that is not held.
    pub async fn approve_sync(&self, user: UserId, job_id: SyncJobId) -> Result<i64, CommandError> {
        self.act_on_job(user, job_id, SyncJobCommand::Approve { by: user, at: Utc::now() })
            .await
    }

    /// Settles a conflict left for `user` at `path` of their pair, and starts a run to carry the
    /// choice out (unless one is in progress: it is then carried out by the next run). `merged` is
    /// the owner's own merge, for [`Resolution::Merged`]-style resolutions.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs and paths without a conflict;
    /// [`CommandError::Invalid`] for conflicts a choice cannot settle.
    pub async fn resolve_conflict(
        &self,
        user: UserId,
        pair_id: SyncPairId,
        path: ProviderPath,
        choice: Choice,
    ) -> Result<(Option<SyncJobId>, i64), CommandError> {
        let (pair, version) = self.load::<SyncPair>(&pair_id.stream()).await?;
        let mut lease = None;
        let resolution = match choice {
            Choice::Source => Resolution::Source,
            Choice::Target => Resolution::Target,
            Choice::Both => Resolution::Both,
            Choice::Merged(content) => {
                pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
                pair.conflicts().get(&path).ok_or(CommandError::NotFound("conflict"))?;
                let chunks = self
                    .chunks_for(user)
                    .await?
                    .ok_or_else(|| CommandError::Invalid("this server keeps no chunk store for merged content".into()))?;
                // Held until the resolution naming the content is recorded.
                lease = Some(self.lease_now(format!("merge-{}", Uuid::now_v7())).await?);
                let id = put_content(&*chunks, &content)
                    .await
                    .map_err(|err| CommandError::Storage(err.to_string()))?;
                Resolution::Merged {
                    content: id,
                    version: Version {
                        checksum: blake3::hash(&content).to_hex().to_string(),
                        size: content.len() as u64,
                        modified_at: Utc::now(),
                    },
                }
            }
        };
        let events = pair.handle(SyncPairCommand::ResolveConflict {
            by: user,
            path,
            resolution,
            at: Utc::now(),
        })?;
        let recorded = self.append(pair_id.stream(), version, &events, &Context::new(Some(user))).await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        let recorded = recorded?;
        match self.request_sync(user, pair_id).await {
            Ok((job_id, position)) => Ok((Some(job_id), position)),
            Err(CommandError::Conflict(_)) => Ok((None, recorded)),
            Err(err) => Err(err),
        }
    }

    /// `user`'s pair's latest run, if it has not ended (it may be going on elsewhere, or have been
    /// interrupted: [`Commands::run_job`] carries it on either way).
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs.
    pub async fn unfinished_run(&self, user: UserId, pair_id: SyncPairId) -> Result<Option<SyncJobId>, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
        self.run_in_progress(&pair).await
    }

    /// The pair's latest run, if it has not ended.
    pub(crate) async fn run_in_progress(&self, pair: &SyncPair) -> Result<Option<SyncJobId>, CommandError> {
        let Some(last) = pair.last_run() else { return Ok(None) };
        let (job, _) = self.load::<SyncJob>(&last.stream()).await?;
        Ok(job.phase().is_some_and(|p| !p.is_terminal()).then_some(last))
    }

    /// A chunk-store lease for a short piece of work, waiting while the collector runs.
    pub(crate) async fn lease_now(&self, holder: String) -> Result<Lease, CommandError> {
        self.chunk_lease(holder, &CancellationToken::new())
            .await?
            .ok_or_else(|| CommandError::Conflict("the chunk store is busy; try again".into()))
    }

    /// The owner of a sync pair, for operators' tools that act on a pair by id.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown pairs.
    pub async fn pair_owner(&self, pair_id: SyncPairId) -> Result<UserId, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.settings().map(|s| s.owner_id).ok_or(CommandError::NotFound("sync pair"))
    }

    /// The pair's settings, for its owner.
    ///
    /// # Errors
    /// [`CommandError::NotFound`] for unknown or someone else's pairs.
    pub async fn sync_pair(&self, user: UserId, pair_id: SyncPairId) -> Result<SyncPairCreated, CommandError> {
        let (pair, _) = self.load::<SyncPair>(&pair_id.stream()).await?;
        pair.live_for(user).cloned().ok_or(CommandError::NotFound("sync pair"))
    }
}

/// The events of a new run of `pair`: the job's creation, and the pair's note of it.
#[allow(clippy::type_complexity)]
fn new_run(pair: &SyncPair, user: UserId) -> Result<(Vec<DomainEvent>, (SyncJobId, Vec<DomainEvent>)), CommandError> {
    let settings = pair.live_for(user).ok_or(CommandError::NotFound("sync pair"))?;
    let job_id = SyncJobId::from_uuid(Uuid::now_v7());
    let now = Utc::now();
    let job = SyncJob::default().handle(SyncJobCommand::Create {
        job_id,
        owner_id: user,
        kind: JobKind::Sync {
            pair_id: settings.pair_id,
            source: settings.source.provider_id,
            target: settings.target.provider_id,
        },
        at: now,
    })?;
    let requested = pair.handle(SyncPairCommand::RequestRun { job_id, at: now })?;
    Ok((job, (job_id, requested)))
}
