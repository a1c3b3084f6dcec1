//! The scheduler: follows the log for providers' and sync pairs' schedules and requests rescans
//! (providers) and runs (sync pairs) when a cron schedule comes due, or (when set to real time) soon
//! after the provider's own change feed reports a change (for local folders: the operating system's
//! notifications, inotify on Linux; for a pair, a change inside either of its folders). Owned and
//! stopped by the server. It never requests a second scan or run while the last one is still
//! running. It also renews OAuth providers' access tokens before they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudsync_domain::sync_job::SyncJob;
use cloudsync_domain::{DomainEvent, ProviderId, ProviderKind, ProviderPath, ScanSchedule, SyncJobId, SyncPairId, UserId};
use cloudsync_eventstore::subscribe;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{CommandError, Commands};

/// How long a watched folder must be quiet before its rescan is requested.
const SETTLE: Duration = Duration::from_millis(500);
/// A folder that never goes quiet is still rescanned this often.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// What a plan schedules: a provider's rescans or a sync pair's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Provider(ProviderId),
    Pair(SyncPairId),
}

struct Plan {
    owner: UserId,
    /// A provider's kind (for renewing its credentials); `None` for a pair.
    kind: Option<ProviderKind>,
    schedule: Option<ScanSchedule>,
    next: Option<DateTime<Utc>>,
    realtime: bool,
    feeds: Vec<Forwarder>,
    /// The last scan this scheduler requested, while it may still be running.
    running: Option<SyncJobId>,
    /// Changes seen since the last request (real time): when the first and the last came.
    dirty: Option<(tokio::time::Instant, tokio::time::Instant)>,
    /// When the OAuth access token expires, and when renewing it may be tried next.
    credentials_expire_at: Option<DateTime<Utc>>,
    renew_not_before: Option<DateTime<Utc>>,
}

/// A failed renewal is retried after this long.
const RENEW_RETRY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

#[derive(Clone)]
pub struct Scheduler {
    commands: Commands,
}

impl Scheduler {
    pub fn new(commands: Commands) -> Self {
        Self { commands }
    }

    /// Schedules while this process holds the lease `scheduler` (one process at a time requests
    /// scheduled work), standing by while another does, until `shutdown`.
    pub async fn lead(self, shutdown: CancellationToken) {
        let pool = self.commands.pool().clone();
        super::leases::lead(pool, "scheduler", shutdown, move |lead| Box::pin(self.clone().run(lead))).await;
    }

    /// Runs until `shutdown` (see [`Scheduler::lead`]).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut plans: HashMap<Key, Plan> = HashMap::new();
        let (changed_tx, mut changed) = mpsc::unbounded_channel::<Key>();
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), 0, Duration::from_millis(500)));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(event) = events.next() => {
                    let Ok(event) = event else { continue };
                    if !event.event_type.starts_with("Provider") && !matches!(event.event_type.as_str(), "SyncPairCreated" | "SyncRunRequested" | "UserDeleted") {
                        continue;
                    }
                    match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload) {
                        Ok(DomainEvent::ProviderConnected(e)) => {
                            plans.insert(Key::Provider(e.provider_id), Plan {
                                owner: e.owner_id,
                                kind: Some(e.kind),
                                schedule: None,
                                next: None,
                                realtime: false,
                                feeds: Vec::new(),
                                running: None,
                                dirty: None,
                                credentials_expire_at: e.credentials_expire_at,
                                renew_not_before: None,
                            });
                        }
                        Ok(DomainEvent::ProviderCredentialsRenewed(e)) => {
                            if let Some(plan) = plans.get_mut(&Key::Provider(e.provider_id)) {
                                plan.credentials_expire_at = e.expires_at;
                                plan.renew_not_before = None;
                            }
                        }
                        Ok(DomainEvent::ProviderDisconnected(e)) => {
                            plans.remove(&Key::Provider(e.provider_id));
                        }
                        // An erased account's providers and pairs run no more (its watchers end
                        // with their plans).
                        Ok(DomainEvent::UserDeleted(e)) => {
                            plans.retain(|_, plan| plan.owner != e.user_id);
                        }
                        Ok(DomainEvent::ProviderScheduleSet(e)) => {
                            let key = Key::Provider(e.provider_id);
                            if let Some(plan) = plans.get_mut(&key) {
                                plan.next = e.schedule.as_ref().and_then(|s| s.next_after(Utc::now()));
                                plan.schedule = e.schedule;
                                plan.realtime = e.realtime;
                                plan.feeds = if e.realtime {
                                    watch(&self.commands, e.provider_id, plan.owner, None, key, &changed_tx).await.into_iter().collect()
                                } else {
                                    Vec::new()
                                };
                            }
                        }
                        Ok(DomainEvent::SyncPairCreated(e)) => {
                            let key = Key::Pair(e.pair_id);
                            let mut feeds = Vec::new();
                            if e.realtime {
                                for side in [&e.source, &e.target] {
                                    feeds.extend(watch(&self.commands, side.provider_id, e.owner_id, Some(side.path.clone()), key, &changed_tx).await);
                                }
                            }
                            plans.insert(key, Plan {
                                owner: e.owner_id,
                                kind: None,
                                next: e.schedule.as_ref().and_then(|s| s.next_after(Utc::now())),
                                schedule: e.schedule,
                                realtime: e.realtime,
                                feeds,
                                running: None,
                                dirty: None,
                                credentials_expire_at: None,
                                renew_not_before: None,
                            });
                        }
                        Ok(DomainEvent::SyncRunRequested(e)) => {
                            if let Some(plan) = plans.get_mut(&Key::Pair(e.pair_id)) {
                                plan.running = Some(e.job_id);
                            }
                        }
                        _ => {}
                    }
                }
                Some(key) = changed.recv() => {
                    if let Some(plan) = plans.get_mut(&key) {
                        let now = tokio::time::Instant::now();
                        plan.dirty = Some((plan.dirty.map_or(now, |(first, _)| first), now));
                    }
                }
                _ = tick.tick() => {
                    let now = Utc::now();
                    for (key, plan) in &mut plans {
                        if let Key::Provider(provider) = key {
                            self.renew_if_due(*provider, plan, now).await;
                        }
                        if let Some(job) = plan.running {
                            if still_running(&self.commands, job).await {
                                continue;
                            }
                            plan.running = None;
                        }
                        let due = plan.next.is_some_and(|next| next <= now);
                        let settled = plan.dirty.is_some_and(|(first, last)| last.elapsed() >= SETTLE || first.elapsed() >= MAX_DELAY);
                        if !(due || settled) {
                            continue;
                        }
                        if due {
                            plan.next = plan.schedule.as_ref().and_then(|s| s.next_after(now));
                        }
                        plan.dirty = None;
                        let reason = if due { "schedule" } else { "change" };
                        match key {
                            Key::Provider(provider) => match self.commands.request_scan(plan.owner, *provider).await {
                                Ok((job, _)) => {
                                    tracing::info!(provider = %provider, job = %job, reason, "Rescan requested.");
                                    plan.running = Some(job);
                                }
                                Err(error) => tracing::warn!(provider = %provider, error = %error, "Could not request a rescan."),
                            },
                            Key::Pair(pair) => match self.commands.request_sync(plan.owner, *pair).await {
                                Ok((job, _)) => {
                                    tracing::info!(pair = %pair, job = %job, reason, "Sync run requested.");
                                    plan.running = Some(job);
                                }
                                Err(error) => tracing::warn!(pair = %pair, error = %error, "Could not request a sync run."),
                            },
                        }
                    }
                }
            }
        }
    }
}

impl Scheduler {
    /// Renews the provider's OAuth tokens when they expire within the renewal margin.
    async fn renew_if_due(&self, provider: ProviderId, plan: &mut Plan, now: DateTime<Utc>) {
        let (Some(expires), Some(oauth), Some(kind)) = (plan.credentials_expire_at, self.commands.oauth(), plan.kind) else {
            return;
        };
        if !oauth.configured(kind) || plan.renew_not_before.is_some_and(|t| t > now) {
            return;
        }
        if expires - chrono::TimeDelta::from_std(oauth.renew_margin()).unwrap_or_default() > now {
            return;
        }
        // Until the renewal's event comes back through the log, do not try again.
        plan.renew_not_before = Some(now + RENEW_RETRY);
        if let Err(error) = self.commands.renew_credentials(plan.owner, provider).await {
            tracing::warn!(provider = %provider, error = %error, "Could not renew the provider's access token; retrying in a minute.");
        }
    }
}

async fn still_running(commands: &Commands, job: SyncJobId) -> bool {
    match commands.load::<SyncJob>(&job.stream()).await {
        Ok((job, _)) => job.phase().is_some_and(|p| !p.is_terminal()),
        Err(CommandError::NotFound(_)) => false,
        Err(_) => true,
    }
}

/// Forwards a provider's change feed to the scheduler; stops when dropped.
struct Forwarder(tokio::task::JoinHandle<()>);

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows a provider's change feed (only changes inside `folder`, when given; a change of unknown
/// path counts); each change is sent as `key`.
async fn watch(
    commands: &Commands,
    provider: ProviderId,
    owner: UserId,
    folder: Option<ProviderPath>,
    key: Key,
    changed: &mpsc::UnboundedSender<Key>,
) -> Option<Forwarder> {
    let opened = match commands.provider(owner, provider).await {
        Ok(opened) => opened,
        // Disconnected since (the scheduler replays the log from its start).
        Err(CommandError::NotFound(_)) => return None,
        Err(error) => {
            tracing::warn!(provider = %provider, error = %error, "Cannot open the provider to follow its changes; only scheduled rescans will run.");
            return None;
        }
    };
    let mut feed = match opened.changes() {
        Ok(Some(feed)) => feed,
        Ok(None) => {
            tracing::warn!(provider = %provider, "The provider has no change feed; only scheduled rescans will run.");
            return None;
        }
        Err(error) => {
            tracing::warn!(provider = %provider, error = %error, "Cannot follow the provider's changes; only scheduled rescans will run.");
            return None;
        }
    };
    let changed = changed.clone();
    Some(Forwarder(tokio::spawn(async move {
        while let Some(change) = feed.next().await {
            let inside = match (&folder, &change.path) {
                (Some(folder), Some(path)) => path.is_within(folder),
                _ => true,
            };
            if inside && changed.send(key).is_err() {
                return;
            }
        }
    })))
}
