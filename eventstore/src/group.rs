//! Group commit, shared by both backends. Every `append` becomes a request on a queue; one writer
//! task per store takes whatever is waiting (up to [`MAX_REQUESTS`] requests or [`MAX_EVENTS`]
//! events), and the backend writes them in one transaction: the head and every stream's version read
//! once, each request's expected versions checked in arrival order against the versions as the
//! requests before it in the group left them ([`plan_group`]), one multi-row insert, one commit. A
//! caller is answered only after that commit returned, so an answer means durable.
//!
//! A request whose versions do not match gets [`StoreError::Concurrency`] and writes nothing while
//! the rest of its group commits. When the transaction itself fails (a duplicate event id, say),
//! nobody can tell whose rows broke it, so each request of the group is written again alone: the one
//! that broke it fails alone. A caller that drops its future before the writer takes its request
//! writes nothing; once taken, its request commits or fails with its group, never in part. The
//! transaction runs in the writer's task, never in a caller's future, so cancelling a caller never
//! cancels a transaction half-way.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use crate::types::{Row, plan_rows};
use crate::{AppendOutcome, StoreError, StreamAppend};

/// The most requests one transaction takes.
pub const MAX_REQUESTS: usize = 256;
/// The most events one transaction takes (a single larger request still goes alone).
pub const MAX_EVENTS: usize = 8_192;

/// How many appends a store answered and in how many transactions it wrote them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Requests that ended in a transaction (committed or not).
    pub requests: u64,
    /// Transactions that committed.
    pub transactions: u64,
}

/// What a backend does for a group: one transaction over the requests, in order.
#[async_trait]
pub(crate) trait GroupWrite: Send + Sync + 'static {
    /// Writes every request that passes its checks in one transaction and commits it; returns each
    /// request's own result, in order. `Err` when the transaction failed: nothing was written.
    async fn write_group(&self, group: &[&[StreamAppend]]) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>;
}

struct Request {
    batches: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// A pause before a group's commit, for tests: the writer says it got there and waits to be let go.
pub(crate) struct Pause {
    pub(crate) reached: Option<oneshot::Sender<()>>,
    pub(crate) release: oneshot::Receiver<()>,
}

/// The queue in front of the writer task, held by the store.
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
}

#[derive(Default)]
pub(crate) struct Shared {
    requests: AtomicU64,
    transactions: AtomicU64,
    pause: std::sync::Mutex<Option<Pause>>,
    /// A test's lost answer for the next group: after its commit (`true`) or before it is sent.
    lost_answer: std::sync::Mutex<Option<bool>>,
}

impl Shared {
    /// Waits here, once, if a test asked for a pause before the next commit.
    pub(crate) async fn before_commit(&self) {
        let pause = self.pause.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(mut pause) = pause {
            if let Some(reached) = pause.reached.take() {
                let _ = reached.send(());
            }
            let _ = pause.release.await;
        }
    }

    /// Takes the lost answer a test asked for, if any.
    pub(crate) fn take_lost_answer(&self) -> Option<bool> {
        self.lost_answer.lock().ok().and_then(|mut lost| lost.take())
    }

    /// Whether a test asked for a pause before the next commit.
    pub(crate) fn pause_pending(&self) -> bool {
        self.pause.lock().is_ok_and(|p| p.is_some())
    }

    pub(crate) fn committed(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
    }
}

impl Committer {
    /// Starts the writer task (it ends when the store, and with it the queue, is dropped).
    pub(crate) fn start<W: GroupWrite>(make: impl FnOnce(Arc<Shared>) -> W, head: watch::Sender<i64>) -> Self {
        let shared = Arc::new(Shared::default());
        let writer = make(Arc::clone(&shared));
        let (queue, requests) = mpsc::unbounded_channel();
        tokio::spawn(run(writer, requests, head, Arc::clone(&shared)));
        Self { queue, shared }
    }

    /// Queues an append and waits for its transaction.
    pub(crate) async fn append(&self, batches: Vec<StreamAppend>) -> Result<AppendOutcome, StoreError> {
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Request { batches, reply })
            .map_err(|_| StoreError::Invalid("the event store's writer has stopped".into()))?;
        let outcome = answer
            .await
            .map_err(|_| StoreError::Invalid("the event store's writer stopped before answering".into()))?;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(StoreError::Concurrency { .. }) => "conflict",
            Err(_) => "error",
        };
        metrics::histogram!("cloudsync_eventstore_append_duration_seconds", "outcome" => label).record(started.elapsed().as_secs_f64());
        outcome
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            requests: self.shared.requests.load(Ordering::Relaxed),
            transactions: self.shared.transactions.load(Ordering::Relaxed),
        }
    }

    /// Makes the next group's call go unanswered (see [`crate::EventStore::lose_next_answer`]).
    #[cfg(feature = "testing")]
    pub(crate) fn lose_next_answer(&self, committed: bool) {
        if let Ok(mut slot) = self.shared.lost_answer.lock() {
            *slot = Some(committed);
        }
    }

    /// Makes the writer stop before its next commit: `reached` fires when it is there, and it goes
    /// on once `release` is sent or dropped.
    #[cfg(feature = "testing")]
    pub(crate) fn pause_before_next_commit(&self) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached) = oneshot::channel();
        let (release, release_rx) = oneshot::channel();
        if let Ok(mut slot) = self.shared.pause.lock() {
            *slot = Some(Pause {
                reached: Some(reached_tx),
                release: release_rx,
            });
        }
        (reached, release)
    }
}

/// Moves the head forward to `position` (never back), waking whoever watches it.
pub(crate) fn bump(head: &watch::Sender<i64>, position: i64) {
    head.send_if_modified(|h| {
        let newer = position > *h;
        *h = (*h).max(position);
        newer
    });
}

async fn run<W: GroupWrite>(writer: W, mut requests: mpsc::UnboundedReceiver<Request>, head: watch::Sender<i64>, shared: Arc<Shared>) {
    while let Some(first) = requests.recv().await {
        let mut events = first.batches.iter().map(|b| b.events.len()).sum::<usize>();
        let mut group = vec![first];
        while group.len() < MAX_REQUESTS && events < MAX_EVENTS {
            match requests.try_recv() {
                Ok(next) => {
                    events += next.batches.iter().map(|b| b.events.len()).sum::<usize>();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        // A caller that has gone away before its request was taken writes nothing.
        group.retain(|r| !r.reply.is_closed());
        if group.is_empty() {
            continue;
        }
        shared.requests.fetch_add(group.len() as u64, Ordering::Relaxed);
        let batches: Vec<&[StreamAppend]> = group.iter().map(|r| r.batches.as_slice()).collect();
        match writer.write_group(&batches).await {
            Ok(results) => answer(&head, group.into_iter().zip(results)),
            Err(error) if group.len() == 1 => answer(&head, group.into_iter().zip([Err(error)])),
            Err(error) => {
                tracing::debug!(error = %error, requests = group.len(), "A group's transaction failed; its appends are written one by one.");
                for request in group {
                    let result = match writer.write_group(&[request.batches.as_slice()]).await {
                        Ok(mut results) => results
                            .pop()
                            .unwrap_or_else(|| Err(StoreError::Invalid("no result for an append".into()))),
                        Err(error) => Err(error),
                    };
                    answer(&head, [(request, result)]);
                }
            }
        }
    }
}

/// Moves the head past what committed, then answers each caller.
fn answer(head: &watch::Sender<i64>, answers: impl IntoIterator<Item = (Request, Result<AppendOutcome, StoreError>)>) {
    let answers: Vec<_> = answers.into_iter().collect();
    if let Some(last) = answers.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|o| o.last_position).max() {
        bump(head, last);
    }
    for (request, result) in answers {
        let _ = request.reply.send(result);
    }
}

/// The rows a group writes and each request's result: every request is checked against the versions
/// in `current` (the stored versions of the group's streams, absent meaning 0) as the requests
/// before it changed them, and its events are numbered on from the position the ones before it
/// reached. A request that fails its checks takes no rows and changes nothing for the rest.
pub(crate) fn plan_group<'a>(
    group: &[&'a [StreamAppend]],
    mut current: HashMap<String, i64>,
    head: i64,
) -> (Vec<Row<'a>>, Vec<Result<AppendOutcome, StoreError>>) {
    let mut rows = Vec::new();
    let mut results = Vec::with_capacity(group.len());
    let mut position = head;
    for batches in group {
        let mine: HashMap<String, i64> = batches
            .iter()
            .map(|b| (b.stream.clone(), current.get(&b.stream).copied().unwrap_or(0)))
            .collect();
        match plan_rows(batches, mine, position) {
            Ok((planned, versions)) => {
                let first = planned.first().map_or(position, |r| r.position);
                position = planned.last().map_or(position, |r| r.position);
                for (stream, version) in &versions {
                    current.insert(stream.clone(), *version);
                }
                rows.extend(planned);
                results.push(Ok(AppendOutcome {
                    first_position: first,
                    last_position: position,
                    stream_versions: versions,
                }));
            }
            Err(error) => results.push(Err(error)),
        }
    }
    (rows, results)
}

/// The distinct stream names of a group, in first-seen order.
pub(crate) fn group_streams(group: &[&[StreamAppend]]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    group
        .iter()
        .flat_map(|batches| batches.iter())
        .filter(|b| seen.insert(b.stream.as_str()))
        .map(|b| b.stream.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventMetadata, ExpectedVersion, NewEvent};

    fn append(stream: &str, expected: ExpectedVersion, events: usize) -> Vec<StreamAppend> {
        vec![StreamAppend {
            stream: stream.into(),
            expected,
            events: (0..events)
                .map(|_| NewEvent {
                    event_type: "Happened".into(),
                    schema_version: 1,
                    payload: serde_json::json!({}),
                    metadata: EventMetadata::new(None),
                })
                .collect(),
        }]
    }

    #[test]
    fn each_request_is_checked_against_the_versions_the_ones_before_it_left() {
        let a = append("thing-a", ExpectedVersion::Exact(2), 2);
        let b = append("thing-a", ExpectedVersion::Exact(2), 1);
        let c = append("thing-a", ExpectedVersion::Exact(4), 1);
        let d = append("thing-b", ExpectedVersion::NoStream, 1);
        let current = HashMap::from([("thing-a".to_owned(), 2)]);
        let (rows, results) = plan_group(&[&a, &b, &c, &d], current, 10);
        assert_eq!(rows.iter().map(|r| r.position).collect::<Vec<_>>(), [11, 12, 13, 14]);
        assert_eq!(rows.iter().map(|r| r.stream_version).collect::<Vec<_>>(), [3, 4, 5, 1]);
        assert_eq!(
            results[0].as_ref().map(|o| (o.first_position, o.last_position)).ok(),
            Some((11, 12))
        );
        assert!(
            matches!(results[1], Err(StoreError::Concurrency { actual: 4, .. })),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2].as_ref().map(|o| o.stream_versions["thing-a"]).ok(), Some(5));
        assert_eq!(
            results[3].as_ref().map(|o| (o.first_position, o.stream_versions["thing-b"])).ok(),
            Some((14, 1))
        );
    }

    #[test]
    fn a_request_that_fails_part_way_changes_nothing_for_the_rest() {
        let mut ab = append("thing-a", ExpectedVersion::Any, 1);
        ab.extend(append("thing-b", ExpectedVersion::Exact(7), 1));
        let next = append("thing-a", ExpectedVersion::NoStream, 1);
        let (rows, results) = plan_group(&[&ab, &next], HashMap::new(), 0);
        assert!(results[0].is_err());
        assert_eq!(results[1].as_ref().map(|o| o.first_position).ok(), Some(1));
        assert_eq!(rows.len(), 1);
    }
}
