//! The scan scheduler: follows the log for providers' schedules and requests rescans when a cron
//! schedule comes due, or (for providers set to real time) soon after the provider's own change feed
//! reports a change (for local folders: the operating system's notifications, inotify on Linux). Owned and stopped by the server. It never
//! requests a second scan of a provider while its last one is still running. It also renews OAuth
//! providers' access tokens before they expire.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudsync_domain::sync_job::SyncJob;
use cloudsync_domain::{DomainEvent, ProviderId, ProviderKind, ScanSchedule, SyncJobId, UserId};
use cloudsync_eventstore::subscribe;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{CommandError, Commands};

/// How long a watched folder must be quiet before its rescan is requested.
const SETTLE: Duration = Duration::from_millis(500);
/// A folder that never goes quiet is still rescanned this often.
const MAX_DELAY: Duration = Duration::from_secs(5);

struct Plan {
    owner: UserId,
    kind: ProviderKind,
    schedule: Option<ScanSchedule>,
    next: Option<DateTime<Utc>>,
    realtime: bool,
    feed: Option<Forwarder>,
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

pub struct Scheduler {
    commands: Commands,
}

impl Scheduler {
    pub fn new(commands: Commands) -> Self {
        Self { commands }
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut plans: HashMap<ProviderId, Plan> = HashMap::new();
        let (changed_tx, mut changed) = mpsc::unbounded_channel::<ProviderId>();
        let mut events = Box::pin(subscribe(Arc::clone(self.commands.store()), 0, Duration::from_millis(500)));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(event) = events.next() => {
                    let Ok(event) = event else { continue };
                    if !event.event_type.starts_with("Provider") {
                        continue;
                    }
                    match DomainEvent::decode(&event.event_type, event.schema_version, &event.payload) {
                        Ok(DomainEvent::ProviderConnected(e)) => {
                            plans.insert(e.provider_id, Plan {
                                owner: e.owner_id,
                                kind: e.kind,
                                schedule: None,
                                next: None,
                                realtime: false,
                                feed: None,
                                running: None,
                                dirty: None,
                                credentials_expire_at: e.credentials_expire_at,
                                renew_not_before: None,
                            });
                        }
                        Ok(DomainEvent::ProviderCredentialsRenewed(e)) => {
                            if let Some(plan) = plans.get_mut(&e.provider_id) {
                                plan.credentials_expire_at = e.expires_at;
                                plan.renew_not_before = None;
                            }
                        }
                        Ok(DomainEvent::ProviderDisconnected(e)) => {
                            plans.remove(&e.provider_id);
                        }
                        Ok(DomainEvent::ProviderScheduleSet(e)) => {
                            if let Some(plan) = plans.get_mut(&e.provider_id) {
                                plan.next = e.schedule.as_ref().and_then(|s| s.next_after(Utc::now()));
                                plan.schedule = e.schedule;
                                plan.realtime = e.realtime;
                                plan.feed = if e.realtime { watch(&self.commands, e.provider_id, plan.owner, &changed_tx).await } else { None };
                            }
                        }
                        _ => {}
                    }
                }
                Some(provider) = changed.recv() => {
                    if let Some(plan) = plans.get_mut(&provider) {
                        let now = tokio::time::Instant::now();
                        plan.dirty = Some((plan.dirty.map_or(now, |(first, _)| first), now));
                    }
                }
                _ = tick.tick() => {
                    let now = Utc::now();
                    for (provider, plan) in &mut plans {
                        self.renew_if_due(*provider, plan, now).await;
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
                        match self.commands.request_scan(plan.owner, *provider).await {
                            Ok((job, _)) => {
                                tracing::info!(provider = %provider, job = %job, reason = if due { "schedule" } else { "change" }, "Rescan requested.");
                                plan.running = Some(job);
                            }
                            Err(error) => tracing::warn!(provider = %provider, error = %error, "Could not request a rescan."),
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
        let (Some(expires), Some(oauth)) = (plan.credentials_expire_at, self.commands.oauth()) else {
            return;
        };
        if !oauth.configured(plan.kind) || plan.renew_not_before.is_some_and(|t| t > now) {
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

/// Follows a provider's change feed; each change is sent as the provider's id.
async fn watch(commands: &Commands, provider: ProviderId, owner: UserId, changed: &mpsc::UnboundedSender<ProviderId>) -> Option<Forwarder> {
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
        while feed.next().await.is_some() {
            if changed.send(provider).is_err() {
                return;
            }
        }
    })))
}
