//! What the crate's live projectors share: following the log a page at a time until shutdown,
//! waking on an append (or every `poll`), and telling how far their index has got.

use std::time::Duration;

use async_trait::async_trait;
use cloudsync_eventstore::EventStore;
use cloudsync_eventstore::leader::Leadership;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::SearchResult;

/// How far a live index has got in the log.
pub(crate) struct Progress(watch::Sender<i64>);

impl Progress {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(0))
    }

    pub(crate) fn position(&self) -> i64 {
        *self.0.borrow()
    }

    /// Waits until the index has reached `position`; false on timeout.
    pub(crate) async fn wait_for(&self, position: i64, timeout: Duration) -> bool {
        let mut rx = self.0.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// A live projector's page.
#[async_trait]
pub(crate) trait Step: Send + Sync {
    /// Applies the next page: how many events it read, and the index's checkpoint after it.
    async fn step(&self) -> (SearchResult<usize>, Option<i64>);

    /// How far the index has got (another process may be the one moving it on).
    async fn checkpoint(&self) -> Option<i64>;
}

/// As [`follow`] where `leadership` is `None` (an index of this process's own). For an index that
/// several processes share (Elasticsearch, pgvector), only the holder of `leadership`'s lock
/// projects into it; the others read how far it has got, and one takes over when the holder goes.
pub(crate) async fn follow_shared(
    follower: &dyn Step,
    events: &dyn EventStore,
    poll: Duration,
    shutdown: &CancellationToken,
    progress: &Progress,
    what: &str,
    leadership: Option<Leadership>,
) {
    let Some(mut leadership) = leadership else {
        return follow(follower, events, poll, shutdown, progress, what).await;
    };
    while !shutdown.is_cancelled() {
        // Another process projects meanwhile: the index's checkpoint says how far it has got.
        let reached = || async {
            let checkpoint = follower.checkpoint().await?;
            progress.0.send_if_modified(|current| {
                let moved = checkpoint > *current;
                *current = (*current).max(checkpoint);
                moved
            });
            Some(progress.position())
        };
        let Some(lead) = leadership.stand_by(events, poll, shutdown, what, reached).await else {
            return;
        };
        follow(follower, events, poll, lead.lost(), progress, what).await;
        lead.end().await;
    }
}

/// Runs `follower`'s steps until `shutdown`; a step that read something is followed at once by
/// the next, otherwise the loop waits for an append or `poll`. A failed step is logged as `what`
/// failing and tried again.
pub(crate) async fn follow(
    follower: &dyn Step,
    events: &dyn EventStore,
    poll: Duration,
    shutdown: &CancellationToken,
    progress: &Progress,
    what: &str,
) {
    let mut notified = events.watch();
    loop {
        notified.borrow_and_update();
        let (read, checkpoint) = follower.step().await;
        let more = match read {
            Ok(count) => count > 0,
            Err(error) => {
                tracing::error!(error = %error, "{what} failed; retrying.");
                false
            }
        };
        if let Some(checkpoint) = checkpoint {
            progress.0.send_replace(checkpoint);
        }
        // A leader that lost its lock stops at once, backlog or not.
        if more && !shutdown.is_cancelled() {
            continue;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tokio::time::timeout(poll, notified.changed()) => {}
        }
    }
}
